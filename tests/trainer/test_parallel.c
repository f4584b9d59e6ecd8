/* test_parallel.c - data-parallel training hooks (nn_reducer): replicas of a
 * scaled-down COEmuNet in threads of one process, each on a share of the
 * batch, against one net on the whole batch.
 *
 * The reducer here sums buffers between threads (a barrier, each thread
 * publishes its buffer, each sums all of them in rank order into a private
 * copy, a barrier, copy back), so every replica gets bit-identical sums, as
 * MPI_Allreduce gives. Modes break it on purpose, to show that the
 * comparison catches a wrong data-parallel scheme by far:
 *   LOCAL_BN     sum_f64 leaves the buffer alone: BatchNorm uses the local
 *                batch's statistics (no SyncBN); gradients are still averaged.
 *   NOT_AVERAGED sum_f32 returns world x the sum: gradients summed, not averaged.
 *
 * Exact where exact by construction (replicas identical to each other, world
 * 1 equal to no reducer, chunked sums equal to one sum, a resumed run equal
 * to the continuous one); each training step against one net's step from
 * the same state within a multiple of the noise floor measured on this host
 * and BLAS kernel (see "Tolerances" below).
 */
#include <cblas.h>
#include <float.h>
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "step_batch.h"
#include "common/rng.h"
#include "trainer/coemunet.h"
#include "trainer/nccl_comm.h"
#include "trainer/train.h"

#define MAXW 4
#define MAXSTEPS 3



enum { SYNC = 0, LOCAL_BN = 1, NOT_AVERAGED = 2 };

typedef struct {
  int world, mode;
  pthread_barrier_t bar;
  const void *slot[MAXW];
  size_t count[MAXW];
} group;

typedef struct {
  group *g;
  int rank;
  long calls_f64, calls_f32;   /* sum calls made by this replica */
  double bytes_f64, bytes_f32; /* and their payload */
} member;

static void *xmalloc(size_t n) {
  void *p = malloc(n ? n : 1);
  if (!p) {
    fprintf(stderr, "out of memory (%zu bytes)\n", n);
    exit(2);
  }
  return p;
}

/* The in-place sum over the group's threads, in rank order. */
#define DEFINE_SUM(fname, T)                                                                   \
  static int fname(void *ctx, T *buf, size_t n) {                                              \
    member *me = ctx;                                                                          \
    group *g = me->g;                                                                          \
    T *mine = xmalloc(sizeof(T) * n);                                                          \
    g->slot[me->rank] = buf;                                                                   \
    g->count[me->rank] = n;                                                                    \
    pthread_barrier_wait(&g->bar);                                                             \
    for (int r = 1; r < g->world; r++)                                                         \
      if (g->count[r] != g->count[0]) { /* every thread sees this and fails alike */           \
        free(mine);                                                                            \
        pthread_barrier_wait(&g->bar);                                                         \
        return ce_err("replica %d sums %zu values, replica 0 %zu", r, g->count[r], g->count[0]); \
      }                                                                                        \
    for (size_t i = 0; i < n; i++) {                                                           \
      T acc = ((const T *)g->slot[0])[i];                                                      \
      for (int r = 1; r < g->world; r++) acc += ((const T *)g->slot[r])[i];                    \
      mine[i] = acc;                                                                           \
    }                                                                                          \
    pthread_barrier_wait(&g->bar); /* everyone has read every buffer */                        \
    memcpy(buf, mine, sizeof(T) * n);                                                          \
    free(mine);                                                                                \
    return 0;                                                                                  \
  }
DEFINE_SUM(group_sum_f64, double)
DEFINE_SUM(group_sum_f32, float)

static int sum_f64(void *ctx, double *buf, size_t n) {
  member *me = ctx;
  me->calls_f64++;
  me->bytes_f64 += sizeof(double) * (double)n;
  return me->g->mode == LOCAL_BN ? 0 : group_sum_f64(ctx, buf, n);
}

static int sum_f32(void *ctx, float *buf, size_t n) {
  member *me = ctx;
  me->calls_f32++;
  me->bytes_f32 += sizeof(float) * (double)n;
  CE_TRY(group_sum_f32(ctx, buf, n));
  if (me->g->mode == NOT_AVERAGED)
    for (size_t i = 0; i < n; i++) buf[i] *= (float)me->g->world;
  return 0;
}

/* ---- data --------------------------------------------------------------- */


/* ---- state ------------------------------------------------------------- */

/* Everything a training step depends on besides the data: every parameter's
 * values (BatchNorm running statistics included), Adam's moments and step. */
typedef struct {
  int nparams;
  float **w, **m, **v; /* m, v: NULL where Adam keeps no state */
  int64_t t;
} snapshot;

/* A host copy of n floats of the net's backend memory (backend.h). */
static float *dup_backend(const nn_net *net, const float *a, int64_t n) {
  float *b = xmalloc(sizeof(float) * (size_t)n);
  CHECK_OK(nn_download(net, b, a, (size_t)n));
  return b;
}

/* 1 if n floats at x (net a's backend memory) and at y (net b's) hold the
 * same bits. */
static int same_floats(const nn_net *a, const float *x, const nn_net *b, const float *y, int64_t n) {
  float *u = dup_backend(a, x, n), *v = dup_backend(b, y, n);
  int same = memcmp(u, v, sizeof(float) * (size_t)n) == 0;
  free(u);
  free(v);
  return same;
}

static void snap_take(snapshot *s, const coemunet *m, const adam *o) {
  const nn_net *net = &m->net;
  s->nparams = net->nparams;
  s->w = xmalloc(sizeof(float *) * net->nparams);
  s->m = xmalloc(sizeof(float *) * net->nparams);
  s->v = xmalloc(sizeof(float *) * net->nparams);
  for (int i = 0; i < net->nparams; i++) {
    const nn_param *p = &net->params[i];
    s->w[i] = dup_backend(net, p->w, p->n);
    s->m[i] = adam_has_state(o, i) ? dup_backend(net, o->m[i], p->n) : NULL;
    s->v[i] = adam_has_state(o, i) ? dup_backend(net, o->v[i], p->n) : NULL;
  }
  s->t = o->t;
}

