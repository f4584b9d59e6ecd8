/* layers_cpu.c - CPU reference kernels (vol2col + OpenBLAS sgemm, OpenMP); the
 * CPU backend (backend_cpu.c) runs the layers of nn.h on them. */
#include "trainer/layers_cpu.h"

#include <cblas.h>
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* ---- the matrix product ------------------------------------------------- */

/* Every BLAS call of coemu is this one. OpenBLAS picks its kernels (and so
 * the summation order) by host or by OPENBLAS_CORETYPE, so CI runs the tests
 * that reach BLAS a second time on other kernels (.ci/run, meson suite
 * 'blas'). A test outside that suite runs with COEMU_TEST_BLAS=forbidden
 * (tests/meson.build): if it reaches BLAS after all, it fails here, saying
 * so, instead of going untested on other kernels. */
static void sgemm(enum CBLAS_TRANSPOSE ta, enum CBLAS_TRANSPOSE tb, int m, int n, int k,
                  const float *a, int lda, const float *b, int ldb, float beta, float *c,
                  int ldc) {
  static int forbidden = -1; /* -1: not read yet (threads that race read the same) */
  int f = __atomic_load_n(&forbidden, __ATOMIC_RELAXED);
  if (f < 0) {
    const char *t = getenv("COEMU_TEST_BLAS");
    f = t && strcmp(t, "forbidden") == 0;
    __atomic_store_n(&forbidden, f, __ATOMIC_RELAXED);
  }
  if (f) {
    fprintf(stderr, "coemu: COEMU_TEST_BLAS=forbidden, but this test calls BLAS (sgemm): add "
                    "it to meson suite 'blas' (tests/meson.build) so that CI runs it on other "
                    "BLAS kernels too\n");
    _Exit(3); /* not exit(): other threads of a parallel region may be here too */
  }
  cblas_sgemm(CblasRowMajor, ta, tb, m, n, k, 1.0f, a, lda, b, ldb, beta, c, ldc);
}

/* ---- convolution -------------------------------------------------------- */

static int pointwise(const conv_shape *s) {
  return s->kd == 1 && s->kh == 1 && s->kw == 1 && s->sd == 1 && s->sh == 1 && s->sw == 1 &&
         s->pd == 0 && s->ph == 0 && s->pw == 0;
}

/* Threads for the per-sample loops: OpenMP's, at most one per sample. */
static int sample_threads(int n) {
  int t = omp_get_max_threads();
  return t < n ? t : n;
}

static size_t conv_cols(const conv_shape *s) {
  return pointwise(s) ? 0 : (size_t)s->cin * s->kd * s->kh * s->kw * s->od * s->oh * s->ow;
}

size_t conv3d_workspace(const conv_shape *s) {
  /* per thread: columns, column gradient, partial dW and db */
  size_t k = (size_t)s->cin * s->kd * s->kh * s->kw;
  return (size_t)sample_threads(s->n) * (2 * conv_cols(s) + k * s->cout + s->cout);
}

/* Output positions o in [lo, hi] read input index o*stride - pad + off inside [0, n). */
static void valid_range(int n, int nout, int stride, int pad, int off, int *lo, int *hi) {
  int a = pad - off; /* o*stride >= a */
  *lo = a <= 0 ? 0 : (a + stride - 1) / stride;
  int b = n - 1 + pad - off; /* o*stride <= b */
  *hi = b < 0 ? -1 : b / stride;
  if (*hi > nout - 1) *hi = nout - 1;
}

