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
 */
#include <math.h>
#include <omp.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common/rng.h"
#include "trainer/coemunet.h"
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

/* Step k's global batch: B samples of smooth random fields plus noise. */
static void make_step_batch(const coemunet_config *c, int k, int B, float *x, float *t) {
  const int G = c->grid;
  const size_t v = (size_t)G * G * G, img = (size_t)G * G;
  for (int s = 0; s < B; s++) {
    ce_rng r = ce_rng_make(77, (uint32_t)k, (uint32_t)s, 3);
    double a = ce_rng_uniform(&r), b = ce_rng_uniform(&r);
    float *xs = x + (size_t)s * 3 * v, *ts = t + (size_t)s * c->nfreq * img;
    for (size_t i = 0; i < v; i++) {
      double z = (double)(i / img) / G;
      xs[i] = (float)(2 * a - 1 + 0.3 * z + 0.1 * ce_rng_uniform(&r));
      xs[v + i] = (float)(b - 0.5 * z + 0.1 * ce_rng_uniform(&r));
      xs[2 * v + i] = (float)(a * b + 0.2 * ce_rng_uniform(&r));
    }
    for (size_t i = 0; i < (size_t)c->nfreq * img; i++)
      ts[i] = (float)(0.5 * a * sin(0.3 * (double)(i % img)) + 0.2 * b + 0.05 * ce_rng_uniform(&r));
  }
}

/* ---- replicas ----------------------------------------------------------- */

typedef struct {
  coemunet m;
  adam o;
  trainer tr;
  member me;
  const float *x, *t;      /* the global batches of all steps */
  int first, n, B;         /* this replica's samples [first, first + n) of B */
  int steps;
  double loss[MAXSTEPS];   /* local losses */
  int failed;
} replica;

static void *replica_run(void *arg) {
  replica *r = arg;
  omp_set_num_threads(1); /* new threads start from the default ICVs */
  const coemunet_config *c = &r->m.cfg;
  const size_t nx = (size_t)3 * c->grid * c->grid * c->grid, nt = (size_t)c->nfreq * c->grid * c->grid;
  for (int k = 0; k < r->steps; k++) {
    const float *x = r->x + ((size_t)k * r->B + r->first) * nx;
    const float *t = r->t + ((size_t)k * r->B + r->first) * nt;
    loss_value lv;
    ce_err_clear();
    if (trainer_step(&r->tr, x, t, 2e-3, &lv) < 0) {
      fprintf(stderr, "replica %d, step %d: %s\n", r->me.rank, k, ce_err_msg());
      r->failed = 1;
      return NULL; /* a failed collective fails on every replica alike */
    }
    r->loss[k] = lv.total;
  }
  return NULL;
}

typedef struct {
  coemunet_config cfg;
  int world;
  int batch[MAXW];   /* local batch sizes */
  int reducer;       /* 0: none (world must be 1) */
  int mode;
  size_t chunk;     /* nn_reducer.chunk */
  int steps;        /* trainer_step calls, <= MAXSTEPS */
} setup;

typedef struct {
  replica rep[MAXW];
  group g;
  float *x, *t;
  int steps;
  double losses[MAXSTEPS]; /* batch-weighted means of the replicas' losses */
} run;

static void run_train(run *R, const setup *s) {
  memset(R, 0, sizeof *R);
  R->steps = s->steps;
  int B = 0;
  for (int r = 0; r < s->world; r++) B += s->batch[r];
  const coemunet_config *c = &s->cfg;
  const size_t nx = (size_t)3 * c->grid * c->grid * c->grid, nt = (size_t)c->nfreq * c->grid * c->grid;
  R->x = xmalloc(sizeof(float) * nx * B * R->steps);
  R->t = xmalloc(sizeof(float) * nt * B * R->steps);
  for (int k = 0; k < R->steps; k++)
    make_step_batch(c, k, B, R->x + (size_t)k * B * nx, R->t + (size_t)k * B * nt);
  R->g.world = s->world;
  R->g.mode = s->mode;
  pthread_barrier_init(&R->g.bar, NULL, (unsigned)s->world);
  int first = 0;
  for (int r = 0; r < s->world; r++) {
    replica *p = &R->rep[r];
    CHECK_OK(coemunet_build(&p->m, c, 4242)); /* the same seed: identical replicas */
    CHECK_OK(nn_set_batch(&p->m.net, s->batch[r]));
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
    p->me = (member){&R->g, r, 0, 0, 0, 0};
    if (s->reducer) {
      nn_reducer red = {s->world, sum_f64, sum_f32, &p->me, s->chunk, 0};
      CHECK_OK(nn_set_reducer(&p->m.net, &red));
    }
    p->x = R->x;
    p->t = R->t;
    p->first = first;
    p->n = s->batch[r];
    p->B = B;
    p->steps = s->steps;
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
    R->losses[k] = l / B;
  }
}