static void snap_load(const snapshot *s, coemunet *m, adam *o) {
  nn_net *net = &m->net;
  for (int i = 0; i < net->nparams; i++) {
    const nn_param *p = &net->params[i];
    CHECK_OK(nn_param_upload(net, i, s->w[i]));
    if (adam_has_state(o, i)) {
      CHECK_OK(nn_upload(net, o->m[i], s->m[i], (size_t)p->n));
      CHECK_OK(nn_upload(net, o->v[i], s->v[i], (size_t)p->n));
    }
  }
  o->t = s->t;
}

static void snap_free(snapshot *s) {
  for (int i = 0; i < s->nparams; i++) {
    free(s->w[i]);
    free(s->m[i]);
    free(s->v[i]);
  }
  free(s->w);
  free(s->m);
  free(s->v);
  memset(s, 0, sizeof *s);
}

/* One training step as replica 0 saw it. */
typedef struct {
  double loss;            /* the global batch's mean loss */
  float **g;              /* the gradients the update used (trainable parameters) */
  snapshot before, after;
} step_rec;

/* ---- replicas ----------------------------------------------------------- */

typedef struct {
  coemunet m;
  adam o;
  trainer tr;
  member me;
  const float *x, *t;      /* the global batches of all steps */
  int first, n, B;         /* this replica's samples [first, first + n) of B */
  int steps;
  int threads;             /* OpenMP threads of this replica */
  double loss[MAXSTEPS];   /* local losses */
  step_rec rec[MAXSTEPS];  /* replica 0 only */
  int failed;
} replica;

static void *replica_run(void *arg) {
  replica *r = arg;
  omp_set_num_threads(r->threads); /* new threads start from the default ICVs */
  const coemunet_config *c = &r->m.cfg;
  const nn_net *net = &r->m.net;
  const size_t nx = (size_t)3 * c->grid * c->grid * c->grid, nt = (size_t)c->nfreq * c->grid * c->grid;
  for (int k = 0; k < r->steps; k++) {
    const float *x = r->x + ((size_t)k * r->B + r->first) * nx;
    const float *t = r->t + ((size_t)k * r->B + r->first) * nt;
    step_rec *rec = &r->rec[k];
    if (r->me.rank == 0) snap_take(&rec->before, &r->m, &r->o);
    loss_value lv;
    ce_err_clear();
    if (trainer_step(&r->tr, x, t, 2e-3, &lv) < 0) {
      fprintf(stderr, "replica %d, step %d: %s\n", r->me.rank, k, ce_err_msg());
      r->failed = 1;
      return NULL; /* a failed collective fails on every replica alike */
    }
    r->loss[k] = lv.total;
    if (r->me.rank == 0) {
      rec->g = xmalloc(sizeof(float *) * net->nparams);
      for (int i = 0; i < net->nparams; i++)
        rec->g[i] = net->params[i].trainable ? dup_backend(net, net->params[i].g, net->params[i].n) : NULL;
      snap_take(&rec->after, &r->m, &r->o);
    }
  }
  return NULL;
}

typedef struct {
  coemunet_config cfg;
  int world;
  int batch[MAXW];   /* local batch sizes */
  int reducer;       /* 0: none (world must be 1) */
  int mode;
  size_t chunk;      /* nn_reducer.chunk */
  int steps;         /* trainer_step calls, <= MAXSTEPS */
  /* legitimate reorderings of the same computation (the noise floor) */
  int threads;       /* OpenMP threads per replica (0: 1) */
  int reverse;       /* the samples of every batch in reverse order */
  uint32_t ulp_x;    /* != 0: every input value moved by one ulp, up or down (seeded) */
  /* where to start */
  int first_step;    /* the data of steps first_step.. */
  const snapshot *init; /* NULL: freshly initialised weights and optimiser */
  size_t bucket;     /* nn_reducer.bucket: 0 chunked after the backward */
} setup;

typedef struct {
  replica rep[MAXW];
  group g;
  float *x, *t;
  int steps;
} run;

/* Swap samples i and j of a batch of B, `len` floats each. */
static void swap_samples(float *a, size_t len, int i, int j) {
  for (size_t q = 0; q < len; q++) {
    float tmp = a[(size_t)i * len + q];
    a[(size_t)i * len + q] = a[(size_t)j * len + q];
    a[(size_t)j * len + q] = tmp;
  }
}

