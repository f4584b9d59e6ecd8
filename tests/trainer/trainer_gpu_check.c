/* trainer_gpu_check.c - the trainer's device check (scripts/gpu-check-trainer.sh):
 * one standalone binary, no MPI, HDF5, ZeroMQ, libyaml or libpng (the data
 * is generated in memory), linked from trainer/ and the few common/ files it
 * needs, OpenBLAS, FFTW, zlib and the CUDA libraries. In order:
 *
 *   1. layer parity (tests/trainer/parity.h): every layer kind, the loss,
 *      Adam and the reducer paths, on the CPU backend and on the CUDA one
 *      (cuDNN restricted to its plain-sum algorithms, COEMU_CUDNN_ALGOS=sums,
 *      for which the elementwise bounds hold), against the literal
 *      references; the float32 layers again with the convolutions on cuDNN's
 *      graph API (COEMU_CUDNN_API=graph, the same bounds);
 *   2. one whole COEmuNet training step, CUDA against the CPU reference,
 *      within PAR_FLOOR_FACTOR x the noise floor measured on this host;
 *   3. checkpoints GPU -> CPU and CPU -> GPU, bit for bit;
 *   4. --steps (20) training steps of the full 7-channel COEmuNet on the CPU
 *      and on the GPU from the same weights and data (cuDNN's fastest
 *      algorithms): the loss curves, and at each step the GPU's relative
 *      distance from the CPU curve within PAR_FLOOR_FACTOR x the floor of
 *      that step (the CPU curve with every input one ulp off; the running
 *      largest, since rounding differences grow along a trajectory);
 *   5. speed: training samples/s at --batch and inference samples/s at
 *      --infer-batch on the GPU, float32, (--tf32) TF32 and bf16 mixed
 *      precision (trainer/precision.h: float32 master weights; float32 also
 *      with cuDNN's fastest algorithms, with 16 GiB of workspace, and on
 *      cuDNN's graph API, and with each call on the faster of the two APIs:
 *      fp32-fastest, fp32-fastest-ws16g, fp32-graph, fp32-auto: these four
 *      with the batch resident only), each
 *      with the batch fed three ways (trainer/train_bench.h: from pageable
 *      host memory before each step, the line without a feed= word; from
 *      page-locked memory beside the step before, feed=pinned; already on
 *      the device, feed=resident), after the copies' GB/s alone (upload
 *      pageable / pinned: a batch of --infer-batch inputs); then, with
 *      --times or COEMU_CUDA_TIMES=1 in the environment, where the device
 *      time of a training step goes (times_run: the CUDA backend's timing
 *      mode, backend_cuda.h), float32 and TF32.
 * And bf16 (precision.h) in 1, 2 and 4: the convolutions and linear layers at
 * tf32 and bf16 against references from the same rounded operands (the same
 * gamma_n bounds: the products are exact); one bf16 step against the CPU's
 * bf16 emulation within PAR_FLOOR_FACTOR x the emulation's own noise floor;
 * the device's bf16 loss curve against its float32 one (the measured effect
 * of bf16 on the device, printed).
 *   6. gradient buckets with a single-rank NCCL reducer against no reducer,
 *      bit for bit; 7. the input feed's wait fraction, and its backend path
 *      (asynchronous copies, normalisation on the backend) against the host
 *      path (dp_check.h); 8. the metrics entry on the device against the CPU's
 *      within derived bounds (check_metrics).
 *
 * Prints one line per result ("trainer-check: ..."). Exit status: 0 when
 * every check passed, 1 when one failed, 77 when there is no CUDA backend or
 * no device (1 instead with COEMU_REQUIRE_DEVICE=1).
 *
 * Usage: trainer_gpu_check [--steps N] [--curve-batch B] [--batch B]
 *                          [--infer-batch B] [--iters K] [--tf32] [--no-bench]
 *                          [--no-curves] [--grid G] [--backend NAME]
 *                          [--precision-curves] [--only-bench] [--times]
 *                          [--times-steps N] [--feeds LIST] [--precisions LIST]
 *                          [--only-parity]
 * --only-parity runs only 1-3 (the layer parity of every precision and API,
 * the step, the checkpoints: ~15 s on an H200; scripts/gpu-tune.sh's first
 * trainer step). --precision-curves runs only the precision measurement (precision_curves
 * below: float32, tf32, bf16 loss curves on one backend; docs/benchmarks.md
 * has the CPU emulation's). --only-bench runs only 5 (no parity, curves,
 * data parallelism or metrics: a short device run); with --no-bench too,
 * only the timing tables. --times (or COEMU_CUDA_TIMES=1) adds the timing
 * tables to 5, over --times-steps (5) steps after 2 warm-up steps.
 * --feeds (pageable,pinned,resident) and --precisions (fp32,fp32-fastest,
 * fp32-fastest-ws16g,fp32-graph,fp32-auto,tf32,bf16: the configurations; tf32 needs
 * --tf32 too) select the figures of 5.
 * --grid scales the model of 4-5 down (default 64, the paper's); --backend
 * runs the checks on another backend than cuda: the meson test
 * trainer_gpu_check_cpu runs the whole binary on the CPU backend in CI.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "common/cli.h"
#include "dp_check.h"
#include "parity.h"
#include "trainer/metrics.h"
#include "trainer/metrics_body.h"
#include "trainer/train_bench.h"
#ifdef COEMU_HAVE_CUDA_TRAINER
#include "trainer/cuda/backend_cuda.h"
#endif

static double now(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + 1e-9 * ts.tv_nsec;
}

static int failures;

static void verdict(const char *what, int ok) {
  printf("trainer-check: %s: %s\n", what, ok ? "PASS" : "FAIL");
  fflush(stdout);
  if (!ok) failures++;
}

static void print_report(const char *backend, const par_report *r) {
  printf("trainer-check: layers %s: %ld values, %ld out of tolerance, %d failed calls, worst %.3g x "
         "tolerance%s%s\n", backend, r->checks, r->failures, r->errors, r->worst,
         r->first[0] ? "; first: " : "", r->first);
}

/* ---- loss curves -------------------------------------------------------- */

typedef struct {
  int steps, batch;
  coemunet_config cfg;
} curve_opts;

/* --steps steps of a fresh model (seed 1234) on backend be, batch k from
 * test_step_batch(k); ulp_salt > 0: every input one ulp off. losses[k]. */
