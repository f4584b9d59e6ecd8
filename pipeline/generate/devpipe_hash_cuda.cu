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

/* thread t: row t / 4, lane t % 4; blockDim a multiple of 32, so a row's
 * four threads are consecutive lanes of one warp and every thread of the
 * warp takes part in the shuffles (rows past nrows hash row 0, unused) */
__global__ void row_xxh64_kernel(const float *base, size_t row_floats, int nrows, uint64_t *out) {
  const int t = blockIdx.x * blockDim.x + threadIdx.x, row = t >> 2, lane = t & 3;
  const int live = row < nrows;
  const size_t len = row_floats * sizeof(float);
  const unsigned char *p = (const unsigned char *)(base + (size_t)(live ? row : 0) * row_floats);
  uint64_t acc = xxh64_lane_run(xxh64_lane_init(0, lane), p, len / 32, lane);
  const int first = threadIdx.x & 31 & ~3;
  uint64_t a[4];
  for (int l = 0; l < 4; l++) a[l] = __shfl_sync(0xffffffffu, acc, first + l);
  if (live && lane == 0) out[row] = xxh64_finish(a, p + (len & ~(size_t)31), len, 0);
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
  const int threads = 128, blocks = (4 * k + threads - 1) / threads;
  row_xxh64_kernel<<<blocks, threads, 0, h->stream>>>(dev, row_floats, k, h->d_out);
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