static void run_train(run *R, const setup *s) {
  memset(R, 0, sizeof *R);
  R->steps = s->steps;
  int B = 0;
  for (int r = 0; r < s->world; r++) B += s->batch[r];
  const coemunet_config *c = &s->cfg;
  const size_t nx = (size_t)3 * c->grid * c->grid * c->grid, nt = (size_t)c->nfreq * c->grid * c->grid;
  R->x = xmalloc(sizeof(float) * nx * B * R->steps);
  R->t = xmalloc(sizeof(float) * nt * B * R->steps);
  for (int k = 0; k < R->steps; k++) {
    float *x = R->x + (size_t)k * B * nx, *t = R->t + (size_t)k * B * nt;
    test_step_batch(c, B, s->first_step + k, x, t);
    for (int i = 0; s->reverse && i < B - 1 - i; i++) {
      swap_samples(x, nx, i, B - 1 - i);
      swap_samples(t, nt, i, B - 1 - i);
    }
    if (s->ulp_x) {
      ce_rng g = ce_rng_make(s->ulp_x, (uint32_t)k, 0, 10);
      for (size_t j = 0; j < nx * B; j++)
        x[j] = nextafterf(x[j], ce_rng_uniform(&g) < 0.5 ? -INFINITY : INFINITY);
    }
  }
  R->g.world = s->world;
  R->g.mode = s->mode;
  pthread_barrier_init(&R->g.bar, NULL, (unsigned)s->world);
  const int threads = s->threads > 0 ? s->threads : 1;
  int first = 0;
  for (int r = 0; r < s->world; r++) {
    replica *p = &R->rep[r];
    CHECK_OK(coemunet_build(&p->m, c, 4242)); /* the same seed: identical replicas */
    /* the layer scratch is sized at nn_set_batch for this thread's OpenMP
       count: the replica's. The backend init in main set OpenBLAS to one
       thread for the process and this thread's OpenMP count to 1; the
       replica threads set their own (replica_run), as test_backend.c sets
       OpenMP's count directly. */
    const int omp_before = omp_get_max_threads();
    omp_set_num_threads(threads);
    CHECK_OK(nn_set_batch(&p->m.net, s->batch[r]));
    omp_set_num_threads(omp_before);
    /* eps 1e-3 rather than 1e-8: a convolution bias right before a
       BatchNorm has dL/db = 0 exactly (the mean is subtracted), so its
       computed gradient is float32 rounding noise (~1e-9), which Adam with
       eps 1e-8 turns into steps of ~lr in arbitrary directions. Those differ
       between any two float32 summation orders and would hide everything
       else in the comparison of the updates and running means. With eps 1e-3 they
       move by ~1e-6 lr; gradients of real size (1e-2..1) still get
       normalised steps. */
    adam_config ac = adam_default();
    ac.eps = 1e-3;
    CHECK_OK(adam_init(&p->o, &p->m.net, &ac));
    CHECK_OK(trainer_init(&p->tr, &p->m, &p->o));
    if (s->init) snap_load(s->init, &p->m, &p->o);
    p->me = (member){&R->g, r, 0, 0, 0, 0};
    if (s->reducer) {
      nn_reducer red = {.world = s->world, .sum_f64 = sum_f64, .sum_f32 = sum_f32, .ctx = &p->me,
                        .chunk = s->chunk, .bucket = s->bucket};
      CHECK_OK(nn_set_reducer(&p->m.net, &red));
    }
    p->x = R->x;
    p->t = R->t;
    p->first = first;
    p->n = s->batch[r];
    p->B = B;
    p->steps = s->steps;
    p->threads = threads;
    first += s->batch[r];
  }
  pthread_t th[MAXW];
  for (int r = 0; r < s->world; r++) pthread_create(&th[r], NULL, replica_run, &R->rep[r]);
  for (int r = 0; r < s->world; r++) pthread_join(th[r], NULL);
  pthread_barrier_destroy(&R->g.bar);
  for (int r = 0; r < s->world; r++) CHECK_MSG(!R->rep[r].failed, "replica %d failed", r);
  for (int k = 0; k < R->steps; k++) {
    double l = 0;
    for (int r = 0; r < s->world; r++) l += R->rep[r].loss[k] * R->rep[r].n;
    R->rep[0].rec[k].loss = l / B;
  }
}

static void run_free(run *R) {
  for (int r = 0; r < MAXW; r++) {
    replica *p = &R->rep[r];
    if (!p->m.net.finalized) continue;
    for (int k = 0; k < MAXSTEPS && r == 0; k++) {
      step_rec *rec = &p->rec[k];
      if (rec->g)
        for (int i = 0; i < p->m.net.nparams; i++) free(rec->g[i]);
      free(rec->g);
      if (rec->before.w) snap_free(&rec->before);
      if (rec->after.w) snap_free(&rec->after);
    }
    trainer_free(&p->tr);
    adam_free(&p->o);
    coemunet_free(&p->m);
  }
  free(R->x);
  free(R->t);
}

/* ---- comparisons -------------------------------------------------------- */

/* How far one training step lies from the reference step (relative):
 * comparisons of steps from the same state (the same weights, running
 * statistics and Adam moments) on the same batch. */
typedef struct {
  double loss;  /* |L - L_ref| / L_ref */
  double grad;  /* ||g - g_ref|| / ||g_ref|| over all used trainable gradients */
  double grad_tensor; /* the worst tensor's ||g - g_ref|| / ||g_ref||, among tensors whose
                         reference gradient is not rounding noise (see below); printed only */
  double update; /* ||dw - dw_ref|| / ||dw_ref||, dw = w_after - w_before, all trainable weights */
  double stats; /* max |r - r_ref| / (|r_ref| + 1e-3) over BatchNorm running statistics */
} mismatch;

#define NMETRIC 4 /* loss, grad, update, stats: the ones with tolerances */
static double *metric(mismatch *m, int i) {
  return i == 0 ? &m->loss : i == 1 ? &m->grad : i == 2 ? &m->update : &m->stats;
}
static const char *metric_name[NMETRIC] = {"loss", "grad", "update", "BN stats"};

static void rel_norm(const float *a, const float *b, int64_t n, double *num, double *den) {
  double s = 0, d = 0;
  for (int64_t i = 0; i < n; i++) {
    s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    d += (double)b[i] * b[i];
  }
  *num += s;
  *den += d;
}

