/* devpipe.c - sample + solve in batches behind one table (devpipe.h). */
#include "pipeline/generate/devpipe.h"

#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/error.h"
#include "common/checksum.h"
#ifdef COEMU_HAVE_CUDA
#include "pipeline/generate/devpipe_hash.h"
#endif

struct devpipe {
  const devpipe_impl *impl;
  devpipe_args a;
  lte_options opt;   /* a.opt with the implementation's backend */
  int n, batch;
  size_t nvox, nimg; /* n^3, n^2 nf */
  double *img;       /* cpu: [batch * nimg] the images of one run(), before the transposes */
  double **imgp;     /* cpu: [batch] into img */
  float *scratch;    /* cpu: [nscratch * 3 nvox] cubes when the caller wants none */
  float **sp;        /* [nscratch] into scratch */
  int nscratch;      /* cpu: cubes per run() without the caller's buffers (<= batch) */
  const float **cv, **cT, **cn; /* [batch] each: the cubes' arrays for the solver */
  float **hv, **hT, **hn;       /* [batch] each: the host cubes' arrays (cuda) */
  sampler_device *sd; /* cuda */
#ifdef COEMU_HAVE_CUDA
  devpipe_hash *hash; /* cuda: the input rows' checksums on the device */
#endif
  devpipe_phases t; /* devpipe_phase_seconds */
};

void devpipe_phase_seconds(devpipe *p, devpipe_phases *out) {
  *out = p->t;
  memset(&p->t, 0, sizeof p->t);
}

uint64_t devpipe_row_hash(const float *row, size_t nfloats) {
  return ce_xxh64(row, nfloats * sizeof *row, 0); /* little-endian float32 in memory */
}

void devpipe_image_to_targets(const double *image, int n, int nf, float *targets) {
  for (int x = 0; x < n; x++)
    for (int y = 0; y < n; y++)
      for (int f = 0; f < nf; f++)
        targets[((size_t)f * n + x) * n + y] = (float)image[((size_t)x * n + y) * nf + f];
}

int devpipe_batch_size(int n, int nf, int with_inputs, size_t cap_bytes) {
  size_t per = (size_t)n * n * nf * sizeof(double) +
               (with_inputs ? 3 * (size_t)n * n * n * sizeof(float) : 0);
  size_t b = per ? cap_bytes / per : 1;
  return b < 1 ? 1 : b > 256 ? 256 : (int)b;
}

/* ---------------------------------------------------------------------- */
/* cpu: the producer's sampler and kernel, a batch per solve */

static int cpu_open(devpipe *p, int ordinal, char *desc, size_t ndesc) {
  (void)ordinal;
  p->opt.backend = LTE_BACKEND_CPU;
  /* an images-only batch may be longer than cubes of host memory should be:
   * its run()s then do fewer, as a device's chunk */
  int fit = devpipe_batch_size(p->n, p->a.nf, 1, (size_t)256 << 20);
  p->nscratch = p->batch < fit ? p->batch : fit;
  /* the images, float64 (x, y, f), before the transposes into the targets */
  p->img = ce_malloc_array((size_t)p->batch, p->nimg * sizeof(double), "pipeline images");
  p->imgp = ce_malloc_array((size_t)p->batch, sizeof *p->imgp, "pipeline images");
  if (!p->img || !p->imgp) return -1;
  for (int c = 0; c < p->batch; c++) p->imgp[c] = p->img + (size_t)c * p->nimg;
  p->scratch = ce_malloc_array((size_t)p->nscratch, 3 * p->nvox * sizeof(float), "pipeline cubes");
  p->sp = ce_malloc_array((size_t)p->nscratch, sizeof *p->sp, "pipeline cubes");
  if (!p->scratch || !p->sp) return -1;
  for (int c = 0; c < p->nscratch; c++) p->sp[c] = p->scratch + (size_t)c * 3 * p->nvox;
  return lte_backend_open(LTE_BACKEND_CPU, 0, desc, ndesc);
}

