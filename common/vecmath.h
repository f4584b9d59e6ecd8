/* vecmath.h - the host's vector width, and glibc libmvec's vector functions
 * on it: one interface for the CPU kernels, the instruction set chosen here.
 *
 * The vectors are GCC vector types of the widest registers the build
 * targets (VM_BYTES: 64 with AVX-512, 32 with AVX, else 16):
 *   vm_vd  VM_ND doubles   vm_vl  as many int64 (comparison masks of vm_vd)
 *   vm_vf  VM_NF floats    vm_vi  as many int32
 *   vm_vh  VM_ND floats (the doubles of a vm_vd rounded)
 * Why the native width and not a fixed one: GCC 12 splits a 64-byte vector
 * into halves on AVX2 for arithmetic, but lowers its comparisons lane by
 * lane through memory, and its bit operations and lane moves through the
 * stack: the solver written on 8-double vectors took 66-111 ms a cube on a
 * Zen 3, where the same code on its native 4-double vectors takes 20 (docs/
 * benchmarks.md, "AVX2 hosts"). A kernel whose results depend on a lane
 * count (partial sums) keeps that count itself and walks it in vectors.
 *
 *   vm_exp, vm_erf, vm_expm1, vm_log   on vm_vd
 *   vm_expf, vm_erfcf, vm_expm1f       on vm_vf
 *   vm_sqrt                            on vm_vd, correctly rounded (any ISA)
 *   vm_lanes                           a vm_vl mask's lanes as bits (VM_ALL_LANES: all)
 *   vm_lexp, ... vm_lexpm1f            libm's, lane by lane, on every build:
 *                                      the literal reference of the others
 *
 * VECMATH_ISA says which libmvec variants a build calls:
 *   "avx512"  -mavx512f: _ZGVeN8v_exp, _ZGVeN16v_expf, ... (AMD Zen 4/5,
 *             Intel Skylake-SP and later);
 *   "avx2"    -mavx2 -mfma, no AVX-512: _ZGVdN4v_exp, _ZGVdN8v_expf, ...
 *             (AMD Zen 2/3, Intel Haswell to Ice Lake client). Before it
 *             existed these hosts took libm lane by lane;
 *   "none"    VECMATH_LIBMVEC is 0 and the functions are libm's lane by
 *             lane: portable builds (-Dnative=false), other CPUs, or a glibc
 *             without libmvec (meson defines COEMU_HAVE_LIBMVEC where it
 *             finds it, and links it).
 *
 * What the callers may rely on: every lane is computed from that lane alone
 * (packing lanes does not change bits), and each libmvec variant is within
 * a few ulp of the true value (glibc's libm-test-ulps bounds; the ones the
 * solver's error analysis takes are in docs/physics.md), not equal to
 * libm's or to the other variant's: the tests compare the callers' results
 * against libm's literal ones within those bounds, on whichever variant the
 * build has. Outside their fast range the variants call libm lane by lane
 * (the callers keep such lanes out where it matters: lte_kernel_cpu.c).
 */
#ifndef COEMU_VECMATH_H
#define COEMU_VECMATH_H

#include <math.h>

#if defined(__AVX512F__)
#define VM_BYTES 64
#elif defined(__AVX__)
#define VM_BYTES 32
#else
#define VM_BYTES 16
#endif
#define VM_ND (VM_BYTES / 8)
#define VM_NF (VM_BYTES / 4)
typedef double vm_vd __attribute__((vector_size(VM_BYTES)));
typedef long long vm_vl __attribute__((vector_size(VM_BYTES)));
typedef float vm_vf __attribute__((vector_size(VM_BYTES)));
typedef int vm_vi __attribute__((vector_size(VM_BYTES)));
typedef float vm_vh __attribute__((vector_size(VM_BYTES / 2)));

#if defined(COEMU_HAVE_LIBMVEC) && defined(__AVX512F__)
#define VECMATH_LIBMVEC 1
#define VECMATH_ISA "avx512"
#elif defined(COEMU_HAVE_LIBMVEC) && defined(__AVX2__) && defined(__FMA__)
#define VECMATH_LIBMVEC 1
#define VECMATH_ISA "avx2"
#else
#define VECMATH_LIBMVEC 0
#define VECMATH_ISA "none"
#endif

#if defined(__AVX__)
#include <immintrin.h>
#elif defined(__SSE2__)
#include <emmintrin.h>
#endif

/* VM_LANEWISE(name, V, n, fn): name(x) is fn of each of vector type V's n
 * lanes */