static int run_curve(const nn_backend *be, const curve_opts *c, uint32_t ulp_salt, int precision,
                     double *losses, double *secs) {
  coemunet m;
  adam o;
  trainer tr;
  memset(&o, 0, sizeof o);
  memset(&tr, 0, sizeof tr);
  const size_t nx = (size_t)c->batch * 3 * c->cfg.grid * c->cfg.grid * c->cfg.grid;
  const size_t nt = (size_t)c->batch * c->cfg.nfreq * c->cfg.grid * c->cfg.grid;
  float *x = (float *)malloc(sizeof(float) * nx), *t = (float *)malloc(sizeof(float) * nt);
  adam_config ac = adam_default();
  int rc = x && t ? coemunet_build_on(&m, &c->cfg, 1234, be) : ce_err("out of memory");
  int built = rc == 0;
  if (rc == 0) rc = nn_set_precision(&m.net, precision);
  if (rc == 0) rc = nn_set_batch(&m.net, c->batch);
  if (rc == 0) rc = adam_init(&o, &m.net, &ac);
  if (rc == 0) rc = trainer_init(&tr, &m, &o);
  double t0 = now();
  for (int k = 0; k < c->steps && rc == 0; k++) {
    test_step_batch(&c->cfg, c->batch, k, x, t);
    if (ulp_salt) {
      ce_rng g = ce_rng_make(99, ulp_salt, (uint32_t)k, 5);
      for (size_t i = 0; i < nx; i++)
        x[i] = nextafterf(x[i], ce_rng_u32(&g) & 1 ? INFINITY : -INFINITY);
    }
    loss_value lv;
    rc = trainer_step(&tr, x, t, ac.lr, &lv);
    losses[k] = lv.total;
  }
  *secs = now() - t0;
  trainer_free(&tr);
  adam_free(&o);
  if (built) coemunet_free(&m);
  free(x);
  free(t);
  return rc;
}

/* The curves; the device's float32 curve stays in dev_out (c->steps). */
static void check_curves(const nn_backend *gpu, const curve_opts *c, double *dev_out) {
  double *ref = (double *)calloc((size_t)c->steps, sizeof(double)),
         *ulp = (double *)calloc((size_t)c->steps, sizeof(double)),
         *dev = (double *)calloc((size_t)c->steps, sizeof(double));
  double s_ref, s_ulp, s_dev;
  if (run_curve(&nn_backend_cpu, c, 0, NN_FLOAT32, ref, &s_ref) < 0 ||
      run_curve(&nn_backend_cpu, c, 23, NN_FLOAT32, ulp, &s_ulp) < 0 ||
      run_curve(gpu, c, 0, NN_FLOAT32, dev, &s_dev) < 0) {
    printf("trainer-check: curves: error: %s\n", ce_err_msg());
    verdict("loss curves", 0);
  } else {
    int ok = 1;
    double floor = PAR_FLOOR_MIN, worst = 0;
    printf("trainer-check: curve k  cpu                  cpu(inputs+-1ulp)    %-20s "
           "|dev-cpu|/cpu   floor\n", gpu->name);
    for (int k = 0; k < c->steps; k++) {
      double f = fabs(ulp[k] - ref[k]) / fabs(ref[k]);
      if (f > floor) floor = f;
      double d = fabs(dev[k] - ref[k]) / fabs(ref[k]);
      if (d / floor > worst) worst = d / floor;
      if (!(d <= PAR_FLOOR_FACTOR * floor)) ok = 0;
      printf("trainer-check: curve %-2d %.15f %.15f %.15f %.3e      %.3e\n", k + 1, ref[k], ulp[k],
             dev[k], d, floor);
    }
    printf("trainer-check: curves: %d steps of coemunet%d at batch %d: the device within %.3g x the floor "
           "(tolerance %g x); %.1f s on the CPU, %.2f s on the GPU\n", c->steps, c->cfg.nfreq,
           c->batch, worst, PAR_FLOOR_FACTOR, s_ref, s_dev);
    verdict("loss curves, device vs cpu", ok);
    memcpy(dev_out, dev, sizeof(double) * (size_t)c->steps);
  }
  free(ref);
  free(ulp);
  free(dev);
}

/* --precision-curves: the measured effect of tf32 and bf16 on the loss curve
 * on one backend (on the CPU: the emulation, precision.h): --steps steps
 * from the same weights and data at float32, at float32 with every input
 * one ulp off (the float32 curve's own sensitivity), at tf32 and at bf16;
 * per step the relative distance of each from the float32 curve. */
static int precision_curves(const nn_backend *be, const curve_opts *c) {
  const int n = c->steps;
  double *l[4], secs[4];
  static const char *const label[4] = {"float32", "fp32+-1ulp", "tf32", "bf16"};
  static const int prec[4] = {NN_FLOAT32, NN_FLOAT32, NN_TF32, NN_BF16};
  for (int v = 0; v < 4; v++) {
    l[v] = (double *)calloc((size_t)n, sizeof(double));
    if (run_curve(be, c, v == 1 ? 23 : 0, prec[v], l[v], &secs[v]) < 0) {
      printf("trainer-check: precision curve %s: error: %s\n", label[v], ce_err_msg());
      for (int u = 0; u <= v; u++) free(l[u]);
      return -1;
    }
    printf("trainer-check: precision curve %s: %d steps in %.1f s\n", label[v], n, secs[v]);
    fflush(stdout);
  }
  printf("trainer-check: precision k  %-18s rel(%s) rel(%s) rel(%s)\n", label[0], label[1],
         label[2], label[3]);
  double worst[4] = {0}, mean[4] = {0};
  for (int k = 0; k < n; k++) {
    double r[4];
    for (int v = 1; v < 4; v++) {
      r[v] = fabs(l[v][k] - l[0][k]) / fabs(l[0][k]);
      if (r[v] > worst[v]) worst[v] = r[v];
      mean[v] += r[v] / n;
    }
    printf("trainer-check: precision %-2d %.12f %.3e  %.3e  %.3e   (tf32 %.12f, bf16 %.12f)\n",
           k + 1, l[0][k], r[1], r[2], r[3], l[2][k], l[3][k]);
  }
  for (int v = 1; v < 4; v++)
    printf("trainer-check: precision %s vs float32 on %s, coemunet%d grid %d batch %d, %d steps: "
           "relative loss difference mean %.3e, largest %.3e, at the last step %.3e\n", label[v],
           be->name, c->cfg.nfreq, c->cfg.grid, c->batch, n, mean[v], worst[v],
           fabs(l[v][n - 1] - l[0][n - 1]) / fabs(l[0][n - 1]));
  for (int v = 0; v < 4; v++) free(l[v]);
  return 0;
}


