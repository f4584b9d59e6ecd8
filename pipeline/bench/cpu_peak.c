/* cpu_peak.c - the host's float32 multiply-add rate, measured (benches.h,
 * bench_cpu_peak): the "% of peak" of `coemu bench train`.
 *
 * A peak from cores x clock x FLOP per cycle needs the FLOP per cycle,
 * which no CPU reports: Zen 4 has 32 float32 FLOP a cycle with AVX-512 (two
 * 256-bit FMA pipes), a Xeon with two AVX-512 FMA ports 64, one with a
 * single port 32; and "cpu MHz" is a snapshot, not the clock under load.
 * So every thread times chains of independent FMAs on the widest vectors
 * the CPU runs (AVX-512, else AVX2 + FMA; NEON on aarch64; else plain
 * float multiply-adds), all threads at once as a training step loads them,
 * and the rates are summed. On this project's Xeon one thread reaches ~240 GFLOP/s: 64 FLOP
 * a cycle at ~3.7 GHz, its turbo clock, where /proc/cpuinfo says 2.6. Ten chains
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
#elif defined(__aarch64__) && defined(__GNUC__)
#include <arm_neon.h>
#define PEAK_NEON 1
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
/* one text for both vector widths: the ISA's vector type and intrinsics */
#define PEAK_CHAINS_FN(NAME, TARGET, VEC, LANES, SET1, FMADD, ADD, STOREU)                        \
  __attribute__((target(TARGET))) static float NAME(long n, float x) {                         \
    const VEC b = SET1(0.9999999f), c = SET1(1e-7f);                                            \
    VEC a0 = SET1(x), a1 = SET1(x + 1.0f / 1024), a2 = SET1(x + 2.0f / 1024),                   \
        a3 = SET1(x + 3.0f / 1024), a4 = SET1(x + 4.0f / 1024), a5 = SET1(x + 5.0f / 1024),     \
        a6 = SET1(x + 6.0f / 1024), a7 = SET1(x + 7.0f / 1024), a8 = SET1(x + 8.0f / 1024),     \
        a9 = SET1(x + 9.0f / 1024);                                                             \
    for (long i = 0; i < n; i++) {                                                              \
      a0 = FMADD(a0, b, c), a1 = FMADD(a1, b, c), a2 = FMADD(a2, b, c), a3 = FMADD(a3, b, c);   \
      a4 = FMADD(a4, b, c), a5 = FMADD(a5, b, c), a6 = FMADD(a6, b, c), a7 = FMADD(a7, b, c);   \
      a8 = FMADD(a8, b, c), a9 = FMADD(a9, b, c);                                               \
    }                                                                                           \
    const VEC s = ADD(ADD(ADD(ADD(a0, a1), ADD(a2, a3)), ADD(ADD(a4, a5), ADD(a6, a7))),        \
                      ADD(a8, a9));                                                             \
    float v[LANES], t = 0;                                                                      \
    STOREU(v, s);                                                                               \
    for (int i = 0; i < LANES; i++) t += v[i];                                                  \
    return t;                                                                                   \
  }
PEAK_CHAINS_FN(chains512, "avx512f", __m512, 16, _mm512_set1_ps, _mm512_fmadd_ps, _mm512_add_ps,
               _mm512_storeu_ps)
PEAK_CHAINS_FN(chains256, "avx2,fma", __m256, 8, _mm256_set1_ps, _mm256_fmadd_ps, _mm256_add_ps,
               _mm256_storeu_ps)
#endif

#ifdef PEAK_NEON
/* aarch64: Advanced SIMD, which every aarch64 CPU has: 4 float32 lanes,
 * vfmaq_f32(c, a, b) = c + a * b fused. Its FMA rate is the core's peak on
 * Neoverse N1, V1 (Graviton 2, 3: SVE's 2 x 256 bits are NEON's 4 x 128)
 * and V2 (Grace, Graviton 4: SVE2 is 128 bits wide there); a core with
 * wider SVE pipes than NEON's (A64FX) would be measured below its peak. */
static float chains128(long n, float x) {
  const float32x4_t b = vdupq_n_f32(0.9999999f), c = vdupq_n_f32(1e-7f);
  float32x4_t a0 = vdupq_n_f32(x), a1 = vdupq_n_f32(x + 1.0f / 1024),
              a2 = vdupq_n_f32(x + 2.0f / 1024), a3 = vdupq_n_f32(x + 3.0f / 1024),
              a4 = vdupq_n_f32(x + 4.0f / 1024), a5 = vdupq_n_f32(x + 5.0f / 1024),
              a6 = vdupq_n_f32(x + 6.0f / 1024), a7 = vdupq_n_f32(x + 7.0f / 1024),
              a8 = vdupq_n_f32(x + 8.0f / 1024), a9 = vdupq_n_f32(x + 9.0f / 1024);
  for (long i = 0; i < n; i++) {
    a0 = vfmaq_f32(c, a0, b), a1 = vfmaq_f32(c, a1, b), a2 = vfmaq_f32(c, a2, b);
    a3 = vfmaq_f32(c, a3, b), a4 = vfmaq_f32(c, a4, b), a5 = vfmaq_f32(c, a5, b);
    a6 = vfmaq_f32(c, a6, b), a7 = vfmaq_f32(c, a7, b), a8 = vfmaq_f32(c, a8, b);
    a9 = vfmaq_f32(c, a9, b);
  }
  const float32x4_t s = vaddq_f32(vaddq_f32(vaddq_f32(vaddq_f32(a0, a1), vaddq_f32(a2, a3)),
                                            vaddq_f32(vaddq_f32(a4, a5), vaddq_f32(a6, a7))),
                                  vaddq_f32(a8, a9));
  return vaddvq_f32(s);
}
#endif

/* the fallback: plain multiply-adds (fmaf would be a libm call where the
 * build has no FMA) */
static float chains1(long n, float x) {
  float a[CHAINS];
  for (int j = 0; j < CHAINS; j++) a[j] = x + (float)j / 1024;
  for (long i = 0; i < n; i++)
    for (int j = 0; j < CHAINS; j++) a[j] = a[j] * 0.9999999f + 1e-7f;
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
#ifdef PEAK_NEON
  return *fn = chains128, 4;
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