static mismatch compare(const nn_net *net, const step_rec *a, const step_rec *ref) {
  mismatch mm = {fabs(a->loss - ref->loss) / ref->loss, 0, 0, 0, 0};
  double gn = 0, gd = 0, un = 0, ud = 0, gmax = 0;
  /* the typical gradient entry, to tell real gradients from rounding noise:
     a convolution bias right before a BatchNorm has dL/db = 0 exactly (the
     mean is subtracted), so its computed gradient is float32 noise */
  double total2 = 0, count = 0;
  for (int i = 0; i < net->nparams; i++) {
    const nn_param *q = &net->params[i];
    if (!q->trainable || !q->used) continue;
    for (int64_t j = 0; j < q->n; j++) total2 += (double)ref->g[i][j] * ref->g[i][j];
    count += (double)q->n;
  }
  const double rms = sqrt(total2 / count);
  for (int i = 0; i < net->nparams; i++) {
    const nn_param *q = &net->params[i];
    if (q->trainable && q->used) {
      double tn = 0, td = 0;
      rel_norm(a->g[i], ref->g[i], q->n, &tn, &td);
      gn += tn;
      gd += td;
      if (sqrt(td / (double)q->n) > 1e-3 * rms && sqrt(tn / td) > gmax) gmax = sqrt(tn / td);
      float *dp = xmalloc(sizeof(float) * q->n), *dq = xmalloc(sizeof(float) * q->n);
      for (int64_t j = 0; j < q->n; j++) {
        dp[j] = a->after.w[i][j] - a->before.w[i][j];
        dq[j] = ref->after.w[i][j] - ref->before.w[i][j];
      }
      rel_norm(dp, dq, q->n, &un, &ud);
      free(dp);
      free(dq);
    } else if (!q->trainable) {
      for (int64_t j = 0; j < q->n; j++) {
        double d = fabs((double)a->after.w[i][j] - ref->after.w[i][j]) /
                   (fabs(ref->after.w[i][j]) + 1e-3);
        if (d > mm.stats) mm.stats = d;
      }
    }
  }
  mm.grad = sqrt(gn / gd);
  mm.grad_tensor = gmax;
  mm.update = sqrt(un / ud);
  return mm;
}

static void print_mismatch(const char *what, mismatch m) {
  fprintf(stderr, "  %-34s loss %.2e  grad %.2e (worst tensor %.2e)  update %.2e  BN stats %.2e\n",
          what, m.loss, m.grad, m.grad_tensor, m.update, m.stats);
}

/* Replicas must stay identical to each other, bit for bit: their weights,
 * running statistics and Adam moments. */
static void check_replicas_identical(const run *R, int world) {
  for (int r = 1; r < world; r++) {
    const nn_net *a = &R->rep[0].m.net, *b = &R->rep[r].m.net;
    const adam *oa = &R->rep[0].o, *ob = &R->rep[r].o;
    int same = oa->t == ob->t;
    for (int i = 0; i < a->nparams; i++) {
      const int64_t n = a->params[i].n;
      if (!same_floats(a, a->params[i].w, b, b->params[i].w, n)) same = 0;
      if (adam_has_state(oa, i) &&
          (!same_floats(a, oa->m[i], b, ob->m[i], n) || !same_floats(a, oa->v[i], b, ob->v[i], n)))
        same = 0;
    }
    CHECK_MSG(same, "replica %d's weights, running statistics or Adam state differ from replica 0's", r);
  }
}

static int bit_identical(const run *A, const run *B) {
  const nn_net *a = &A->rep[0].m.net, *b = &B->rep[0].m.net;
  for (int k = 0; k < A->steps; k++)
    if (A->rep[0].rec[k].loss != B->rep[0].rec[k].loss) return 0;
  for (int i = 0; i < a->nparams; i++) {
    if (!same_floats(a, a->params[i].w, b, b->params[i].w, a->params[i].n)) return 0;
    if (a->params[i].g && !same_floats(a, a->params[i].g, b, b->params[i].g, a->params[i].n))
      return 0;
  }
  return 1;
}

/* ---- tests -------------------------------------------------------------- */

/* Tolerances, derived on the host that runs the test.
 *
 * Replicas against one net on the whole batch differ in the order of float32
 * sums only: weight gradients summed per replica and then across replicas,
 * BatchNorm's sums (double) in another order, and matrix products of other
 * shapes (a linear layer's M is the local batch). BLAS does not promise that
 * an entry of a product keeps its bits when the matrix is split, and kernels
 * differ: here OpenBLAS's Cooperlake/SkylakeX kernels give the same forward
 * bits for M = 4, 2 and 1, its Haswell/Zen kernels (any AVX2 host with
 * OPENBLAS_CORETYPE=Haswell) and Prescott's do not (step-1 losses 4e-8
 * apart). No constant measured on one host holds on the others, so the
 * noise floor is measured here, on this kernel and build, as the largest
 * mismatch of legitimate variants of the reference step (one net, whole
 * batch, the same state) from the reference:
 *   - the samples in reverse order (other summation orders over the batch),
 *   - 2 OpenMP threads (other partial sums of the convolution gradients,
 *     other column splits of the linear layers' products),
 *   - every input value one ulp up or down, two draws (the step's
 *     sensitivity to float32 rounding, which no kernel makes 0; the
 *     reorderings alone are bit-identical to the reference on some kernels
 *     while the replicas' split products are not).
 * The synchronised schemes must lie within FLOOR_FACTOR x that floor
 * (measured on 11 OpenBLAS kernels: within 1.4x). Every broken scheme must
 * fail that tolerance; the forward quantities, which are continuous in the
 * rounding (loss, running statistics), by BROKEN_FACTOR x the floor
 * (measured: > 2e4 x). Gradients and updates are not continuous: a rounding
 * difference that flips a max-pooling or ReLU choice in the tiny last
 * stages changes a tensor's gradient by O(1); near such a tie a floor
 * variant can itself flip (seen: gradients 1e-2 apart), which widens the
 * floor (conservative for the synchronised schemes) and narrows those
 * separations (measured: >= 66 x the floor, still > FLOOR_FACTOR).
 *
 * Every comparison is of ONE step from the same state (weights, running
 * statistics, Adam moments and step count): the reference step starts from
 * the state the replicas reached after their own previous steps, so the
 * replicas' multi-step state is what each step is checked from, and every
 * comparison stays a first-order rounding comparison. Trajectories compared
 * after several steps test the net's chaos, not the scheme: after 3 steps
 * (Haswell kernel, 3 channels) one net with 2 threads and one with 1 are
 * 7e-2 apart in the gradients, as far as the replicas are. */
#define FLOOR_FACTOR 10.0
#define BROKEN_FACTOR 100.0
/* a floor of 0 (every variant bit-identical) still allows double rounding */
#define FLOOR_MIN (4 * DBL_EPSILON)
#define NFLOOR 4

