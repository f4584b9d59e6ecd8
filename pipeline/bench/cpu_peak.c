/* cpu_peak.c - the host's float32 multiply-add rate, measured (benches.h,
 * bench_cpu_peak): the "% of peak" of `coemu bench train`.
 *
 * A peak from cores x clock x FLOP per cycle needs the FLOP per cycle,
 * which no CPU reports: Zen 4 has 32 float32 FLOP a cycle with AVX-512 (two
 * 256-bit FMA pipes), a Xeon with two AVX-512 FMA ports 64, one with a
 * single port 32; and "cpu MHz" is a snapshot, not the clock under load.
 * So every thread times chains of independent FMAs on the widest vectors
 * the CPU runs (AVX-512, else AVX2 + FMA, else scalar fmaf), all threads at
 * once as a training step loads them, and the rates are summed. Ten chains
 * cover the FMA latency (4 cycles) on two ports with room; the operands
 * stay near 1, so no subnormal slows them. Chosen at run time, not by the
 * build's flags: OpenBLAS picks its kernels the same way, so a portable
 * build is held to the same peak as a native one. */
#include <math.h>
#include <omp.h>
#include <time.h>

#include "pipeline/bench/benches.h"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#define PEAK_X86 1
#endif

#define CHAINS 10

static double now_s(void) {
  struct timespec t;
  clock_gettime(CLOCK_MONOTONIC, &t);
  return t.tv_sec + 1e-9 * t.tv_nsec;
}

/* n rounds of CHAINS FMAs on `lanes`-wide vectors; the sum, so that the
 * work is not dropped. Each chain starts from its own value (x + j / 1024,
 * x known only at run time): chains of equal starts would be one chain to
 * the compiler, which then computes it once (seen: GCC 12 -O3). */
#ifdef PEAK_X86
#define START(set1, j) set1(x + (float)(j) / 1024)
__attribute__((target("avx512f"))) static float chains512(long n, float x) {
  const __m512 b = _mm512_set1_ps(0.9999999f), c = _mm512_set1_ps(1e-7f);
  __m512 a0 = START(_mm512_set1_ps, 0), a1 = START(_mm512_set1_ps, 1),
         a2 = START(_mm512_set1_ps, 2), a3 = START(_mm512_set1_ps, 3),
         a4 = START(_mm512_set1_ps, 4), a5 = START(_mm512_set1_ps, 5),
         a6 = START(_mm512_set1_ps, 6), a7 = START(_mm512_set1_ps, 7),
         a8 = START(_mm512_set1_ps, 8), a9 = START(_mm512_set1_ps, 9);
  for (long i = 0; i < n; i++) {
    a0 = _mm512_fmadd_ps(a0, b, c), a1 = _mm512_fmadd_ps(a1, b, c);
    a2 = _mm512_fmadd_ps(a2, b, c), a3 = _mm512_fmadd_ps(a3, b, c);
    a4 = _mm512_fmadd_ps(a4, b, c), a5 = _mm512_fmadd_ps(a5, b, c);
    a6 = _mm512_fmadd_ps(a6, b, c), a7 = _mm512_fmadd_ps(a7, b, c);
    a8 = _mm512_fmadd_ps(a8, b, c), a9 = _mm512_fmadd_ps(a9, b, c);
  }
  __m512 s = _mm512_add_ps(_mm512_add_ps(_mm512_add_ps(a0, a1), _mm512_add_ps(a2, a3)),
                           _mm512_add_ps(_mm512_add_ps(a4, a5), _mm512_add_ps(a6, a7)));
  return _mm512_reduce_add_ps(_mm512_add_ps(s, _mm512_add_ps(a8, a9)));
}

__attribute__((target("avx2,fma"))) static float chains256(long n, float x) {
  const __m256 b = _mm256_set1_ps(0.9999999f), c = _mm256_set1_ps(1e-7f);
  __m256 a0 = START(_mm256_set1_ps, 0), a1 = START(_mm256_set1_ps, 1),
         a2 = START(_mm256_set1_ps, 2), a3 = START(_mm256_set1_ps, 3),
         a4 = START(_mm256_set1_ps, 4), a5 = START(_mm256_set1_ps, 5),
         a6 = START(_mm256_set1_ps, 6), a7 = START(_mm256_set1_ps, 7),
         a8 = START(_mm256_set1_ps, 8), a9 = START(_mm256_set1_ps, 9);
  for (long i = 0; i < n; i++) {
    a0 = _mm256_fmadd_ps(a0, b, c), a1 = _mm256_fmadd_ps(a1, b, c);
    a2 = _mm256_fmadd_ps(a2, b, c), a3 = _mm256_fmadd_ps(a3, b, c);
    a4 = _mm256_fmadd_ps(a4, b, c), a5 = _mm256_fmadd_ps(a5, b, c);
    a6 = _mm256_fmadd_ps(a6, b, c), a7 = _mm256_fmadd_ps(a7, b, c);
    a8 = _mm256_fmadd_ps(a8, b, c), a9 = _mm256_fmadd_ps(a9, b, c);
  }
  __m256 s = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(a0, a1), _mm256_add_ps(a2, a3)),
                           _mm256_add_ps(_mm256_add_ps(a4, a5), _mm256_add_ps(a6, a7)));
  s = _mm256_add_ps(s, _mm256_add_ps(a8, a9));
  float v[8];
  _mm256_storeu_ps(v, s);
  return v[0] + v[1] + v[2] + v[3] + v[4] + v[5] + v[6] + v[7];
}
#endif

static float chains1(long n, float x) {
  float a[CHAINS];
  for (int j = 0; j < CHAINS; j++) a[j] = x + (float)j / 1024;
  for (long i = 0; i < n; i++)
    for (int j = 0; j < CHAINS; j++) a[j] = fmaf(a[j], 0.9999999f, 1e-7f);
  float s = 0;
  for (int j = 0; j < CHAINS; j++) s += a[j];
  return s;
}

/* the widest vectors this CPU runs: their float32 lanes and the loop */
static int peak_lanes(float (**fn)(long, float)) {
#ifdef PEAK_X86
  __builtin_cpu_init();
  if (__builtin_cpu_supports("avx512f")) return *fn = chains512, 16;
  if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return *fn = chains256, 8;
#endif
  *fn = chains1;
  return 1;
}

double bench_cpu_peak(int threads, int *lanes_out) {
  float (*fn)(long, float);
  const int lanes = peak_lanes(&fn);
  volatile float one = 1.0f; /* the chains' start, unknown to the compiler */
  if (lanes_out) *lanes_out = lanes;
  double total = 0;
  volatile float sink = 0;
#pragma omp parallel num_threads(threads) reduction(+ : total)
  {
    /* rounds for ~20 ms, from a first short run; then the best of 3 runs
     * of that length (the least disturbed) */
    long n = 1 << 16;
    double t0 = now_s();
    float s = fn(n, one);
    double dt = now_s() - t0;
    if (dt > 0) n = (long)(n * 0.02 / dt) + 1;
    double best = 0;
    for (int r = 0; r < 3; r++) {
      t0 = now_s();
      s += fn(n, one);
      dt = now_s() - t0;
      const double rate = dt > 0 ? 2.0 * CHAINS * lanes * (double)n / dt : 0;
      if (rate > best) best = rate;
    }
    total += best;
#pragma omp critical
    sink += s;
  }
  (void)sink;
  return total;
}