/* A bench's model on backend be at one precision and batch B, its batch
 * (inputs uniform in [-1, 1), targets in [0, 1), the same every time: seed
 * 1234) and, to train, Adam and the trainer: rig_open (0, or -1 with a
 * message; rig_close either way), rig_close. */
typedef struct {
  coemunet m;
  adam o;
  trainer tr;
  adam_config ac;
  float *x, *t;
  int built, train;
} bench_rig;

static int rig_open(bench_rig *r, const nn_backend *be, const coemunet_config *cfg, int B,
                    int precision, int train) {
  memset(r, 0, sizeof *r);
  r->train = train;
  r->ac = adam_default();
  const size_t nx = (size_t)B * 3 * cfg->grid * cfg->grid * cfg->grid;
  const size_t nt = (size_t)B * cfg->nfreq * cfg->grid * cfg->grid;
  r->x = (float *)malloc(sizeof(float) * nx), r->t = (float *)malloc(sizeof(float) * nt);
  if (!r->x || !r->t) return ce_err("out of memory");
  ce_rng g = ce_rng_make(1234, 0, 0, 1);
  for (size_t i = 0; i < nx; i++) r->x[i] = (float)(2 * ce_rng_uniform(&g) - 1);
  for (size_t i = 0; i < nt; i++) r->t[i] = (float)ce_rng_uniform(&g);
  CE_TRY(coemunet_build_on(&r->m, cfg, 1234, be));
  r->built = 1;
  CE_TRY(nn_set_precision(&r->m.net, precision));
  CE_TRY(nn_set_batch(&r->m.net, B));
  if (train) CE_TRY(adam_init(&r->o, &r->m.net, &r->ac));
  return trainer_init(&r->tr, &r->m, train ? &r->o : NULL);
}

static void rig_close(bench_rig *r) {
  trainer_free(&r->tr);
  if (r->train) adam_free(&r->o);
  if (r->built) coemunet_free(&r->m);
  free(r->x);
  free(r->t);
}

/* ---- speed -------------------------------------------------------------- */

/* The bench's feeds (trainer/train_bench.h: pageable, pinned, resident;
 * --feeds) and configurations (--precisions: the labels of main's bench
 * section); all by default. */
static unsigned bench_feeds = (1u << TRAIN_BENCH_NFEEDS) - 1;
static const char *bench_precisions = NULL;

static int bench_wanted(const char *label) {
  if (!bench_precisions) return 1;
  const char *p = bench_precisions, *item;
  int i, n;
  while (cli_list_next(&p, &label, 1, &i, &item, &n))
    if (i == 0) return 1;
  return 0;
}

/* A figure's line: pageable keeps the line of the earlier runs
 * ("train cuda fp32 batch=32 samples/s X"), the others say their feed */
static const char *feed_tag(int f) {
  return f == TRAIN_BENCH_PINNED ? "feed=pinned " : f == TRAIN_BENCH_RESIDENT ? "feed=resident " : "";
}

/* Training samples/s at batch, then inference (evaluation-mode forward,
 * nothing out) at infer_batch, each fed every way of bench_feeds. */
static void bench(const nn_backend *be, const char *prec, int precision, int batch,
                  int infer_batch, int iters, int grid) {
  if (!bench_wanted(prec)) return;
  coemunet_config cfg = coemunet_default(7);
  cfg.grid = grid;
  const int sizes[2] = {batch, infer_batch};
  /* float32's algorithm variants (fp32-fastest, -ws16g, -graph) compare
   * kernels: resident only, where it is asked for (the device check stays
   * within its time); the others every feed asked for */
  unsigned feeds = bench_feeds;
  const unsigned resident = 1u << TRAIN_BENCH_RESIDENT;
  if (!strncmp(prec, "fp32-", 5) && (feeds & resident)) feeds = resident;
  for (int pass = 0; pass < 2; pass++) {
    const int B = sizes[pass];
    bench_rig r;
    int rc = rig_open(&r, be, &cfg, B, precision, pass == 0);
    for (int f = 0; f < TRAIN_BENCH_NFEEDS; f++) {
      if (!(feeds >> f & 1)) continue;
      double secs = 0;
      if (rc == 0)
        rc = pass == 0 ? train_bench_steps(&r.tr, r.x, r.t, r.ac.lr, (train_bench_feed)f, 3, iters,
                                           &secs)
                       : train_bench_forwards(&r.tr, r.x, (train_bench_feed)f, 3, iters, &secs);
      if (rc < 0)
        printf("trainer-check: %s %s %s batch=%d %s: error: %s\n", pass ? "infer" : "train",
               be->name, prec, B, train_bench_feed_name((train_bench_feed)f), ce_err_msg());
      else
        printf("trainer-check: %s %s %s batch=%d %ssamples/s %.1f\n", pass ? "infer" : "train",
               be->name, prec, B, feed_tag(f), (double)B * iters / secs);
      fflush(stdout);
      if (rc < 0) {
        failures++;
        break;
      }
    }
    rig_close(&r);
  }
}

/* The bus alone: a batch of infer_batch inputs copied to the backend from
 * pageable and from page-locked host memory, GB/s (what the pageable
 * figures above can reach at most: batch x 3 x grid^3 x 4 bytes a batch) */
static void bench_bus(const nn_backend *be, int infer_batch, int iters, int grid) {
  const size_t n = (size_t)infer_batch * 3 * grid * grid * grid;
  nn_net net; /* no layers: its backend's memory and copies */
  nn_init(&net);
  float *x = (float *)malloc(sizeof(float) * n);
  int rc = x && nn_set_backend(&net, be) == 0 ? 0 : -1;
  if (rc == 0)
    for (size_t i = 0; i < n; i++) x[i] = (float)(i % 1000) * 1e-3f;
  for (int f = TRAIN_BENCH_PAGEABLE; f <= TRAIN_BENCH_PINNED && rc == 0; f++) {
    double secs = 0;
    rc = train_bench_upload(&net, x, n, (train_bench_feed)f, iters, &secs);
    if (rc == 0)
      printf("trainer-check: upload %s %s bytes=%zu GB/s %.2f (%.2f ms a batch of %d)\n",
             be->name, train_bench_feed_name((train_bench_feed)f), sizeof(float) * n,
             sizeof(float) * n * (double)iters / secs * 1e-9, 1e3 * secs / iters, infer_batch);
  }
  if (rc < 0) {
    printf("trainer-check: upload %s: error: %s\n", be->name, x ? ce_err_msg() : "out of memory");
    failures++;
  }
  fflush(stdout);
  free(x);
  nn_free(&net);
}



