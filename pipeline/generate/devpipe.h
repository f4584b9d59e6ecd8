/* devpipe.h - sample + solve of many directions of one model in batches:
 * the rotated-cube sampler (rotate/sampler.h) and the LTE imager
 * (solver/lte.h) glued behind one table, so that on a device the model is
 * uploaded once and every direction's cube is sampled there and handed to
 * the device's LTE kernel by device pointer: only the images, and the input
 * cubes when the caller asks for them, cross the bus (issue 17, item 2).
 *
 * Two implementations of one table (devpipe_impl), one driver:
 *   devpipe_cpu   sample_cube per direction, then lte_solve_batch_f32 on the
 *                 CPU kernel over the batch and the transposes into the
 *                 targets: the same bits as the producer's per-sample path
 *                 (tests/pipeline/test_devpipe.c), so CI runs the driver
 *                 (batching, ordering, buffers, the transpose) on every host;
 *   devpipe_cuda  sampler_device_sample_dev (cubes left on the device, one
 *                 chunk of the device sampler's buffers per call; with
 *                 COEMU_DEVPIPE_OVERLAP=1 the next chunk sampled on a
 *                 second thread into a sibling handle's buffers while this
 *                 one is solved), then
 *                 lte_solve_batch_device_targets (the kernel seam's
 *                 solve_dev: the cells gathered device to device, the LTE
 *                 kernel's two streams and pinned buffers overlapping its
 *                 chunks; the targets made on the device, float32, so half
 *                 the images' bytes come back and the host transposes
 *                 nothing). Its images follow docs/physics.md's device
 *                 rules; the inputs are sample_cube's bits.
 * The driver cuts the directions into batches of at most `batch`, calls
 * run(), which may do fewer (the device's chunk), and continues where it
 * stopped, so the order of the outputs is the order of the directions
 * whatever the chunking. Memory limits are the implementations': the
 * device sampler and kernel shrink their chunks to the free device memory
 * and refuse a single cube that does not fit, naming the sizes.
 *
 * No MPI, HDF5 or job file here (scripts/gpu-check.sh builds it standalone).
 */
#ifndef COEMU_DEVPIPE_H
#define COEMU_DEVPIPE_H

#include <stddef.h>
#include <stdint.h>

#include "rotate/model.h"
#include "rotate/sampler.h"
#include "solver/lte.h"

/* What the pipeline makes: one model's cubes and images. Every pointer
 * must outlive the pipeline. */
typedef struct {
  const ce_model *m;
  const sampler_opts *so;
  const lte_line *line;
  const lte_options *opt; /* its backend is the implementation's (cpu / cuda) */
  const double *freqs;
  int nf;
  int batch; /* directions per run() at most; <= 0: devpipe_batch_size's */
} devpipe_args;

typedef struct devpipe devpipe;

/* run(): a bad cell in some cube of the batch (the device cannot locate it:
 * solve that direction on the host to name it). */
#define DEVPIPE_BAD_CELL (-2)

typedef struct devpipe_impl {
  const char *name;
  /* make p ready on device `ordinal` (modulo the devices present); desc
   * (may be NULL) gets a line; -1 with a message (no device, no build) */
  int (*open)(devpipe *p, int ordinal, char *desc, size_t ndesc);
  /* the first of nc directions q (1 <= nc <= batch, unless whole): their images as the
   * stored targets (nf n^2 floats, (f, x, y): devpipe_image_to_targets'
   * values) into tg[c], and with in != NULL the input cubes (v_z, T, n_CO,
   * 3 n^3 floats) into in[c], else with hash != NULL each cube's
   * devpipe_row_hash into hash[c], made where the cube is (the cubes stay
   * there); returns how many (>= 1), -1 with a message, or DEVPIPE_BAD_CELL */
  int (*run)(devpipe *p, int nc, const double (*q)[4], float *const *tg, float *const *in,
             uint64_t *hash);
  void (*close)(devpipe *p);
  /* 1: run() takes every remaining direction at once (nc may exceed
   * batch): it cuts them into chunks of at most batch itself, so that it
   * can overlap one chunk's solve with the next one's sampling (cuda) */
  int whole;
  /* 1: run()'s host rows are best page-locked (devpipe_host_alloc) */
  int pinned_host;
} devpipe_impl;