void vol2col(const conv_shape *s, const float *x, float *col) {
  const int kvol = s->kd * s->kh * s->kw;
  const long K = (long)s->cin * kvol, plane = (long)s->oh * s->ow, P = (long)s->od * plane;
#pragma omp parallel for collapse(2) schedule(static)
  for (long r = 0; r < K; r++) {
    for (int od = 0; od < s->od; od++) {
      int ci = (int)(r / kvol), rem = (int)(r % kvol);
      int a = rem / (s->kh * s->kw), b = (rem / s->kw) % s->kh, c = rem % s->kw;
      float *dst = col + r * P + od * plane;
      int id = od * s->sd - s->pd + a;
      if (id < 0 || id >= s->d) {
        memset(dst, 0, sizeof(float) * plane);
        continue;
      }
      int wlo, whi;
      valid_range(s->w, s->ow, s->sw, s->pw, c, &wlo, &whi);
      for (int oh = 0; oh < s->oh; oh++) {
        float *row = dst + (long)oh * s->ow;
        int ih = oh * s->sh - s->ph + b;
        if (ih < 0 || ih >= s->h || whi < wlo) {
          memset(row, 0, sizeof(float) * s->ow);
          continue;
        }
        const float *src = x + (((long)ci * s->d + id) * s->h + ih) * s->w - s->pw + c;
        for (int ow = 0; ow < wlo; ow++) row[ow] = 0;
        if (s->sw == 1)
          memcpy(row + wlo, src + wlo, sizeof(float) * (whi - wlo + 1));
        else
          for (int ow = wlo; ow <= whi; ow++) row[ow] = src[(long)ow * s->sw];
        for (int ow = whi + 1; ow < s->ow; ow++) row[ow] = 0;
      }
    }
  }
}

void col2vol(const conv_shape *s, const float *col, float *x) {
  const int kvol = s->kd * s->kh * s->kw;
  const long plane = (long)s->oh * s->ow, P = (long)s->od * plane;
  /* one thread per input channel: the rows of a channel write only to it */
#pragma omp parallel for schedule(static)
  for (int ci = 0; ci < s->cin; ci++) {
    for (int rem = 0; rem < kvol; rem++) {
      int a = rem / (s->kh * s->kw), b = (rem / s->kw) % s->kh, c = rem % s->kw;
      const float *src = col + ((long)ci * kvol + rem) * P;
      int wlo, whi;
      valid_range(s->w, s->ow, s->sw, s->pw, c, &wlo, &whi);
      for (int od = 0; od < s->od; od++) {
        int id = od * s->sd - s->pd + a;
        if (id < 0 || id >= s->d) continue;
        for (int oh = 0; oh < s->oh; oh++) {
          int ih = oh * s->sh - s->ph + b;
          if (ih < 0 || ih >= s->h) continue;
          const float *row = src + od * plane + (long)oh * s->ow;
          float *dst = x + (((long)ci * s->d + id) * s->h + ih) * s->w - s->pw + c;
          for (int ow = wlo; ow <= whi; ow++) dst[(long)ow * s->sw] += row[ow];
        }
      }
    }
  }
}

/* One input channel, stride 1, no padding (COEmuNet's stems on 64^3): a
 * direct forward loop is ~30% faster than vol2col + sgemm, whose column
 * matrix would be 27 x 238,328 per sample for a 4-row product. (For the
 * weight gradient sgemm stays faster than short direct dot products.) */
static int direct_single_channel(const conv_shape *s) {
  return s->cin == 1 && s->sd == 1 && s->sh == 1 && s->sw == 1 && s->pd == 0 && s->ph == 0 &&
         s->pw == 0 && !pointwise(s);
}

static void direct_forward(const conv_shape *s, const float *x, const float *w, const float *b,
                           float *y) {
  const long P = (long)s->od * s->oh * s->ow, kv = (long)s->kd * s->kh * s->kw;
  for (int co = 0; co < s->cout; co++)
    for (int z = 0; z < s->od; z++)
      for (int yy = 0; yy < s->oh; yy++) {
        float *row = y + co * P + ((long)z * s->oh + yy) * s->ow;
        for (int xx = 0; xx < s->ow; xx++) row[xx] = b[co];
        for (int a = 0; a < s->kd; a++)
          for (int bb = 0; bb < s->kh; bb++) {
            const float *src = x + ((long)(z + a) * s->h + yy + bb) * s->w;
            const float *wk = w + co * kv + ((long)a * s->kh + bb) * s->kw;
            for (int c = 0; c < s->kw; c++) {
              const float wv = wk[c];
              for (int xx = 0; xx < s->ow; xx++) row[xx] += wv * src[xx + c];
            }
          }
      }
}

