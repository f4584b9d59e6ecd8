/* sampler_cuda.cu - the sampler on a CUDA device (sampler_cuda.h): the
 * per-thread work is rotate/sampler_body.h and sampler_body_linear.h (the
 * same code the tests run on the host against sample_cube; constant,
 * linear and limited); this file holds the device, the model's arrays in
 * device memory (cells, tree, the linear reconstruction's corner records
 * and, where opened for it, the limited reconstruction's records, uploaded
 * once per model), the launches over a
 * chunk of cubes at a time (one geometry per cube, in device memory) and
 * the copies back through a pinned buffer. Built with --fmad=false, as the
 * CPU sampler's ISO C has no contraction. */
#include <cuda_runtime.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cuda_check.h"
#include "common/rows.h"
#include "rotate/sampler_body_linear.h"
#include "rotate/sampler_cuda.h"

#define BLOCK 256

struct sampler_cuda {
  int dev;
  sampler_flat F;          /* device pointers */
  void *d_model;           /* one allocation: cells, root, nodes, leaf_geo, nodal, limited */
  sampler_geo *d_geo;      /* [cap] */
  void *d_idx;             /* [cap * sb_scratch_bytes]: cell indices or points */
  float *d_out;            /* [cap * 3 * n^3] */
  float *h_out;            /* pinned, same size */
  size_t cap_idx, cap_out; /* bytes */
  int cap_geo;
  cudaStream_t stream;
  int owner;               /* 1: d_model is this handle's (0: a sibling's, shared) */
};

/* a failed CUDA call: the message names this backend and the step */
#define WHO "sampler device 'cuda'"
#define CU(call, what) CE_CUDA_TRY(WHO, call, what)

static unsigned grid_for(long long n) {
  long long g = (n + BLOCK - 1) / BLOCK;
  return (unsigned)(g < 1 ? 1 : g > (1 << 20) ? (1 << 20) : g);
}

/* sub-line threads of nc cubes: cube t / per, its own geometry and
 * scratch (idx_per bytes: cell indices or, linear, the points' values).
 * With dynamic shared memory (UZ_TABLE_MAX), each block first fills the
 * table of the sub-samples' positions (sb_uz_table), which every cube of
 * the launch shares (reserve: one n, k and edge). At most 128 registers
 * (launch bounds: two blocks of 256 threads per SM; ptxas spills nothing). */
#define UZ_TABLE_MAX 4096 /* positions (32 KiB): past that, the expression */
#ifndef SB_LINES_MIN_BLOCKS /* -D for a device sweep (scripts/gpu-check.sh, GPU_NVCC_DEFS) */
#define SB_LINES_MIN_BLOCKS 2
#endif
__global__ void __launch_bounds__(BLOCK, SB_LINES_MIN_BLOCKS)
    sb_lines_kernel(sampler_flat F, const sampler_geo *G, int nc, long long per, long long idx_per,
                    unsigned char *idx) {
  extern __shared__ double uz_s[];
  const int nk = G[0].n * G[0].k, tab = nk <= UZ_TABLE_MAX;
  if (tab) {
    for (int j = threadIdx.x; j < nk; j += blockDim.x) uz_s[j] = sb_uz(&G[0], j);
    __syncthreads();
  }
  const long long n = per * nc;
  for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < n;
       t += (long long)gridDim.x * blockDim.x) {
    long long c = t / per;
    sb_any_line_thread(&F, &G[c], tab ? uz_s : NULL, t % per, idx + c * idx_per);
  }
}

/* voxel threads: LIMITED 0 for constant and linear, 1 for limited (a
 * launch's cubes share the reconstruction: reserve), two kernels so that
 * limited's registers do not lower the other two's occupancy */
template <int LIMITED>
__global__ void sb_voxels_kernel(sampler_flat F, const sampler_geo *G, int nc, long long per,
                                 long long idx_per, const unsigned char *idx, float *out) {
  const long long n = per * nc;
  for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < n;
       t += (long long)gridDim.x * blockDim.x) {
    long long c = t / per;
    float *o = out + c * 3 * per; /* v_los, T, n_co of cube c */
    if (LIMITED)
      sb_limited_voxel_thread(&F, &G[c], (const int64_t *)(idx + c * idx_per), t % per, o,
                              o + per, o + 2 * per);
    else
      sb_cl_voxel_thread(&F, &G[c], idx + c * idx_per, t % per, o, o + per, o + 2 * per);
  }
}

static void release(sampler_cuda *d) {
  cudaSetDevice(d->dev);
  if (d->owner) cudaFree(d->d_model);
  cudaFree(d->d_geo);
  cudaFree(d->d_idx);
  cudaFree(d->d_out);
  cudaFreeHost(d->h_out);
  if (d->stream) cudaStreamDestroy(d->stream);
  free(d);
  cudaGetLastError();
}