/* Where the device time of a training step goes (the CUDA backend's timing
 * mode, COEMU_CUDA_TIMES=1: backend_cuda.h): the model and batch of bench's
 * training pass at one precision, 2 warm-up steps (the plans are made at
 * nn_set_batch; the warm-up grows the scratch buffers), then `steps` timed
 * steps; the table of the backend (one line per call kind, shape, algorithm
 * and math: ms_per_step, calls_per_step, largest first; a total line) and
 * the wall time per step, whose difference from the total is the time the
 * device spent idle between the timed groups (the host queueing or waiting).
 * tf32: cuDNN / cuBLAS on TF32 tensor cores (nn_cuda_set_tf32), as bench's
 * tf32 figure. */
#ifdef COEMU_HAVE_CUDA_TRAINER
static int times_run(const nn_backend *be, const char *prec, int tf32, int batch, int steps,
                     int grid) {
  coemunet_config cfg = coemunet_default(7);
  cfg.grid = grid;
  /* the plans' timed algorithms (COEMU_CUDNN_VERBOSE) follow this line in the log */
  fprintf(stderr, "trainer-check: times %s %s: the plans of batch %d\n", be->name, prec, batch);
  bench_rig r;
  memset(&r, 0, sizeof r); /* rig_close's, if tf32 cannot be set */
  int rc = nn_cuda_set_tf32(tf32); /* before the plans are made (nn_set_batch) */
  if (rc == 0) rc = rig_open(&r, be, &cfg, batch, NN_FLOAT32, 1);
  loss_value lv;
  for (int i = 0; i < 2 && rc == 0; i++) rc = trainer_step(&r.tr, r.x, r.t, r.ac.lr, &lv);
  if (rc == 0) rc = train_bench_sync(&r.m.net);
  if (rc == 0) rc = nn_cuda_times_reset();
  double t0 = now();
  for (int i = 0; i < steps && rc == 0; i++) rc = trainer_step(&r.tr, r.x, r.t, r.ac.lr, &lv);
  if (rc == 0) rc = train_bench_sync(&r.m.net);
  const double secs = now() - t0;
  char label[96];
  snprintf(label, sizeof label, "trainer-check: times %s %s", be->name, prec);
  if (rc == 0) rc = nn_cuda_times_report(stdout, label, steps);
  if (rc == 0)
    printf("%s wall: ms_per_step %.3f (%d steps at batch %d, %.1f samples/s, the timing mode on; "
           "wall - total: the device idle between the timed groups)\n", label,
           1e3 * secs / steps, steps, batch, batch * steps / secs);
  else
    printf("trainer-check: times %s %s batch=%d: error: %s\n", be->name, prec, batch,
           ce_err_msg());
  fflush(stdout);
  rig_close(&r);
  nn_cuda_set_tf32(0);
  return rc;
}
#endif

/* The timing tables (times_run) at float32 and TF32: the backend made
 * again with COEMU_CUDA_TIMES=1 (read at init) and COEMU_CUDNN_VERBOSE=1
 * (the plans' timed algorithms on stderr), then as before. -1 when the
 * backend cannot be made again (main stops). */
static int times_tables(const nn_backend *gpu, int batch, int steps, int grid) {
#ifdef COEMU_HAVE_CUDA_TRAINER
  if (gpu != &nn_backend_cuda) {
    printf("trainer-check: times: SKIP: the timing mode is the cuda backend's (COEMU_CUDA_TIMES), "
           "this is %s\n", gpu->name);
    return 0;
  }
  const char *env = getenv("COEMU_CUDA_TIMES");
  const int had = env && !strcmp(env, "1");
  nn_backend_finish(gpu);
  setenv("COEMU_CUDA_TIMES", "1", 1);
  setenv("COEMU_CUDNN_VERBOSE", "1", 1);
  int rc = nn_backend_init(gpu, 0);
  if (rc == 0) {
    if (times_run(gpu, "fp32", 0, batch, steps, grid) < 0) failures++;
    if (times_run(gpu, "tf32", 1, batch, steps, grid) < 0) failures++;
    nn_backend_finish(gpu);
  }
  if (!had) unsetenv("COEMU_CUDA_TIMES");
  unsetenv("COEMU_CUDNN_VERBOSE");
  if (rc < 0 || nn_backend_init(gpu, 0) < 0) {
    printf("trainer-check: error: %s\n", ce_err_msg());
    return -1;
  }
  return 0;
#else
  (void)batch, (void)steps, (void)grid;
  printf("trainer-check: times: SKIP: the timing mode is the cuda backend's (COEMU_CUDA_TIMES), "
         "not built here (%s)\n", gpu->name);
  return 0;
#endif
}

/* ---- main --------------------------------------------------------------- */

/* 8. The metrics entry (trainer/metrics_body.h) on the device against the
 * CPU backend's, per sample, within bounds derived here (docs/trainer.md):
 * both run the same serial bodies in the same order, so what may differ is
 * the device's double exp (<= 1 ulp, as glibc's) and fused multiply-adds
 * (one rounding where the host has two). With u = 2^-53, gamma_n = n u /
 * (1 - n u):
 *   ZNCC: the three sums differ by <= 2 gamma_hw sum |a b|, and sum |a b| <=
 *     sqrt(spp stt) (Cauchy-Schwarz): |dZNCC| <= 5 gamma_(hw+2).
 *   MaxRel: each physical value exp(t s + m) differs by a relative
 *     e = u (4 + 2 (|t| s + |m|)) (exp's ulp on each side, the argument's
 *     roundings); a term |T - P| / Tmax then by 2 e ((T + P) / Tmax + q):
 *     the bound is 100 / ns times their sum, from the CPU's values.
 *   SSIM: the five filtered moments (two passes of 11 non-negative weights)
 *     differ by e1 = 2 gamma_22 X (means) and e2 = 2 gamma_22 X^2 (second
 *     moments), X the largest |value| of the channel; with A = 2 mx my + C1,
 *     B = 2 sxy + C2, C = mx^2 + my^2 + C1, D = sxx + syy + C2 and |A| <= C,
 *     |B| <= D, |S| <= 1: |dS| <= (dA + dC) / C1 + (dB + dD) / C2 + 8 u,
 *     dA, dC <= 4 X e1 + 2 u (2 X^2 + C1), dB, dD <= 2 (e2 + 2 X e1 + 4 u X^2)
 *     + 2 u (4 X^2 + C2); the sample's bound is the mean over channels.
 * Each bound gets a factor 1.01 (second-order terms, n u << 0.01). */
