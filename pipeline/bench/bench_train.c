/* bench_train.c - `coemu bench train`: COEmuNet on the CPU (or, with
 * --device cuda, on the CUDA backend: samples/s and GFLOP/s, no CPU peak).
 *
 *   train coemunet7 batch=B samples/s X   (forward + loss + backward + Adam)
 *   infer coemunet7 ms/sample Y           (evaluation-mode forward)
 * and the achieved GFLOP/s of the convolution and linear layers against the
 * machine's peak: measured (bench_cpu_peak: the threads' float32 FMA rate
 * on the widest vectors the CPU runs), or with --flops-per-cycle X, threads
 * x clock x X (Zen 4: two 256-bit FMA pipes, AVX-512 issued as two halves,
 * 32 float32 FLOP a cycle; a Xeon with two AVX-512 FMA ports, 64). Inputs
 * and targets are random: speed does not depend on the values. --feeds
 * says how each step's batch reaches the backend (trainer/train_bench.h:
 * pageable host memory, page-locked beside the step before, or resident);
 * lines of a feed other than pageable say it ("feed=resident"), and on a
 * device the copies' GB/s come first. The loops are train_bench.h's, the
 * device check's (tests/trainer/trainer_gpu_check.c). */
#include <math.h>
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/rng.h"
#include "pipeline/bench/benches.h"
#include "trainer/coemunet.h"
#include "trainer/train.h"
#include "trainer/train_bench.h"

static double cpu_mhz(void) { /* first "cpu MHz" line of /proc/cpuinfo, 0 if none */
  FILE *f = fopen("/proc/cpuinfo", "r");
  double mhz = 0;
  char line[256];
  while (f && fgets(line, sizeof line, f))
    if (!strncmp(line, "cpu MHz", 7) && sscanf(strchr(line, ':') + 1, "%lf", &mhz) == 1) break;
  if (f) fclose(f);
  return mhz;
}

