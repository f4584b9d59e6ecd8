/* test_layers.c - the layers of trainer/nn.h on the CPU backend: convolution
 * against a naive direct implementation, closed forms for BatchNorm, pooling
 * and upsampling, PyTorch-style initialisation, finite-difference gradient
 * checks of every layer kind, and shape errors. Tensors are read and written
 * through the backend's upload/download (nn.h), as on any backend. */
#include <float.h>
#include <math.h>
#include <omp.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "gradcheck.h"
#include "common/rng.h"
#include "trainer/layers_cpu.h"
#include "trainer/nn.h"

/* ---- convolution against direct summation ------------------------------- */

/* float32 unit roundoff and gamma_n = n u / (1 - n u) (Higham): a float32 sum
 * of n terms, in any order, with or without FMA, is within gamma_n x the sum
 * of their magnitudes. */
static const double U32 = FLT_EPSILON / 2;
static double gamma32(double n) { return n * U32 / (1 - n * U32); }

/* y = the exact (double) convolution; mag = the same with |w|, |x|, |b|, the
 * sum of magnitudes of each output's terms. */
static void naive_conv(const conv_shape *s, const float *x, const float *w, const float *b, double *y,
                       double *mag) {
  for (int n = 0; n < s->n; n++)
    for (int co = 0; co < s->cout; co++)
      for (int z = 0; z < s->od; z++)
        for (int yy = 0; yy < s->oh; yy++)
          for (int xx = 0; xx < s->ow; xx++) {
            double acc = b[co], am = fabs(b[co]);
            for (int ci = 0; ci < s->cin; ci++)
              for (int a = 0; a < s->kd; a++)
                for (int bb = 0; bb < s->kh; bb++)
                  for (int c = 0; c < s->kw; c++) {
                    int iz = z * s->sd - s->pd + a, iy = yy * s->sh - s->ph + bb, ix = xx * s->sw - s->pw + c;
                    if (iz < 0 || iz >= s->d || iy < 0 || iy >= s->h || ix < 0 || ix >= s->w) continue;
                    double t = (double)w[(((co * s->cin + ci) * s->kd + a) * s->kh + bb) * s->kw + c] *
                               x[(((long)(n * s->cin + ci) * s->d + iz) * s->h + iy) * s->w + ix];
                    acc += t;
                    am += fabs(t);
                  }
            y[(((long)(n * s->cout + co) * s->od + z) * s->oh + yy) * s->ow + xx] = acc;
            mag[(((long)(n * s->cout + co) * s->od + z) * s->oh + yy) * s->ow + xx] = am;
          }
}

static void check_conv_case(int cin, int cout, int d, int h, int w, nn_int3 k, nn_int3 st, nn_int3 p) {
  nn_net net;
  nn_init(&net);
  int x = nn_input(&net, "x", cin, d, h, w);
  int c = nn_conv(&net, "conv", x, cout, k, st, p);
  CHECK(c == 1);
  CHECK_OK(nn_finalize(&net, 5));
  CHECK_OK(nn_set_batch(&net, 2));
  ce_rng rng = ce_rng_make(1, 2, 3, 4);
  float *xv = gc_fill_input(&net, x, &rng, -1, 1);
  CHECK_OK(nn_forward(&net, 1));
  const nn_node *nd = &net.nodes[c];
  conv_shape s = {2, cin, d, h, w, cout, nd->d, nd->h, nd->w, k.v[0], k.v[1], k.v[2],
                  st.v[0], st.v[1], st.v[2], nd->p.v[0], nd->p.v[1], nd->p.v[2]};
  size_t ny = (size_t)2 * nd->size;
  double *ref = malloc(sizeof(double) * ny), *mag = malloc(sizeof(double) * ny), worst = 0;
  float *wt = gc_host_param(&net, 0), *b = gc_host_param(&net, 1), *y = gc_host_out(&net, c);
  naive_conv(&s, xv, wt, b, ref, mag);
  /* each output: K products and the bias, summed in float32 in whatever
     order the kernel (BLAS, the direct loop) takes: within gamma_{K+1} x the
     sum of magnitudes of its terms (the products are exact in double) */
  const double g = gamma32(cin * k.v[0] * k.v[1] * k.v[2] + 1);
  for (size_t i = 0; i < ny; i++) worst = fmax(worst, fabs(y[i] - ref[i]) / (g * mag[i]));
  CHECK_MSG(worst <= 1, "conv %dx%dx%d stride %d pad %d: error %.3g x the float32 bound", k.v[0],
            k.v[1], k.v[2], st.v[0], nd->p.v[0], worst);
  free(ref);
  free(mag);
  free(xv);
  free(wt);
  free(b);
  free(y);
  nn_free(&net);
}

