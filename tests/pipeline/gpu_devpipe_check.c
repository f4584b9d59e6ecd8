/* gpu_devpipe_check.c - issue 17's dataset-equality device check, standalone
 * (no MPI, HDF5 or ZeroMQ; built by scripts/gpu-check.sh): N samples of each
 * of the demo job's first models (tests/pipeline/devpipe_fixture.h) made in
 * memory by the producer's per-sample CPU path and by the device pipeline
 * (pipeline/generate/devpipe.h: cubes sampled on the device and solved
 * there), for every reconstruction the device sampler has. The rules
 * (docs/physics.md, "How equal is equal"): the input cubes bit for bit (the
 * device sampler is sample_cube's arithmetic); the stored images within
 * 1e-7 relative of the literal reference (tests/solver/ref_lte.c) plus the
 * float32 rounding of a stored target (2^-24), on every pixel that is
 * neither round-off (|I| <= 1e-12 max |I|) nor ill-conditioned (the
 * reference's noise above 1e-8 |I|), on --ref directions per model; the CPU
 * path's images are held to the same rule (so a wrong rule cannot pass the
 * device alone). Then the sample + solve benchmark: batches of directions
 * of model 0 through the pipeline, images only and with the inputs, for
 * constant and linear. The pipeline's host rows are one block each,
 * page-locked on a device (devpipe_host_alloc, as the producer's), so the
 * cubes and targets come back in one copy per chunk straight into them.
 * Images only (the pipeline's path for datasets that do not store inputs):
 * the same directions again without input buffers, the pipeline hashing
 * each cube where it was made; every row's XXH64 must equal the CPU row's
 * (ce_xxh64, what /checksums records) and the images the rules.
 * One line per figure:
 *   gpu_devpipe_check constant model 0: inputs identical 16 of 16, images within the rules ...
 *   gpu_devpipe_check constant model 0 images_only: input row XXH64s equal ... 16 of 16 ...
 *   gpu_devpipe_bench sample+solve constant 64^3x7 k=2 images_only batch=256 samples_per_s ...
 *     bytes_back_per_sample ... (the targets, float32, and the row's XXH64); per batch:
 *     sample, solve, checksum wait, host transposes (ms)
 *   gpu_devpipe_bench sample+solve constant 64^3x7 k=2 images_only_no_checksums batch=256 ...
 *     (the same without the cubes' checksums: what hashing beside the solve costs)
 *   gpu_devpipe_bench sample+solve constant 64^3x7 k=2 images_only hash=after batch=256 ...
 *     (the checksums after each chunk's solve, COEMU_DEVPIPE_HASH=after: the wait is
 *     the hash's own time; the checksums must equal those made beside the solve)
 *   gpu_devpipe_bench sample+solve constant 64^3x7 k=2 with_inputs batch=64 samples_per_s ... GB_per_s ...
 *   (the same two for linear, the default reconstruction of new jobs)
 * --cpu puts the CPU implementation of the same table in the device's place
 * (a host without a GPU runs the whole check that way). Exit status 0 only
 * if every check passed. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "common/checksum.h"
#include "common/clock.h"
#include "common/error.h"
#include "devpipe_fixture.h"
#include "solver/ref_lte.h"

typedef struct {
  double worst;
  long counted, ill, total, bad;
} tally;

/* stored targets (f, x, y) float against the literal reference (x, y, f) */
static void rule(const float *tg, const double *ref, const double *noise, int n, int nf, tally *t) {
  const size_t np = (size_t)n * n * nf;
  double mx = 0;
  for (size_t i = 0; i < np; i++) mx = fmax(mx, fabs(ref[i]));
  for (int x = 0; x < n; x++)
    for (int y = 0; y < n; y++)
      for (int f = 0; f < nf; f++) {
        size_t i = ((size_t)x * n + y) * nf + f;
        double got = tg[((size_t)f * n + x) * n + y];
        t->total++;
        const ref_lte_class cl = ref_lte_classify(ref[i], noise[i], mx);
        if (cl == REF_LTE_ROUNDOFF) continue;
        if (cl == REF_LTE_ILL) {
          t->ill++;
          continue;
        }
        t->counted++;
        double rel = fabs(got - ref[i]) / fabs(ref[i]);
        t->worst = fmax(t->worst, rel);
        if (!(rel <= 1e-7 + 0x1p-24)) t->bad++;
      }
}