int bench_train(int argc, char **argv) {
  int64_t batch = 8, iters = 3, nfreq = 7, seed = 1234;
  double fpc = 0; /* 0: the peak measured */
  const char *device = "cpu", *precision = "float32", *feeds = NULL;
  cli_opt opts[] = {
      {"batch", CLI_INT, &batch, "B", "training batch size, 2..4096 (default 8)", 0, 0},
      {"iters", CLI_INT, &iters, "K", "timed iterations of each, 1..1000 (default 3)", 0, 0},
      {"nfreq", CLI_INT, &nfreq, "F", "output channels, 1..64: 1 the single-channel model (2-D "
       "decoder), 2 or more the multi-frequency one (3-D decoder); 7 (default) the paper's", 0, 0},
      {"flops-per-cycle", CLI_DOUBLE, &fpc, "X", "peak float32 FLOP per cycle per core, 0..4096, "
       "for a peak of threads x clock x X (default 0: the peak measured, no clock needed; Zen 4: "
       "32)", 0, 0},
      {"seed", CLI_INT64, &seed, "S", "initialisation seed", 0, 0},
      {"device", CLI_STR, &device, "NAME", "trainer backend: cpu (default) or cuda (a CUDA build "
       "and a GPU)", 0, 0},
      {"feeds", CLI_STR, &feeds, "LIST", "how the batch reaches the backend: pageable, pinned, "
       "resident, comma-separated (default: pageable on the CPU, all three on a device)", 0, 0},
      {"precision", CLI_STR, &precision, "P", "float32 (default), tf32 or bf16: the arithmetic of "
       "convolutions and linear layers (docs/trainer.md, Precision; emulated on the CPU)", 0, 0},
      {0}};
  const cli_command spec = {"bench train", "[options]",
                            "Time COEmuNet training and inference on the CPU (or the GPU: "
                            "--device cuda).", opts, 0, 0};
  cli_status r = cli_run_parse(&spec, argc, argv, NULL, NULL);
  if (r != CLI_OK) return cli_exit(r);
  /* any F in 1..64 builds (coemunet_default: 2-D decoder for 1, 3-D above) */
  const cli_range range[] = {{"--batch", batch, 2, 4096, NULL},
                             {"--iters", iters, 1, 1000, NULL},
                             {"--nfreq", nfreq, 1, 64, NULL}};
  int bad = cli_check_ranges("bench train", range, sizeof range / sizeof range[0]);
  if (bad) return bad;
  if (fpc < 0 || fpc > 4096)
    return cli_usage_fail("bench train", "--flops-per-cycle %g: expected 0..4096 FLOP a cycle "
                          "(0, the default: the peak measured)", fpc);
  if (strcmp(device, "cpu") && strcmp(device, "cuda"))
    return cli_usage_fail("bench train", "--device %s: expected cpu or cuda", device);
  unsigned feed_mask = 0;
  const int on_cpu = !strcmp(device, "cpu");
  if (train_bench_feeds_parse(feeds ? feeds : on_cpu ? "pageable" : "pageable,pinned,resident",
                              &feed_mask) < 0)
    return cli_usage_fail("bench train", "--feeds %s: %s", feeds ? feeds : "", ce_err_msg());
  const nn_backend *be = nn_backend_by_name(device); /* cuda not built: a clear error */
  if (!be) return cli_fail("bench train");
  const int prec = nn_precision_parse(precision);
  if (prec < 0) return cli_usage_fail("bench train", "--precision %s: expected float32, tf32 or bf16", precision);
  if (nn_backend_check_precision(be, prec) < 0) return cli_fail("bench train");
  coemunet m;
  coemunet_config cfg = coemunet_default((int)nfreq);
  adam opt;
  trainer tr;
  /* OpenMP's default thread count (OMP_NUM_THREADS), OpenBLAS to 1; the
     device's backend (no device: a clear error) */
  if (nn_backend_init(be, 0) < 0) return cli_fail("bench train");
  if (coemunet_build_on(&m, &cfg, (uint64_t)seed, be) < 0) {
    nn_backend_finish(be);
    return cli_fail("bench train");
  }
  adam_config ac = adam_default();
  if (nn_set_precision(&m.net, prec) < 0 || nn_set_batch(&m.net, (int)batch) < 0 ||
      adam_init(&opt, &m.net, &ac) < 0 ||
      trainer_init(&tr, &m, &opt) < 0) {
    coemunet_free(&m);
    nn_backend_finish(be);
    return cli_fail("bench train");
  }
  const size_t nx = (size_t)batch * 3 * cfg.grid * cfg.grid * cfg.grid;
  const size_t nt = (size_t)batch * cfg.nfreq * cfg.grid * cfg.grid;
  float *x = malloc(sizeof(float) * nx), *t = malloc(sizeof(float) * nt);
  if (!x || !t) {
    ce_err("out of memory for the batch");
    return cli_fail("bench train");
  }
  ce_rng rng = ce_rng_make((uint64_t)seed, 0, 0, 1);
  for (size_t i = 0; i < nx; i++) x[i] = (float)(2 * ce_rng_uniform(&rng) - 1);
  for (size_t i = 0; i < nt; i++) t[i] = (float)ce_rng_uniform(&rng);
  char name[32];
  /* the precision in the name where it is not float32: "coemunet7-bf16" */
  snprintf(name, sizeof name, "coemunet%d%s%s", cfg.nfreq, prec ? "-" : "", prec ? precision : "");
  int rc = 0;
  const double ff = nn_forward_flops(&m.net), bf = nn_backward_flops(&m.net);
  const int threads = omp_get_max_threads();
  /* the CPU's peak: threads x clock x fpc where given, else measured */
  double mhz = 0, peak = 0;
  int lanes = 0;
  if (on_cpu) {
    if (fpc > 0)
      mhz = cpu_mhz(), peak = threads * mhz * 1e-3 * fpc;
    else
      peak = bench_cpu_peak(threads, &lanes) * 1e-9;
  }
  if (!on_cpu) /* the bus alone: what a pageable figure can reach at most */
    for (int f = TRAIN_BENCH_PAGEABLE; f <= TRAIN_BENCH_PINNED && rc == 0; f++) {
      if (!(feed_mask >> f & 1)) continue;
      double s = 0;
      rc = train_bench_upload(&m.net, x, nx, (train_bench_feed)f, iters, &s);
      if (rc == 0)
        printf("upload %s %s bytes=%zu GB/s %.2f (%.2f ms a batch)\n", be->name,
               train_bench_feed_name((train_bench_feed)f), sizeof(float) * nx,
               sizeof(float) * nx * (double)iters / s * 1e-9, 1e3 * s / iters);
    }
  int first = 1; /* the GFLOP/s lines: of the first feed */
  for (int f = 0; f < TRAIN_BENCH_NFEEDS && rc == 0; f++) {
    if (!(feed_mask >> f & 1)) continue;
    char tag[32] = "";
    if (f != TRAIN_BENCH_PAGEABLE)
      snprintf(tag, sizeof tag, "feed=%s ", train_bench_feed_name((train_bench_feed)f));
    /* training: one untimed warm-up step, then iters timed; then
       evaluation-mode forwards at the same batch size */
    double train_s = 0, infer_s = 0;
    rc = train_bench_steps(&tr, x, t, ac.lr, (train_bench_feed)f, 1, (int)iters, &train_s);
    if (rc == 0) rc = train_bench_forwards(&tr, x, (train_bench_feed)f, 1, (int)iters, &infer_s);
    if (rc < 0) break;
    train_s /= iters, infer_s /= iters;
    const double train_gf = batch * (ff + bf) / train_s * 1e-9, infer_gf = batch * ff / infer_s * 1e-9;
    if (!on_cpu) { /* no CPU peak to compare with */
      printf("train %s %s batch=%lld %ssamples/s %.2f\n", name, be->name, (long long)batch, tag,
             batch / train_s);
      printf("infer %s %s batch=%lld %ssamples/s %.1f (ms/sample %.3f)\n", name, be->name,
             (long long)batch, tag, batch / infer_s, 1e3 * infer_s / batch);
      if (first)
        printf("train %s %s GFLOP/s %.1f, infer GFLOP/s %.1f\n", name, be->name, train_gf, infer_gf);
    } else {
      printf("train %s batch=%lld %ssamples/s %.2f\n", name, (long long)batch, tag, batch / train_s);
      printf("infer %s %sms/sample %.1f\n", name, tag, 1e3 * infer_s / batch);
      if (first) {
        printf("train %s GFLOP/s %.1f (%.2f GFLOP/sample fwd+bwd, %.0f%% of peak)\n", name,
               train_gf, (ff + bf) * 1e-9, 100 * train_gf / peak);
        printf("infer %s GFLOP/s %.1f (%.2f GFLOP/sample, %.0f%% of peak)\n", name, infer_gf,
               ff * 1e-9, 100 * infer_gf / peak);
        if (fpc > 0)
          printf("train peak GFLOP/s %.1f (%d threads x %.0f MHz x %.0f FLOP/cycle)\n", peak,
                 threads, mhz, fpc);
        else
          printf("train peak GFLOP/s %.1f (measured: %d thread%s of float32 FMAs on %d-lane "
                 "vectors)\n", peak, threads, threads == 1 ? "" : "s", lanes);
      }
    }
    first = 0;
    fflush(stdout);
  }
  if (rc == 0) printf("train params %lld\n", (long long)nn_param_count(&m.net));
  free(x);
  free(t);
  trainer_free(&tr);
  adam_free(&opt);
  coemunet_free(&m);
  nn_backend_finish(be);
  return rc < 0 ? cli_fail("bench train") : 0;
}
