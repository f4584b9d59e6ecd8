/* sampler_cuda.h - the sampler on a CUDA device (sampler_cuda.cu, built
 * with COEMU_HAVE_CUDA): the flat model (sampler_body.h) uploaded once, then
 * batches of cubes, each one direction's geometry, sampled by the bodies of
 * sampler_body.h and copied back as float32 cubes. Plain C types only, so
 * that nvcc and a C compiler read it alike; sampler.h's sampler_device_*
 * wrap it for callers that hold a ce_model.
 *
 * Errors: -1 with a message (common/error.h) naming the CUDA call and its
 * reason; no device: "sampler device 'cuda' was asked for, but no CUDA
 * device can be used here: cudaGetDeviceCount: ...". */
#ifndef COEMU_SAMPLER_CUDA_H
#define COEMU_SAMPLER_CUDA_H

#include <stddef.h>
#include <stdint.h>

#include "rotate/sampler_body.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct sampler_cuda sampler_cuda;

/* Upload F's arrays (nleaves leaves of F->ncell cells, nnodes node codes,
 * nroot root codes) to device `ordinal` modulo the devices present. */
int sampler_cuda_open(const sampler_flat *F, int64_t nleaves, int64_t nnodes, int64_t nroot,
                      int ordinal, sampler_cuda **out, char *desc, size_t ndesc);
/* ncube cubes, G[c] their geometries (same n and k), into v_los[c], T[c],
 * n_co[c] ([(x*n + y)*n + z], host memory). */
int sampler_cuda_sample(sampler_cuda *d, int ncube, const sampler_geo *G, float *const *v_los,
                        float *const *T, float *const *n_co);
/* The first cubes of the same, left in device memory for the device's solver:
 * returns how many (1..ncube: as many as one chunk holds), *dev their
 * cells (cube c: v_los, T, n_co of n^3 floats each from dev + 3 c n^3), valid
 * until the next call; the host copies too where v_los is not NULL. Host
 * arrays that are one page-locked block in the device's layout (cube c's
 * v_los, T, n_co back to back from v_los[0] + 3 c n^3, as
 * sampler_cuda_host_alloc's rows) take the cubes in one copy, straight
 * from the device; any others through a staging buffer. */
int sampler_cuda_sample_dev(sampler_cuda *d, int ncube, const sampler_geo *G, const float **dev,
                            float *const *v_los, float *const *T, float *const *n_co);
/* A second handle on d's model (the same device arrays, not uploaded
 * again) with buffers and a stream of its own: its cubes can be sampled
 * from another host thread while d's are in use (devpipe's overlap). Close
 * it before d. */
int sampler_cuda_open_sibling(sampler_cuda *d, sampler_cuda **out);
void sampler_cuda_close(sampler_cuda *d);
/* bytes of page-locked host memory (cudaHostAlloc, portable), made with
 * device `ordinal` (modulo the devices present, as sampler_cuda_open)
 * current; NULL when it cannot be had (no device, no memory: the error is
 * cleared); free with sampler_cuda_host_free. sampler.h's
 * sampler_device_host_alloc wraps it. */
void *sampler_cuda_host_alloc(int ordinal, size_t bytes);
void sampler_cuda_host_free(void *p);

#ifdef __cplusplus
}
#endif

#endif