static void test_conv_forward_naive(void) {
  check_conv_case(2, 3, 6, 7, 5, NN_K3(3, 3, 3), NN_K3(1, 1, 1), NN_K3(1, 1, 1));
  check_conv_case(2, 3, 7, 7, 7, NN_K3(3, 3, 3), NN_K3(2, 2, 2), NN_K3(1, 1, 1));
  check_conv_case(1, 4, 8, 8, 8, NN_K3(3, 3, 3), NN_K3(1, 1, 1), NN_K3(0, 0, 0));
  check_conv_case(3, 2, 4, 6, 6, NN_K3(1, 3, 3), NN_K3(1, 1, 1), NN_K3(0, 1, 1));
  check_conv_case(3, 2, 5, 5, 5, NN_K3(1, 1, 1), NN_K3(1, 1, 1), NN_K3(0, 0, 0));
  check_conv_case(3, 2, 7, 7, 7, NN_K3(1, 1, 1), NN_K3(2, 2, 2), NN_K3(0, 0, 0));
  check_conv_case(2, 2, 6, 5, 7, NN_K3(2, 3, 1), NN_K3(2, 1, 3), NN_K3(1, 0, 2));
  check_conv_case(2, 3, 5, 5, 5, NN_K3(3, 3, 3), NN_K3(1, 1, 1), NN_PAD_SAME3);
}

/* ---- closed forms ------------------------------------------------------- */

