/* precision.h - the arithmetic of convolutions and linear layers
 * (train.precision in training jobs, --precision of bench train), and the
 * operand rounding that defines it, as host-and-device functions (PR_HD:
 * __host__ __device__ under nvcc, nothing otherwise) shared by the CPU
 * backend's emulation and the CUDA backend.
 *
 *   float32: float32 operands, float32 sums (the reference);
 *   tf32:    operands of every convolution / GEMM rounded to TF32 (10-bit
 *            mantissa, float32 exponent), float32 sums;
 *   bf16:    operands rounded to bfloat16 (7-bit mantissa, float32
 *            exponent), float32 sums: mixed precision with float32 master
 *            weights and Adam moments.
 *
 * THE ROUNDING POINTS (the same in both backends). Only the operands of the
 * matrix products are rounded, each right before the product that reads it:
 *   convolution and linear forward: x (the input activations) and w;
 *   backward: dy for dW (with x rounded) and for dx (with w rounded); the
 *   bias gradient db sums the rounded dy.
 * Everything else stays float32 (float64 where it was): the layer outputs
 * (the products' float32 sums), BatchNorm and its statistics, ReLU, pooling,
 * the loss and its seed, the gradients the products write (dW, dx), the
 * gradient reduction, the master weights and the Adam update. A product of
 * two bf16 (or TF32) values is exact in float32 (8 x 8 = 16, 11 x 11 = 22
 * significant bits <= 24), so a backend that rounds these operands and then
 * multiplies in float32 (the CPU's sgemm, cuDNN's FMA algorithms) differs
 * from another such backend only in the order of the float32 sums.
 *
 * Loss scaling: none. bf16 has float32's 8-bit exponent (normal down to
 * 1.2e-38, subnormal to 9.2e-41), so the gradients that fit float32 fit bf16
 * (float16's 5-bit exponent, which underflows below 6e-8, is what loss
 * scaling exists for).
 *
 * Rounding: to nearest, ties to even, on the bit pattern (subnormals and
 * overflow to infinity come out right: the pattern's order is the values'
 * order); NaN stays NaN (quiet, sign kept), +-Inf stays +-Inf. Every device
 * conversion the CUDA backend makes goes through nn_round_operand. (The
 * TF32 mode of tensor cores converts float32 operands in hardware; its
 * rounding is NVIDIA's, which this emulation does not claim to match bit for
 * bit: docs/trainer.md.)
 */
#ifndef COEMU_PRECISION_H
#define COEMU_PRECISION_H

#include <stdint.h>
#include <string.h>

#if defined(__CUDACC__)
#define PR_HD __host__ __device__
#else
#define PR_HD
#endif

#ifdef __cplusplus
extern "C" {
#endif

typedef enum { NN_FLOAT32 = 0, NN_TF32 = 1, NN_BF16 = 2 } nn_precision;
#define NN_PRECISIONS 3
/* bit p set in nn_backend.precisions: the backend runs precision p */
#define NN_PRECISION_BIT(p) (1u << (unsigned)(p))

/* Round x to the nearest value with `drop` low mantissa bits zero, ties to
 * even (drop = 16: bfloat16, 13: TF32). */
static inline PR_HD float nn_round_mantissa(float x, int drop) {
  uint32_t u;
#if defined(__CUDA_ARCH__)
  u = __float_as_uint(x);
#else
  memcpy(&u, &x, sizeof u);
#endif
  const uint32_t low = (1u << drop) - 1u;
  if ((u & 0x7f800000u) == 0x7f800000u) {
    if (u & 0x007fffffu) u |= 0x00400000u; /* NaN: quiet, so that dropping bits keeps it NaN */
  } else {
    u += (low >> 1) + ((u >> drop) & 1u); /* a carry into the exponent is the right rounding */
  }
  u &= ~low;
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float r;
  memcpy(&r, &u, sizeof r);
  return r;
#endif
}

static inline PR_HD float nn_round_bf16(float x) { return nn_round_mantissa(x, 16); }
static inline PR_HD float nn_round_tf32(float x) { return nn_round_mantissa(x, 13); }

/* x as an operand of a product at precision p. */
static inline PR_HD float nn_round_operand(float x, int p) {
  return p == NN_BF16 ? nn_round_bf16(x) : p == NN_TF32 ? nn_round_tf32(x) : x;
}

/* 0 if backend be runs precision p (nn_backend.precisions; float32 always),
 * else -1 with an error naming the backend and the precisions it runs. */
struct nn_backend;
int nn_backend_check_precision(const struct nn_backend *be, int p);

/* "float32", "tf32", "bf16"; "?" otherwise. */
const char *nn_precision_name(int p);
/* The precision called name, or -1 with an error listing the three. */
int nn_precision_parse(const char *name);

#ifdef __cplusplus
}
#endif

#endif