static int check_metrics(const nn_backend *gpu, int grid) {
  const int n = 8;
  coemunet_config cfg = coemunet_default(7);
  cfg.grid = grid;
  const int f = cfg.nfreq, h = grid, w = grid;
  const size_t hw = (size_t)h * w, ns = (size_t)f * hw, nv = (size_t)n * ns;
  const stats_norm p = test_norm_params(0);
  float *x = (float *)malloc(sizeof(float) * (size_t)n * 3 * hw * grid);
  float *t = (float *)malloc(sizeof(float) * nv), *pr = (float *)malloc(sizeof(float) * nv);
  double *cpu = (double *)malloc(sizeof(double) * METRICS_FIELDS * n);
  double *dev = (double *)malloc(sizeof(double) * METRICS_FIELDS * n);
  double *tp = (double *)malloc(sizeof(double) * 2 * ns), *pp = tp + ns;
  float *d_p = (float *)gpu->alloc(sizeof(float) * nv);
  float *d_t = (float *)gpu->alloc(sizeof(float) * nv);
  int rc = x && t && pr && cpu && dev && tp && d_p && d_t ? 0 : ce_err("out of memory");
  if (rc == 0) {
    test_step_batch(&cfg, n, 5, x, t);
    uint64_t st = 0x2545f4914f6cdd1dull;
    for (size_t i = 0; i < nv; i++) {
      st ^= st << 13, st ^= st >> 7, st ^= st << 17;
      pr[i] = t[i] + 0.05f * (float)((double)(st >> 11) * 0x1p-53 - 0.5);
    }
    rc = nn_backend_cpu.metrics(&p, pr, t, n, f, h, w, cpu);
  }
  if (rc == 0) rc = gpu->upload(d_p, pr, sizeof(float) * nv);
  if (rc == 0) rc = gpu->upload(d_t, t, sizeof(float) * nv);
  if (rc == 0) rc = gpu->metrics(&p, d_p, d_t, n, f, h, w, dev);
  int bad = 0;
  double worst[METRICS_FIELDS] = {0, 0, 0, 0}; /* largest |difference| / bound */
  if (rc == 0) {
    const double u = 0x1p-53, g22 = 22 * u / (1 - 22 * u), ghw = (hw + 2) * u / (1 - (hw + 2) * u);
    double ssim_c[64];
    for (int c = 0; c < f && c < 64; c++) {
      double lo = INFINITY, hi = -INFINITY, X = 0;
      for (int s = 0; s < n; s++)
        for (size_t i = 0; i < hw; i++) {
          const size_t k = ((size_t)s * f + c) * hw + i;
          lo = fmin(lo, t[k]), hi = fmax(hi, t[k]);
          X = fmax(X, fmax(fabs(t[k]), fabs(pr[k])));
        }
      const double L = hi - lo, C1 = (0.01 * L) * (0.01 * L), C2 = (0.03 * L) * (0.03 * L);
      const double e1 = 2 * g22 * X, e2 = 2 * g22 * X * X;
      const double dA = 4 * X * e1 + 2 * u * (2 * X * X + C1);
      const double dB = 2 * (e2 + 2 * X * e1 + 4 * u * X * X) + 2 * u * (4 * X * X + C2);
      ssim_c[c] = 2 * dA / C1 + 2 * dB / C2 + 8 * u;
    }
    for (int s = 0; s < n; s++) {
      metrics_body_inverse(&p, t + s * ns, tp, ns);
      metrics_body_inverse(&p, pr + s * ns, pp, ns);
      double mr = 0, ss = 0;
      for (size_t px = 0; px < hw; px++) {
        double tmax = tp[px];
        for (int c = 1; c < f; c++) tmax = fmax(tmax, tp[c * hw + px]);
        for (int c = 0; c < f; c++) {
          const size_t k = c * hw + px;
          const double arg = fmax(fabs((double)t[s * ns + k]), fabs((double)pr[s * ns + k])) *
                             p.lnI_scale + fabs(p.lnI_min);
          const double e = u * (4 + 2 * arg), q = fabs(tp[k] - pp[k]) / tmax;
          mr += 2 * e * ((tp[k] + pp[k]) / tmax + q);
        }
      }
      for (int c = 0; c < f; c++) ss += ssim_c[c] / f;
      const double bound[METRICS_FIELDS] = {1.01 * 100 * mr / (double)ns, 1.01 * 5 * ghw,
                                            1.01 * ss, 1.01 * ss};
      for (int k = 0; k < METRICS_FIELDS; k++) {
        const double d = fabs(dev[k * n + s] - cpu[k * n + s]) / bound[k];
        if (!(d <= 1)) bad++;
        if (!(d <= worst[k])) worst[k] = d;
      }
    }
    printf("trainer-check: metrics, device vs cpu: %d samples of %d x %d x %d; largest difference / "
           "bound: MaxRel %.3g, ZNCC %.3g, SSIM %.3g (interior) %.3g (reflect)\n", n, f, h, w,
           worst[0], worst[1], worst[2], worst[3]);
  } else
    printf("trainer-check: metrics: error: %s\n", ce_err_msg());
  verdict("metrics, device vs cpu", rc == 0 && bad == 0);
  gpu->free(d_p);
  gpu->free(d_t);
  free(x);
  free(t);
  free(pr);
  free(cpu);
  free(dev);
  free(tp);
  return rc == 0 && bad == 0 ? 0 : 1;
}

/* 1-3: layer parity, one whole step (float32 and bf16) and checkpoints,
 * against the CPU reference. -1 when the backend cannot be made again
 * (main stops); the failures are counted. */