static void test_batchnorm_statistics(void) {
  nn_net net;
  nn_init(&net);
  int x = nn_input(&net, "x", 2, 1, 3, 4);
  int b = nn_batchnorm(&net, "bn", x);
  CHECK_OK(nn_finalize(&net, 1));
  CHECK_OK(nn_set_batch(&net, 3));
  float xv[3 * 24];
  ce_rng rng = ce_rng_make(3, 0, 0, 0);
  for (int i = 0; i < 3 * 24; i++) xv[i] = (float)(5 * ce_rng_uniform(&rng) + (i / 12 % 2) * 10);
  CHECK_OK(nn_input_upload(&net, x, xv));
  double mean[2] = {0}, var[2] = {0};
  for (int ch = 0; ch < 2; ch++) {
    for (int n = 0; n < 3; n++)
      for (int j = 0; j < 12; j++) mean[ch] += xv[(n * 2 + ch) * 12 + j] / 36.0;
    for (int n = 0; n < 3; n++)
      for (int j = 0; j < 12; j++) var[ch] += pow(xv[(n * 2 + ch) * 12 + j] - mean[ch], 2) / 36.0;
  }
  CHECK_OK(nn_forward(&net, 1));
  /* Bounds, not measured constants: the layer computes the statistics in
     double and y = x s + t in float32, with s = 1/sqrt(var + eps) and
     t = -mean s rounded to float32, so each y is within
     e = gamma_3 (|x s| + |t|) of the exact normalised value (any order,
     FMA or not). The test's own double sums add < 64 DBL_EPSILON. */
  const double dbl = 64 * DBL_EPSILON;
  float *y = gc_host_out(&net, b), *rmean = gc_host_param(&net, 2), *rvar = gc_host_param(&net, 3);
  for (int ch = 0; ch < 2; ch++) {
    const double sc = 1 / sqrt(var[ch] + 1e-5), t = -mean[ch] * sc;
    double m = 0, v = 0, emean = 0, emax = 0, ymean = 0;
    for (int n = 0; n < 3; n++)
      for (int j = 0; j < 12; j++) {
        double e = gamma32(3) * (fabs(xv[(n * 2 + ch) * 12 + j] * sc) + fabs(t));
        emean += e / 36;
        emax = fmax(emax, e);
        ymean += fabs(xv[(n * 2 + ch) * 12 + j] * sc + t) / 36;
      }
    for (int n = 0; n < 3; n++)
      for (int j = 0; j < 12; j++) m += y[(n * 2 + ch) * 12 + j] / 36.0;
    for (int n = 0; n < 3; n++)
      for (int j = 0; j < 12; j++) v += pow(y[(n * 2 + ch) * 12 + j] - m, 2) / 36.0;
    CHECK_CLOSE(m, 0, 0, emean + dbl);
    /* population variance, eps 1e-5: v = mean((y - m)^2) moves by at most
       2 mean|y| (2 emax) + (2 emax)^2 */
    CHECK_CLOSE(v, var[ch] / (var[ch] + 1e-5), dbl, 4 * ymean * emax + 4 * emax * emax);
    /* running statistics: momentum 0.1, unbiased variance, rounded to float32
       (U32), the float momentum 0.1f and 1 - 0.1f off 0.1 and 0.9 by `rep` */
    const double rep = fabs((double)0.1f - 0.1) / 0.1 + fabs((double)(1.0f - 0.1f) - 0.9) / 0.9;
    CHECK_CLOSE(rmean[ch], 0.1 * mean[ch], U32 + rep + dbl, 0);
    CHECK_CLOSE(rvar[ch], 0.9 + 0.1 * var[ch] * 36 / 35, U32 + rep + dbl, 0);
  }
  free(y);
  /* evaluation mode uses the running statistics */
  CHECK_OK(nn_forward(&net, 0));
  double rm = rmean[1], rv = rvar[1], sc = 1 / sqrt(rv + 1e-5);
  y = gc_host_out(&net, b);
  CHECK_CLOSE(y[12], (xv[12] - rm) * sc, dbl, gamma32(3) * (fabs(xv[12] * sc) + fabs(rm * sc)));
  free(y);
  free(rmean);
  free(rvar);
  /* one value per channel cannot be normalised in training mode */
  CHECK_OK(nn_set_batch(&net, 1));
  nn_net one;
  nn_init(&one);
  int x1 = nn_input(&one, "x", 1, 1, 1, 1);
  nn_batchnorm(&one, "bn", x1);
  CHECK_OK(nn_finalize(&one, 1));
  CHECK_OK(nn_set_batch(&one, 1));
  CHECK_ERR(nn_forward(&one, 1), "more than 1 value per channel");
  nn_free(&one);
  nn_free(&net);
}

static void test_pool_upsample_exact(void) {
  float x[2 * 4 * 4 * 4], y[2 * 8], up[2 * 2 * 8 * 8], dx[2 * 64];
  for (int i = 0; i < 128; i++) x[i] = (float)((i * 37) % 101);
  maxpool3d_forward(2, 4, 4, 4, 2, x, y);
  for (int q = 0; q < 2; q++)
    for (int z = 0; z < 2; z++)
      for (int yy = 0; yy < 2; yy++)
        for (int xx = 0; xx < 2; xx++) {
          float m = -1;
          for (int a = 0; a < 8; a++)
            m = fmaxf(m, x[q * 64 + (2 * z + a / 4) * 16 + (2 * yy + a / 2 % 2) * 4 + 2 * xx + a % 2]);
          CHECK(y[q * 8 + z * 4 + yy * 2 + xx] == m);
        }
  /* pooling of an odd size drops the last plane (floor mode): 5 -> 2 */
  float x5[125], y5[8];
  for (int i = 0; i < 125; i++) x5[i] = (i % 5 == 4 || i / 25 == 4 || i / 5 % 5 == 4) ? 1000.0f : (float)i;
  maxpool3d_forward(1, 5, 5, 5, 2, x5, y5);
  for (int i = 0; i < 8; i++) CHECK(y5[i] < 1000);
  /* nearest upsampling (1, 2, 2) */
  float s[2 * 2 * 4 * 4];
  for (int i = 0; i < 64; i++) s[i] = (float)i;
  upsample_forward(2, 2, 4, 4, 1, 2, 2, s, up);
  for (int q = 0; q < 2; q++)
    for (int z = 0; z < 2; z++)
      for (int yy = 0; yy < 8; yy++)
        for (int xx = 0; xx < 8; xx++)
          CHECK(up[((q * 2 + z) * 8 + yy) * 8 + xx] == s[((q * 2 + z) * 4 + yy / 2) * 4 + xx / 2]);
  memset(dx, 0, sizeof dx);
  for (int i = 0; i < 256; i++) up[i] = 1;
  upsample_backward(2, 2, 4, 4, 1, 2, 2, up, dx);
  for (int i = 0; i < 64; i++) CHECK(dx[i] == 4);
}