void conv3d_forward(const conv_shape *s, const float *x, const float *w, const float *b,
                    float *y, float *work) {
  const int K = s->cin * s->kd * s->kh * s->kw;
  const long P = (long)s->od * s->oh * s->ow, S = (long)s->d * s->h * s->w;
  const size_t per = 2 * conv_cols(s) + (size_t)K * s->cout + s->cout;
#pragma omp parallel for num_threads(sample_threads(s->n)) schedule(static)
  for (int n = 0; n < s->n; n++) {
    const float *xn = x + (long)n * s->cin * S;
    float *yn = y + (long)n * s->cout * P;
    if (direct_single_channel(s)) {
      direct_forward(s, xn, w, b, yn);
      continue;
    }
    const float *col = xn;
    if (!pointwise(s)) {
      float *mine = work + (size_t)omp_get_thread_num() * per;
      vol2col(s, xn, mine);
      col = mine;
    }
    sgemm(CblasNoTrans, CblasNoTrans, s->cout, (int)P, K, w, K, col, (int)P, 0.0f, yn, (int)P);
    for (int co = 0; co < s->cout; co++)
      for (long p = 0; p < P; p++) yn[co * P + p] += b[co];
  }
}

void conv3d_backward(const conv_shape *s, const float *x, const float *w, const float *dy,
                     float *dw, float *db, float *dx, float *work) {
  const int K = s->cin * s->kd * s->kh * s->kw, nt = sample_threads(s->n);
  const long P = (long)s->od * s->oh * s->ow, S = (long)s->d * s->h * s->w;
  const size_t cols = conv_cols(s), per = 2 * cols + (size_t)K * s->cout + s->cout;
#pragma omp parallel num_threads(nt)
  {
    int tid = omp_get_thread_num();
    float *col = work + (size_t)tid * per, *dcol = col + cols, *pdw = dcol + cols,
          *pdb = pdw + (size_t)K * s->cout;
    memset(pdw, 0, sizeof(float) * ((size_t)K * s->cout + s->cout));
#pragma omp for schedule(static)
    for (int n = 0; n < s->n; n++) {
      const float *xn = x + (long)n * s->cin * S, *dyn = dy + (long)n * s->cout * P;
      const float *cn = xn;
      if (!pointwise(s)) {
        vol2col(s, xn, col);
        cn = col;
      }
      /* dw (cout x K) += dy (cout x P) col^T, into this thread's partial sum */
      sgemm(CblasNoTrans, CblasTrans, s->cout, K, (int)P, dyn, (int)P, cn, (int)P, 1.0f, pdw, K);
      for (int co = 0; co < s->cout; co++) {
        double acc = 0;
        for (long p = 0; p < P; p++) acc += dyn[co * P + p];
        pdb[co] += (float)acc;
      }
      if (!dx) continue;
      float *dxn = dx + (long)n * s->cin * S;
      if (pointwise(s)) { /* dx (cin x S) += W^T dy */
        sgemm(CblasTrans, CblasNoTrans, K, (int)P, s->cout, w, K, dyn, (int)P, 1.0f, dxn, (int)P);
      } else {
        sgemm(CblasTrans, CblasNoTrans, K, (int)P, s->cout, w, K, dyn, (int)P, 0.0f, dcol,
              (int)P);
        col2vol(s, dcol, dxn);
      }
    }
  }
  /* partial sums in thread order: the same result for the same thread count */
  for (int t = 0; t < nt; t++) {
    const float *pdw = work + (size_t)t * per + 2 * cols, *pdb = pdw + (size_t)K * s->cout;
    for (size_t i = 0; i < (size_t)K * s->cout; i++) dw[i] += pdw[i];
    for (int co = 0; co < s->cout; co++) db[co] += pdb[co];
  }
}

/* ---- batch normalisation ------------------------------------------------ */

/* Per-channel pieces, shared by the single-replica kernels (one fused loop
 * per channel) and the synchronised ones (a loop per piece, with sums across
 * replicas in between), so that both do the same arithmetic. */

static double bn_channel_sum(int n, int c, long s, const float *x, int ch) {
  double sum = 0;
  for (int i = 0; i < n; i++) {
    const float *xi = x + ((long)i * c + ch) * s;
    for (long j = 0; j < s; j++) sum += xi[j];
  }
  return sum;
}

