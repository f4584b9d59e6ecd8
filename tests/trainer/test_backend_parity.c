/* test_backend_parity.c - the backend-parity harness (parity.h) in CI.
 *
 *   - the CPU backend: every layer kind (forward, backward), the loss, Adam
 *     (three kinds) and the reducer paths, through the table, against the
 *     literal double-precision references within the derived tolerances;
 *     and one whole COEmuNet training step against the CPU reference step,
 *     bit for bit (the same backend: exact by construction);
 *   - a broken backend (the CPU table with one fault at a time: a leaky
 *     ReLU, BatchNorm with another eps, a loss that ignores the seed scale)
 *     must fail the layer checks, and its training step must lie outside
 *     the noise-floor tolerance, so the harness can fail;
 *   - the CUDA backend, where this coemu was built with it and a device is
 *     present: the same layer checks (convolutions restricted to cuDNN's
 *     plain-sum algorithms, COEMU_CUDNN_ALGOS=sums, for which the
 *     elementwise bound holds) and the training step within
 *     PAR_FLOOR_FACTOR x the noise floor measured on this host. Without a
 *     build or a device it says so and skips that half.
 */
#include <stdio.h>
#include <stdlib.h>

#include "check.h"
#include "parity.h"

/* ---- a broken backend --------------------------------------------------- */

static int broken_mode; /* 1: leaky ReLU; 2: BatchNorm eps x 4; 3: loss seed scale ignored */

static int broken_forward(nn_net *net, nn_node *nd, int train) {
  if (broken_mode == 2 && nd->kind == NN_BATCHNORM) {
    float eps = nd->eps;
    nd->eps = 4 * eps;
    int rc = nn_backend_cpu.forward(net, nd, train);
    nd->eps = eps;
    return rc;
  }
  CE_TRY(nn_backend_cpu.forward(net, nd, train));
  if (broken_mode == 1 && nd->kind == NN_RELU) { /* y = x for x > 0, else 0.01 x */
    const float *x = net->nodes[nd->in[0]].out;
    for (long i = 0; i < (long)net->batch * nd->size; i++)
      if (x[i] < 0) nd->out[i] = 0.01f * x[i];
  }
  return 0;
}

static int broken_loss_eval(void *l, const float *p, const float *t, int m, float seed_scale,
                            struct loss_value *out, float *grad) {
  return nn_backend_cpu.loss_eval(l, p, t, m, broken_mode == 3 ? 1.0f : seed_scale, out, grad);
}

static nn_backend broken_backend;

static void broken_setup(void) {
  broken_backend = nn_backend_cpu;
  broken_backend.name = "broken";
  broken_backend.forward = broken_forward;
  broken_backend.loss_eval = broken_loss_eval;
}

/* ---- tests -------------------------------------------------------------- */

static par_step_ref REF;

static void report(const char *what, const par_report *r) {
  fprintf(stderr, "  %s: %ld values checked, %ld out of tolerance, %d failed calls, worst %.3g x "
          "tolerance%s%s\n", what, r->checks, r->failures, r->errors, r->worst,
          r->first[0] ? "; first: " : "", r->first);
}

static void test_cpu_layers(void) {
  par_report r;
  memset(&r, 0, sizeof r);
  r.verbose = 1;
  par_layers(&nn_backend_cpu, &r);
  report("cpu", &r);
  CHECK_MSG(r.failures == 0 && r.errors == 0, "the CPU backend fails the parity checks: %s", r.first);
  CHECK(r.checks > 5000);
}

static void test_broken_layers_fail(void) {
  for (broken_mode = 1; broken_mode <= 3; broken_mode++) {
    par_report r;
    memset(&r, 0, sizeof r);
    par_layers(&broken_backend, &r);
    char what[64];
    snprintf(what, sizeof what, "broken backend, fault %d", broken_mode);
    report(what, &r);
    CHECK_MSG(r.failures > 0, "fault %d: the layer checks did not catch it", broken_mode);
  }
  broken_mode = 0;
}