static void test_init_pytorch_defaults(void) {
  nn_net a, b;
  for (int k = 0; k < 2; k++) {
    nn_net *net = k ? &b : &a;
    nn_init(net);
    int x = nn_input(net, "x", 8, 4, 4, 4);
    int c = nn_conv(net, "conv", x, 16, NN_K3(3, 3, 3), NN_K3(1, 1, 1), NN_PAD_SAME3);
    int n = nn_batchnorm(net, "bn", c);
    int f = nn_view(net, "flat", n, 16 * 64, 1, 1, 1);
    nn_linear(net, "fc", f, 10);
    CHECK_OK(nn_finalize(net, k ? 43 : 42));
  }
  float *pa[7];
  for (int i = 0; i < 7; i++) pa[i] = gc_host_param(&a, i);
  const nn_param *w = &a.params[0];
  double bound = 1 / sqrt(8.0 * 27), sum = 0, sq = 0, mx = 0;
  for (int64_t i = 0; i < w->n; i++) {
    sum += pa[0][i];
    sq += (double)pa[0][i] * pa[0][i];
    mx = fmax(mx, fabs(pa[0][i]));
  }
  CHECK(mx <= bound && mx > 0.95 * bound);
  CHECK_CLOSE(sum / w->n, 0, 0, 0.05 * bound);
  CHECK_CLOSE(sq / w->n, bound * bound / 3, 0.05, 0); /* uniform(-b, b) variance b^2/3 */
  for (int64_t i = 0; i < a.params[1].n; i++) CHECK(fabs(pa[1][i]) <= bound);
  for (int i = 0; i < 16; i++)
    CHECK(pa[2][i] == 1 && pa[3][i] == 0 && pa[4][i] == 0 && pa[5][i] == 1);
  double lb = 1 / sqrt(1024.0);
  for (int64_t i = 0; i < a.params[6].n; i++) CHECK(fabs(pa[6][i]) <= lb);
  CHECK(!strcmp(a.params[6].name, "fc.weight") && a.params[6].shape[0] == 10 && a.params[6].shape[1] == 1024);
  CHECK(nn_param_count(&a) == 16 * 8 * 27 + 16 + 2 * 16 + 10 * 1024 + 10);
  /* another seed draws other weights; the same seed the same ones */
  float *pb = gc_host_param(&b, 0);
  CHECK(memcmp(pa[0], pb, sizeof(float) * a.params[0].n) != 0);
  free(pb);
  CHECK_OK(nn_init_params(&b, 42));
  pb = gc_host_param(&b, 0);
  CHECK(memcmp(pa[0], pb, sizeof(float) * a.params[0].n) == 0);
  free(pb);
  for (int i = 0; i < 7; i++) free(pa[i]);
  nn_free(&a);
  nn_free(&b);
}

/* ---- gradient checks ---------------------------------------------------- */

/* A net "x -> layer(s) -> out" checked by gc_net. */
typedef int (*net_builder)(nn_net *net, int x);

static void gradcheck_layer(const char *what, int c, int d, int h, int w, int batch, net_builder build,
                            double lo, double hi, int train) {
  nn_net net;
  nn_init(&net);
  int x = nn_input(&net, "x", c, d, h, w);
  net.nodes[x].needs_grad = 1;
  int out = build(&net, x);
  CHECK_MSG(out > 0, "%s: build failed: %s", what, ce_err_msg());
  if (out <= 0) return;
  CHECK_OK(nn_finalize(&net, 11));
  CHECK_OK(nn_set_batch(&net, batch));
  ce_rng rng = ce_rng_make(5, 6, 7, 8);
  size_t nx = (size_t)batch * net.nodes[x].size;
  float *xv = malloc(sizeof(float) * nx);
  gc_fill(xv, nx, &rng, lo, hi);
  /* keep values away from ReLU's and max-pooling's kinks: |x| >= 0.1 and
     distinct values within windows (a shuffled ladder) */
  if (lo < 0)
    for (size_t i = 0; i < nx; i++)
      if (fabsf(xv[i]) < 0.1f) xv[i] = xv[i] < 0 ? -0.1f - xv[i] : 0.1f + xv[i];
  CHECK_OK(nn_input_upload(&net, x, xv));
  free(xv);
  (void)train;
  gc_net(&net, x, out, gc_dot_objective, NULL, 1e-2, 1e-2, what, NULL);
  nn_free(&net);
}