/* without in, the cubes stay in the pipeline's scratch and, as on the
 * device, only their checksums go back */
static int cpu_run(devpipe *p, int nc, const double (*q)[4], float *const *tg, float *const *in,
                   uint64_t *hash) {
  float *const *cube = in ? in : p->sp;
  if (!in && nc > p->nscratch) nc = p->nscratch;
  const float **v = p->cv, **T = p->cT, **n = p->cn;
  double t0 = ce_now_s();
  for (int c = 0; c < nc; c++) {
    v[c] = cube[c], T[c] = cube[c] + p->nvox, n[c] = cube[c] + 2 * p->nvox;
    CE_TRY(sample_cube(p->a.m, q[c], p->a.so, cube[c], cube[c] + p->nvox, cube[c] + 2 * p->nvox));
    if (!in && hash) hash[c] = devpipe_row_hash(cube[c], 3 * p->nvox);
  }
  double t1 = ce_now_s();
  CE_TRY(lte_solve_batch_f32(p->a.line, p->a.freqs, p->a.nf, nc, p->n, p->n, p->n, v, T, n,
                             &p->opt, p->imgp));
  const double t2 = ce_now_s();
  for (int c = 0; c < nc; c++) devpipe_image_to_targets(p->imgp[c], p->n, p->a.nf, tg[c]);
  p->t.sample += t1 - t0, p->t.solve += t2 - t1, p->t.targets += ce_now_s() - t2;
  return nc;
}

static void cpu_close(devpipe *p) { (void)p; }

const devpipe_impl devpipe_cpu = {"cpu", cpu_open, cpu_run, cpu_close};

/* ---------------------------------------------------------------------- */
/* cuda: sampled on the device, solved there from device pointers */

static int cuda_open(devpipe *p, int ordinal, char *desc, size_t ndesc) {
  p->opt.backend = LTE_BACKEND_CUDA;
  CE_TRY(lte_backend_open(LTE_BACKEND_CUDA, ordinal, NULL, 0));
  CE_TRY(sampler_device_open(p->a.m, ordinal, &p->sd, desc, ndesc));
#ifdef COEMU_HAVE_CUDA
  return devpipe_hash_open(p->batch, &p->hash); /* on the sampler's device, now current */
#else
  CE_BUG("the device sampler opened without a CUDA build");
#endif
}

/* without in, the cubes' checksums are made on the device beside the LTE
 * kernel (devpipe_hash.h), and only they come back; the stored targets are
 * made on the device too (lte_solve_batch_device_targets) */
static int cuda_run(devpipe *p, int nc, const double (*q)[4], float *const *tg,
                    float *const *in, uint64_t *hash) {
  const float *dev = NULL;
  float **hv = p->hv, **hT = p->hT, **hn = p->hn;
  for (int c = 0; in && c < nc; c++)
    hv[c] = in[c], hT[c] = in[c] + p->nvox, hn[c] = in[c] + 2 * p->nvox;
  const double t0 = ce_now_s();
  int k = sampler_device_sample_dev(p->sd, nc, q, p->a.so, &dev, in ? hv : NULL, hT, hn);
  if (k < 0) return -1;
  if (k < 1 || k > nc || !dev) CE_BUG("device sampler made %d of %d cubes", k, nc);
  const float **v = p->cv, **T = p->cT, **n = p->cn;
  for (int c = 0; c < k; c++) {
    v[c] = dev + (size_t)c * 3 * p->nvox;
    T[c] = v[c] + p->nvox, n[c] = v[c] + 2 * p->nvox;
  }
  const int hashing = !in && hash;
#ifdef COEMU_HAVE_CUDA
  if (hashing) CE_TRY(devpipe_hash_start(p->hash, dev, 3 * p->nvox, k));
#endif
  const double t1 = ce_now_s();
  int rc = lte_solve_batch_device_targets(p->a.line, p->a.freqs, p->a.nf, k, p->n, p->n, p->n, v,
                                          T, n, &p->opt, tg);
  const double t2 = ce_now_s();
#ifdef COEMU_HAVE_CUDA
  /* waited for whatever the solve did: the next run's sampling overwrites dev */
  if (hashing && devpipe_hash_finish(p->hash, hash, k) < 0) return -1;
#else
  (void)hashing;
#endif
  p->t.sample += t1 - t0, p->t.solve += t2 - t1, p->t.hash_wait += ce_now_s() - t2;
  if (rc == LTE_KERNEL_BAD_INPUT) return DEVPIPE_BAD_CELL;
  return rc < 0 ? -1 : k;
}

