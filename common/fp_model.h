/* fp_model.h - coemu needs IEEE 754 arithmetic as the C standard gives it.
 *
 * A fast floating-point model (GCC's and clang's -ffast-math, -Ofast or
 * -ffinite-math-only; Intel icx's default -fp-model=fast) breaks coemu in
 * ways no test of the results alone would show:
 *   - isnan() and isfinite() are taken to be false and true, so a 'nan' in a
 *     LAMDA file or `--dx inf` is accepted instead of refused;
 *   - the process starts with subnormals flushed to zero (crtfastmath.o);
 *   - sums are reassociated, so datasets no longer have the same bits on
 *     every build, and the exact statistics are not exact.
 * A GCC build with CFLAGS=-ffast-math failed 24 of the 58 tests of the
 * numerical suites (2026-12-07; docs/cluster.md, "Compilers").
 *
 * error.h includes this header, so every translation unit checks it, and
 * meson.build compiles it as its configure-time probe (with a behavioural
 * probe beside it for the flags that define no macro). */
#ifndef COEMU_FP_MODEL_H
#define COEMU_FP_MODEL_H

#if defined(__FAST_MATH__) || (defined(__FINITE_MATH_ONLY__) && __FINITE_MATH_ONLY__)
#error "coemu needs IEEE arithmetic: remove -ffast-math, -Ofast or -ffinite-math-only from CFLAGS (Intel icx: -fp-model=precise; docs/cluster.md, \"Compilers\")"
#endif

#endif