static int b_conv333(nn_net *n, int x) { return nn_conv(n, "conv", x, 3, NN_K3(3, 3, 3), NN_K3(1, 1, 1), NN_K3(1, 1, 1)); }
static int b_conv_stem(nn_net *n, int x) { return nn_conv(n, "conv", x, 3, NN_K3(3, 3, 3), NN_K3(1, 1, 1), NN_K3(0, 0, 0)); }
static int b_conv_s2(nn_net *n, int x) { return nn_conv(n, "conv", x, 3, NN_K3(3, 3, 3), NN_K3(2, 2, 2), NN_K3(1, 1, 1)); }
static int b_conv133(nn_net *n, int x) { return nn_conv(n, "conv", x, 2, NN_K3(1, 3, 3), NN_K3(1, 1, 1), NN_K3(0, 1, 1)); }
static int b_conv1(nn_net *n, int x) { return nn_conv(n, "conv", x, 3, NN_K3(1, 1, 1), NN_K3(1, 1, 1), NN_K3(0, 0, 0)); }
static int b_conv1s2(nn_net *n, int x) { return nn_conv(n, "conv", x, 3, NN_K3(1, 1, 1), NN_K3(2, 2, 2), NN_K3(0, 0, 0)); }
static int b_conv2d(nn_net *n, int x) { return nn_conv(n, "conv2d", x, 3, NN_K3(1, 3, 3), NN_K3(1, 1, 1), NN_PAD_SAME3); }
static int b_bn(nn_net *n, int x) { return nn_batchnorm(n, "bn", x); }
static int b_relu(nn_net *n, int x) { return nn_relu(n, "relu", x); }
static int b_tanh(nn_net *n, int x) { return nn_tanh(n, "tanh", x); }