static void cuda_close(devpipe *p) {
#ifdef COEMU_HAVE_CUDA
  devpipe_hash_close(p->hash);
#endif
  sampler_device_close(p->sd);
}

const devpipe_impl devpipe_cuda = {"cuda", cuda_open, cuda_run, cuda_close};

/* ---------------------------------------------------------------------- */
/* The driver */

const devpipe_impl *devpipe_impl_for(lte_backend b, int recon) {
  if (b == LTE_BACKEND_CPU) return &devpipe_cpu;
  if (b == LTE_BACKEND_CUDA && sampler_device_supports(recon)) return &devpipe_cuda;
  return NULL;
}

void devpipe_close(devpipe *p) {
  if (!p) return;
  if (p->impl) p->impl->close(p);
  free(p->img), free(p->imgp), free(p->scratch), free(p->sp), free(p->cv), free(p->hv);
  free(p);
}

int devpipe_open(const devpipe_impl *impl, const devpipe_args *a, int ordinal, devpipe **out,
                 char *desc, size_t ndesc) {
  *out = NULL;
  if (a->so->n < 1 || a->nf < 1)
    CE_FAIL("sample + solve pipeline: %d^3 cubes at %d channels, expected n, channels >= 1",
            a->so->n, a->nf);
  devpipe *p = calloc(1, sizeof *p);
  if (!p) CE_FAIL("sample + solve pipeline: out of memory");
  p->a = *a;
  p->opt = *a->opt;
  p->n = a->so->n;
  p->nvox = (size_t)p->n * p->n * p->n;
  p->nimg = (size_t)p->n * p->n * a->nf;
  p->batch = a->batch > 0 ? a->batch : devpipe_batch_size(p->n, a->nf, 1, (size_t)256 << 20);
  p->cv = ce_malloc_array((size_t)p->batch, 3 * sizeof *p->cv, "pipeline cubes");
  p->hv = ce_malloc_array((size_t)p->batch, 3 * sizeof *p->hv, "pipeline cubes");
  if (!p->cv || !p->hv) {
    devpipe_close(p);
    return -1;
  }
  p->cT = p->cv + p->batch, p->cn = p->cv + 2 * p->batch;
  p->hT = p->hv + p->batch, p->hn = p->hv + 2 * p->batch;
  if (impl->open(p, ordinal, desc, ndesc) < 0) {
    devpipe_close(p);
    return ce_err_prefix("sample + solve pipeline '%s'", impl->name);
  }
  p->impl = impl;
  *out = p;
  return 0;
}

int devpipe_run(devpipe *p, int ndir, const double (*q)[4], float *const *targets,
                float *const *inputs, uint64_t *in_hash, int *done) {
  *done = 0;
  while (*done < ndir) {
    int want = ndir - *done < p->batch ? ndir - *done : p->batch;
    int k = p->impl->run(p, want, q + *done, targets + *done, inputs ? inputs + *done : NULL,
                         !inputs && in_hash ? in_hash + *done : NULL);
    if (k == DEVPIPE_BAD_CELL) return DEVPIPE_BAD_CELL;
    if (k < 0) return ce_err_prefix("sample + solve pipeline '%s'", p->impl->name);
    *done += k;
  }
  return 0;
}
