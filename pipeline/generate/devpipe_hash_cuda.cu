/* devpipe_hash_cuda.cu - input-row checksums on the device (devpipe_hash.h). */
#include <stdlib.h>
#include <string.h>

#include "common/cuda_check.h"

extern "C" {
#include "pipeline/generate/devpipe_hash.h"
}
#include "common/xxh64_body.h"

#define WHO "device row checksums"

struct devpipe_hash {
  int cap;
  cudaStream_t stream;
  uint64_t *d_out, *h_out; /* [cap]: device, pinned host */
};

/* One block per row. A lane's chain (xxh64_round: a 64-bit add, rotate and
 * multiply) cannot be split, so a row costs at least its 98,304 rounds
 * (3 MiB) one after the other, ~20-30 cycles each; what must not be added
 * to every round is the wait for its word from device memory (hundreds of
 * cycles, while a few dozen threads on the whole device have nothing else
 * to do). So the block's 128 threads stage the row through shared memory,
 * 8 KiB tiles double-buffered (xxh64_tiles): while threads 0..3, one per
 * lane, run their chains over tile t, every thread has its 16 words of
 * tile t + 1 in flight, stored once the chains are done, then a barrier.
 * The same fold over the same stripes as one pass over the row
 * (test_xxh64_body's "tiles" form checks the staging's arithmetic on the
 * host). Thread 0 combines the four accumulators (warp shuffles) with the
 * row's tail, read from device memory. */
#define HASH_THREADS 128
#define TILE_WORDS (XXH64_TILE_STRIPES * 32 / 4)
#define WORDS_PER_THREAD (TILE_WORDS / HASH_THREADS)

/* thread tid's words of tile t (0 past the row's nst stripes) */
__device__ static inline void tile_load(const uint32_t *src, size_t nst, size_t t, int tid,
                                        uint32_t r[WORDS_PER_THREAD]) {
  const size_t nw = xxh64_tile_stripes(nst, t) * 8, w0 = t * TILE_WORDS;
#pragma unroll
  for (int i = 0; i < WORDS_PER_THREAD; i++) {
    const size_t w = (size_t)i * HASH_THREADS + tid;
    r[i] = w < nw ? __ldg(src + w0 + w) : 0u;
  }
}

__device__ static inline void tile_store(uint32_t *tile, int tid,
                                         const uint32_t r[WORDS_PER_THREAD]) {
#pragma unroll
  for (int i = 0; i < WORDS_PER_THREAD; i++) tile[i * HASH_THREADS + tid] = r[i];
}

__global__ void __launch_bounds__(HASH_THREADS)
    row_xxh64_kernel(const float *base, size_t row_floats, uint64_t *out) {
  __shared__ uint32_t tile[2][TILE_WORDS];
  const int tid = threadIdx.x;
  const size_t len = row_floats * sizeof(float), nst = len / 32, nt = xxh64_tiles(nst);
  const uint32_t *src = (const uint32_t *)(base + (size_t)blockIdx.x * row_floats);
  uint64_t acc = tid < 4 ? xxh64_lane_init(0, tid) : 0;
  uint32_t r[WORDS_PER_THREAD];
  if (nt > 0) {
    tile_load(src, nst, 0, tid, r);
    tile_store(tile[0], tid, r);
  }
  __syncthreads();
  for (size_t t = 0; t < nt; t++) {
    const int more = t + 1 < nt;
    if (more) tile_load(src, nst, t + 1, tid, r); /* in flight during the chains */
    if (tid < 4)
      acc = xxh64_lane_run(acc, (const unsigned char *)tile[t & 1], xxh64_tile_stripes(nst, t), tid);
    if (more) tile_store(tile[(t + 1) & 1], tid, r);
    __syncthreads(); /* tile t + 1 whole; tile t read (it takes t + 2) */
  }
  if (tid < 32) {
    uint64_t a[4];
    for (int l = 0; l < 4; l++) a[l] = __shfl_sync(0xffffffffu, acc, l);
    if (tid == 0) out[blockIdx.x] = xxh64_finish(a, (const unsigned char *)src + nst * 32, len, 0);
  }
}

extern "C" int devpipe_hash_open(int cap, devpipe_hash **out) {
  *out = NULL;
  devpipe_hash *h = (devpipe_hash *)calloc(1, sizeof *h);
  if (!h) return ce_err(WHO ": out of memory");
  h->cap = cap;
  cudaError_t e = cudaStreamCreateWithFlags(&h->stream, cudaStreamNonBlocking);
  if (e == cudaSuccess) e = cudaMalloc((void **)&h->d_out, (size_t)cap * sizeof *h->d_out);
  if (e == cudaSuccess) e = cudaMallocHost((void **)&h->h_out, (size_t)cap * sizeof *h->h_out);
  if (e != cudaSuccess) {
    devpipe_hash_close(h);
    return ce_cuda_fail(WHO, "stream and buffers", e);
  }
  *out = h;
  return 0;
}

extern "C" int devpipe_hash_start(devpipe_hash *h, const float *dev, size_t row_floats, int k) {
  if (k < 1 || k > h->cap) CE_BUG(WHO ": %d rows, room for %d", k, h->cap);
  row_xxh64_kernel<<<k, HASH_THREADS, 0, h->stream>>>(dev, row_floats, h->d_out);
  CE_CUDA_TRY(WHO, cudaGetLastError(), "the kernel's launch");
  CE_CUDA_TRY(WHO, cudaMemcpyAsync(h->h_out, h->d_out, (size_t)k * sizeof *h->d_out,
                                   cudaMemcpyDeviceToHost, h->stream),
              "cudaMemcpyAsync (checksums to the host)");
  return 0;
}

extern "C" int devpipe_hash_finish(devpipe_hash *h, uint64_t *out, int k) {
  CE_CUDA_TRY(WHO, cudaStreamSynchronize(h->stream), "the kernel (cudaStreamSynchronize)");
  memcpy(out, h->h_out, (size_t)k * sizeof *out);
  return 0;
}

extern "C" void devpipe_hash_close(devpipe_hash *h) {
  if (!h) return;
  if (h->stream) cudaStreamSynchronize(h->stream);
  cudaFree(h->d_out);
  cudaFreeHost(h->h_out);
  if (h->stream) cudaStreamDestroy(h->stream);
  free(h);
}
