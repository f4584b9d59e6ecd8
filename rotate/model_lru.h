/* model_lru.h - recently used models kept in memory, within a byte cap.
 *
 * A producer that makes samples of many models (on-the-fly streaming,
 * images-only datasets) asks for the model of each sample; loading one from
 * its AMRVAC file costs far more than a sample, so the last few are kept.
 * Key: the model's files (the .dat path and the units sidecar path, NULL:
 * found beside the .dat as model_load does). Value: the loaded ce_model,
 * plus an optional payload the caller attaches to it (e.g. per-cell level
 * populations), counted against the same cap and freed with the model.
 *
 * Accounting (model_lru_model_bytes): the model's arrays (cells, block ids,
 * root and node codes, and the corner values or the limited slopes once
 * sampler_prepare has made them: sizes are re-read at every call, since the
 * sampler builds them lazily) plus the payload's declared bytes. Eviction is least
 * recently used first. Before loading, entries are evicted so that the
 * cached bytes plus the largest model seen so far fit in the cap; after
 * loading (and after model_lru_attach), entries other than the newest are
 * evicted until the total fits. The newest model is never evicted by its own
 * load, so one model larger than the cap is still served (alone): the cached
 * bytes are at most max(cap, the newest entry's bytes).
 *
 * A returned model stays valid until the next model_lru_get or
 * model_lru_free on the same cache. Not thread-safe: one cache per thread
 * (a producer rank). Errors follow common/error.h.
 */
#ifndef COEMU_MODEL_LRU_H
#define COEMU_MODEL_LRU_H

#include <stddef.h>
#include <stdint.h>

#include "rotate/model.h"

#define MODEL_LRU_DEFAULT_CAP ((size_t)2 << 30) /* 2 GiB */

typedef struct model_lru model_lru;

typedef struct {
  int64_t hits;      /* gets answered from memory */
  int64_t loads;     /* gets that read the model's files */
  int64_t evictions; /* entries dropped to stay within the cap */
  int64_t entries;   /* models held now */
  size_t bytes;      /* bytes held now (model_lru_model_bytes + payloads) */
  size_t peak;       /* the most bytes held at once, as measured after each get/attach */
  size_t cap;
} model_lru_stats;

/* cap: bytes (0: MODEL_LRU_DEFAULT_CAP). */
int model_lru_create(size_t cap, model_lru **out);
void model_lru_free(model_lru *c);

/* The model of (dat, units): from memory, or loaded (model_load) and kept.
 * *m gets the model; loaded (may be NULL) gets 1 when the files were read.
 * -1 with model_load's message on an error (nothing is cached then). */
int model_lru_get(model_lru *c, const char *dat, const char *units_path, ce_model **m, int *loaded);

/* Attach a payload to the entry of m (the model last returned by
 * model_lru_get): counted as `bytes`, freed with free_fn (may be NULL) when
 * the entry goes. A payload already attached is freed first. Entries other
 * than m's are then evicted to fit. -1 if m is not in the cache. */
int model_lru_attach(model_lru *c, const ce_model *m, void *payload, size_t bytes,
                     void (*free_fn)(void *));
/* The payload attached to m's entry, or NULL. */
void *model_lru_payload(const model_lru *c, const ce_model *m);

void model_lru_get_stats(const model_lru *c, model_lru_stats *s);

/* The bytes of a loaded model's arrays, as held now. */
size_t model_lru_model_bytes(const ce_model *m);

#endif