static int open_dev(const sampler_flat *F, int64_t nleaves, int64_t nnodes, int64_t nroot,
                    sampler_cuda *d, char *desc, size_t ndesc) {
  CU(cudaSetDevice(d->dev), "cudaSetDevice");
  CU(cudaStreamCreateWithFlags(&d->stream, cudaStreamNonBlocking), "cudaStreamCreate");
  const size_t cells = (size_t)nleaves * F->ncell * 5 * sizeof(float);
  const size_t root = (size_t)nroot * 4, nodes = (size_t)nnodes * 4, geo = (size_t)nleaves * 16;
  const size_t nodal = (size_t)nleaves * F->nnodal * 8 * sizeof(float); /* linear's corners */
  const size_t limited =                                                /* limited's records */
      F->limited ? (size_t)nleaves * F->ncell * SB_LIMITED_STRIDE * sizeof(float) : 0;
  const size_t o1 = (cells + 255) / 256 * 256, o2 = o1 + (root + 255) / 256 * 256,
               o3 = o2 + (nodes + 255) / 256 * 256, o4 = o3 + (geo + 255) / 256 * 256,
               o5 = o4 + (nodal + 255) / 256 * 256, total = o5 + limited + 256;
  size_t fre = 0, tot = 0;
  CU(cudaMemGetInfo(&fre, &tot), "cudaMemGetInfo");
  if (total > fre)
    return ce_err(WHO ": the model needs %.3g GiB on the device (cells %.3g, corner records "
                  "%.3g, limited records %.3g), %.3g GiB of %.3g GiB are free",
                  total / 1073741824.0, cells / 1073741824.0, nodal / 1073741824.0,
                  limited / 1073741824.0, fre / 1073741824.0, tot / 1073741824.0);
  CU(cudaMalloc(&d->d_model, total), "cudaMalloc (the model)");
  d->owner = 1;
  unsigned char *b = (unsigned char *)d->d_model;
  CU(cudaMemcpy(b, F->cells, cells, cudaMemcpyHostToDevice), "cudaMemcpy (the model's cells)");
  CU(cudaMemcpy(b + o1, F->root, root, cudaMemcpyHostToDevice), "cudaMemcpy (the model's tree)");
  if (nodes)
    CU(cudaMemcpy(b + o2, F->nodes, nodes, cudaMemcpyHostToDevice), "cudaMemcpy (the model's tree)");
  CU(cudaMemcpy(b + o3, F->leaf_geo, geo, cudaMemcpyHostToDevice), "cudaMemcpy (the model's leaves)");
  if (nodal)
    CU(cudaMemcpy(b + o4, F->nodal, nodal, cudaMemcpyHostToDevice),
       "cudaMemcpy (the model's corner records)");
  if (limited)
    CU(cudaMemcpy(b + o5, F->limited, limited, cudaMemcpyHostToDevice),
       "cudaMemcpy (the model's limited records)");
  /* the copies above go through the legacy stream; the sampler's stream does
   * not wait for them by itself */
  CU(cudaDeviceSynchronize(), "cudaDeviceSynchronize (the model)");
  d->F = *F;
  d->F.cells = (const float *)b;
  d->F.root = (const int32_t *)(b + o1);
  d->F.nodes = (const int32_t *)(b + o2);
  d->F.leaf_geo = (const int32_t *)(b + o3);
  d->F.nodal = nodal ? (const float *)(b + o4) : NULL;
  d->F.limited = limited ? (const float *)(b + o5) : NULL;
  if (desc && ndesc) {
    cudaDeviceProp p;
    CU(cudaGetDeviceProperties(&p, d->dev), "cudaGetDeviceProperties");
    snprintf(desc, ndesc, "cuda device %d: %.200s, model %.3g GiB", d->dev, p.name,
             total / 1073741824.0);
  }
  return 0;
}

extern "C" int sampler_cuda_open(const sampler_flat *F, int64_t nleaves, int64_t nnodes,
                                 int64_t nroot, int ordinal, sampler_cuda **out, char *desc,
                                 size_t ndesc) {
  *out = NULL;
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess)
    return ce_err("sampler device 'cuda' was asked for, but no CUDA device can be used here: "
                  "cudaGetDeviceCount: %s (%s)", cudaGetErrorString(e), cudaGetErrorName(e));
  if (count < 1)
    return ce_err("sampler device 'cuda' was asked for, but this host has no CUDA device");
  sampler_cuda *d = (sampler_cuda *)calloc(1, sizeof *d);
  if (!d) CE_FAIL("sampler device 'cuda': out of host memory");
  d->dev = (ordinal < 0 ? 0 : ordinal) % count;
  if (open_dev(F, nleaves, nnodes, nroot, d, desc, ndesc) < 0) {
    release(d);
    return -1;
  }
  *out = d;
  return 0;
}

