/* cuda_check.h - what every .cu file of coemu includes first: common/error.h
 * with C linkage (the .cu files are C++; error.h declares ce_bug with C11's
 * _Noreturn, which C++ spells [[noreturn]]), and a checked CUDA runtime
 * call: CE_CUDA_TRY(who, call, what) returns -1 from the calling function
 * with the message "WHO: WHAT: CUDA's error string (its name)", e.g.
 *   "solver backend 'cuda': cudaMemcpyAsync (cells): out of memory (cudaErrorMemoryAllocation)"
 * Only for .cu files (CUDA C++).
 */
#ifndef COEMU_CUDA_CHECK_H
#define COEMU_CUDA_CHECK_H

#include <cuda_runtime.h>

#ifndef _Noreturn
#define _Noreturn [[noreturn]]
#endif
extern "C" {
#include "common/error.h"
}

static inline int ce_cuda_fail(const char *who, const char *what, cudaError_t e) {
  return ce_err("%s: %s: %s (%s)", who, what, cudaGetErrorString(e), cudaGetErrorName(e));
}

/* 1 when host address p lies in page-locked memory CUDA knows
 * (cudaHostAlloc, cudaHostRegister): a copy to or from it runs at the
 * bus's rate without the driver's staging, so a caller's one-block buffer
 * there can take a device's results directly (common/rows.h). 0 for
 * pageable memory; the query's error, where a runtime returns one for
 * such memory, is cleared so that no later cudaGetLastError sees it. */
static inline int ce_cuda_host_pinned(const void *p) {
  cudaPointerAttributes a;
  if (cudaPointerGetAttributes(&a, p) != cudaSuccess) {
    (void)cudaGetLastError();
    return 0;
  }
  return a.type == cudaMemoryTypeHost;
}

#define CE_CUDA_TRY(who, call, what)                           \
  do {                                                         \
    cudaError_t e_ = (call);                                   \
    if (e_ != cudaSuccess) return ce_cuda_fail((who), (what), e_); \
  } while (0)

#endif