static int b_linear(nn_net *n, int x) { return nn_linear(n, "fc", x, 5); }
static int b_up(nn_net *n, int x) { return nn_upsample(n, "up", x, NN_K3(1, 2, 2)); }
/* a view as the output: its gradient buffer is its input's (nn_seed_grad) */
static int b_tanh_view(nn_net *n, int x) {
  int t = nn_tanh(n, "tanh", x);
  return t < 0 ? -1 : nn_view(n, "flat", t, (int)n->nodes[t].size, 1, 1, 1);
}
static int b_up2(nn_net *n, int x) { return nn_upsample(n, "up", x, NN_K3(2, 2, 2)); }
/* fan-out, add, slices, concat and views in one: y = cat(slice0(x) + slice1(x), view(x)) */
static int b_plumbing(nn_net *n, int x) {
  int a = nn_slice(n, "s0", x, 0, 1), b = nn_slice(n, "s1", x, 1, 1);
  int s = nn_add(n, "add", a, b);
  int v = nn_view(n, "v", x, 2, 1, 1, 1 * 3 * 4); /* (2, 1, 3, 4) as (2, 1, 1, 12): not concat-able, so flatten both */
  int fs = nn_view(n, "fs", s, 12, 1, 1, 1), fv = nn_view(n, "fv", v, 24, 1, 1, 1);
  int ins[2] = {fs, fv};
  int c = nn_concat(n, "cat", ins, 2);
  return nn_tanh(n, "tanh", c); /* nonlinear so the fan-out sums matter */
}
static void test_gradients(void) {
  gradcheck_layer("conv 3x3x3", 2, 4, 5, 4, 2, b_conv333, -1, 1, 1);
  gradcheck_layer("conv 3x3x3 one input channel (direct)", 1, 5, 5, 6, 2, b_conv_stem, -1, 1, 1);
  gradcheck_layer("conv 3x3x3 stride 2", 2, 5, 5, 6, 2, b_conv_s2, -1, 1, 1);
  gradcheck_layer("conv 1x3x3", 3, 3, 5, 5, 2, b_conv133, -1, 1, 1);
  gradcheck_layer("conv 1x1x1", 3, 3, 3, 3, 2, b_conv1, -1, 1, 1);
  gradcheck_layer("conv 1x1x1 stride 2", 2, 5, 5, 5, 2, b_conv1s2, -1, 1, 1);
  gradcheck_layer("conv2d 'same'", 2, 1, 6, 6, 2, b_conv2d, -1, 1, 1);
  gradcheck_layer("batchnorm3d", 3, 2, 3, 3, 2, b_bn, -1, 2, 1);
  gradcheck_layer("batchnorm2d", 3, 1, 4, 4, 2, b_bn, -1, 2, 1);
  gradcheck_layer("relu", 2, 2, 3, 3, 2, b_relu, -1, 1, 1);
  gradcheck_layer("tanh", 2, 2, 3, 3, 2, b_tanh, -1.5, 1.5, 1);
  gradcheck_layer("linear", 3, 2, 2, 2, 3, b_linear, -1, 1, 1);
  gradcheck_layer("upsample (1,2,2)", 2, 2, 3, 3, 2, b_up, -1, 1, 1);
  gradcheck_layer("upsample 2", 2, 2, 3, 3, 2, b_up2, -1, 1, 1);
  gradcheck_layer("add/slice/concat/view", 2, 1, 3, 4, 2, b_plumbing, -1, 1, 1);
  gradcheck_layer("view as output", 2, 2, 2, 3, 2, b_tanh_view, -1, 1, 1);
  /* max pooling: a shuffled ladder of distinct values 0.1 apart */
  {
    nn_net net;
    nn_init(&net);
    int x = nn_input(&net, "x", 2, 4, 4, 5);
    net.nodes[x].needs_grad = 1;
    int p = nn_maxpool(&net, "pool", x, 2);
    CHECK_OK(nn_finalize(&net, 1));
    CHECK_OK(nn_set_batch(&net, 2));
    float xv[2 * 2 * 80];
    int n = 2 * 2 * 80;
    for (int i = 0; i < n; i++) xv[i] = (float)(((i * 131) % n) * 0.1 - 10);
    CHECK_OK(nn_input_upload(&net, x, xv));
    gc_net(&net, x, p, gc_dot_objective, NULL, 1e-2, 1e-2, "maxpool", NULL);
    nn_free(&net);
  }
  /* BatchNorm in evaluation mode, with non-trivial running statistics */
  {
    nn_net net;
    nn_init(&net);
    int x = nn_input(&net, "x", 2, 2, 2, 2);
    net.nodes[x].needs_grad = 1;
    int b = nn_batchnorm(&net, "bn", x);
    CHECK_OK(nn_finalize(&net, 1));
    const float rm = 0.3f, rv = 2.0f, gamma1 = 1.7f;
    CHECK_OK(nn_upload(&net, net.params[2].w, &rm, 1));
    CHECK_OK(nn_upload(&net, net.params[3].w, &rv, 1));
    CHECK_OK(nn_upload(&net, net.params[0].w + 1, &gamma1, 1));
    CHECK_OK(nn_set_batch(&net, 2));
    ce_rng rng = ce_rng_make(1, 1, 1, 1);
    free(gc_fill_input(&net, x, &rng, -1, 1));
    int eval = 0;
    gc_net(&net, x, b, gc_dot_objective, &eval, 1e-2, 1e-2, "batchnorm eval", NULL);
    nn_free(&net);
  }
}