static void run_free(run *R) {
  for (int r = 0; r < MAXW; r++) {
    replica *p = &R->rep[r];
    if (!p->m.net.finalized) continue;
    trainer_free(&p->tr);
    adam_free(&p->o);
    coemunet_free(&p->m);
  }
  free(R->x);
  free(R->t);
}

/* ---- comparisons -------------------------------------------------------- */

typedef struct {
  double loss;  /* max over steps of |L - L_ref| / L_ref */
  double grad;  /* ||g - g_ref|| / ||g_ref|| over all used trainable gradients (last step) */
  double grad_tensor; /* the worst tensor's ||g - g_ref|| / ||g_ref||, among tensors whose
                         reference gradient is not rounding noise (see below) */
  double update; /* ||dw - dw_ref|| / ||dw_ref||, dw = w - w_initial, all trainable weights */
  double stats; /* max |r - r_ref| / (|r_ref| + 1e-3) over BatchNorm running statistics */
} mismatch;

static double rel_norm(const float *a, const float *b, int64_t n, double *num, double *den) {
  double s = 0, d = 0;
  for (int64_t i = 0; i < n; i++) {
    s += ((double)a[i] - b[i]) * ((double)a[i] - b[i]);
    d += (double)b[i] * b[i];
  }
  if (num) *num += s;
  if (den) *den += d;
  return d > 0 ? sqrt(s / d) : sqrt(s);
}

static mismatch compare(const run *A, const run *Ref) {
  mismatch mm = {0, 0, 0, 0, 0};
  for (int k = 0; k < A->steps; k++) {
    double d = fabs(A->losses[k] - Ref->losses[k]) / Ref->losses[k];
    if (d > mm.loss) mm.loss = d;
  }
  const nn_net *a = &A->rep[0].m.net, *b = &Ref->rep[0].m.net;
  coemunet fresh; /* the initial weights (the same seed), for the updates */
  CHECK_OK(coemunet_build(&fresh, &A->rep[0].m.cfg, 4242));
  double gn = 0, gd = 0, un = 0, ud = 0, gmax = 0;
  /* the typical gradient entry, to tell real gradients from rounding noise:
     a convolution bias right before a BatchNorm has dL/db = 0 exactly (the
     mean is subtracted), so its computed gradient is float32 noise */
  double total2 = 0, count = 0;
  for (int i = 0; i < b->nparams; i++) {
    const nn_param *q = &b->params[i];
    if (!q->trainable || !q->used) continue;
    for (int64_t j = 0; j < q->n; j++) total2 += (double)q->g[j] * q->g[j];
    count += (double)q->n;
  }
  const double rms = sqrt(total2 / count);
  for (int i = 0; i < b->nparams; i++) {
    const nn_param *p = &a->params[i], *q = &b->params[i], *w0 = &fresh.net.params[i];
    if (q->trainable && q->used) {
      double tn = 0, td = 0;
      rel_norm(p->g, q->g, q->n, &tn, &td);
      gn += tn;
      gd += td;
      if (sqrt(td / (double)q->n) > 1e-3 * rms && sqrt(tn / td) > gmax) gmax = sqrt(tn / td);
      float *dp = xmalloc(sizeof(float) * q->n), *dq = xmalloc(sizeof(float) * q->n);
      for (int64_t j = 0; j < q->n; j++) {
        dp[j] = p->w[j] - w0->w[j];
        dq[j] = q->w[j] - w0->w[j];
      }
      rel_norm(dp, dq, q->n, &un, &ud);
      free(dp);
      free(dq);
    } else if (!q->trainable) {
      for (int64_t j = 0; j < q->n; j++) {
        double d = fabs((double)p->w[j] - q->w[j]) / (fabs(q->w[j]) + 1e-3);
        if (d > mm.stats) mm.stats = d;
      }
    }
  }
  coemunet_free(&fresh);
  mm.grad = sqrt(gn / gd);
  mm.grad_tensor = gmax;
  mm.update = sqrt(un / ud);
  return mm;
}

