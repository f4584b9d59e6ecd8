/* checkpoint.h - COEmuNet training checkpoints: a versioned binary file with
 * the architecture, every parameter and buffer (names and shapes), the Adam
 * state, the schedule and the step/epoch counters, closed by a CRC-32.
 *
 * Layout (version 1, all little-endian; docs/trainer.md has it byte by byte):
 *   "COEMUCKP" | u32 version | u32 header bytes (132) | header | tensor table
 *   | tensor data (values, then Adam m and v where kept) | u32 CRC-32 (zlib's
 *   polynomial) of every byte before it.
 * Files are written to a temporary name and renamed when complete
 * (fs_open_tmp / fs_commit_tmp). Loading checks the magic, version, header
 * size, the file size the tensor table implies, the checksum, then every
 * architecture field, tensor name, shape and flag against the network it is
 * loaded into; a mismatch is an error naming the file and the field, and the
 * network is left untouched unless everything matched.
 */
#ifndef COEMU_CHECKPOINT_H
#define COEMU_CHECKPOINT_H

#include <stdint.h>

#include "trainer/coemunet.h"
#include "trainer/optim.h"

#define CHECKPOINT_VERSION 1
/* the header after the 16 bytes of magic, version and this size: the
 * tensor table starts at 16 + 132 = 148 */
#define CHECKPOINT_HEADER_BYTES 132

typedef struct {
  uint64_t seed;  /* the run's seed (initialisation, data order) */
  uint64_t step;  /* optimiser steps taken */
  uint32_t epoch; /* epochs completed */
  steplr sched;
} train_state;

int checkpoint_save(const char *path, const coemunet *m, const adam *o, const train_state *st);

/* Load into a network built with the same configuration and an optimiser
 * made for it by adam_init(); the optimiser's settings and step count and
 * the training state are replaced by the file's. o == NULL loads the
 * weights and buffers only (inference, weight transfer): the file's
 * optimiser state is skipped. st may be NULL. */
int checkpoint_load(const char *path, coemunet *m, adam *o, train_state *st);

/* The architecture (and, st != NULL, the training state) a checkpoint
 * records, from its fixed header only, so a caller can build the network
 * before loading it. The full checks happen in checkpoint_load(). */
int checkpoint_read_config(const char *path, coemunet_config *cfg, train_state *st);

#endif