static void test_cpu_step(void) {
  CHECK_OK(par_step_reference(&REF, 1));
  if (!REF.ok) return;
  par_mismatch m;
  int exact = 0, within = 0;
  CHECK_OK(par_step(&nn_backend_cpu, &REF, &m, &exact, &within));
  /* the reference itself, rebuilt and stepped again: bit for bit */
  CHECK_MSG(exact, "the CPU step differs from itself: loss %.3g grad %.3g", m.loss, m.grad);
  fprintf(stderr, "  noise floor: loss %.2e grad %.2e update %.2e BN stats %.2e\n", REF.floor.loss,
          REF.floor.grad, REF.floor.update, REF.floor.stats);
}

static void test_broken_step_fails(void) {
  if (!REF.ok) return;
  broken_mode = 1;
  par_mismatch m;
  int exact = 1, within = 1;
  CHECK_OK(par_step(&broken_backend, &REF, &m, &exact, &within));
  fprintf(stderr, "  broken (leaky ReLU) step: loss %.2e grad %.2e update %.2e BN stats %.2e\n",
          m.loss, m.grad, m.update, m.stats);
  CHECK_MSG(!within && !exact, "a leaky ReLU lies within %g x the noise floor", PAR_FLOOR_FACTOR);
  broken_mode = 0;
}

/* tf32 and bf16 (precision.h): the convolutions and linear layers with
 * rounded operands against exact references from the same rounded operands,
 * within the float32 bounds (the products are exact); the negative controls:
 * unrounded arithmetic against rounded references, and the other way round,
 * must fail. */
static void test_cpu_precision_layers(void) {
  for (int p = NN_TF32; p <= NN_BF16; p++) {
    par_report r;
    memset(&r, 0, sizeof r);
    r.verbose = 1;
    par_layers_precision(&nn_backend_cpu, &r, p, p);
    char what[64];
    snprintf(what, sizeof what, "cpu, %s emulated", nn_precision_name(p));
    report(what, &r);
    CHECK_MSG(r.failures == 0 && r.errors == 0, "%s: %s", what, r.first);
    CHECK(r.checks > 1000);
    for (int swap = 0; swap < 2; swap++) {
      memset(&r, 0, sizeof r);
      par_layers_precision(&nn_backend_cpu, &r, swap ? p : NN_FLOAT32, swap ? NN_FLOAT32 : p);
      snprintf(what, sizeof what, "control: run %s, reference %s",
               swap ? nn_precision_name(p) : "float32", swap ? "float32" : nn_precision_name(p));
      report(what, &r);
      CHECK_MSG(r.failures > 0 && r.errors == 0, "%s: the checks did not tell them apart", what);
    }
  }
}

/* A bf16 step: deterministic, off the float32 one (printed: the effect of
 * one step), and its master weights stay float32 (not bf16 values); the
 * checkpoint of a bf16-trained model moves between tables bit for bit. */