static void print_mismatch(const char *what, mismatch m) {
  fprintf(stderr, "  %-34s loss %.2e  grad %.2e (worst tensor %.2e)  update %.2e  BN stats %.2e\n",
          what, m.loss, m.grad, m.grad_tensor, m.update, m.stats);
}

/* Replicas must stay identical to each other, bit for bit. */
static void check_replicas_identical(const run *R, int world) {
  for (int r = 1; r < world; r++) {
    const nn_net *a = &R->rep[0].m.net, *b = &R->rep[r].m.net;
    int same = 1;
    for (int i = 0; i < a->nparams; i++)
      if (memcmp(a->params[i].w, b->params[i].w, sizeof(float) * a->params[i].n)) same = 0;
    CHECK_MSG(same, "replica %d's weights or running statistics differ from replica 0's", r);
  }
}

static int bit_identical(const run *A, const run *B) {
  const nn_net *a = &A->rep[0].m.net, *b = &B->rep[0].m.net;
  for (int k = 0; k < A->steps; k++)
    if (A->losses[k] != B->losses[k]) return 0;
  for (int i = 0; i < a->nparams; i++) {
    if (memcmp(a->params[i].w, b->params[i].w, sizeof(float) * a->params[i].n)) return 0;
    if (a->params[i].g && memcmp(a->params[i].g, b->params[i].g, sizeof(float) * a->params[i].n))
      return 0;
  }
  return 1;
}

/* ---- tests -------------------------------------------------------------- */

/* Tolerances for replicas vs one net on the whole batch (relative, see
 * mismatch). The differences are float32 summation order only: convolution
 * weight gradients summed per replica and then across replicas, BatchNorm
 * sums (double) in another order. After 1 step the inputs of every layer
 * are nearly the same bits (a convolution's forward does not depend on the
 * batch split), so the match is tight; measured (grid 24, both models, 2+2
 * and 3+1) loss <= 1e-15, gradients <= 1e-6, running statistics 0.
 * After 3 steps rounding differences have gone through two Adam updates and
 * a deep net with few channels, whose BatchNorms (4 to 8 values per channel
 * and replica in the last stages) amplify them; measured loss <= 1e-6,
 * gradients <= 2e-4, updates <= 2e-5, running statistics <= 2e-5. The
 * tolerances below leave a margin of 5-10x; the broken schemes miss them by
 * 10^2-10^4 (printed). */
typedef struct { double loss, grad, update, stats; } tolerance;
static const tolerance TOL_STEP1 = {1e-12, 1e-5, 1e-4, 1e-6};
static const tolerance TOL_STEP3 = {1e-5, 1e-3, 2e-4, 2e-4};

static void check_within(mismatch m, tolerance t) {
  CHECK(m.loss < t.loss);
  CHECK(m.grad < t.grad);
  CHECK(m.update < t.update);
  CHECK(m.stats < t.stats);
}

static int count_batchnorms(const nn_net *net) {
  int n = 0;
  for (int i = 0; i < net->nnodes; i++) n += net->nodes[i].kind == NN_BATCHNORM;
  return n;
}

/* The mismatch of a setup run with a broken reducer mode. */
static mismatch broken_variant(const setup *base, int mode, const run *ref, const char *what) {
  setup s = *base;
  s.mode = mode;
  run bad;
  run_train(&bad, &s);
  mismatch m = compare(&bad, ref);
  print_mismatch(what, m);
  run_free(&bad);
  return m;
}