static void blas_kernel_note(void) {
  fprintf(stderr, "  BLAS kernel: %s (%s)\n", openblas_get_corename(), openblas_get_config());
}

static mismatch noise_floor(const setup *whole, const step_rec *ref) {
  mismatch fl = {0, 0, 0, 0, 0};
  setup v[NFLOOR] = {*whole, *whole, *whole, *whole};
  v[0].reverse = 1;
  v[1].threads = 2;
  v[2].ulp_x = 19;
  v[3].ulp_x = 20;
  const char *what[NFLOOR] = {"floor: samples reversed", "floor: 2 threads", "floor: inputs +-1 ulp",
                              "floor: inputs +-1 ulp (2)"};
  for (int i = 0; i < NFLOOR; i++) {
    run R;
    run_train(&R, &v[i]);
    mismatch m = compare(&R.rep[0].m.net, &R.rep[0].rec[0], ref);
    print_mismatch(what[i], m);
    for (int q = 0; q < NMETRIC; q++)
      if (*metric(&m, q) > *metric(&fl, q)) *metric(&fl, q) = *metric(&m, q);
    if (m.grad_tensor > fl.grad_tensor) fl.grad_tensor = m.grad_tensor;
    run_free(&R);
  }
  for (int q = 0; q < NMETRIC; q++)
    if (*metric(&fl, q) < FLOOR_MIN) *metric(&fl, q) = FLOOR_MIN;
  return fl;
}

/* Step k of run A against the reference step from A's state before it. */
static mismatch step_vs_reference(const run *A, int k, const setup *whole_base, const char *what,
                                  run *ref_out) {
  setup whole = *whole_base;
  whole.first_step = k;
  whole.steps = 1;
  whole.init = &A->rep[0].rec[k].before;
  run_train(ref_out, &whole);
  mismatch m = compare(&A->rep[0].m.net, &A->rep[0].rec[k], &ref_out->rep[0].rec[0]);
  print_mismatch(what, m);
  return m;
}

static void check_within(mismatch m, mismatch floor, const char *what) {
  for (int q = 0; q < NMETRIC; q++) {
    double v = *metric(&m, q), f = *metric(&floor, q);
    CHECK_MSG(v <= FLOOR_FACTOR * f, "%s: %s mismatch %.3g > %g x the noise floor %.3g",
              what, metric_name[q], v, FLOOR_FACTOR, f);
  }
}

/* factor[q]: how many floors metric q must lie beyond (0: not checked) */
static void check_beyond(mismatch m, mismatch floor, const char *what, const double *factor) {
  for (int q = 0; q < NMETRIC; q++) {
    if (!factor[q]) continue;
    double v = *metric(&m, q), f = *metric(&floor, q);
    CHECK_MSG(v > factor[q] * f, "%s: %s mismatch %.3g, not beyond %g x the noise floor %.3g",
              what, metric_name[q], v, factor[q], f);
  }
}

static int count_batchnorms(const nn_net *net) {
  int n = 0;
  for (int i = 0; i < net->nnodes; i++) n += net->nodes[i].kind == NN_BATCHNORM;
  return n;
}

/* Replicas 2 + 2 and 3 + 1 against one net on the batch of 4, step by step. */
static void check_parallel(int nfreq, int steps) {
  coemunet_config cfg = {nfreq, 24, 2, {2, 3, 4}, 8, 8, COEMUNET_SHORTCUT_REFERENCE};
  setup whole = {cfg, 1, {4}, 0, SYNC, 0, 1, 0, 0, 0, 0, NULL, 0};
  setup two = {cfg, 2, {2, 2}, 1, SYNC, 0, steps, 0, 0, 0, 0, NULL, 0};
  setup uneven = two; /* uneven shares: the loss gradient is weighted by the share */
  uneven.batch[0] = 3;
  uneven.batch[1] = 1;
  setup local_bn = two, not_averaged = two;
  local_bn.mode = LOCAL_BN;
  not_averaged.mode = NOT_AVERAGED;
  run par, odd, bad_bn, bad_avg, chunked;
  run_train(&par, &two);
  check_replicas_identical(&par, 2);
  run_train(&odd, &uneven);
  check_replicas_identical(&odd, 2);
  run_train(&bad_bn, &local_bn);
  run_train(&bad_avg, &not_averaged);

  /* the cost per step: 3 sums of doubles per BatchNorm layer (C + 1, C and
     2C + 1 values), 1 for the batch size, 1 of floats for all gradients
     (they fit one chunk) */
  const nn_net *net = &par.rep[0].m.net;
  const member *me = &par.rep[0].me;
  const int nbn = count_batchnorms(net);
  int64_t bn_channels = 0;
  for (int i = 0; i < net->nnodes; i++)
    if (net->nodes[i].kind == NN_BATCHNORM) bn_channels += net->nodes[i].c;
  CHECK(me->calls_f64 == (long)steps * (3 * nbn + 1));
  CHECK(me->bytes_f64 == (double)steps * sizeof(double) * (4 * bn_channels + 2 * nbn + 1));
  CHECK(me->calls_f32 == steps);
  CHECK(me->bytes_f32 == (double)steps * sizeof(float) * net->grad_used_n);
  fprintf(stderr, "nfreq %d: per step: %d BatchNorm layers, %ld sums of doubles (%.0f bytes), "
          "%ld of floats (%.0f bytes; %lld trainable parameters)\n", nfreq, nbn,
          me->calls_f64 / steps, me->bytes_f64 / steps, me->calls_f32 / steps,
          me->bytes_f32 / steps, (long long)nn_param_count(net));

  /* gradients in chunks of 1000 floats: elementwise sums, the same bits
     (exact by construction: each float is summed in the same rank order) */
  setup small_chunks = two;
  small_chunks.chunk = 1000;
  run_train(&chunked, &small_chunks);
  CHECK(bit_identical(&chunked, &par));
  CHECK(chunked.rep[0].me.calls_f32 ==
        (long)steps * (long)((chunked.rep[0].m.net.grad_used_n + 999) / 1000));
  run_free(&chunked);

  for (int k = 0; k < steps; k++) {
    fprintf(stderr, "nfreq %d, step %d, batch 4: one step from the same state, replicas vs one net:\n",
            nfreq, k + 1);
    run ref, r2;
    mismatch m = step_vs_reference(&par, k, &whole, "2 + 2, synchronised", &ref);
    setup w = whole;
    w.first_step = k;
    w.init = &par.rep[0].rec[k].before;
    mismatch floor = noise_floor(&w, &ref.rep[0].rec[0]);
    print_mismatch("noise floor (largest of the above)", floor);
    check_within(m, floor, "2 + 2, synchronised");
    run_free(&ref);

    m = step_vs_reference(&odd, k, &whole, "3 + 1, synchronised", &r2);
    check_within(m, floor, "3 + 1, synchronised");
    run_free(&r2);

    /* broken schemes must miss by far */
    m = step_vs_reference(&bad_bn, k, &whole, "2 + 2, BatchNorm on local batches", &r2);
    check_beyond(m, floor, "BatchNorm on local batches",
                 (const double[NMETRIC]){BROKEN_FACTOR, FLOOR_FACTOR, FLOOR_FACTOR, BROKEN_FACTOR});
    run_free(&r2);
    m = step_vs_reference(&bad_avg, k, &whole, "2 + 2, gradients summed, not averaged", &r2);
    /* the forward is the synchronised one: no loss or statistics to check */
    check_beyond(m, floor, "gradients summed, not averaged",
                 (const double[NMETRIC]){0, FLOOR_FACTOR, FLOOR_FACTOR, 0});
    /* twice the gradient g of a synchronised step: with |g - g_ref| <= d |g_ref|
       (d = FLOOR_FACTOR x the floor, checked above), |2g - g_ref| / |g_ref|
       lies in [1 - 2d, 1 + 2d] */
    CHECK_CLOSE(m.grad, 1.0, 0, 2 * FLOOR_FACTOR * floor.grad);
    run_free(&r2);
  }
  run_free(&bad_avg);
  run_free(&bad_bn);
  run_free(&odd);
  run_free(&par);
}