static int fail(const char *what) {
  printf("gpu_devpipe_check %s: FAIL: %s\n", what, ce_err_msg());
  return 1;
}

/* median seconds of reps runs of nb directions; the mean seconds per run
 * of each phase (devpipe_phase_seconds) */
static int bench(devpipe *p, int nb, int reps, const double (*q)[4], float *const *tg,
                 float *const *in, uint64_t *hash, double *med, devpipe_phases *ph) {
  double t[64];
  int done;
  if (devpipe_run(p, nb, q, tg, in, hash, &done) < 0) return -1; /* warm-up */
  devpipe_phase_seconds(p, ph);
  for (int r = 0; r < reps; r++) {
    double t0 = ce_now_s();
    if (devpipe_run(p, nb, q, tg, in, hash, &done) < 0) return -1;
    t[r] = ce_now_s() - t0;
  }
  qsort(t, (size_t)reps, sizeof *t, ce_cmp_double);
  *med = t[reps / 2];
  devpipe_phase_seconds(p, ph);
  ph->sample /= reps, ph->solve /= reps, ph->hash_wait /= reps, ph->targets /= reps;
  return 0;
}

int main(int argc, char **argv) {
  int models = 2, ndir = 16, nref = 2, nbench = 256, reps = 5, n = 64;
  const devpipe_impl *impl = &devpipe_cuda;
  for (int i = 1; i < argc; i++) {
    int *dst = NULL;
    if (!strcmp(argv[i], "--cpu")) {
      impl = &devpipe_cpu;
      continue;
    }
    if (!strcmp(argv[i], "--models")) dst = &models;
    else if (!strcmp(argv[i], "--dirs")) dst = &ndir;
    else if (!strcmp(argv[i], "--ref")) dst = &nref;
    else if (!strcmp(argv[i], "--batch")) dst = &nbench;
    else if (!strcmp(argv[i], "--reps")) dst = &reps;
    else if (!strcmp(argv[i], "--n")) dst = &n;
    if (!dst || i + 1 >= argc) {
      fprintf(stderr, "usage: gpu_devpipe_check [--models M] [--dirs N] [--ref R] [--batch B] "
                      "[--reps R] [--n N] [--cpu]\n");
      return 2;
    }
    *dst = atoi(argv[++i]);
  }
  if (models < 1 || ndir < 1 || nref < 0 || nref > ndir || nbench < 1 || reps < 1 || reps > 63 ||
      n < 2) {
    fprintf(stderr, "gpu_devpipe_check: --models, --dirs, --batch >= 1, 0 <= --ref <= --dirs, "
                    "1 <= --reps <= 63, --n >= 2\n");
    return 2;
  }
  int maxd = ndir > nbench ? ndir : nbench;
  const int nf = FREQGRID_COEMUNET_N;
  const size_t nv = (size_t)n * n * n, nin = 3 * nv, ntg = (size_t)nf * n * n;
  double(*q)[4] = malloc(sizeof *q * (size_t)maxd);
  float **cin = calloc((size_t)maxd, sizeof *cin), **ctg = calloc((size_t)maxd, sizeof *ctg);
  float **din = calloc((size_t)maxd, sizeof *din), **dtg = calloc((size_t)maxd, sizeof *dtg);
  double *ref = malloc(sizeof(double) * ntg), *noise = malloc(sizeof(double) * ntg);
  double *wv = malloc(sizeof(double) * nv * 3);
  float **htg = calloc((size_t)ndir, sizeof *htg); /* images-only runs' targets */
  uint64_t *hash = calloc((size_t)maxd, sizeof *hash);
  if (!q || !cin || !ctg || !din || !dtg || !ref || !noise || !wv || !htg || !hash)
    return fail("memory");
  /* the pipeline's rows as the producer makes them: one block each,
   * page-locked on a device (devpipe_host_alloc), so that the parity below
   * covers the copies straight into them (the images-only run's htg rows,
   * separate allocations, take the staging path) */
  int din_pinned, dtg_pinned;
  float *dinb = devpipe_host_alloc(impl, 0, (size_t)maxd, nin * sizeof(float), "inputs", &din_pinned);
  float *dtgb = devpipe_host_alloc(impl, 0, (size_t)maxd, ntg * sizeof(float), "targets", &dtg_pinned);
  if (!dinb || !dtgb) return fail("memory");
  printf("gpu_devpipe_check %s: the pipeline's host rows (inputs, targets) %s\n", impl->name,
         din_pinned && dtg_pinned ? "page-locked, one block each" : "pageable, one block each");
  for (int d = 0; d < maxd; d++) {
    din[d] = dinb + (size_t)d * nin, dtg[d] = dtgb + (size_t)d * ntg;
    if (d < ndir)
      cin[d] = malloc(nin * sizeof(float)), ctg[d] = malloc(ntg * sizeof(float)),
      htg[d] = malloc(ntg * sizeof(float));
  }
  int rc = 0;
  for (int recon = 0; recon < 3; recon++) {
    const char *rn = sampler_recon_name(recon);
    if (impl == &devpipe_cuda && !sampler_device_supports(recon)) {
      printf("gpu_devpipe_check %s: not on the device sampler (the producer samples it on the CPU)\n", rn);
      continue;
    }
    for (int mi = 0; mi < models; mi++) {
      char what[64];
      snprintf(what, sizeof what, "%s model %d", rn, mi);
      dpf_sample_setup S;
      if (dpf_open(&S, mi, 3, n, recon) < 0) return fail(what);
      double t0 = ce_now_s();
      for (int d = 0; d < ndir; d++) {
        dpf_direction(mi, d, q[d]);
        if (dpf_reference(&S, q[d], cin[d], ctg[d]) < 0) return fail(what);
      }
      double t_cpu = ce_now_s() - t0;
      /* the device pipeline both ways: one chunk after the other, and the
       * next chunk sampled while one is solved (COEMU_DEVPIPE_OVERLAP=1),
       * unless the caller's environment chose one */
      const char *ov_env = getenv("COEMU_DEVPIPE_OVERLAP");
      const int nov = impl == &devpipe_cuda && !ov_env ? 2 : 1;
      for (int ov = 0; ov < nov; ov++) {
        if (nov == 2) setenv("COEMU_DEVPIPE_OVERLAP", ov ? "1" : "0", 1);
        for (int d = 0; d < ndir; d++) dpf_direction(mi, d, q[d]); /* the bench's reuse q */
        snprintf(what, sizeof what, "%s model %d%s", rn, mi, nov == 2 && ov ? " overlap" : "");
        /* chunks of 5: with the overlap the device pipeline alternates its two
         * chunks' buffers (sampling one while the other is solved) 3 times
         * over 16 directions */
        devpipe_args a = {S.m, &S.so, &S.line, &S.opt, S.freqs, S.nf, 5};
        devpipe *p;
        char desc[320] = "";
        if (devpipe_open(impl, &a, 0, &p, desc, sizeof desc) < 0) return fail(what);
        if (mi == 0 && recon == 0 && ov == 0) printf("gpu_devpipe_check %s: %s\n", impl->name, desc);
        /* every row NaN first (the bytes 0xff), so that a chunk a run does
         * not write fails the comparisons below rather than passing on the
         * bits an earlier run (the other way, the bench) left there */
        for (int d = 0; d < ndir; d++) {
          memset(din[d], 0xff, nin * sizeof(float));
          memset(dtg[d], 0xff, ntg * sizeof(float));
          memset(htg[d], 0xff, ntg * sizeof(float));
        }
        int done;
        t0 = ce_now_s();
        if (devpipe_run(p, ndir, (const double (*)[4])q, dtg, din, NULL, &done) < 0)
          return fail(what);
        double t_dev = ce_now_s() - t0;
        /* images only: the cubes stay where they were made, their XXH64s
         * come back and must be the CPU rows' (what /checksums records) */
        for (int d = 0; d < ndir; d++) hash[d] = 0;
        if (devpipe_run(p, ndir, (const double (*)[4])q, htg, NULL, hash, &done) < 0)
          return fail(what);
        int same_in = 0, same_hash = 0;
        long same_px = 0, same_img = 0;
        for (int d = 0; d < ndir; d++) {
          same_in += !memcmp(din[d], cin[d], nin * sizeof(float));
          same_hash += hash[d] == ce_xxh64(cin[d], nin * sizeof(float), 0);
          for (size_t i = 0; i < ntg; i++) same_px += dtg[d][i] == ctg[d][i];
          for (size_t i = 0; i < ntg; i++) same_img += htg[d][i] == dtg[d][i];
        }
        tally td = {0}, tc = {0}, th = {0};
        for (int d = 0; d < nref; d++) {
          for (size_t i = 0; i < 3 * nv; i++) wv[i] = cin[d][i];
          ref_lte_image(&S.mol, 2, 28.0, S.freqs, nf, n, n, n, wv, wv + nv, wv + 2 * nv, S.opt.dx,
                        S.opt.vturb, S.opt.background, S.opt.corrected_taylor, ref, noise);
          rule(dtg[d], ref, noise, n, nf, &td);
          rule(ctg[d], ref, noise, n, nf, &tc);
          rule(htg[d], ref, noise, n, nf, &th);
        }
        int ok = same_in == ndir && td.bad == 0 && tc.bad == 0 && td.counted > td.total / 2 &&
                 same_hash == ndir && th.bad == 0;
        printf("gpu_devpipe_check %s images_only: input row XXH64s equal to the cpu rows' %d of %d; "
               "images within the rules (worst %.3g, %ld bad), %ld of %ld values bit-identical to "
               "the run with inputs: %s\n",
               what, same_hash, ndir, th.worst, th.bad, same_img, (long)(ntg * ndir),
               same_hash == ndir && th.bad == 0 ? "ok" : "FAIL");
        printf("gpu_devpipe_check %s: inputs identical %d of %d; images within the rules on %d "
               "directions: pipeline worst %.3g (%ld bad), cpu worst %.3g (%ld bad), %ld of %ld pixels "
               "counted, %ld ill-conditioned; %ld of %ld stored target values bit-identical to "
               "the cpu's; per-sample path %.2f s, pipeline %.3f s (first call): %s\n",
               what, same_in, ndir, nref, td.worst, td.bad, tc.worst, tc.bad, td.counted, td.total,
               td.ill, same_px, (long)(ntg * ndir), t_cpu, t_dev, ok ? "ok" : "FAIL");
        if (!ok) rc = 1;
        if (mi == 0 && recon <= 1) { /* the benchmark: model 0, constant and linear (the default) */
          devpipe_close(p); /* again at the pipeline's own batch size */
          a.batch = 0;
          if (devpipe_open(impl, &a, 0, &p, NULL, 0) < 0) return fail(what);
          for (int d = 0; d < nbench; d++) dpf_direction(0, d, q[d]);
          double med;
          devpipe_phases ph;
          /* bytes back per sample: the stored targets (float32, made on the
           * device) and the row's XXH64, or the targets and the input cubes
           * (float32) */
          const double b_img = ntg * 4.0 + 8, b_in = ntg * 4.0 + nin * 4.0;
          if (bench(p, nbench, reps, (const double (*)[4])q, dtg, NULL, hash, &med, &ph) < 0)
            return fail("bench");
          printf("gpu_devpipe_bench sample+solve %s%s %dx%dx%dx%d k=2 images_only batch=%d samples_per_s "
                 "%.0f (target 10000) bytes_back_per_sample %.0f bus_GB_per_s %.2f; per batch: "
                 "sample %.1f ms, solve %.1f ms, checksum wait %.1f ms, host transposes %.1f ms\n",
                 rn, nov == 2 && ov ? " overlap" : "", n, n, n, nf, nbench, nbench / med, b_img,
                 nbench * b_img / med / 1e9,
                 ph.sample * 1e3, ph.solve * 1e3, ph.hash_wait * 1e3, ph.targets * 1e3);
          /* the same without the checksums: what hashing the cubes beside
           * the solve costs it (the first device runs' images-only solve
           * took ~1.8x the one with inputs) */
          if (bench(p, nbench, reps, (const double (*)[4])q, dtg, NULL, NULL, &med, &ph) < 0)
            return fail("bench");
          printf("gpu_devpipe_bench sample+solve %s%s %dx%dx%dx%d k=2 images_only_no_checksums "
                 "batch=%d samples_per_s %.0f; per batch: sample %.1f ms, solve %.1f ms\n",
                 rn, nov == 2 && ov ? " overlap" : "", n, n, n, nf, nbench, nbench / med,
                 ph.sample * 1e3, ph.solve * 1e3);
          /* the checksums after the solve instead (COEMU_DEVPIPE_HASH=after,
           * device only): the solve alone, then the hash's own time as the
           * wait; every checksum must equal the run's beside it above */
          if (impl == &devpipe_cuda && !getenv("COEMU_DEVPIPE_HASH")) {
            uint64_t *beside = malloc((size_t)nbench * sizeof *beside);
            if (!beside) return fail("bench");
            memcpy(beside, hash, (size_t)nbench * sizeof *beside);
            devpipe *pa;
            setenv("COEMU_DEVPIPE_HASH", "after", 1);
            int orc = devpipe_open(impl, &a, 0, &pa, NULL, 0);
            unsetenv("COEMU_DEVPIPE_HASH");
            if (orc < 0) return fail(what);
            for (int d = 0; d < nbench; d++) hash[d] = 0;
            if (bench(pa, nbench, reps, (const double (*)[4])q, dtg, NULL, hash, &med, &ph) < 0)
              return fail("bench");
            devpipe_close(pa);
            int same = 0;
            for (int d = 0; d < nbench; d++) same += hash[d] == beside[d];
            free(beside);
            printf("gpu_devpipe_bench sample+solve %s%s %dx%dx%dx%d k=2 images_only hash=after "
                   "batch=%d samples_per_s %.0f; per batch: sample %.1f ms, solve %.1f ms, "
                   "checksum wait %.1f ms (the hash alone); checksums equal to the ones made "
                   "beside the solve %d of %d: %s\n",
                   rn, nov == 2 && ov ? " overlap" : "", n, n, n, nf, nbench, nbench / med,
                   ph.sample * 1e3, ph.solve * 1e3, ph.hash_wait * 1e3, same, nbench,
                   same == nbench ? "ok" : "FAIL");
            if (same != nbench) rc = 1;
          }
          if (bench(p, nbench, reps, (const double (*)[4])q, dtg, din, NULL, &med, &ph) < 0)
            return fail("bench");
          printf("gpu_devpipe_bench sample+solve %s%s %dx%dx%dx%d k=2 with_inputs batch=%d samples_per_s "
                 "%.0f bytes_back_per_sample %.0f bus_GB_per_s %.2f (inputs and targets float32); "
                 "per batch: sample %.1f ms (cubes to the host included), solve %.1f ms, "
                 "host transposes %.1f ms\n",
                 rn, nov == 2 && ov ? " overlap" : "", n, n, n, nf, nbench, nbench / med, b_in,
                 nbench * b_in / med / 1e9,
                 ph.sample * 1e3, ph.solve * 1e3, ph.targets * 1e3);
        }
        devpipe_close(p);
      } /* ov */
      if (nov == 2) unsetenv("COEMU_DEVPIPE_OVERLAP");
      dpf_close(&S);
    }
  }
  devpipe_host_free(dinb, din_pinned), devpipe_host_free(dtgb, dtg_pinned);
  for (int d = 0; d < maxd; d++) free(cin[d]), free(ctg[d]);
  for (int d = 0; d < ndir; d++) free(htg[d]);
  free(htg), free(hash);
  free(q), free(cin), free(ctg), free(din), free(dtg), free(ref), free(noise), free(wv);
  printf("gpu_devpipe_check: %s\n", rc ? "FAILED" : "ok");
  return rc;
}