#define VM_LANEWISE(name, V, n, fn)                     \
  static inline V name(V x) {                           \
    for (int i_ = 0; i_ < (n); i_++) x[i_] = fn(x[i_]); \
    return x;                                           \
  }
VM_LANEWISE(vm_lexp, vm_vd, VM_ND, exp)
VM_LANEWISE(vm_lerf, vm_vd, VM_ND, erf)
VM_LANEWISE(vm_lexpm1, vm_vd, VM_ND, expm1)
VM_LANEWISE(vm_llog, vm_vd, VM_ND, log)
VM_LANEWISE(vm_lexpf, vm_vf, VM_NF, expf)
VM_LANEWISE(vm_lerfcf, vm_vf, VM_NF, erfcf)
VM_LANEWISE(vm_lexpm1f, vm_vf, VM_NF, expm1f)

#if VECMATH_LIBMVEC
/* declared here: math.h declares them only under -ffast-math */
#if defined(__AVX512F__)
#define VM_MVD(f) _ZGVeN8v_##f
#define VM_MVF(f) _ZGVeN16v_##f
typedef __m512d vm_md;
typedef __m512 vm_mf;
#else
#define VM_MVD(f) _ZGVdN4v_##f
#define VM_MVF(f) _ZGVdN8v_##f
typedef __m256d vm_md;
typedef __m256 vm_mf;
#endif
vm_md VM_MVD(exp)(vm_md);
vm_md VM_MVD(erf)(vm_md);
vm_md VM_MVD(expm1)(vm_md);
vm_md VM_MVD(log)(vm_md);
vm_mf VM_MVF(expf)(vm_mf);
vm_mf VM_MVF(erfcf)(vm_mf);
vm_mf VM_MVF(expm1f)(vm_mf);
static inline vm_vd vm_exp(vm_vd x) { return (vm_vd)VM_MVD(exp)((vm_md)x); }
static inline vm_vd vm_erf(vm_vd x) { return (vm_vd)VM_MVD(erf)((vm_md)x); }
static inline vm_vd vm_expm1(vm_vd x) { return (vm_vd)VM_MVD(expm1)((vm_md)x); }
static inline vm_vd vm_log(vm_vd x) { return (vm_vd)VM_MVD(log)((vm_md)x); }
static inline vm_vf vm_expf(vm_vf x) { return (vm_vf)VM_MVF(expf)((vm_mf)x); }
static inline vm_vf vm_erfcf(vm_vf x) { return (vm_vf)VM_MVF(erfcf)((vm_mf)x); }
static inline vm_vf vm_expm1f(vm_vf x) { return (vm_vf)VM_MVF(expm1f)((vm_mf)x); }
#else
static inline vm_vd vm_exp(vm_vd x) { return vm_lexp(x); }
static inline vm_vd vm_erf(vm_vd x) { return vm_lerf(x); }
static inline vm_vd vm_expm1(vm_vd x) { return vm_lexpm1(x); }
static inline vm_vd vm_log(vm_vd x) { return vm_llog(x); }
static inline vm_vf vm_expf(vm_vf x) { return vm_lexpf(x); }
static inline vm_vf vm_erfcf(vm_vf x) { return vm_lerfcf(x); }
static inline vm_vf vm_expm1f(vm_vf x) { return vm_lexpm1f(x); }
#endif

/* The lanes of a comparison mask (all ones or all zeros each) as bits, lane
 * i at bit i */
static inline unsigned vm_lanes(vm_vl m) {
#if defined(__AVX512F__)
  return _mm512_test_epi64_mask((__m512i)m, (__m512i)m);
#elif defined(__AVX__)
  return (unsigned)_mm256_movemask_pd((__m256d)m);
#else
  unsigned r = 0;
  for (int i = 0; i < VM_ND; i++) r |= (unsigned)(m[i] != 0) << i;
  return r;
#endif
}
#define VM_ALL_LANES ((1u << VM_ND) - 1)

/* sqrt is correctly rounded everywhere: the same bits on every path */
static inline vm_vd vm_sqrt(vm_vd x) {
#if defined(__AVX512F__)
  return (vm_vd)_mm512_sqrt_pd((__m512d)x);
#elif defined(__AVX__)
  return (vm_vd)_mm256_sqrt_pd((__m256d)x);
#elif defined(__SSE2__)
  return (vm_vd)_mm_sqrt_pd((__m128d)x);
#else
  for (int i = 0; i < VM_ND; i++) x[i] = sqrt(x[i]);
  return x;
#endif
}

#endif