static double bn_channel_sqdev(int n, int c, long s, const float *x, int ch, double mean) {
  double sq = 0;
  for (int i = 0; i < n; i++) {
    const float *xi = x + ((long)i * c + ch) * s;
    for (long j = 0; j < s; j++) {
      double dv = xi[j] - mean;
      sq += dv * dv;
    }
  }
  return sq;
}

/* Normalise channel ch with the mean and the squared deviations sq of m
 * values; move the running statistics; save (mean, invstd). */
static void bn_channel_apply(int n, int c, long s, const float *x, const float *gamma,
                             const float *beta, float *rmean, float *rvar, float momentum,
                             float eps, float *y, float *save, int ch, double mean, double sq,
                             double m) {
  double var = sq / m, invstd = 1.0 / sqrt(var + eps);
  float scale = (float)(gamma[ch] * invstd), shift = (float)(beta[ch] - mean * gamma[ch] * invstd);
  for (int i = 0; i < n; i++) {
    const float *xi = x + ((long)i * c + ch) * s;
    float *yi = y + ((long)i * c + ch) * s;
    for (long j = 0; j < s; j++) yi[j] = xi[j] * scale + shift;
  }
  rmean[ch] = (float)((1 - momentum) * rmean[ch] + momentum * mean);
  rvar[ch] = (float)((1 - momentum) * rvar[ch] + momentum * var * m / (m - 1));
  save[ch] = (float)mean;
  save[c + ch] = (float)invstd;
}

void batchnorm_forward_train(int n, int c, long s, const float *x, const float *gamma,
                             const float *beta, float *rmean, float *rvar, float momentum,
                             float eps, float *y, float *save) {
  const double m = (double)n * s;
#pragma omp parallel for schedule(static)
  for (int ch = 0; ch < c; ch++) {
    double mean = bn_channel_sum(n, c, s, x, ch) / m;
    double sq = bn_channel_sqdev(n, c, s, x, ch, mean);
    bn_channel_apply(n, c, s, x, gamma, beta, rmean, rvar, momentum, eps, y, save, ch, mean, sq,
                     m);
  }
}

void batchnorm_sums(int n, int c, long s, const float *x, double *sum) {
#pragma omp parallel for schedule(static)
  for (int ch = 0; ch < c; ch++) sum[ch] = bn_channel_sum(n, c, s, x, ch);
}

void batchnorm_sqdev(int n, int c, long s, const float *x, const double *mean, double *sq) {
#pragma omp parallel for schedule(static)
  for (int ch = 0; ch < c; ch++) sq[ch] = bn_channel_sqdev(n, c, s, x, ch, mean[ch]);
}

void batchnorm_normalise(int n, int c, long s, const float *x, const float *gamma,
                         const float *beta, const double *mean, const double *sq, double m,
                         float *rmean, float *rvar, float momentum, float eps, float *y,
                         float *save) {
#pragma omp parallel for schedule(static)
  for (int ch = 0; ch < c; ch++)
    bn_channel_apply(n, c, s, x, gamma, beta, rmean, rvar, momentum, eps, y, save, ch, mean[ch],
                     sq[ch], m);
}

void batchnorm_forward_eval(int n, int c, long s, const float *x, const float *gamma,
                            const float *beta, const float *rmean, const float *rvar, float eps,
                            float *y) {
#pragma omp parallel for collapse(2) schedule(static)
  for (int i = 0; i < n; i++)
    for (int ch = 0; ch < c; ch++) {
      double invstd = 1.0 / sqrt((double)rvar[ch] + eps);
      float scale = (float)(gamma[ch] * invstd), shift = (float)(beta[ch] - rmean[ch] * gamma[ch] * invstd);
      const float *xi = x + ((long)i * c + ch) * s;
      float *yi = y + ((long)i * c + ch) * s;
      for (long j = 0; j < s; j++) yi[j] = xi[j] * scale + shift;
    }
}

/* sum dy and sum dy * xhat of channel ch */
static void bn_channel_grad_sums(int n, int c, long s, const float *x, const float *dy, int ch,
                                 double mean, double invstd, double *sdy, double *sdyx) {
  double a = 0, b = 0;
  for (int i = 0; i < n; i++) {
    const float *xi = x + ((long)i * c + ch) * s, *gi = dy + ((long)i * c + ch) * s;
    for (long j = 0; j < s; j++) {
      a += gi[j];
      b += gi[j] * ((xi[j] - mean) * invstd);
    }
  }
  *sdy = a;
  *sdyx = b;
}

