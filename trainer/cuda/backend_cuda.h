/* backend_cuda.h - the CUDA backend of the trainer (backend.h's table on one
 * GPU): every tensor in device memory; convolutions on cuDNN (forward,
 * backward data, backward filter; the algorithms chosen once per shape by
 * cudnnFind* under a workspace limit), linear layers on cuBLAS, the loss's
 * spectral term on cuFFT (double precision, as the CPU's FFTW), BatchNorm
 * (training, evaluation, synchronised through the nn_reducer sums), ReLU,
 * Tanh, max pooling, upsampling, concatenation and slices, Adam and the
 * gradient reduction in kernels of its own, with the arithmetic of
 * layers_cpu.c (docs/trainer.md, "The CUDA backend").
 *
 * Built only when meson finds nvcc, cuDNN, cuBLAS and cuFFT (the top-level
 * `cuda` option; COEMU_HAVE_CUDA is then defined); nn_backend_by_name("cuda")
 * (nn.h) is the way in that works in every build. Plain C interface: this
 * header is included from C and from the .cu file.
 */
#ifndef COEMU_BACKEND_CUDA_H
#define COEMU_BACKEND_CUDA_H

#include <stdio.h>

#include "trainer/backend.h"

#ifdef __cplusplus
extern "C" {
#endif

/* The table. Its init(threads) selects the device (COEMU_CUDA_DEVICE, else
 * 0), creates the stream and the cuDNN / cuBLAS handles, and fails with a
 * clear message when there is no usable device. threads is ignored. */
extern const nn_backend nn_backend_cuda;

/* Arithmetic of convolutions and linear layers of float32 nets: 0 (default)
 * float32 on the FMA units, no tensor cores (the reference: parity with the
 * CPU); 1: TF32 tensor cores (10-bit mantissa products, float32 sums; the
 * hardware converts the operands). Set before the first net is built; 0, or
 * -1 with an error for another value. A net's own precision
 * (nn_set_precision: tf32, bf16; trainer/precision.h): tf32 rounds the
 * operands with nn_round_operand on the device first, as the CPU emulation
 * does; bf16 runs natively (below). */
int nn_cuda_set_tf32(int on);
int nn_cuda_tf32(void);

/* The path of bf16 nets, "native" or "emulated", chosen at init by the
 * environment's COEMU_BF16 (native when unset; another value is init's
 * error). native: x, w, dy converted once into bf16 scratch (k_to_bf16,
 * precision.h's nn_bf16_bits), cuDNN convolutions with CUDNN_DATA_BFLOAT16
 * x, w, y (float32 compute, tensor-op math; y, dW, dx stored in bf16, then
 * added to the float32 outputs and gradients) and cublasGemmEx with
 * CUDA_R_16BF A, B, float32 C and CUBLAS_COMPUTE_32F. emulated: float32
 * cuDNN / cuBLAS on nn_round_operand copies (FMA math), the convolutions'
 * results rounded by nn_round_bf16: the same definition, for diagnosing
 * parity. */
const char *nn_cuda_bf16_path(void);

/* Bytes of cuDNN workspace one convolution may use (the algorithm search
 * skips algorithms that need more). Default 512 MiB, or the environment's
 * COEMU_CUDNN_WORKSPACE_MB. */
void nn_cuda_set_workspace_limit(size_t bytes);

/* The timing mode, for finding where a step's device time goes
 * (docs/trainer.md, "Where a step's device time goes"): with
 * COEMU_CUDA_TIMES=1 in the environment at init (0 or unset: off, and no
 * event is ever recorded; another value is init's error), every group of
 * work the backend queues is bracketed by a pair of CUDA events on its
 * stream: each cuDNN convolution call (forward, backward data, backward
 * filter; bf16 and its float32 fallback too), a convolution's bias, operand
 * conversions, a linear layer's cuBLAS calls, every other layer whole
 * (BatchNorm, pooling, activations, ...), the loss's kernels and cuFFT
 * transforms, Adam, memsets and copies. The times are read where the host
 * waits anyway (no synchronisation of their own inside a step) and summed
 * per key: what ran, its shape, cuDNN's algorithm and math type.
 *   nn_cuda_times: 1 when the mode is on (and the backend initialised).
 *   nn_cuda_times_reset: drops what was timed so far (waits for the queued
 *     work), e.g. after warm-up steps.
 *   nn_cuda_times_report: one line per key into f, largest total first,
 *       <label> <key>: ms_per_step X calls_per_step Y
 *     e.g. "conv3d fwd 32x7x64x64x64->16 k3x3x3 s1x1x1 algo 1 fma" (input
 *     n x c x d x h x w -> output channels, kernel, stride, algorithm, math:
 *     fma, tensor, ...), then "<label> total: ms_per_step X calls_per_step
 *     Y (K keys, S steps)", each figure divided by steps (the steps timed
 *     since the last reset or report); then resets.
 * Both return 0, or -1 with an error when the mode is off. */
int nn_cuda_times(void);
int nn_cuda_times_reset(void);
int nn_cuda_times_report(FILE *f, const char *label, int steps);

/* One line naming the device in use ("NVIDIA H200, sm_90, 139.8 GiB"), or
 * "" before init. */
const char *nn_cuda_device_name(void);

/* COEMU_CUDNN_API=graph since init: *planned, convolution calls given a
 * graph plan; *fell_back, calls that run on the legacy API instead (no
 * usable engine when the plan was made, or its engine failed at run time:
 * each said once on stderr). The device check requires planned > 0 and no
 * fallback of its graph-API parity run. */
void nn_cuda_graph_counts(int *planned, int *fell_back);

/* COEMU_CUDNN_API=auto since init: convolution calls whose legacy
 * algorithm timed faster than their graph engine (they run on the legacy
 * API; not counted in nn_cuda_graph_counts' planned). */
int nn_cuda_graph_declined(void);

#ifdef __cplusplus
}
#endif

#endif