static void test_replicas_single_channel(void) { check_parallel(1, 3); }

static void test_replicas_multi_frequency(void) { check_parallel(3, 3); }

/* One replica with a reducer is the single-replica computation bit for bit,
 * though every sum is called (exact by construction: world 1's sums are the
 * identity and the same kernels run on the same data). */
static void test_world_one_is_identity(void) {
  coemunet_config cfg = {2, 16, 2, {2, 3, 4}, 8, 8, COEMUNET_SHORTCUT_INPUT};
  setup plain = {cfg, 1, {3}, 0, SYNC, 0, 3, 0, 0, 0, 0, NULL, 0};
  setup reduced = plain;
  reduced.reducer = 1;
  run a, b;
  run_train(&a, &plain);
  run_train(&b, &reduced);
  CHECK(b.rep[0].me.calls_f32 == 3);
  CHECK(b.rep[0].me.calls_f64 == 3 * (3 * count_batchnorms(&b.rep[0].m.net) + 1));
  CHECK(bit_identical(&a, &b));
  run_free(&a);
  run_free(&b);
}

/* A run continued from a snapshot of its state is the continuous run bit for
 * bit (the snapshot is the whole state the step comparisons above start
 * from; exact by construction: the same kernels on the same data). */
static void test_snapshot_resumes(void) {
  coemunet_config cfg = {1, 16, 2, {2, 3, 4}, 8, 8, COEMUNET_SHORTCUT_REFERENCE};
  setup two = {cfg, 2, {2, 2}, 1, SYNC, 0, 3, 0, 0, 0, 0, NULL, 0};
  run whole, tail;
  run_train(&whole, &two);
  setup rest = two;
  rest.steps = 2;
  rest.first_step = 1;
  rest.init = &whole.rep[0].rec[1].before;
  run_train(&tail, &rest);
  CHECK(tail.rep[0].rec[0].loss == whole.rep[0].rec[1].loss);
  CHECK(tail.rep[0].rec[1].loss == whole.rep[0].rec[2].loss);
  const nn_net *a = &whole.rep[0].m.net, *b = &tail.rep[0].m.net;
  int same = whole.rep[0].o.t == tail.rep[0].o.t;
  for (int i = 0; i < a->nparams; i++)
    if (!same_floats(a, a->params[i].w, b, b->params[i].w, a->params[i].n)) same = 0;
  CHECK(same);
  run_free(&whole);
  run_free(&tail);
}

static int failing_sum_f64(void *ctx, double *buf, size_t n) {
  (void)ctx; (void)buf;
  return ce_err("link to replica 1 lost after %zu values", n);
}
static int identity_f32(void *ctx, float *buf, size_t n) {
  (void)ctx; (void)buf; (void)n;
  return 0;
}

static void test_reducer_errors(void) {
  coemunet m;
  coemunet_config cfg = {1, 16, 2, {2, 3, 4}, 8, 8, COEMUNET_SHORTCUT_REFERENCE};
  CHECK_OK(coemunet_build(&m, &cfg, 1));
  CHECK_OK(nn_set_batch(&m.net, 2));
  nn_reducer r = {.world = 0, .sum_f64 = failing_sum_f64, .sum_f32 = identity_f32};
  CHECK_ERR(nn_set_reducer(&m.net, &r), "world = 0");
  r.world = 2;
  r.sum_f32 = NULL;
  CHECK_ERR(nn_set_reducer(&m.net, &r), "sum_f32 is NULL");
  CHECK(nn_get_reducer(&m.net) == NULL);
  r.sum_f32 = identity_f32;
  CHECK_OK(nn_set_reducer(&m.net, &r));
  CHECK(nn_get_reducer(&m.net) != NULL);
  CHECK_ERR(nn_forward(&m.net, 1), "summing BatchNorm statistics over 2 replicas: link to "
                                   "replica 1 lost after");
  CHECK_OK(nn_forward(&m.net, 0)); /* evaluation mode sums nothing */
  nn_set_reducer(&m.net, NULL);
  CHECK(nn_get_reducer(&m.net) == NULL);
  CHECK_OK(nn_forward(&m.net, 1));
  CHECK_OK(nn_reduce_grads(&m.net)); /* no reducer: nothing to do */
  coemunet_free(&m);
}