/* Replicas 2 + 2 and 3 + 1 against one net on the batch of 4, after steps. */
static void check_parallel(int nfreq, int steps) {
  coemunet_config cfg = {nfreq, 24, 2, {2, 3, 4}, 8, 8, COEMUNET_SHORTCUT_REFERENCE};
  const tolerance tol = steps == 1 ? TOL_STEP1 : TOL_STEP3;
  setup whole = {cfg, 1, {4}, 0, SYNC, 0, steps};
  run ref, par, odd, chunked;
  run_train(&ref, &whole);
  fprintf(stderr, "nfreq %d, %d step(s), batch 4 on one net vs replicas:\n", nfreq, steps);

  setup two = {cfg, 2, {2, 2}, 1, SYNC, 0, steps};
  run_train(&par, &two);
  check_replicas_identical(&par, 2);
  mismatch m = compare(&par, &ref);
  print_mismatch("2 + 2, synchronised", m);
  check_within(m, tol);

  /* uneven shares: the loss gradient is weighted by the share */
  setup uneven = {cfg, 2, {3, 1}, 1, SYNC, 0, steps};
  run_train(&odd, &uneven);
  check_replicas_identical(&odd, 2);
  m = compare(&odd, &ref);
  print_mismatch("3 + 1, synchronised", m);
  check_within(m, tol);

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
  if (steps == 1)
    fprintf(stderr, "  per step: %d BatchNorm layers, %ld sums of doubles (%.0f bytes), %ld of "
            "floats (%.0f bytes; %lld trainable parameters)\n", nbn, me->calls_f64,
            me->bytes_f64, me->calls_f32, me->bytes_f32, (long long)nn_param_count(net));

  /* gradients in chunks of 1000 floats: elementwise sums, the same bits */
  setup small_chunks = two;
  small_chunks.chunk = 1000;
  run_train(&chunked, &small_chunks);
  CHECK(bit_identical(&chunked, &par));
  CHECK(chunked.rep[0].me.calls_f32 ==
        (long)steps * (long)((chunked.rep[0].m.net.grad_used_n + 999) / 1000));
  run_free(&chunked);

  /* broken schemes must miss by far */
  m = broken_variant(&two, LOCAL_BN, &ref, "2 + 2, BatchNorm on local batches");
  CHECK(m.loss > 100 * tol.loss);
  CHECK(m.grad > 100 * tol.grad);
  CHECK(m.update > 100 * tol.update);
  CHECK(m.stats > 100 * tol.stats);
  m = broken_variant(&two, NOT_AVERAGED, &ref, "2 + 2, gradients summed, not averaged");
  CHECK(m.grad > 100 * tol.grad);
  CHECK(m.update > 100 * tol.update);
  if (steps == 1) CHECK_CLOSE(m.grad, 1.0, 1e-4, 0); /* exactly twice the gradient */

  run_free(&odd);
  run_free(&par);
  run_free(&ref);
}

static void test_replicas_single_channel(void) {
  check_parallel(1, 1);
  check_parallel(1, 3);
}

static void test_replicas_multi_frequency(void) {
  check_parallel(3, 1);
  check_parallel(3, 3);
}

/* One replica with a reducer is the single-replica computation bit for bit,
 * though every sum is called. */
static void test_world_one_is_identity(void) {
  coemunet_config cfg = {2, 16, 2, {2, 3, 4}, 8, 8, COEMUNET_SHORTCUT_INPUT};
  setup plain = {cfg, 1, {3}, 0, SYNC, 0, 3}, reduced = {cfg, 1, {3}, 1, SYNC, 0, 3};
  run a, b;
  run_train(&a, &plain);
  run_train(&b, &reduced);
  CHECK(b.rep[0].me.calls_f32 == 3);
  CHECK(b.rep[0].me.calls_f64 == 3 * (3 * count_batchnorms(&b.rep[0].m.net) + 1));
  CHECK(bit_identical(&a, &b));
  run_free(&a);
  run_free(&b);
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
  nn_reducer r = {0, failing_sum_f64, identity_f32, NULL, 0, 0};
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

int main(void) {
  if (nn_backend_init(&nn_backend_cpu, 1) < 0) return 1; /* OpenMP and OpenBLAS: 1 thread */
  RUN(test_replicas_single_channel);
  RUN(test_replicas_multi_frequency);
  RUN(test_world_one_is_identity);
  RUN(test_reducer_errors);
  return check_report();
}