/* dx += g*invstd*(dy - mdy - xhat*mdyx) on channel ch (mdy = mdyx = 0: evaluation mode) */
static void bn_channel_dx(int n, int c, long s, const float *x, const float *gamma,
                          const float *dy, float *dx, int ch, double mean, double invstd,
                          double mdy, double mdyx) {
  double a = gamma[ch] * invstd;
  for (int i = 0; i < n; i++) {
    const float *xi = x + ((long)i * c + ch) * s, *gi = dy + ((long)i * c + ch) * s;
    float *di = dx + ((long)i * c + ch) * s;
    for (long j = 0; j < s; j++) {
      double xhat = (xi[j] - mean) * invstd;
      di[j] += (float)(a * (gi[j] - mdy - xhat * mdyx));
    }
  }
}

void batchnorm_backward(int n, int c, long s, int train, const float *x, const float *gamma,
                        const float *rmean, const float *rvar, float eps, const float *save,
                        const float *dy, float *dx, float *dgamma, float *dbeta) {
  const double m = (double)n * s;
#pragma omp parallel for schedule(static)
  for (int ch = 0; ch < c; ch++) {
    double mean = train ? save[ch] : rmean[ch];
    double invstd = train ? save[c + ch] : 1.0 / sqrt((double)rvar[ch] + eps);
    double sdy, sdyx; /* sum dy, sum dy * xhat */
    bn_channel_grad_sums(n, c, s, x, dy, ch, mean, invstd, &sdy, &sdyx);
    dgamma[ch] += (float)sdyx;
    dbeta[ch] += (float)sdy;
    if (!dx) continue;
    /* train: dx = g*invstd*(dy - mean(dy) - xhat*mean(dy*xhat)); eval: g*invstd*dy */
    bn_channel_dx(n, c, s, x, gamma, dy, dx, ch, mean, invstd, train ? sdy / m : 0,
                  train ? sdyx / m : 0);
  }
}

void batchnorm_backward_sums(int n, int c, long s, const float *x, const float *save,
                             const float *dy, double *sums, float *dgamma, float *dbeta) {
#pragma omp parallel for schedule(static)
  for (int ch = 0; ch < c; ch++) {
    bn_channel_grad_sums(n, c, s, x, dy, ch, save[ch], save[c + ch], &sums[ch], &sums[c + ch]);
    dgamma[ch] += (float)sums[c + ch];
    dbeta[ch] += (float)sums[ch];
  }
}

void batchnorm_backward_dx(int n, int c, long s, const float *x, const float *gamma,
                           const float *save, const float *dy, const double *sums, double m,
                           float *dx) {
#pragma omp parallel for schedule(static)
  for (int ch = 0; ch < c; ch++)
    bn_channel_dx(n, c, s, x, gamma, dy, dx, ch, save[ch], save[c + ch], sums[ch] / m,
                  sums[c + ch] / m);
}

/* ---- linear ------------------------------------------------------------- */

/* Slices [lo, hi) of 0..len for OpenMP thread t of nt. */
static void slice_of(int len, int t, int nt, int *lo, int *hi) {
  *lo = (int)((long)len * t / nt);
  *hi = (int)((long)len * (t + 1) / nt);
}

void linear_forward(int n, int in, int out, const float *x, const float *w, const float *b,
                    float *y) {
  for (int i = 0; i < n; i++) memcpy(y + (long)i * out, b, sizeof(float) * out);
  /* each thread a slice of the outputs: y[:, lo:hi] += x W[lo:hi]^T */
#pragma omp parallel
  {
    int lo, hi;
    slice_of(out, omp_get_thread_num(), omp_get_num_threads(), &lo, &hi);
    if (hi > lo)
      sgemm(CblasNoTrans, CblasTrans, n, hi - lo, in, x, in, w + (long)lo * in, in, 1.0f, y + lo,
            out);
  }
}

