/* loss.h - COEmuNet's training loss and its gradient.
 *
 *   L = 0.8 * MSE(p, t) + 0.2 * mean_k |FFT2(t) - FFT2(p)|_k
 *
 * over M images of H x W (M = batch * channels * frequencies: every image is
 * transformed separately over its last two axes). FFT2 is the unnormalised
 * forward DFT, |.| the complex modulus, both means run over all M*H*W
 * elements. By linearity FFT2(t) - FFT2(p) = -FFT2(e) with e = p - t, so the
 * spectral term is mean |E|, E = FFT2(e). Its gradient (docs/trainer.md):
 *
 *   d/de_n sum_k |E_k| = Re( IDFT_unnormalised(E / |E|) )_n,
 *
 * with E/|E| taken as 0 where |E| = 0. The transforms are FFTW double
 * precision real-to-complex / complex-to-real (the half spectrum, counted
 * twice where its mirror image is not stored); the loss sums in double.
 * This is the CPU backend's loss (backend_cpu.c, on host arrays); the
 * trainer reaches it through nn_backend.loss_eval.
 */
#ifndef COEMU_LOSS_H
#define COEMU_LOSS_H

#include <stddef.h>

typedef struct loss_value {
  double total, mse, fft; /* total = w_mse*mse + w_fft*fft */
} loss_value;

typedef struct coemu_loss coemu_loss;

/* Weights 0.8 and 0.2 as in the paper. */
#define LOSS_W_MSE 0.8
#define LOSS_W_FFT 0.2

/* A loss for up to max_images images of h x w (plans and buffers). */
coemu_loss *loss_create(int h, int w, int max_images);
void loss_destroy(coemu_loss *l);

/* Loss of prediction p against target t (m images, m <= max_images).
 * grad (NULL to skip) receives dL/dp (overwritten, not added). */
int loss_eval(coemu_loss *l, const float *p, const float *t, int m, loss_value *out,
              float *grad);

/* Pixels per image, h * w. */
size_t loss_image_pixels(const coemu_loss *l);

#endif
