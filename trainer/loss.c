/* loss.c - MSE + spectral L1 loss with FFTW (see loss.h). */
#include "trainer/loss.h"

#include <fftw3.h>
#include <math.h>
#include <stdlib.h>

#include "common/error.h"

struct coemu_loss {
  int h, w, wc, max_images; /* wc = w/2 + 1 stored frequency columns */
  double *e;                /* m x h x w: p - t, then the gradient of the spectral term */
  fftw_complex *spec;       /* m x h x wc */
  fftw_plan fwd, inv;
};

coemu_loss *loss_create(int h, int w, int max_images) {
  if (h < 1 || w < 1 || max_images < 1) {
    ce_err("loss: image %d x %d, %d images: expected positive sizes", h, w, max_images);
    return NULL;
  }
  coemu_loss *l = calloc(1, sizeof *l);
  if (!l) {
    ce_err("loss: out of memory");
    return NULL;
  }
  l->h = h; l->w = w; l->wc = w / 2 + 1; l->max_images = max_images;
  size_t nr = (size_t)max_images * h * w, nc = (size_t)max_images * h * l->wc;
  l->e = fftw_malloc(sizeof(double) * nr);
  l->spec = fftw_malloc(sizeof(fftw_complex) * nc);
  if (!l->e || !l->spec) {
    loss_destroy(l);
    ce_err("loss: out of memory for %d images of %d x %d", max_images, h, w);
    return NULL;
  }
  int dims[2] = {h, w};
  l->fwd = fftw_plan_many_dft_r2c(2, dims, max_images, l->e, NULL, 1, h * w, l->spec, NULL, 1,
                                  h * l->wc, FFTW_ESTIMATE);
  l->inv = fftw_plan_many_dft_c2r(2, dims, max_images, l->spec, NULL, 1, h * l->wc, l->e, NULL, 1,
                                  h * w, FFTW_ESTIMATE);
  if (!l->fwd || !l->inv) {
    loss_destroy(l);
    ce_err("loss: FFTW could not plan %d transforms of %d x %d", max_images, h, w);
    return NULL;
  }
  return l;
}

void loss_destroy(coemu_loss *l) {
  if (!l) return;
  if (l->fwd) fftw_destroy_plan(l->fwd);
  if (l->inv) fftw_destroy_plan(l->inv);
  fftw_free(l->e);
  fftw_free(l->spec);
  free(l);
}

int loss_eval(coemu_loss *l, const float *p, const float *t, int m, loss_value *out,
              float *grad) {
  if (m < 1 || m > l->max_images)
    return ce_err("loss: %d images, this loss was made for 1..%d", m, l->max_images);
  const size_t n = (size_t)m * l->h * l->w, all = (size_t)l->max_images * l->h * l->w;
  double sq = 0;
  for (size_t i = 0; i < n; i++) {
    l->e[i] = (double)p[i] - t[i];
    sq += l->e[i] * l->e[i];
  }
  for (size_t i = n; i < all; i++) l->e[i] = 0; /* unused images transform to 0 */
  fftw_execute(l->fwd);
  /* sum of |E| over the full spectrum; E/|E| in place for the gradient */
  double sabs = 0;
  const int h = l->h, wc = l->wc, w = l->w;
  for (int im = 0; im < m; im++)
    for (int ky = 0; ky < h; ky++)
      for (int kx = 0; kx < wc; kx++) {
        fftw_complex *z = &l->spec[((size_t)im * h + ky) * wc + kx];
        double a = hypot((*z)[0], (*z)[1]);
        /* columns 1..ceil(w/2)-1 stand for themselves and their mirror */
        int twice = kx > 0 && !(w % 2 == 0 && kx == w / 2);
        sabs += twice ? 2 * a : a;
        if (a > 0) {
          (*z)[0] /= a;
          (*z)[1] /= a;
        } else {
          (*z)[0] = (*z)[1] = 0;
        }
      }
  const double N = (double)n;
  out->mse = sq / N;
  out->fft = sabs / N;
  out->total = LOSS_W_MSE * out->mse + LOSS_W_FFT * out->fft;
  if (!grad) return 0;
  fftw_execute(l->inv); /* e <- unnormalised inverse DFT of E/|E| (real) */
  for (size_t i = 0; i < n; i++)
    grad[i] = (float)((LOSS_W_MSE * 2 * ((double)p[i] - t[i]) + LOSS_W_FFT * l->e[i]) / N);
  return 0;
}

size_t loss_image_pixels(const coemu_loss *l) { return (size_t)l->h * (size_t)l->w; }
