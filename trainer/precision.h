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
 *            exponent), float32 sums, and the result of each CONVOLUTION
 *            rounded to bfloat16 once (below): mixed precision with float32
 *            master weights and Adam moments.
 *
 * THE ROUNDING POINTS (the same in both backends). Only the operands of the
 * matrix products are rounded, each right before the product that reads it:
 *   convolution and linear forward: x (the input activations) and w;
 *   backward: dy for dW (with x rounded) and for dx (with w rounded); the
 *   bias gradient db sums the rounded dy.
 * bf16 only, convolutions only: the product's float32 result is rounded to
 * bf16 once before it is used, y = round(conv(x, w)) + b (the bias added in
 * float32), dW += round(conv_bwd_filter(x, dy)), dx += round(conv_bwd_data(
 * w, dy)) (the accumulations in float32). Why: cuDNN's legacy convolution
 * API, the one with per-shape algorithm search, takes bf16 x and w only in
 * its (PSEUDO_)BFLOAT16 configurations, whose output tensor (y, dw, dx) is
 * bf16 as well (float32 compute inside, one rounding at the store); PyTorch's
 * autocast stores these outputs in bf16 too. cuBLAS's cublasGemmEx takes bf16
 * A and B with a float32 C, so linear layers keep float32 results.
 * Everything else stays float32 (float64 where it was): the layer outputs
 * (the products' float32 sums; bf16 convolutions above), BatchNorm and its
 * statistics, ReLU, pooling,
 * the loss and its seed, the gradients the products write (dW, dx), the
 * gradient reduction, the master weights and the Adam update. A product of
 * two bf16 (or TF32) values is exact in float32 (8 x 8 = 16, 11 x 11 = 22
 * significant bits <= 24), so a backend that rounds these operands and then
 * multiplies in float32 (the CPU's sgemm, cuDNN's FMA algorithms, bf16 tensor
 * cores with float32 accumulators) differs from another such backend only in
 * the order of the float32 sums (and, for a bf16 convolution result, in a
 * rounding that this order moves across a bf16 rounding boundary: one bf16
 * ulp at most).
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

static inline PR_HD uint32_t nn_float_bits(float x) {
#if defined(__CUDA_ARCH__)
  return __float_as_uint(x);
#else
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  return u;
#endif
}

static inline PR_HD float nn_bits_float(uint32_t u) {
#if defined(__CUDA_ARCH__)
  return __uint_as_float(u);
#else
  float r;
  memcpy(&r, &u, sizeof r);
  return r;
#endif
}

/* Round x to the nearest value with `drop` low mantissa bits zero, ties to
 * even (drop = 16: bfloat16, 13: TF32). */
static inline PR_HD float nn_round_mantissa(float x, int drop) {
  uint32_t u = nn_float_bits(x);
  const uint32_t low = (1u << drop) - 1u;
  if ((u & 0x7f800000u) == 0x7f800000u) {
    if (u & 0x007fffffu) u |= 0x00400000u; /* NaN: quiet, so that dropping bits keeps it NaN */
  } else {
    u += (low >> 1) + ((u >> drop) & 1u); /* a carry into the exponent is the right rounding */
  }
  u &= ~low;
  return nn_bits_float(u);
}

static inline PR_HD float nn_round_bf16(float x) { return nn_round_mantissa(x, 16); }
static inline PR_HD float nn_round_tf32(float x) { return nn_round_mantissa(x, 13); }

/* x as an operand of a product at precision p. */
static inline PR_HD float nn_round_operand(float x, int p) {
  return p == NN_BF16 ? nn_round_bf16(x) : p == NN_TF32 ? nn_round_tf32(x) : x;
}

/* Whether precision p rounds the results of convolutions (bf16, above). */
static inline PR_HD int nn_rounds_conv_result(int p) { return p == NN_BF16; }

/* bfloat16 storage (the CUDA backend's native bf16 operands): the pattern of
 * nn_round_bf16(x), whose low 16 bits are zero, as its high half; and back.
 * nn_bf16_value(nn_bf16_bits(x)) == nn_round_bf16(x) bit for bit, so the
 * device's bf16 operands are the emulation's rounded ones. */
static inline PR_HD uint16_t nn_bf16_bits(float x) {
  return (uint16_t)(nn_float_bits(nn_round_bf16(x)) >> 16);
}
static inline PR_HD float nn_bf16_value(uint16_t b) { return nn_bits_float((uint32_t)b << 16); }

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