void linear_backward(int n, int in, int out, const float *x, const float *w, const float *dy,
                     float *dw, float *db, float *dx) {
#pragma omp parallel
  {
    int lo, hi, nt = omp_get_num_threads(), t = omp_get_thread_num();
    slice_of(out, t, nt, &lo, &hi); /* dW[lo:hi] += dy[:, lo:hi]^T x */
    if (hi > lo)
      sgemm(CblasTrans, CblasNoTrans, hi - lo, in, n, dy + lo, out, x, in, 1.0f,
            dw + (long)lo * in, in);
    for (int o = lo; o < hi; o++)
      for (int i = 0; i < n; i++) db[o] += dy[(long)i * out + o];
    slice_of(in, t, nt, &lo, &hi); /* dx[:, lo:hi] += dy W[:, lo:hi] */
    if (dx && hi > lo)
      sgemm(CblasNoTrans, CblasNoTrans, n, hi - lo, out, dy, out, w + lo, in, 1.0f, dx + lo, in);
  }
}

/* ---- pooling and upsampling --------------------------------------------- */

/* Flat index (within one (n, c) volume) of the maximum of window (od, oh, ow). */
static long window_argmax(const float *x, int h, int w, int k, int od, int oh, int ow) {
  long best = ((long)od * k * h + (long)oh * k) * w + (long)ow * k;
  for (int a = 0; a < k; a++)
    for (int b = 0; b < k; b++)
      for (int c = 0; c < k; c++) {
        long i = (((long)od * k + a) * h + (long)oh * k + b) * w + (long)ow * k + c;
        if (x[i] > x[best]) best = i;
      }
  return best;
}

void maxpool3d_forward(int nc, int d, int h, int w, int k, const float *x, float *y) {
  int od = d / k, oh = h / k, ow = w / k;
  long S = (long)d * h * w, OS = (long)od * oh * ow;
#pragma omp parallel for collapse(2) schedule(static)
  for (int q = 0; q < nc; q++)
    for (int z = 0; z < od; z++)
      for (int yy = 0; yy < oh; yy++)
        for (int xx = 0; xx < ow; xx++) {
          const float *xq = x + q * S;
          y[q * OS + ((long)z * oh + yy) * ow + xx] = xq[window_argmax(xq, h, w, k, z, yy, xx)];
        }
}

void maxpool3d_backward(int nc, int d, int h, int w, int k, const float *x, const float *dy,
                        float *dx) {
  int od = d / k, oh = h / k, ow = w / k;
  long S = (long)d * h * w, OS = (long)od * oh * ow;
#pragma omp parallel for schedule(static)
  for (int q = 0; q < nc; q++)
    for (int z = 0; z < od; z++)
      for (int yy = 0; yy < oh; yy++)
        for (int xx = 0; xx < ow; xx++)
          dx[q * S + window_argmax(x + q * S, h, w, k, z, yy, xx)] +=
              dy[q * OS + ((long)z * oh + yy) * ow + xx];
}

void upsample_forward(int nc, int d, int h, int w, int fd, int fh, int fw, const float *x,
                      float *y) {
  long S = (long)d * h * w, OH = (long)h * fh, OW = (long)w * fw, OS = S * fd * fh * fw;
#pragma omp parallel for collapse(2) schedule(static)
  for (int q = 0; q < nc; q++)
    for (long z = 0; z < (long)d * fd; z++)
      for (long yy = 0; yy < OH; yy++) {
        const float *src = x + q * S + ((z / fd) * h + yy / fh) * w;
        float *dst = y + q * OS + (z * OH + yy) * OW;
        for (long xx = 0; xx < OW; xx++) dst[xx] = src[xx / fw];
      }
}

void upsample_backward(int nc, int d, int h, int w, int fd, int fh, int fw, const float *dy,
                       float *dx) {
  long S = (long)d * h * w, OH = (long)h * fh, OW = (long)w * fw, OS = S * fd * fh * fw;
#pragma omp parallel for schedule(static)
  for (int q = 0; q < nc; q++)
    for (long z = 0; z < (long)d * fd; z++)
      for (long yy = 0; yy < OH; yy++) {
        float *dst = dx + q * S + ((z / fd) * h + yy / fh) * w;
        const float *src = dy + q * OS + (z * OH + yy) * OW;
        for (long xx = 0; xx < OW; xx++) dst[xx / fw] += src[xx];
      }
}