/* A gradient check must be able to fail: corrupt one backward and see it caught. */
static void test_gradcheck_detects_errors(void) {
  nn_net net;
  nn_init(&net);
  int x = nn_input(&net, "x", 2, 3, 3, 3);
  net.nodes[x].needs_grad = 1;
  int c = b_conv333(&net, x);
  CHECK_OK(nn_finalize(&net, 3));
  CHECK_OK(nn_set_batch(&net, 2));
  ce_rng rng = ce_rng_make(1, 1, 1, 2);
  free(gc_fill_input(&net, x, &rng, -1, 1));
  float r[2 * 3 * 27], seed[2 * 3 * 27];
  gc_fill(r, 162, &rng, -1, 1);
  gc_dot_objective(&net, c, r, seed, NULL);
  CHECK_OK(nn_grad_upload(&net, c, seed));
  nn_seed_grad(&net, c);
  CHECK_OK(nn_zero_grad(&net));
  CHECK_OK(nn_backward(&net));
  float *g = malloc(sizeof(float) * net.params[0].n);
  CHECK_OK(nn_param_grad_download(&net, 0, g));
  g[5] += 0.5f * fabsf(g[5]) + 0.5f; /* one wrong entry */
  int failed_before = check_test_failed_;
  gc_tensor(&net, c, r, gc_dot_objective, NULL, net.params[0].w, g, (size_t)net.params[0].n, 1e-2,
            1e-2, "deliberately wrong", 0);
  CHECK_MSG(check_test_failed_ && !failed_before, "the corrupted gradient was not detected");
  check_test_failed_ = failed_before; /* the expected failure is not one */
  free(g);
  nn_free(&net);
}

static void test_shape_errors(void) {
  nn_net net;
  nn_init(&net);
  int x = nn_input(&net, "x", 2, 4, 4, 4);
  CHECK_ERR(nn_conv(&net, "big", x, 2, NN_K3(5, 5, 5), NN_K3(1, 1, 1), NN_K3(0, 0, 0)), "smaller than the kernel");
  CHECK_ERR(nn_conv(&net, "even", x, 2, NN_K3(2, 2, 2), NN_K3(1, 1, 1), NN_PAD_SAME3), "'same' padding");
  CHECK_ERR(nn_conv(&net, "strided", x, 2, NN_K3(3, 3, 3), NN_K3(2, 2, 2), NN_PAD_SAME3), "stride 1");
  CHECK_ERR(nn_view(&net, "v", x, 3, 1, 1, 1), "elements");
  CHECK_ERR(nn_slice(&net, "s", x, 1, 2), "outside");
  CHECK_ERR(nn_maxpool(&net, "p", x, 5), "does not fit");
  int y = nn_input(&net, "y", 2, 4, 4, 3);
  CHECK_ERR(nn_add(&net, "a", x, y), "cannot add");
  int xs[2] = {x, y};
  CHECK_ERR(nn_concat(&net, "c", xs, 2), "spatially");
  CHECK_ERR(nn_relu(&net, "r", 17), "does not exist");
  CHECK_ERR(nn_forward(&net, 1), "nn_set_batch");
  nn_free(&net);
}

/* Scratch is sized for the thread count at nn_set_batch(): more threads
 * later is an error, not an overflow. */
static void test_thread_count_change(void) {
  int before = omp_get_max_threads();
  omp_set_num_threads(1);
  nn_net net;
  nn_init(&net);
  int x = nn_input(&net, "x", 2, 5, 5, 5);
  nn_conv(&net, "conv", x, 3, NN_K3(3, 3, 3), NN_K3(1, 1, 1), NN_PAD_SAME3);
  CHECK_OK(nn_finalize(&net, 1));
  CHECK_OK(nn_set_batch(&net, 4));
  CHECK_OK(nn_forward(&net, 1));
  omp_set_num_threads(2);
  CHECK_ERR(nn_forward(&net, 1), "thread count grew");
  omp_set_num_threads(before);
  nn_free(&net);
}

int main(void) {
  if (nn_backend_init(&nn_backend_cpu, 0) < 0) { /* OpenBLAS to 1 thread */
    fprintf(stderr, "%s\n", ce_err_msg());
    return 1;
  }
  RUN(test_conv_forward_naive);
  RUN(test_batchnorm_statistics);
  RUN(test_pool_upsample_exact);
  RUN(test_init_pytorch_defaults);
  RUN(test_gradients);
  RUN(test_gradcheck_detects_errors);
  RUN(test_shape_errors);
  RUN(test_thread_count_change);
  nn_backend_finish(&nn_backend_cpu);
  return check_report();
}
