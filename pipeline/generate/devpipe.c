/* devpipe.c - sample + solve in batches behind one table (devpipe.h). */
#include "pipeline/generate/devpipe.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/clock.h"
#include "common/error.h"
#include "common/checksum.h"
#include "common/env.h"
#ifdef COEMU_HAVE_CUDA
#include "pipeline/generate/devpipe_hash.h"
#endif

/* cuda: one chunk of directions sampled on the device (devpipe_cuda's
 * overlap: while one chunk is solved, the next is sampled into the other,
 * on a sibling handle of the model and a thread of its own) */
typedef struct {
  devpipe *p;
  sampler_device *sd;       /* its handle (its own buffers and stream) */
  float **hv, **hT, **hn;   /* [batch] each: the host cubes' arrays (with inputs) */
  int nc;                   /* directions asked for (<= batch) */
  const double (*q)[4];
  float *const *in;         /* NULL: the cubes stay on the device */
  const float *dev;         /* out: the cubes on the device */
  int k, rc;                /* out: cubes made; 0 or -1 */
  double seconds;           /* out: wall time of the sampling */
  char err[2048];           /* out: the message of a failure on the sampling thread */
} devpipe_chunk;

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
  sampler_device *sd; /* cuda */
  devpipe_chunk ch[2]; /* cuda: the chunk being solved and the next one being sampled */
  int overlap;         /* cuda: sample the next chunk on a second thread (COEMU_DEVPIPE_OVERLAP) */
  int chunk;           /* cuda: directions per chunk at most (<= batch; COEMU_DEVPIPE_CHUNK) */
  int hash_after;      /* cuda: the rows' checksums after the solve, not beside (COEMU_DEVPIPE_HASH) */
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

const devpipe_impl devpipe_cpu = {"cpu", cpu_open, cpu_run, cpu_close, 0, 0};

/* ---------------------------------------------------------------------- */
/* cuda: sampled on the device, solved there from device pointers */

static int cuda_open(devpipe *p, int ordinal, char *desc, size_t ndesc) {
  p->opt.backend = LTE_BACKEND_CUDA;
  CE_TRY(lte_backend_open(LTE_BACKEND_CUDA, ordinal, NULL, 0));
  CE_TRY(sampler_device_open(p->a.m, p->a.so->reconstruction, ordinal, &p->sd, desc, ndesc));
  /* COEMU_DEVPIPE_OVERLAP=1: the next chunk sampled while this one is
   * solved. Off by default until a device run has measured it (it is
   * checked and timed both ways by gpu_devpipe_check, scripts/gpu-check.sh):
   * docs/sampling.md, "Sampling the next chunk while one is solved" */
  CE_TRY(p->overlap = ce_env_switch("COEMU_DEVPIPE_OVERLAP", "0", "1",
                                     "0 (the default: one chunk after the other) or 1 (the next "
                                     "chunk sampled while this one is solved)"));
  /* COEMU_DEVPIPE_HASH=after: an images-only chunk's row checksums made
   * after its solve instead of beside it on their own stream. The second
   * H200 run's images-only solve took 37.2 ms a batch, 20.3 ms with inputs
   * and no hash; after, the solve runs alone and the hash costs its own
   * time in series (docs/sampling.md, "The checksum on the device");
   * gpu_devpipe_check times both (its `hash=after` line) */
  CE_TRY(p->hash_after = ce_env_switch("COEMU_DEVPIPE_HASH", "beside", "after",
                                        "beside (the default: the checksums computed beside the "
                                        "solve) or after (after it)"));
  /* COEMU_DEVPIPE_CHUNK=N: at most N cubes per chunk (default: the batch;
   * the device sampler's buffers may hold fewer). Smaller chunks expose
   * less of the first chunk's sampling, larger ones fill the device more:
   * scripts/gpu-tune.sh measures both */
  long ck = 0;
  CE_TRY(ce_env_int("COEMU_DEVPIPE_CHUNK", 1, 4096, "a number of cubes", &ck));
  p->chunk = ck > 0 && ck < p->batch ? (int)ck : p->batch;
  p->ch[0].sd = p->sd;
  if (p->overlap) CE_TRY(sampler_device_open_sibling(p->sd, &p->ch[1].sd));
  for (int i = 0; i < 2; i++) {
    devpipe_chunk *c = &p->ch[i];
    c->p = p;
    if (!c->sd) c->sd = p->sd; /* no overlap: one handle, one chunk at a time */
    c->hv = ce_malloc_array((size_t)p->batch, 3 * sizeof *c->hv, "pipeline cubes");
    if (!c->hv) return -1;
    c->hT = c->hv + p->batch, c->hn = c->hv + 2 * p->batch;
  }
#ifdef COEMU_HAVE_CUDA
  return devpipe_hash_open(p->batch, &p->hash); /* on the sampler's device, now current */
#else
  CE_BUG("the device sampler opened without a CUDA build");
#endif
}

