/* rows.h - whether a caller's array of row pointers is one block: row c at
 * rows[0] + c * stride bytes for every c. A device's results for such rows
 * can be copied back with one transfer straight into them (where the block
 * is also page-locked, common/cuda_check.h's ce_cuda_host_pinned) instead
 * of through a staging buffer and a host copy per row: the device sampler's
 * cubes (rotate/sampler_cuda.cu) and the solver's stored targets
 * (solver/lte_kernel_cuda.cu). Plain C, for nvcc and the host tests alike. */
#ifndef COEMU_ROWS_H
#define COEMU_ROWS_H

#include <stddef.h>

static inline int ce_rows_one_block(const void *const *rows, int n, size_t stride) {
  if (n < 1 || !rows[0]) return 0;
  const char *base = (const char *)rows[0];
  for (int c = 1; c < n; c++)
    if ((const char *)rows[c] != base + (size_t)c * stride) return 0;
  return 1;
}

#endif