static int parity_checks(const nn_backend *gpu) {
  double t0 = now();

  /* 1. layers */
  par_report rc_, rg;
  memset(&rc_, 0, sizeof rc_);
  memset(&rg, 0, sizeof rg);
  par_layers(&nn_backend_cpu, &rc_);
  print_report("cpu", &rc_);
  verdict("layer parity, cpu", rc_.failures == 0 && rc_.errors == 0);
  par_layers(gpu, &rg);
  print_report(gpu->name, &rg);
  verdict("layer parity, device", rg.failures == 0 && rg.errors == 0);
  for (int p = NN_TF32; p <= NN_BF16; p++) {
    par_report rp;
    memset(&rp, 0, sizeof rp);
    par_layers_precision(gpu, &rp, p, p);
    char what[64];
    snprintf(what, sizeof what, "%s %s", gpu->name, nn_precision_name(p));
    print_report(what, &rp);
    snprintf(what, sizeof what, "layer parity, device %s", nn_precision_name(p));
    verdict(what, rp.failures == 0 && rp.errors == 0);
  }
#ifdef COEMU_HAVE_CUDA_TRAINER
  if (gpu == &nn_backend_cuda && !strcmp(nn_cuda_bf16_path(), "native")) {
    /* the fallback of a native bf16 call cuDNN refuses with every algorithm
       (seen for weight gradients of small odd shapes on an H200): every call
       taken as refused, so each runs as float32 products of bf16-rounded
       operands on the shape's float32 plan */
    nn_backend_finish(gpu);
    setenv("COEMU_CUDNN_REFUSE_BF16", "1", 1);
    par_report rp;
    memset(&rp, 0, sizeof rp);
    if (nn_backend_init(gpu, 0) == 0) par_layers_precision(gpu, &rp, NN_BF16, NN_BF16);
    else rp.errors++;
    print_report("cuda bf16, every cuDNN call refused (the float32 fallback)", &rp);
    verdict("layer parity, device bf16 through the fallback", rp.failures == 0 && rp.errors == 0);
    nn_backend_finish(gpu);
    unsetenv("COEMU_CUDNN_REFUSE_BF16");
    if (nn_backend_init(gpu, 0) < 0) {
      printf("trainer-check: error: %s\n", ce_err_msg());
      return -1;
    }
  }
  if (gpu == &nn_backend_cuda) {
    /* the float32 layers with their convolutions on cuDNN's graph API
       (COEMU_CUDNN_API=graph: heuristics' engine configs, autotuned; FMA
       only, COEMU_CUDNN_ALGOS=sums still set: no FFT or Winograd engine),
       the same literal references and tolerances as "layer parity, device";
       a call without a usable engine says so on stderr and runs legacy */
    nn_backend_finish(gpu);
    setenv("COEMU_CUDNN_API", "graph", 1);
    par_report rp;
    memset(&rp, 0, sizeof rp);
    int planned = 0, fell_back = 0;
    if (nn_backend_init(gpu, 0) == 0) {
      par_layers(gpu, &rp);
      nn_cuda_graph_counts(&planned, &fell_back);
    } else {
      printf("trainer-check: graph API: error: %s\n", ce_err_msg());
      rp.errors++;
    }
    print_report("cuda fp32 through the graph API (COEMU_CUDNN_API=graph)", &rp);
    /* the parity holds on the legacy API too: the graph path must be what ran */
    printf("trainer-check: graph API: %d convolution calls on graph plans, %d on the legacy API "
           "instead (stderr says why)\n", planned, fell_back);
    verdict("layer parity, device fp32 through the graph API",
            rp.failures == 0 && rp.errors == 0 && planned > 0 && fell_back == 0);
    nn_backend_finish(gpu);
    unsetenv("COEMU_CUDNN_API");
    if (nn_backend_init(gpu, 0) < 0) {
      printf("trainer-check: error: %s\n", ce_err_msg());
      return -1;
    }
  }
#endif

  /* 2. one whole step */
  par_step_ref R;
  if (par_step_reference(&R, 1) < 0) { /* the floor's variants: stderr, the log */
    printf("trainer-check: step reference: error: %s\n", ce_err_msg());
    verdict("training step, device vs cpu", 0);
  } else {
    par_mismatch m;
    int exact = 0, within = 0;
    if (par_step(gpu, &R, &m, &exact, &within) < 0) {
      printf("trainer-check: step: error: %s\n", ce_err_msg());
      within = 0;
    } else {
      printf("trainer-check: step %s vs cpu: loss %.2e grad %.2e update %.2e BN stats %.2e; "
             "floor x %g: %.2e %.2e %.2e %.2e\n", gpu->name, m.loss, m.grad, m.update, m.stats,
             PAR_FLOOR_FACTOR, PAR_FLOOR_FACTOR * R.floor.loss, PAR_FLOOR_FACTOR * R.floor.grad,
             PAR_FLOOR_FACTOR * R.floor.update, PAR_FLOOR_FACTOR * R.floor.stats);
    }
    verdict("training step, device vs cpu", within);
    par_step_reference_free(&R);
  }
  /* 2b. one bf16 step against the CPU's bf16 emulation */
  par_step_precision = NN_BF16;
  if (par_step_reference(&R, 0) < 0) {
    printf("trainer-check: bf16 step reference: error: %s\n", ce_err_msg());
    verdict("bf16 training step, device vs cpu emulation", 0);
  } else {
    par_mismatch m;
    int exact = 0, within = 0;
    if (par_step(gpu, &R, &m, &exact, &within) < 0) {
      printf("trainer-check: bf16 step: error: %s\n", ce_err_msg());
      within = 0;
    } else {
      printf("trainer-check: step bf16 %s vs cpu bf16: loss %.2e grad %.2e update %.2e BN stats "
             "%.2e; floor x %g: %.2e %.2e %.2e %.2e\n", gpu->name, m.loss, m.grad, m.update,
             m.stats, PAR_FLOOR_FACTOR, PAR_FLOOR_FACTOR * R.floor.loss,
             PAR_FLOOR_FACTOR * R.floor.grad, PAR_FLOOR_FACTOR * R.floor.update,
             PAR_FLOOR_FACTOR * R.floor.stats);
    }
    verdict("bf16 training step, device vs cpu emulation", within);
    par_step_reference_free(&R);
  }
  par_step_precision = NN_FLOAT32;

  /* 3. checkpoints */
  char dir[] = "/tmp/coemu_trainer_check_XXXXXX";
  if (mkdtemp(dir)) {
    char p1[128], p2[128];
    snprintf(p1, sizeof p1, "%s/a.ckpt", dir);
    snprintf(p2, sizeof p2, "%s/b.ckpt", dir);
    long d1 = par_checkpoint(gpu, &nn_backend_cpu, p1, p2, 0);
    long d2 = par_checkpoint(&nn_backend_cpu, gpu, p1, p2, 0);
    if (d1 < 0 || d2 < 0) printf("trainer-check: checkpoints: error: %s\n", ce_err_msg());
    printf("trainer-check: checkpoints: %s -> cpu %ld, cpu -> %s %ld differing values\n", gpu->name,
           d1, gpu->name, d2);
    verdict("checkpoints between cpu and the device", d1 == 0 && d2 == 0);
    unlink(p1);
    unlink(p2);
    rmdir(dir);
  }
  printf("trainer-check: parity took %.1f s\n", now() - t0);
  return 0;
}

static int arg_int(int argc, char **argv, int *i, int lo, int hi) {
  if (*i + 1 >= argc) {
    fprintf(stderr, "trainer_gpu_check: error: %s needs a value\n", argv[*i]);
    exit(2);
  }
  char *end;
  long v = strtol(argv[++*i], &end, 10);
  if (*end || v < lo || v > hi) {
    fprintf(stderr, "trainer_gpu_check: error: %s %s: expected an integer in %d..%d\n",
            argv[*i - 1], argv[*i], lo, hi);
    exit(2);
  }
  return (int)v;
}