static void test_cpu_bf16_step(void) {
  par_step_precision = NN_BF16;
  par_step_rec a, b;
  CHECK_OK(par_one_step(&nn_backend_cpu, 0, &a));
  CHECK_OK(par_one_step(&nn_backend_cpu, 0, &b));
  long same = a.loss == b.loss, not_bf16 = 0, n = 0;
  for (int i = 0; i < a.nparams && REF.ok; i++)
    for (int64_t j = 0; j < REF.shape.net.params[i].n; j++) {
      same += memcmp(&a.w[i][j], &b.w[i][j], sizeof(float)) == 0;
      n++;
      not_bf16 += a.w[i][j] != nn_round_bf16(a.w[i][j]);
    }
  CHECK_MSG(same == n + 1, "the bf16 step differs from itself (%ld of %ld values)", n + 1 - same,
            n + 1);
  CHECK_MSG(not_bf16 > n / 2, "only %ld of %ld weights keep float32 bits after a bf16 step",
            not_bf16, n);
  if (REF.ok) {
    par_mismatch m = par_compare(&REF.shape.net, &a, &REF.ref, &REF.init);
    fprintf(stderr, "  bf16 step vs float32: loss %.2e grad %.2e update %.2e BN stats %.2e\n",
            m.loss, m.grad, m.update, m.stats);
    /* bf16 operands are not float32 ones: the gradient must move off float32's
       by far more than float32's own noise floor */
    CHECK_MSG(m.grad > PAR_FLOOR_FACTOR * REF.floor.grad,
              "the bf16 gradient lies within %.2e of float32's", m.grad);
  }
  par_rec_free(&a);
  par_rec_free(&b);
  const char *dir = check_scratch("parity_bf16");
  char p1[1100], p2[1100];
  snprintf(p1, sizeof p1, "%s/a.ckpt", dir);
  snprintf(p2, sizeof p2, "%s/b.ckpt", dir);
  long d = par_checkpoint(&nn_backend_cpu, &broken_backend, p1, p2, 0);
  CHECK_MSG(d == 0, "bf16 checkpoint, cpu -> second table: %ld values differ (%s)", d,
            d < 0 ? ce_err_msg() : "");
  check_scratch_remove();
  par_step_precision = NN_FLOAT32;
}

/* Checkpoints through the table: saved on one backend, loaded on another,
 * bit for bit (here the CPU backend and the guard-free copy of its table,
 * "broken" with no fault: two tables, one arithmetic). */
static void test_checkpoint_between_tables(void) {
  const char *dir = check_scratch("parity");
  char p1[1100], p2[1100];
  snprintf(p1, sizeof p1, "%s/a.ckpt", dir);
  snprintf(p2, sizeof p2, "%s/b.ckpt", dir);
  broken_mode = 0;
  long d = par_checkpoint(&nn_backend_cpu, &broken_backend, p1, p2, 0);
  CHECK_MSG(d == 0, "cpu -> second table: %ld values differ (%s)", d, d < 0 ? ce_err_msg() : "");
  d = par_checkpoint(&broken_backend, &nn_backend_cpu, p1, p2, 0);
  CHECK_MSG(d == 0, "second table -> cpu: %ld values differ (%s)", d, d < 0 ? ce_err_msg() : "");
  /* the comparison can fail: without the load it finds the other weights */
  d = par_checkpoint(&nn_backend_cpu, &broken_backend, p1, p2, 1);
  CHECK_MSG(d > 1000, "the negative control (no load) found only %ld differing values", d);
  check_scratch_remove();
}