/* ---- gradient buckets (bucket.h) ---------------------------------------- */

/* The plan of a COEmuNet cut into buckets of `floats`: the buckets tile
 * [0, grad_used_n) from the top down, hold whole parameters, close as soon as
 * they reach the size, and become ready at the lowest owner of their
 * parameters, never later in the backward than a bucket before them. */
static void check_plan(const nn_net *net, size_t floats) {
  nn_bucket_plan p;
  CHECK_OK(nn_bucket_plan_make(net, floats, &p));
  CHECK(p.n >= 1);
  size_t hi = net->grad_used_n;
  int params = 0;
  for (int k = 0; k < p.n; k++) {
    const nn_bucket *b = &p.b[k];
    CHECK(b->off + b->n == hi);
    CHECK(b->n > 0);
    if (k + 1 < p.n) CHECK(b->n >= floats);
    if (k > 0) CHECK(b->ready_node <= p.b[k - 1].ready_node);
    int owners_min = net->nnodes, inside = 0, starts_at_off = 0;
    size_t last_start = 0;
    for (int j = 0; j < net->nnodes; j++)
      for (int q = 0; q < net->nodes[j].nparam; q++) {
        const nn_param *pr = &net->params[net->nodes[j].param[q]];
        if (!pr->trainable || !pr->used) continue;
        size_t o = (size_t)(pr->g - net->grad_block);
        if (o < b->off || o >= hi) continue;
        CHECK(o + (size_t)pr->n <= hi); /* whole parameters */
        inside++;
        if (j < owners_min) owners_min = j;
        if (o == b->off) starts_at_off = 1;
        if (o > last_start) last_start = o;
      }
    CHECK(inside == b->nparams);
    CHECK(starts_at_off);
    CHECK(b->ready_node == owners_min);
    /* closed as soon as full: without its lowest parameter it was not */
    if (b->nparams > 1) {
      size_t second = hi;
      for (int i = 0; i < net->nparams; i++) {
        const nn_param *pr = &net->params[i];
        size_t o = pr->g ? (size_t)(pr->g - net->grad_block) : 0;
        if (pr->g && pr->used && o > b->off && o < second) second = o;
      }
      CHECK(hi - second < floats);
    }
    params += b->nparams;
    hi = b->off;
  }
  CHECK(hi == 0);
  int used = 0;
  for (int i = 0; i < net->nparams; i++) used += net->params[i].trainable && net->params[i].used;
  CHECK(params == used);
  CHECK(nn_bucket_plan_ready(&p, net->nnodes) == 0 || p.b[0].ready_node == net->nnodes);
  CHECK(nn_bucket_plan_ready(&p, -1) == p.n);
  nn_bucket_plan_free(&p);
}

/* A world-1 reducer that keeps, for every sum_f32 call, a copy of what it was
 * given and where, and numbers all calls in order. */
#define MAXCALLS 256
static struct {
  const float *buf[MAXCALLS];
  float *copy[MAXCALLS];
  size_t n[MAXCALLS];
  int seq[MAXCALLS];
  int ncalls, seq_next, last_f64;
} rec;

static int rec_sum_f64(void *ctx, double *buf, size_t n) {
  (void)ctx, (void)buf, (void)n;
  rec.last_f64 = rec.seq_next++;
  return 0;
}

static int rec_sum_f32(void *ctx, float *buf, size_t n) {
  (void)ctx;
  if (rec.ncalls == MAXCALLS) return ce_err("more than %d sums", MAXCALLS);
  const int k = rec.ncalls++;
  rec.buf[k] = buf;
  rec.n[k] = n;
  rec.copy[k] = xmalloc(sizeof(float) * n);
  memcpy(rec.copy[k], buf, sizeof(float) * n);
  rec.seq[k] = rec.seq_next++;
  return 0;
}

static void test_bucket_plan(void) {
  coemunet_config cfg = {3, 16, 2, {2, 3, 4}, 8, 8, COEMUNET_SHORTCUT_REFERENCE};
  coemunet m;
  CHECK_OK(coemunet_build(&m, &cfg, 7));
  const nn_net *net = &m.net;
  for (size_t f = 1; f <= net->grad_used_n * 2; f = f * 7 + 3) check_plan(net, f);
  check_plan(net, NN_BUCKET_FLOATS); /* this small net: one bucket */
  nn_bucket_plan p;
  CHECK_OK(nn_bucket_plan_make(net, NN_BUCKET_FLOATS, &p));
  CHECK(p.n == 1 && p.b[0].n == net->grad_used_n);
  nn_bucket_plan_free(&p);
  CHECK(nn_bucket_plan_make(net, 0, &p) < 0);
  coemunet_free(&m);
}

/* Each bucket is handed to the sums during the backward, once its gradients
 * are final: a world-1 step's sums see exactly the gradients the step ends
 * with (world 1: no division), and some of them come before the backward's
 * last BatchNorm sum. A bucket sent before its ready node's backward would
 * carry zeros or partial sums (checked: with every ready_node moved to the
 * last node, the copies differ). */
