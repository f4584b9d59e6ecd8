/* safetensors.h - COEmuNet weights as a safetensors file, the format
 * PyTorch users load with safetensors.torch.load_file (docs/export.md).
 *
 * Layout (https://github.com/huggingface/safetensors): u64 little-endian
 * header length N | N bytes of JSON {"NAME": {"dtype": "F32", "shape": [..],
 * "data_offsets": [begin, end]}, ..., "__metadata__": {"KEY": "VALUE"}}
 * (padded with spaces to a multiple of 8) | the tensors' raw little-endian
 * bytes, offsets relative to the byte after the header, tiling the buffer
 * without holes or overlaps.
 *
 * The tensors are the network's parameters and buffers under their PyTorch
 * state_dict names (coemunet.h), float32, in the reference module's shapes:
 * the single-channel model's 2-D decoder convolutions are written
 * (Cout, Cin, 3, 3) (coemu holds them as (Cout, Cin, 1, 3, 3)). Each
 * BatchNorm also gets the int64 scalar "num_batches_tracked" PyTorch keeps
 * (coemu has no such counter: the value written is the checkpoint's
 * optimiser step count, one training-mode pass per step; it does not enter
 * the forward pass at momentum 0.1), so load_state_dict(strict=True) takes
 * the file as it is. The metadata holds the architecture (keys of
 * safetensors_meta_config) and whatever the caller adds.
 *
 * Reading checks the header length against the file size, the JSON (errors
 * give the byte offset), every entry's dtype, shape and offsets, that the
 * offsets tile the data exactly, then every tensor against the network:
 * each parameter present once with dtype F32 and its shape (the 2-D
 * decoder's either form), nothing else but the BatchNorms'
 * num_batches_tracked (I64, shape []). Only when everything matches are the
 * values uploaded. Messages name the file, the tensor and what was
 * expected. The host must be little-endian (checked at compile time). */
#ifndef COEMU_SAFETENSORS_H
#define COEMU_SAFETENSORS_H

#include <stdint.h>

#include "trainer/coemunet.h"

enum { SAFETENSORS_META_MAX = 64, SAFETENSORS_KEY = 64, SAFETENSORS_VALUE = 512 };

typedef struct {
  int n;
  char key[SAFETENSORS_META_MAX][SAFETENSORS_KEY];
  char value[SAFETENSORS_META_MAX][SAFETENSORS_VALUE];
} safetensors_meta;

/* Set (replace or add) a metadata entry; -1 if full or too long. */
int safetensors_meta_set(safetensors_meta *md, const char *key, const char *fmt, ...)
    __attribute__((format(printf, 3, 4)));
/* The value of key, or NULL. */
const char *safetensors_meta_get(const safetensors_meta *md, const char *key);

/* The architecture keys: nfreq, grid, stem, enc ("8,16,32"), latent, dec,
 * shortcut ("reference" or "input"). _put writes them, _config reads them
 * back (an absent or malformed key is an error naming it and `path`). */
int safetensors_meta_put_config(safetensors_meta *md, const coemunet_config *cfg);
int safetensors_meta_config(const safetensors_meta *md, const char *path, coemunet_config *cfg);

/* Write m's parameters and buffers, the metadata md (may be NULL; the
 * architecture keys are added) and num_batches_tracked = nbt. Atomic
 * (temporary file + rename). */
int safetensors_save(const char *path, const coemunet *m, const safetensors_meta *md, int64_t nbt);

/* The metadata of a file (the header is parsed and checked in full). */
int safetensors_read_meta(const char *path, safetensors_meta *md);

/* Load every parameter and buffer of m (built with the file's architecture)
 * from the file; m is untouched unless everything matched. */
int safetensors_load(const char *path, coemunet *m);

#endif