int main(int argc, char **argv) {
  int steps = 20, curve_batch = 4, batch = 32, infer_batch = 64, iters = 10, tf32 = 0;
  int do_bench = 1, do_curves = 1, grid = 64, prec_curves = 0, only_bench = 0, times_steps = 5,
      only_parity = 0;
  const char *times_env = getenv("COEMU_CUDA_TIMES");
  int times = times_env && !strcmp(times_env, "1");
  const char *backend = "cuda";
  for (int i = 1; i < argc; i++) {
    if (!strcmp(argv[i], "--steps")) steps = arg_int(argc, argv, &i, 1, 1000);
    else if (!strcmp(argv[i], "--curve-batch")) curve_batch = arg_int(argc, argv, &i, 2, 1024);
    else if (!strcmp(argv[i], "--batch")) batch = arg_int(argc, argv, &i, 2, 4096);
    else if (!strcmp(argv[i], "--infer-batch")) infer_batch = arg_int(argc, argv, &i, 1, 4096);
    else if (!strcmp(argv[i], "--iters")) iters = arg_int(argc, argv, &i, 1, 10000);
    else if (!strcmp(argv[i], "--tf32")) tf32 = 1;
    else if (!strcmp(argv[i], "--no-bench")) do_bench = 0;
    else if (!strcmp(argv[i], "--no-curves")) do_curves = 0;
    else if (!strcmp(argv[i], "--precision-curves")) prec_curves = 1;
    else if (!strcmp(argv[i], "--only-bench")) only_bench = 1;
    else if (!strcmp(argv[i], "--only-parity")) only_parity = 1;
    else if (!strcmp(argv[i], "--times")) times = 1;
    else if (!strcmp(argv[i], "--times-steps")) times_steps = arg_int(argc, argv, &i, 1, 1000);
    else if (!strcmp(argv[i], "--grid")) grid = arg_int(argc, argv, &i, 16, 1024);
    else if (!strcmp(argv[i], "--backend") && i + 1 < argc) backend = argv[++i];
    else if (!strcmp(argv[i], "--feeds") && i + 1 < argc) {
      if (train_bench_feeds_parse(argv[++i], &bench_feeds) < 0) {
        fprintf(stderr, "trainer_gpu_check: error: --feeds: %s\n", ce_err_msg());
        return 2;
      }
    } else if (!strcmp(argv[i], "--precisions") && i + 1 < argc) {
      bench_precisions = argv[++i];
      static const char *const known[] = {"fp32",      "fp32-fastest", "fp32-fastest-ws16g",
                                          "fp32-graph", "fp32-auto",    "tf32",
                                          "bf16"};
      const char *p = bench_precisions, *item;
      int j, n;
      while (cli_list_next(&p, known, 7, &j, &item, &n))
        if (j < 0) {
          fprintf(stderr, "trainer_gpu_check: error: --precisions: '%.*s': expected fp32, "
                  "fp32-fastest, fp32-fastest-ws16g, fp32-graph, fp32-auto, tf32 or bf16\n", n,
                  item);
          return 2;
        }
    } else if (!strcmp(argv[i], "--help")) {
      printf("usage: trainer_gpu_check [--steps N] [--curve-batch B] [--batch B] [--infer-batch B] "
             "[--iters K] [--tf32] [--no-bench] [--no-curves] [--grid G] [--backend NAME] "
             "[--precision-curves] [--only-bench] [--times] [--times-steps N] [--feeds LIST] "
             "[--precisions LIST] [--only-parity]\n");
      return 0;
    } else {
      fprintf(stderr, "trainer_gpu_check: error: unknown option '%s' (--help)\n", argv[i]);
      return 2;
    }
  }
  const char *req = getenv("COEMU_REQUIRE_DEVICE");
  const int skip_status = req && !strcmp(req, "1") ? 1 : 77;
  if (nn_backend_init(&nn_backend_cpu, 0) < 0) {
    fprintf(stderr, "trainer_gpu_check: %s\n", ce_err_msg());
    return 1;
  }
  printf("trainer-check: host: %d OpenMP threads, %ld cores online\n", omp_get_max_threads(),
         sysconf(_SC_NPROCESSORS_ONLN));
  if (grid % 8) {
    fprintf(stderr, "trainer_gpu_check: error: --grid %d: expected a multiple of 8\n", grid);
    return 2;
  }
  const nn_backend *gpu = nn_backend_by_name(backend);
  if (!gpu) {
    printf("trainer-check: SKIP: %s\n", ce_err_msg());
    nn_backend_finish(&nn_backend_cpu);
    return skip_status;
  }
  setenv("COEMU_CUDNN_ALGOS", "sums", 1);
  if (nn_backend_init(gpu, 0) < 0) {
    printf("trainer-check: SKIP: %s\n", ce_err_msg());
    nn_backend_finish(&nn_backend_cpu);
    return skip_status;
  }
#ifdef COEMU_HAVE_CUDA_TRAINER
  if (gpu == &nn_backend_cuda)
    printf("trainer-check: device: %s; bf16 path: %s (COEMU_BF16)%s\n", nn_cuda_device_name(),
           nn_cuda_bf16_path(),
           nn_cuda_times() ? "; the timing mode on (COEMU_CUDA_TIMES=1): every figure with its "
                             "events" : "");
#endif
  fflush(stdout);
  if (prec_curves) { /* this measurement only */
    curve_opts c = {steps, curve_batch, coemunet_default(7)};
    c.cfg.grid = grid;
    int rc = precision_curves(gpu, &c);
    nn_backend_finish(gpu);
    nn_backend_finish(&nn_backend_cpu);
    return rc < 0 ? 1 : 0;
  }
  if (!only_bench && parity_checks(gpu) < 0) {
    nn_backend_finish(&nn_backend_cpu);
    return 1;
  }
  if (only_parity) {
    nn_backend_finish(gpu);
    nn_backend_finish(&nn_backend_cpu);
    printf("trainer-check: %s (%d failed)\n", failures ? "FAILED" : "all passed", failures);
    return failures ? 1 : 0;
  }

  /* 4-5: cuDNN's fastest algorithms from here on */
  nn_backend_finish(gpu);
  setenv("COEMU_CUDNN_ALGOS", "any", 1);
  if (nn_backend_init(gpu, 0) < 0) {
    printf("trainer-check: error: %s\n", ce_err_msg());
    nn_backend_finish(&nn_backend_cpu);
    return 1;
  }
  if (do_curves && !only_bench) {
    curve_opts c = {steps, curve_batch, coemunet_default(7)};
    c.cfg.grid = grid;
    double *f32 = (double *)calloc((size_t)steps, sizeof(double));
    check_curves(gpu, &c, f32);
#ifdef COEMU_HAVE_CUDA_TRAINER
    /* TF32's effect on the loss curve: the same steps, against float32 */
    if (tf32 && gpu == &nn_backend_cuda && f32[0] != 0) {
      double *t = (double *)calloc((size_t)steps, sizeof(double)), secs, worst = 0;
      nn_cuda_set_tf32(1);
      if (run_curve(gpu, &c, 0, NN_FLOAT32, t, &secs) == 0) {
        for (int k = 0; k < steps; k++) {
          double d = fabs(t[k] - f32[k]) / fabs(f32[k]);
          if (d > worst) worst = d;
          printf("trainer-check: curve tf32 %-2d %.15f (fp32 %.15f, relative %.3e)\n", k + 1, t[k],
                 f32[k], d);
        }
        printf("trainer-check: curve tf32 vs fp32: largest relative loss difference %.3g over %d "
               "steps (%.2f s)\n", worst, steps, secs);
      } else {
        printf("trainer-check: curve tf32: error: %s\n", ce_err_msg());
        failures++;
      }
      nn_cuda_set_tf32(0);
      free(t);
    }
#endif
    /* bf16's effect on the device's loss curve, against its float32 one */
    if (f32[0] != 0) {
      double *b = (double *)calloc((size_t)steps, sizeof(double)), secs, worst = 0;
      if (run_curve(gpu, &c, 0, NN_BF16, b, &secs) == 0) {
        for (int k = 0; k < steps; k++) {
          double d = fabs(b[k] - f32[k]) / fabs(f32[k]);
          if (d > worst) worst = d;
          printf("trainer-check: curve bf16 %-2d %.15f (fp32 %.15f, relative %.3e)\n", k + 1, b[k],
                 f32[k], d);
        }
        printf("trainer-check: curve bf16 vs fp32: largest relative loss difference %.3g over %d "
               "steps (%.2f s)\n", worst, steps, secs);
      } else {
        printf("trainer-check: curve bf16: error: %s\n", ce_err_msg());
        failures++;
      }
      free(b);
    }
    free(f32);
  }
  if (do_bench) {
    /* float32 three times, each plan's timed algorithms in the log
       (stderr): the default choice (the fastest deterministic algorithm
       within 512 MiB of workspace), the fastest of all
       (COEMU_CUDNN_DETERMINISTIC=0, as PyTorch's default), and that with 16
       GiB of workspace allowed (PyTorch's benchmark mode has no fixed limit);
       then, on the CUDA backend, the default preferences with the
       convolutions on cuDNN's graph API (COEMU_CUDNN_API=graph: engine
       configs from heuristics, autotuned, as PyTorch through cudnn-frontend),
       and each call on the faster of its graph engine and its legacy
       algorithm (COEMU_CUDNN_API=auto) */
    static const char *const label[5] = {"fp32", "fp32-fastest", "fp32-fastest-ws16g",
                                         "fp32-graph", "fp32-auto"};
    int nvar = 3;
#ifdef COEMU_HAVE_CUDA_TRAINER
    if (gpu == &nn_backend_cuda) nvar = 5;
#endif
    bench_bus(gpu, infer_batch, iters, grid);
    int reinit = 0;
    for (int v = 0; v < nvar && reinit == 0; v++) {
      if (!bench_wanted(label[v])) continue;
      nn_backend_finish(gpu);
      setenv("COEMU_CUDNN_VERBOSE", "1", 1);
      setenv("COEMU_CUDNN_DETERMINISTIC", v == 1 || v == 2 ? "0" : "1", 1);
      if (v == 2) setenv("COEMU_CUDNN_WORKSPACE_MB", "16384", 1);
      if (v >= 3) {
        unsetenv("COEMU_CUDNN_WORKSPACE_MB");
        setenv("COEMU_CUDNN_API", v == 3 ? "graph" : "auto", 1);
      }
      reinit = nn_backend_init(gpu, 0);
      if (reinit == 0) bench(gpu, label[v], NN_FLOAT32, batch, infer_batch, iters, grid);
#ifdef COEMU_HAVE_CUDA_TRAINER
      if (reinit == 0 && v >= 3) { /* whether the figures are the graph path's */
        int planned, fell_back;
        nn_cuda_graph_counts(&planned, &fell_back);
        printf("trainer-check: %s: %d convolution calls on graph plans, %d on the legacy "
               "API instead, %d on the legacy API as the faster\n", label[v], planned, fell_back,
               nn_cuda_graph_declined());
      }
#endif
    }
    nn_backend_finish(gpu);
    unsetenv("COEMU_CUDNN_VERBOSE");
    unsetenv("COEMU_CUDNN_DETERMINISTIC");
    unsetenv("COEMU_CUDNN_WORKSPACE_MB");
    unsetenv("COEMU_CUDNN_API");
    if (reinit < 0 || nn_backend_init(gpu, 0) < 0) {
      printf("trainer-check: error: %s\n", ce_err_msg());
      nn_backend_finish(&nn_backend_cpu);
      return 1;
    }
#ifdef COEMU_HAVE_CUDA_TRAINER
    if (tf32 && gpu == &nn_backend_cuda && bench_wanted("tf32")) {
      nn_cuda_set_tf32(1);
      bench(gpu, "tf32", NN_FLOAT32, batch, infer_batch, iters, grid);
      nn_cuda_set_tf32(0);
    }
#else
    (void)tf32;
#endif
    bench(gpu, "bf16", NN_BF16, batch, infer_batch, iters, grid);
  }
  /* 5b. where a training step's device time goes (--times, COEMU_CUDA_TIMES=1) */
  if (times && times_tables(gpu, batch, times_steps, grid) < 0) {
    nn_backend_finish(&nn_backend_cpu);
    return 1;
  }
  if (!only_bench) {
    /* 6-7: data parallelism (buckets, NCCL) and the input feed (dp_check.h) */
    failures += dp_check_buckets(gpu, 16);
    failures += dp_check_feed(gpu, grid, curve_batch);
    failures += dp_check_feed_dev(gpu, grid, curve_batch);
    check_metrics(gpu, grid); /* counts its own failure (verdict) */
  }
  nn_backend_finish(gpu);
  nn_backend_finish(&nn_backend_cpu);
  printf("trainer-check: %s (%d failed)\n", failures ? "FAILED" : "all passed", failures);
  return failures ? 1 : 0;
}
