/* core_probe.c - a program that uses the stats core library only (moments,
 * select, transforms). tests/stats/test_core_deps.py links it against the
 * core alone, and against the trainer library, and checks that neither
 * brings in MPI or HDF5. */
#include <stdio.h>

#include "stats/moments.h"
#include "stats/select.h"
#include "stats/transforms.h"

int main(void) {
  float x[5] = {3, 1, 4, 1, 5}, lx[5];
  stats_moments m;
  stats_moments_init(&m);
  stats_moments_add_f32(&m, x, 5);
  stats_moments_packed p;
  stats_moments_pack(&m, &p);
  stats_moments_merge_packed(&m, &p);
  stats_summary s;
  stats_moments_summary(&m, &s);
  stats_ln_f32(x, 5, lx);
  float med = stats_select_f32(x, 5, 2);
  printf("count %lld mean %g median %g ln %g\n", (long long)s.count, s.mean, (double)med,
         (double)lx[0]);
  return !(s.count == 10 && s.mean == 2.8 && med == 3.0f);
}