/* 1 when nc cubes' host arrays are one page-locked block in the device
 * buffer's own layout (cube c's v_los, T, n_co back to back from v[0] +
 * 3 c n^3: sampler_device_host_alloc's rows): then one copy puts them
 * there at the bus's rate, with no staging buffer and no host copy after */
static int cubes_direct(int nc, size_t vox, float *const *v, float *const *T, float *const *n) {
  if (!ce_rows_one_block((const void *const *)v, nc, 3 * vox * sizeof(float))) return 0;
  for (int c = 0; c < nc; c++)
    if (T[c] != v[c] + vox || n[c] != v[c] + 2 * vox) return 0;
  return ce_cuda_host_pinned(v[0]) && ce_cuda_host_pinned(v[nc - 1] + 3 * vox - 1);
}

/* v == NULL: the cubes stay in d_out (sampler_cuda_sample_dev) */
static int sample_chunk(sampler_cuda *d, int nc, const sampler_geo *G, float *const *v,
                        float *const *T, float *const *n) {
  const long long N = G[0].n, k = G[0].k;
  const long long lines = N * N * k * k, idx_per = sb_scratch_bytes(&G[0]), vox = N * N * N;
  CU(cudaMemcpyAsync(d->d_geo, G, nc * sizeof *G, cudaMemcpyHostToDevice, d->stream),
     "cudaMemcpyAsync (geometries)");
  const size_t uz_bytes = N * k <= UZ_TABLE_MAX ? (size_t)(N * k) * sizeof(double) : 0;
  sb_lines_kernel<<<grid_for(lines * nc), BLOCK, uz_bytes, d->stream>>>(
      d->F, d->d_geo, nc, lines, idx_per, (unsigned char *)d->d_idx);
  CU(cudaGetLastError(), "launching the sub-line kernel");
  if (G[0].recon == SB_RECON_LIMITED)
    sb_voxels_kernel<1><<<grid_for(vox * nc), BLOCK, 0, d->stream>>>(
        d->F, d->d_geo, nc, vox, idx_per, (const unsigned char *)d->d_idx, d->d_out);
  else
    sb_voxels_kernel<0><<<grid_for(vox * nc), BLOCK, 0, d->stream>>>(
        d->F, d->d_geo, nc, vox, idx_per, (const unsigned char *)d->d_idx, d->d_out);
  CU(cudaGetLastError(), "launching the voxel kernel");
  const int direct = v && cubes_direct(nc, (size_t)vox, v, T, n);
  if (v)
    CU(cudaMemcpyAsync(direct ? v[0] : d->h_out, d->d_out, (size_t)nc * 3 * vox * sizeof(float),
                       cudaMemcpyDeviceToHost, d->stream),
       "cudaMemcpyAsync (cubes to the host)");
  CU(cudaStreamSynchronize(d->stream), "the sampler's kernels (cudaStreamSynchronize)");
  if (!v || direct) return 0;
  for (int c = 0; c < nc; c++) {
    const float *o = d->h_out + (size_t)c * 3 * vox;
    memcpy(v[c], o, vox * sizeof(float));
    memcpy(T[c], o + vox, vox * sizeof(float));
    memcpy(n[c], o + 2 * vox, vox * sizeof(float));
  }
  return 0;
}

