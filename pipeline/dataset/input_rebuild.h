/* input_rebuild.h - the input cubes of an images-only dataset, remade from
 * the models (docs/dataset-format.md, "Images-only datasets").
 *
 * A job with `output.store_inputs: false` stores the targets, the labels, the
 * quaternions and, in /checksums' inputs column, the XXH64 of every input
 * cube it made, but not the cubes. Each cube is a pure function of the model
 * and the direction; this module remakes it from what dataset.h5 records
 * and nothing else:
 *   /geometry  gridding, n, edge, k, ball_radius, reconstruction,
 *              fill_background, background_n, background_T,
 *              direction_sampler, direction_seed, sampler_version;
 *   /models    file (relative paths: to the dataset directory, then to the
 *              current one), units_file ("": each model's own sidecar);
 * sample i is (model i / D, direction i % D) with D the manifest's
 * directions, and a model the manifest lists as skipped gives zeros (what
 * generate stored for it). The sampler is rotate/sample_cube (or
 * rotate/compat_grid for the paper's gridding), so the bits are the ones
 * generate made when sampler_version is this coemu's sampler_recon_version
 * of the recorded reconstruction (other versions are refused at open). The caller (shard_reader) compares each
 * cube's hash against the recorded one: a wrong rebuild is an error, never a
 * served sample.
 *
 * Models stay loaded across calls in an LRU of at most `model_cap` bytes
 * (input_rebuild_set_model_cap; 2 GiB by default)
 * (rotate/model_lru.h). Cubes of one call are made on `threads` OpenMP
 * threads (every thread takes the next sample, in model order; no barrier
 * but the call's end), so a single reader thread can use every core.
 *
 * Thread-safe: several threads may call input_rebuild_cubes on one
 * rebuild at once (serve's reader threads, each on its own chunk, so no
 * core waits for another chunk's last cube). The models are shared: a
 * model in use is pinned in the LRU, models are loaded outside its lock
 * (several at once; a thread that needs a model another one is loading
 * waits for that load), so the bytes held stay within
 * max(model_cap, T x the largest model) for T threads at once. An error on
 * any thread (a model that cannot be loaded, a cube that cannot be made)
 * is the call's, naming the sample, its model (number and file) and
 * direction: the first failing sample of the call in idx order. */
#ifndef COEMU_INPUT_REBUILD_H
#define COEMU_INPUT_REBUILD_H

#include <stddef.h>
#include <stdint.h>

#include "rotate/model_lru.h"

typedef struct input_rebuild input_rebuild;

/* Open the recipe of DIR's dataset.h5 (h5path). n: the cube side the
 * manifest records (checked against /geometry), directions: the manifest's
 * directions per model, skipped[nskipped]: the manifest's skipped models.
 * Errors name dataset.h5 and the missing or unusable field. */
int input_rebuild_open(const char *dir, const char *h5path, int n, int64_t directions,
                       const int64_t *skipped, size_t nskipped, input_rebuild **out);
/* The model LRU's cap in bytes (0: MODEL_LRU_DEFAULT_CAP, the default);
 * the models held are dropped. Only while no input_rebuild_cubes runs. */
int input_rebuild_set_model_cap(input_rebuild *rb, size_t cap);
void input_rebuild_close(input_rebuild *rb);

/* Remake the input cubes of samples idx[0..count) into rows 0..count-1 of
 * inputs (count x 3 n^3 float32, the stored layout) and their XXH64
 * (shard_row_hash) into hash[0..count), on `threads` threads (0: OpenMP's
 * default; 1: the calling thread only). 0, or -1 with a message naming the
 * sample, its model (number and file) and direction. */
int input_rebuild_cubes(input_rebuild *rb, const int64_t *idx, int count, int threads,
                        float *inputs, uint64_t *hash);

/* Model number and file of sample idx, for messages. */
int64_t input_rebuild_model_of(const input_rebuild *rb, int64_t idx);
const char *input_rebuild_model_file(const input_rebuild *rb, int64_t model);

/* Cubes remade so far and the thread CPU seconds they took (sampling only,
 * model loads apart), and the seconds spent loading models: the producer
 * bound of a reader is cores / (cpu_s / cubes) (docs/benchmarks.md). */
void input_rebuild_counters(const input_rebuild *rb, int64_t *cubes, double *cpu_s,
                            double *load_s, int64_t *loads);

/* The model LRU's figures now (rotate/model_lru.h): entries, bytes, peak,
 * cap, loads, hits, evictions. */
void input_rebuild_lru_stats(const input_rebuild *rb, model_lru_stats *st);

#endif