static void test_cuda(void) {
  const nn_backend *be = nn_backend_by_name("cuda");
  if (!be) {
    fprintf(stderr, "SKIP the CUDA half: %s\n", ce_err_msg());
    return;
  }
  /* the elementwise bounds hold for cuDNN's plain-sum algorithms */
  setenv("COEMU_CUDNN_ALGOS", "sums", 1);
  if (nn_backend_init(be, 0) < 0) {
    fprintf(stderr, "SKIP the CUDA half: this coemu has the CUDA backend, but %s\n", ce_err_msg());
    return;
  }
  par_report r;
  memset(&r, 0, sizeof r);
  r.verbose = 1;
  par_layers(be, &r);
  report("cuda", &r);
  CHECK_MSG(r.failures == 0 && r.errors == 0, "the CUDA backend fails the parity checks: %s", r.first);
  if (REF.ok) {
    par_mismatch m;
    int exact = 0, within = 0;
    CHECK_OK(par_step(be, &REF, &m, &exact, &within));
    fprintf(stderr, "  cuda step vs cpu: loss %.2e grad %.2e update %.2e BN stats %.2e (floor x %g: "
            "%.2e %.2e %.2e %.2e)\n", m.loss, m.grad, m.update, m.stats, PAR_FLOOR_FACTOR,
            PAR_FLOOR_FACTOR * REF.floor.loss, PAR_FLOOR_FACTOR * REF.floor.grad,
            PAR_FLOOR_FACTOR * REF.floor.update, PAR_FLOOR_FACTOR * REF.floor.stats);
    CHECK_MSG(within, "the CUDA training step lies outside %g x the noise floor", PAR_FLOOR_FACTOR);
  }
  /* tf32 and bf16: the same rounded-operand references (cuDNN's plain-sum
     algorithms); the bf16 step against the CPU's bf16 emulation, within
     PAR_FLOOR_FACTOR x the emulation's own noise floor */
  for (int p = NN_TF32; p <= NN_BF16; p++) {
    memset(&r, 0, sizeof r);
    r.verbose = 1;
    par_layers_precision(be, &r, p, p);
    report(nn_precision_name(p), &r);
    CHECK_MSG(r.failures == 0 && r.errors == 0, "cuda %s: %s", nn_precision_name(p), r.first);
  }
  par_step_precision = NN_BF16;
  par_step_ref R16;
  CHECK_OK(par_step_reference(&R16, 1));
  if (R16.ok) {
    par_mismatch m;
    int exact = 0, within = 0;
    CHECK_OK(par_step(be, &R16, &m, &exact, &within));
    fprintf(stderr, "  cuda bf16 step vs cpu bf16: loss %.2e grad %.2e update %.2e BN stats %.2e "
            "(floor x %g: %.2e %.2e %.2e %.2e)\n", m.loss, m.grad, m.update, m.stats,
            PAR_FLOOR_FACTOR, PAR_FLOOR_FACTOR * R16.floor.loss, PAR_FLOOR_FACTOR * R16.floor.grad,
            PAR_FLOOR_FACTOR * R16.floor.update, PAR_FLOOR_FACTOR * R16.floor.stats);
    CHECK_MSG(within, "the CUDA bf16 step lies outside %g x the CPU emulation's noise floor",
              PAR_FLOOR_FACTOR);
  }
  par_step_reference_free(&R16);
  par_step_precision = NN_FLOAT32;
  /* checkpoints: trained on the GPU, read on the CPU, and back */
  const char *dir = check_scratch("parity_cuda");
  char p1[1100], p2[1100];
  snprintf(p1, sizeof p1, "%s/a.ckpt", dir);
  snprintf(p2, sizeof p2, "%s/b.ckpt", dir);
  long d = par_checkpoint(be, &nn_backend_cpu, p1, p2, 0);
  CHECK_MSG(d == 0, "cuda -> cpu checkpoint: %ld values differ (%s)", d, d < 0 ? ce_err_msg() : "");
  d = par_checkpoint(&nn_backend_cpu, be, p1, p2, 0);
  CHECK_MSG(d == 0, "cpu -> cuda checkpoint: %ld values differ (%s)", d, d < 0 ? ce_err_msg() : "");
  check_scratch_remove();
  nn_backend_finish(be);
}

int main(void) {
  if (nn_backend_init(&nn_backend_cpu, 0) < 0) {
    fprintf(stderr, "%s\n", ce_err_msg());
    return 1;
  }
  broken_setup();
  if (nn_backend_init(&broken_backend, 0) < 0) {
    fprintf(stderr, "%s\n", ce_err_msg());
    return 1;
  }
  RUN(test_cpu_layers);
  RUN(test_broken_layers_fail);
  RUN(test_cpu_step);
  RUN(test_broken_step_fails);
  RUN(test_checkpoint_between_tables);
  RUN(test_cpu_precision_layers);
  RUN(test_cpu_bf16_step);
  RUN(test_cuda);
  par_step_reference_free(&REF);
  nn_backend_finish(&broken_backend);
  nn_backend_finish(&nn_backend_cpu);
  return check_report();
}