/* Sample chunk c (its nc directions from q) on its handle: c->k cubes on
 * the device at c->dev, the host copies into c->in where asked for; on
 * failure c->rc = -1 and the message in c->err (this may run on the
 * chunk's own thread, whose error buffer is its own). */
static void *chunk_sample(void *arg) {
  devpipe_chunk *c = arg;
  devpipe *p = c->p;
  for (int i = 0; c->in && i < c->nc; i++)
    c->hv[i] = c->in[i], c->hT[i] = c->in[i] + p->nvox, c->hn[i] = c->in[i] + 2 * p->nvox;
  const double t0 = ce_now_s();
  c->dev = NULL;
  c->k = sampler_device_sample_dev(c->sd, c->nc, c->q, p->a.so, &c->dev, c->in ? c->hv : NULL,
                                   c->hT, c->hn);
  c->rc = 0;
  if (c->k < 0) {
    c->rc = -1;
    snprintf(c->err, sizeof c->err, "%s", ce_err_msg());
  } else if (c->k < 1 || c->k > c->nc || !c->dev) {
    c->rc = -1;
    snprintf(c->err, sizeof c->err, "internal error: the device sampler made %d of %d cubes",
             c->k, c->nc);
  }
  c->seconds = ce_now_s() - t0;
  return NULL;
}

/* Solve chunk c into tg (its k targets) and, images only, its checksums
 * into hash: the cubes are hashed on the device beside the LTE kernel
 * (or after it: COEMU_DEVPIPE_HASH; devpipe_hash.h) and only the checksums
 * come back; the stored targets
 * are made on the device too (lte_solve_batch_device_targets). */
static int chunk_solve(devpipe *p, devpipe_chunk *c, float *const *tg, uint64_t *hash) {
  const int k = c->k;
  const float **v = p->cv, **T = p->cT, **n = p->cn;
  for (int i = 0; i < k; i++) {
    v[i] = c->dev + (size_t)i * 3 * p->nvox;
    T[i] = v[i] + p->nvox, n[i] = v[i] + 2 * p->nvox;
  }
  const int hashing = !c->in && hash;
#ifdef COEMU_HAVE_CUDA
  if (hashing && !p->hash_after) CE_TRY(devpipe_hash_start(p->hash, c->dev, 3 * p->nvox, k));
#endif
  const double t1 = ce_now_s();
  int rc = lte_solve_batch_device_targets(p->a.line, p->a.freqs, p->a.nf, k, p->n, p->n, p->n, v,
                                          T, n, &p->opt, tg);
  const double t2 = ce_now_s();
#ifdef COEMU_HAVE_CUDA
  if (hashing && p->hash_after && rc >= 0)
    CE_TRY(devpipe_hash_start(p->hash, c->dev, 3 * p->nvox, k));
  /* waited for whatever the solve did: the chunk's cubes are sampled over next */
  if (hashing && devpipe_hash_finish(p->hash, hash, k) < 0) return -1;
#else
  (void)hashing;
#endif
  p->t.solve += t2 - t1, p->t.hash_wait += ce_now_s() - t2;
  if (rc == LTE_KERNEL_BAD_INPUT) return DEVPIPE_BAD_CELL;
  return rc < 0 ? -1 : 0;
}

/* Every one of the nc directions (devpipe_cuda.whole), in chunks of at
 * most p->chunk: the first chunk is sampled, then each chunk is solved and,
 * with p->overlap, the next is sampled meanwhile into the other buffers on
 * a thread of its own (else after the solve, on the same handle), so
 * that the device runs the sampler's kernels beside the LTE kernels (each
 * alone leaves most of the device idle: their registers limit how many
 * threads an SM holds). The outputs are the same bits in the same order:
 * only the time the chunks overlap changes. */
