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
 * model_lru_free on the same cache, unless it is pinned (below).
 *
 * Several threads on one cache (images-only readers, input_rebuild.h): the
 * cache has no lock of its own; the caller serialises every call under its
 * mutex and loads models outside it, so loads run in parallel:
 * model_lru_find gives a held model pinned, model_lru_reserve makes room
 * for the models being loaded (n x the largest seen), model_lru_insert
 * hands the cache a model loaded outside (pinned), model_lru_release
 * unpins. A pinned entry is never evicted, so a thread's model stays valid
 * while other threads load; the bytes held are then at most
 * max(cap, the pinned entries' bytes + the newest entry's). With T threads
 * that each pin one model at a time and reserve before loading, that is at
 * most max(cap, T x the largest model).
 *
 * Errors follow common/error.h.
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

/* Pinned use (above; the caller's lock held). find: 1 and *m the model of
 * (dat, units), touched, counted as a hit and pinned; 0 (*m NULL) when not
 * held; -1 out of memory. */
int model_lru_find(model_lru *c, const char *dat, const char *units_path, ce_model **m);
/* Evict unpinned entries, least recently used first, until the held bytes
 * plus n x the largest model seen fit in the cap: room for n models being
 * loaded outside the cache. */
void model_lru_reserve(model_lru *c, int n);
/* *m, a model of (dat, units) loaded outside the cache (model_load, and
 * sampler_prepare if wanted), now owned by the cache, counted as a load and
 * pinned; unpinned entries other than it are evicted to fit the cap. When
 * the same files are held already (another thread loaded them meanwhile),
 * *m is freed and replaced by the held model (pinned). -1 out of memory
 * (*m is not taken then). */
int model_lru_insert(model_lru *c, const char *dat, const char *units_path, ce_model **m);
/* Unpin a model found or inserted (a model not pinned is a bug); unpinned
 * entries other than it are then evicted to fit the cap. */
void model_lru_release(model_lru *c, const ce_model *m);

void model_lru_get_stats(const model_lru *c, model_lru_stats *s);

/* The bytes of a loaded model's arrays, as held now. */
size_t model_lru_model_bytes(const ce_model *m);

#endif