/* Buffers for a chunk of G's cubes; the chunk size into *out. */
static int reserve(sampler_cuda *d, int ncube, const sampler_geo *G, size_t *out) {
  for (int c = 1; c < ncube; c++)
    if (G[c].n != G[0].n || G[c].k != G[0].k || G[c].recon != G[0].recon ||
        G[c].edge != G[0].edge)
      CE_FAIL("sampler device 'cuda': cubes of one batch must share n, k, the edge and the "
              "reconstruction");
  if (G[0].recon == SB_RECON_LINEAR && !d->F.nodal)
    CE_FAIL("sampler device 'cuda': the linear reconstruction needs the model's corner records, "
            "which were not uploaded");
  if (G[0].recon == SB_RECON_LIMITED && !d->F.limited)
    CE_FAIL("sampler device 'cuda': the limited reconstruction needs the model's limited "
            "records, which were not uploaded (open the device sampler for limited)");
  CU(cudaSetDevice(d->dev), "cudaSetDevice");
  const size_t N = G[0].n, k = G[0].k;
  const size_t idx_bytes = (size_t)sb_scratch_bytes(&G[0]);
  const size_t out_bytes = 3 * N * N * N * sizeof(float);
  size_t fre = 0, tot = 0;
  CU(cudaMemGetInfo(&fre, &tot), "cudaMemGetInfo");
  const size_t have = fre + d->cap_idx + d->cap_out;
  const size_t per = idx_bytes + out_bytes + sizeof(sampler_geo);
  if (per > have * 0.8)
    CE_FAIL("sampler device 'cuda': a %zu^3 cube with k = %zu needs %.3g GiB on the device, "
            "%.3g GiB of %.3g GiB are free", N, k, per / 1073741824.0, have / 1073741824.0,
            tot / 1073741824.0);
  size_t chunk = (size_t)ncube;
  const size_t budget = (size_t)1 << 30; /* ~1 GiB of scratch per launch */
  if (chunk * per > budget) chunk = budget / per > 0 ? budget / per : 1;
  if (chunk * per > have * 0.8) chunk = (size_t)(have * 0.8 / per);
  if (chunk < 1) chunk = 1;
  if (d->cap_idx < chunk * idx_bytes) {
    cudaFree(d->d_idx);
    d->d_idx = NULL, d->cap_idx = 0;
    CU(cudaMalloc(&d->d_idx, chunk * idx_bytes), "cudaMalloc (sub-samples)");
    d->cap_idx = chunk * idx_bytes;
  }
  if (d->cap_out < chunk * out_bytes) {
    cudaFree(d->d_out);
    cudaFreeHost(d->h_out);
    d->d_out = NULL, d->h_out = NULL, d->cap_out = 0;
    CU(cudaMalloc(&d->d_out, chunk * out_bytes), "cudaMalloc (cubes)");
    CU(cudaHostAlloc(&d->h_out, chunk * out_bytes, cudaHostAllocDefault), "cudaHostAlloc (cubes)");
    d->cap_out = chunk * out_bytes;
  }
  if ((size_t)d->cap_geo < chunk) {
    cudaFree(d->d_geo);
    d->d_geo = NULL, d->cap_geo = 0;
    CU(cudaMalloc(&d->d_geo, chunk * sizeof(sampler_geo)), "cudaMalloc (geometries)");
    d->cap_geo = (int)chunk;
  }
  *out = chunk;
  return 0;
}

extern "C" int sampler_cuda_sample(sampler_cuda *d, int ncube, const sampler_geo *G,
                                   float *const *v_los, float *const *T, float *const *n_co) {
  if (ncube < 1) return 0;
  size_t chunk;
  CE_TRY(reserve(d, ncube, G, &chunk));
  for (size_t c0 = 0; c0 < (size_t)ncube; c0 += chunk) {
    int nc = (int)((size_t)ncube - c0 < chunk ? (size_t)ncube - c0 : chunk);
    CE_TRY(sample_chunk(d, nc, G + c0, v_los + c0, T + c0, n_co + c0));
  }
  return 0;
}

extern "C" int sampler_cuda_open_sibling(sampler_cuda *d, sampler_cuda **out) {
  *out = NULL;
  sampler_cuda *s = (sampler_cuda *)calloc(1, sizeof *s);
  if (!s) CE_FAIL("sampler device 'cuda': out of host memory");
  s->dev = d->dev;
  s->F = d->F; /* the model's device arrays, not copied */
  s->d_model = d->d_model;
  cudaError_t e = cudaSetDevice(s->dev);
  if (e == cudaSuccess) e = cudaStreamCreateWithFlags(&s->stream, cudaStreamNonBlocking);
  if (e != cudaSuccess) {
    release(s);
    return ce_cuda_fail(WHO, "cudaStreamCreate (a sibling's stream)", e);
  }
  *out = s;
  return 0;
}

extern "C" void *sampler_cuda_host_alloc(int ordinal, size_t bytes) {
  /* on the device the caller's handles use (sampler_cuda_open's choice), so
   * that a rank of a multi-GPU node makes no context on device 0; portable:
   * page-locked for every context */
  void *p = NULL;
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count < 1 ||
      cudaSetDevice((ordinal < 0 ? 0 : ordinal) % count) != cudaSuccess ||
      cudaHostAlloc(&p, bytes ? bytes : 1, cudaHostAllocPortable) != cudaSuccess) {
    (void)cudaGetLastError(); /* the caller falls back to pageable memory */
    return NULL;
  }
  return p;
}

extern "C" void sampler_cuda_host_free(void *p) {
  if (p) cudaFreeHost(p);
}

extern "C" void sampler_cuda_close(sampler_cuda *d) {
  if (d) release(d);
}

extern "C" int sampler_cuda_sample_dev(sampler_cuda *d, int ncube, const sampler_geo *G,
                                       const float **dev, float *const *v_los, float *const *T,
                                       float *const *n_co) {
  *dev = NULL;
  if (ncube < 1) return 0;
  size_t chunk;
  CE_TRY(reserve(d, ncube, G, &chunk));
  int nc = (int)((size_t)ncube < chunk ? (size_t)ncube : chunk);
  CE_TRY(sample_chunk(d, nc, G, v_los, T, n_co));
  *dev = d->d_out;
  return nc;
}