extern const devpipe_impl devpipe_cpu, devpipe_cuda;

/* The implementation for solver backend b that can also sample there, or
 * NULL when cubes of reconstruction `recon` cannot be sampled on it (cpu:
 * always devpipe_cpu; cuda: devpipe_cuda when sampler_device_supports). */
const devpipe_impl *devpipe_impl_for(lte_backend b, int recon);

/* The checksum of an input row (v_z, T, n_CO: 3 n^3 floats), what a
 * shard's /checksums records (pipeline/dataset/shard.h's shard_row_hash):
 * XXH64, seed 0, of its little-endian bytes: ce_xxh64, on the functions of
 * common/xxh64_body.h that the device's hash kernel runs too. */
uint64_t devpipe_row_hash(const float *row, size_t nfloats);

/* Directions per batch: as many as host buffers of `cap_bytes` hold (images
 * as float64, plus the input cubes when with_inputs), at least 1, at most
 * 256. */
int devpipe_batch_size(int n, int nf, int with_inputs, size_t cap_bytes);

/* Host memory for run()'s targets and inputs, to be cut into rows back to
 * back (row c at the start + c row bytes): page-locked where impl wants it
 * and device `ordinal` (devpipe_open's) can be used (*pinned = 1; rotate/sampler.h's
 * sampler_device_host_alloc), so that a chunk's cubes and targets come
 * back in one copy each straight into such rows, at the bus's rate, with no
 * host copy after; ce_malloc_array's otherwise (*pinned = 0). n x size
 * bytes within ce_malloc_array's checks; NULL with its message naming
 * `what`. Free with devpipe_host_free and the same pinned. */
void *devpipe_host_alloc(const devpipe_impl *impl, int ordinal, size_t n, size_t size,
                         const char *what, int *pinned);
void devpipe_host_free(void *p, int pinned);

int devpipe_open(const devpipe_impl *impl, const devpipe_args *a, int ordinal, devpipe **out,
                 char *desc, size_t ndesc);
/* ndir directions q[d] -> targets[d] (nf n^2 floats, (f, x, y): the
 * stored layout) and, with inputs != NULL, inputs[d] (3 n^3 floats), or
 * with inputs == NULL and in_hash != NULL only in_hash[d], the input row's
 * devpipe_row_hash (images-only datasets: on a device the cubes are hashed
 * there and only the 8 bytes cross the bus). 0; -1 with a message;
 * DEVPIPE_BAD_CELL with a message. *done: the directions finished (all of
 * them on 0), in order. */
int devpipe_run(devpipe *p, int ndir, const double (*q)[4], float *const *targets,
                float *const *inputs, uint64_t *in_hash, int *done);
void devpipe_close(devpipe *p);
/* Wall seconds spent since the last call (or the open) in each phase of the
 * runs, one after the other: sampling (the cubes; their checksums queued;
 * with devpipe_cuda's overlap only the sampling the solves waited for: the
 * first chunk's and the rest of each next chunk's after a solve),
 * solving (the images back), waiting for the checksums after the solve
 * (0 where they were done by then), and the host's transposes into the
 * caller's targets (devpipe_image_to_targets): where a run's time goes, for
 * the benches. */
typedef struct {
  double sample, solve, hash_wait, targets;
} devpipe_phases;
void devpipe_phase_seconds(devpipe *p, devpipe_phases *out);

/* The stored targets of an image: (x, y, f) float64 -> (f, x, y) float32,
 * the producer's one transpose. */
void devpipe_image_to_targets(const double *image, int n, int nf, float *targets);

#endif
