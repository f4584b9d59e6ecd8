/* coemu_emu_kernel.h - what the CUDA emulator (cuda_runtime.h beside this)
 * gives a .cu file's kernels: the qualifiers, dim3, threadIdx and its
 * siblings, __syncthreads, __shfl_sync, __ldg, and the launch that
 * tests/cuda_emu/bin/nvcc writes in place of kernel<<<grid, block, shared,
 * stream>>>(args): coemu_emu_launch("kernel", {grid, block, shared, stream},
 * kernel, args). The arguments are converted to the kernel's parameter
 * types and copied when the launch is made, as CUDA does; the kernel runs
 * when its stream does (cuda_runtime.h: lazy or eager).
 *
 * A block's threads run on fibers of the host thread that runs the
 * launch, one after the other, each until it finishes or meets a barrier;
 * __syncthreads releases them when every thread that has not finished is
 * there (sm_70 and later count exited threads out), __shfl_sync when every
 * one of its warp is. A barrier no thread can pass (some at
 * __syncthreads, the others at a warp's shuffle) ends the process with a
 * message naming the kernel. Blocks run one after the other; after a
 * launch's first block met no barrier, the others run as plain calls (a
 * barrier met in one then is also fatal, with the kernel's name). */
#ifndef COEMU_EMU_KERNEL_H
#define COEMU_EMU_KERNEL_H

#include <stdint.h>
#include <string.h>

#include <tuple>
#include <utility>

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __noinline__
#define __restrict__ __restrict
#define __launch_bounds__(...)
/* a block's shared variables: the blocks of a launch run one after the
 * other on one host thread, whose fibers are the block's threads */
#define __shared__ static thread_local

struct uint3 {
  unsigned int x, y, z;
};
struct dim3 {
  unsigned int x, y, z;
  dim3(unsigned int a = 1, unsigned int b = 1, unsigned int c = 1) : x(a), y(b), z(c) {}
};

namespace coemu_emu {

/* the thread a fiber (or a plain call) is running */
struct thread_ctx {
  uint3 tid, bid;
  dim3 bdim, gdim;
};
extern thread_local thread_ctx cur;

struct launch_cfg {
  dim3 grid, block;
  size_t shared;
  cudaStream_t stream;
  launch_cfg(dim3 g, dim3 b, size_t sh = 0, cudaStream_t s = 0)
      : grid(g), block(b), shared(sh), stream(s) {}
};

/* one launch's threads: body(i) runs thread i's kernel with cur set */
typedef void (*kernel_thunk)(void *args);
cudaError_t enqueue_launch(const char *name, const launch_cfg &c, kernel_thunk run, void *args,
                           void (*drop)(void *args));
void syncthreads(void);
uint64_t shfl(uint64_t v, int lane);
void *dynamic_shared(void);

template <class... P> struct bound {
  void (*k)(P...);
  std::tuple<P...> a;
};
template <class... P> static void run_bound(void *p) {
  bound<P...> *b = (bound<P...> *)p;
  std::apply(b->k, b->a);
}
template <class... P> static void drop_bound(void *p) { delete (bound<P...> *)p; }

} /* namespace coemu_emu */

/* the launch: the arguments taken now, as the kernel's parameter types */
template <class... P, class... A>
static inline void coemu_emu_launch(const char *name, const coemu_emu::launch_cfg &c,
                                    void (*k)(P...), A &&...a) {
  auto *b = new coemu_emu::bound<P...>{k, std::tuple<P...>(std::forward<A>(a)...)};
  coemu_emu::enqueue_launch(name, c, coemu_emu::run_bound<P...>, b, coemu_emu::drop_bound<P...>);
}

#define threadIdx (coemu_emu::cur.tid)
#define blockIdx (coemu_emu::cur.bid)
#define blockDim (coemu_emu::cur.bdim)
#define gridDim (coemu_emu::cur.gdim)
static constexpr int warpSize = 32;

static inline void __syncthreads(void) { coemu_emu::syncthreads(); }
template <class T> static inline T __shfl_sync(unsigned mask, T v, int lane) {
  (void)mask; /* every lane of the warp takes part, as all of coemu's calls */
  static_assert(sizeof(T) <= 8, "__shfl_sync of at most 8 bytes");
  uint64_t w = 0;
  memcpy(&w, &v, sizeof v);
  w = coemu_emu::shfl(w, lane);
  T r;
  memcpy(&r, &w, sizeof r);
  return r;
}
template <class T> static inline T __ldg(const T *p) { return *p; }

#endif