static void test_buckets_during_backward(void) {
  coemunet_config cfg = {2, 16, 2, {2, 3, 4}, 8, 8, COEMUNET_SHORTCUT_REFERENCE};
  coemunet m;
  adam o;
  trainer tr;
  CHECK_OK(coemunet_build(&m, &cfg, 11));
  CHECK_OK(nn_set_batch(&m.net, 2));
  adam_config ac = adam_default();
  CHECK_OK(adam_init(&o, &m.net, &ac));
  CHECK_OK(trainer_init(&tr, &m, &o));
  const size_t floats = 2000;
  nn_reducer red = {.world = 1, .sum_f64 = rec_sum_f64, .sum_f32 = rec_sum_f32, .bucket = floats};
  CHECK_OK(nn_set_reducer(&m.net, &red));
  const size_t nx = (size_t)3 * 16 * 16 * 16, nt = (size_t)2 * 16 * 16;
  float *x = xmalloc(sizeof(float) * 2 * nx), *t = xmalloc(sizeof(float) * 2 * nt);
  test_step_batch(&cfg, 2, 0, x, t);
  memset(&rec, 0, sizeof rec);
  loss_value lv;
  CHECK_OK(trainer_step(&tr, x, t, 1e-3, &lv));
  const nn_net *net = &m.net;
  nn_bucket_plan p;
  CHECK_OK(nn_bucket_plan_make(net, floats, &p));
  CHECK(p.n > 2);
  CHECK(rec.ncalls == p.n);
  float *g = xmalloc(sizeof(float) * net->grad_used_n);
  CHECK_OK(nn_download(net, g, net->grad_block, net->grad_used_n));
  for (int k = 0; k < rec.ncalls && k < p.n; k++) {
    CHECK(rec.buf[k] == net->grad_block + p.b[k].off && rec.n[k] == p.b[k].n);
    CHECK_MSG(!memcmp(rec.copy[k], g + p.b[k].off, sizeof(float) * p.b[k].n),
              "bucket %d (floats [%zu, %zu)) was summed before its gradients were final", k,
              p.b[k].off, p.b[k].off + p.b[k].n);
  }
  CHECK_MSG(rec.ncalls > 0 && rec.seq[0] < rec.last_f64,
            "the first bucket was summed after the backward's last BatchNorm sum");
  for (int k = 0; k < rec.ncalls; k++) free(rec.copy[k]);
  free(g);
  free(x);
  free(t);
  nn_bucket_plan_free(&p);
  trainer_free(&tr);
  adam_free(&o);
  coemunet_free(&m);
}

/* Bucketed sums give the bits of the chunked ones (exact by construction:
 * the buckets tile the block and each float is summed over the replicas in
 * the same rank order, whatever the cut), for 2 and 3 replicas; the sums are
 * one per bucket and step. */
static void test_buckets_equal_chunks(void) {
  coemunet_config cfg = {2, 16, 2, {2, 3, 4}, 8, 8, COEMUNET_SHORTCUT_REFERENCE};
  for (int world = 2; world <= 3; world++) {
    setup chunked = {cfg, world, {2, 1, 2}, 1, SYNC, 0, 2, 0, 0, 0, 0, NULL, 0};
    setup bucketed = chunked;
    bucketed.bucket = 3000;
    run a, b;
    run_train(&a, &chunked);
    run_train(&b, &bucketed);
    check_replicas_identical(&b, world);
    nn_bucket_plan p;
    CHECK_OK(nn_bucket_plan_make(&b.rep[0].m.net, bucketed.bucket, &p));
    CHECK(p.n > 2);
    CHECK(b.rep[0].me.calls_f32 == (long)bucketed.steps * p.n);
    CHECK(a.rep[0].me.calls_f32 == bucketed.steps);
    CHECK_MSG(bit_identical(&a, &b), "%d replicas: bucketed and chunked sums differ", world);
    nn_bucket_plan_free(&p);
    run_free(&a);
    run_free(&b);
  }
}

/* The NCCL communicator's refusals (trainer/nccl_comm.h) are clear errors on
 * any host: NCCL not built, no CUDA device (CI), or more ranks on a node than
 * it has GPUs (1000 here); device sums come in pairs. */
static int dev_f32(void *ctx, float *b, size_t n, void *stream) {
  (void)ctx, (void)b, (void)n, (void)stream;
  return 0;
}

static void test_nccl_errors(void) {
  ce_err_clear();
  CHECK(nn_nccl_check(0, 2, 1000) < 0);
  const char *m = ce_err_msg();
  CHECK_MSG(strstr(m, "NCCL is not built") || strstr(m, "NCCL needs a CUDA device") ||
                strstr(m, "1000 ranks on this node"),
            "unexpected message: %s", m);
  fprintf(stderr, "NCCL, 1000 ranks on this node: %s\n", m);
  if (nn_nccl_built()) CHECK_ERR(nn_nccl_check(2, 2, 1), "rank 2 of 2");
  else CHECK_ERR(nn_nccl_check(2, 2, 1), "NCCL is not built");
  coemunet_config cfg = {1, 16, 2, {2, 3, 4}, 8, 8, COEMUNET_SHORTCUT_REFERENCE};
  coemunet m2;
  CHECK_OK(coemunet_build(&m2, &cfg, 1));
  nn_reducer r = {.world = 1, .sum_f64 = rec_sum_f64, .sum_f32 = rec_sum_f32,
                  .dev_sum_f32 = dev_f32};
  CHECK_ERR(nn_set_reducer(&m2.net, &r), "device sums come in pairs (dev_sum_f64 is NULL)");
  coemunet_free(&m2);
}

int main(void) {
  if (nn_backend_init(&nn_backend_cpu, 1) < 0) { /* OpenMP and OpenBLAS: 1 thread */
    fprintf(stderr, "%s\n", ce_err_msg());
    return 1;
  }
  RUN(test_replicas_single_channel);
  RUN(test_replicas_multi_frequency);
  RUN(test_world_one_is_identity);
  RUN(test_snapshot_resumes);
  RUN(test_reducer_errors);
  RUN(test_bucket_plan);
  RUN(test_buckets_during_backward);
  RUN(test_buckets_equal_chunks);
  RUN(test_nccl_errors);
  if (check_failed_) blas_kernel_note(); /* which kernel a CI log's failure ran on */
  nn_backend_finish(&nn_backend_cpu);
  return check_report();
}