static int cuda_run(devpipe *p, int nc, const double (*q)[4], float *const *tg,
                    float *const *in, uint64_t *hash) {
  int cur = 0, off = 0;
  devpipe_chunk *c = &p->ch[0];
  c->nc = nc < p->chunk ? nc : p->chunk, c->q = q, c->in = in;
  chunk_sample(c);
  p->t.sample += c->seconds;
  if (c->rc < 0) return ce_err("%s", c->err);
  while (off < nc) {
    c = &p->ch[cur];
    devpipe_chunk *o = &p->ch[1 - cur];
    const int next = off + c->k;
    pthread_t th;
    int threaded = 0;
    if (next < nc) {
      o->nc = nc - next < p->chunk ? nc - next : p->chunk;
      o->q = q + next, o->in = in ? in + next : NULL;
      threaded = p->overlap && pthread_create(&th, NULL, chunk_sample, o) == 0;
    }
    int rc = chunk_solve(p, c, tg + off, hash ? hash + off : NULL);
    const double t0 = ce_now_s();
    if (threaded) pthread_join(th, NULL); /* before anything returns: o is in use */
    else if (next < nc && rc == 0) chunk_sample(o);
    p->t.sample += ce_now_s() - t0; /* the sampling the solve did not hide */
    /* a bad cell after finished chunks: those count (devpipe_run's *done);
     * devpipe_run calls again from the bad chunk, which then reports it */
    if (rc == DEVPIPE_BAD_CELL && off > 0) return off;
    if (rc < 0) return rc;
    if (next < nc && o->rc < 0) return ce_err("%s", o->err);
    off = next;
    cur = 1 - cur; /* without the overlap both chunks are on one handle: o's cubes are there */
  }
  return nc;
}

static void cuda_close(devpipe *p) {
#ifdef COEMU_HAVE_CUDA
  devpipe_hash_close(p->hash);
#endif
  if (p->ch[1].sd != p->sd) sampler_device_close(p->ch[1].sd); /* the sibling first */
  free(p->ch[0].hv), free(p->ch[1].hv);
  sampler_device_close(p->sd);
}

const devpipe_impl devpipe_cuda = {"cuda", cuda_open, cuda_run, cuda_close, 1, 1};

/* ---------------------------------------------------------------------- */
/* The driver */

const devpipe_impl *devpipe_impl_for(lte_backend b, int recon) {
  if (b == LTE_BACKEND_CPU) return &devpipe_cpu;
  if (b == LTE_BACKEND_CUDA && sampler_device_supports(recon)) return &devpipe_cuda;
  return NULL;
}

void *devpipe_host_alloc(const devpipe_impl *impl, int ordinal, size_t n, size_t size,
                         const char *what, int *pinned) {
  *pinned = 0;
  if (impl->pinned_host) return sampler_device_host_alloc(ordinal, n, size, what, pinned);
  return ce_malloc_array(n, size, what);
}

void devpipe_host_free(void *p, int pinned) { sampler_device_host_free(p, pinned); }

void devpipe_close(devpipe *p) {
  if (!p) return;
  if (p->impl) p->impl->close(p);
  free(p->img), free(p->imgp), free(p->scratch), free(p->sp), free(p->cv);
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
  if (!p->cv) {
    devpipe_close(p);
    return -1;
  }
  p->cT = p->cv + p->batch, p->cn = p->cv + 2 * p->batch;
  p->impl = impl; /* close() undoes a part-done open() too */
  if (impl->open(p, ordinal, desc, ndesc) < 0) {
    devpipe_close(p);
    return ce_err_prefix("sample + solve pipeline '%s'", impl->name);
  }
  *out = p;
  return 0;
}

int devpipe_run(devpipe *p, int ndir, const double (*q)[4], float *const *targets,
                float *const *inputs, uint64_t *in_hash, int *done) {
  *done = 0;
  while (*done < ndir) {
    int want = p->impl->whole || ndir - *done < p->batch ? ndir - *done : p->batch;
    int k = p->impl->run(p, want, q + *done, targets + *done, inputs ? inputs + *done : NULL,
                         !inputs && in_hash ? in_hash + *done : NULL);
    if (k == DEVPIPE_BAD_CELL) return DEVPIPE_BAD_CELL;
    if (k < 0) return ce_err_prefix("sample + solve pipeline '%s'", p->impl->name);
    *done += k;
  }
  return 0;
}
