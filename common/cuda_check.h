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

#define CE_CUDA_TRY(who, call, what)                           \
  do {                                                         \
    cudaError_t e_ = (call);                                   \
    if (e_ != cudaSuccess) return ce_cuda_fail((who), (what), e_); \
  } while (0)

#endif
