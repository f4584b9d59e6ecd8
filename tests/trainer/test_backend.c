/* test_backend.c - the backend seam (trainer/backend.h) exercised through its
 * table.
 *
 * A checking backend, "guard", wraps the CPU one function by function and
 * behaves like a device: its memory is one arena that is PROT_NONE except
 * while a backend function runs, so host code that reads or writes a tensor
 * without going through upload / download faults (the SIGSEGV handler names
 * it). It records every allocation, and before each layer, optimiser, loss
 * and reduction call checks that every buffer the call touches lies inside
 * a live allocation of its own; it counts uploads and downloads. On it:
 *   - a host access to backend memory outside a backend call is caught
 *     (forked children), and so is a foreign (malloc'ed) buffer in the net;
 *   - a scaled-down COEmuNet trains, evaluates, checkpoints, resumes and
 *     transfers its encoder, and gives the CPU backend's results bit for bit;
 *   - a training step makes exactly two uploads (input, targets) and no
 *     download; a checkpoint downloads exactly its tensors;
 *   - with a reducer the sums come in the documented order and count, the
 *     gradient reduction going through the table;
 *   - everything allocated is freed;
 *   - upload_async copies only in upload_wait and keeps its host buffer
 *     read-only until then (a host write faults; a backend call touching
 *     the destination before the wait is a violation), and training through
 *     the input feed's backend buffers (pipeline/train/feed.h) on it gives
 *     the CPU backend's weights, so a feed that hands the host buffer back
 *     or the batch out before the wait fails;
 *   - normalise_inputs / normalise_targets (stats/norm_body.h) give the old
 *     host normalisation's bits, on both backends and as kernel threads.
 * And the CPU backend's init/finish thread settings: set only what the
 * caller asked for, restored by the last finish. */
#include <cblas.h>
#include <omp.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "trainer/checkpoint.h"
#include "trainer/coemunet.h"
#include "gradcheck.h"
#include "common/rng.h"
#include "trainer/train.h"
#include "trainer/train_bench.h"
#include "pipeline/train/feed.h"
#include "stats/norm_body.h"
#include "trainer/metrics.h"
#include "trainer/metrics_body.h"
#include "step_batch.h"

/* ---- the guard backend -------------------------------------------------- */

#define ARENA_BYTES ((size_t)1 << 30) /* reserved, not committed */
#define MAX_ALLOCS 65536
#define GUARD_EXIT 42 /* exit status of a process that touched the arena from host code */

static struct {
  char *arena;
  size_t used, page;
  size_t granule; /* what guard_open/close toggle in: 2 MiB where huge pages back the arena */
  struct { size_t off, bytes; int live; } a[MAX_ALLOCS];
  int nallocs, live;
  int depth;                /* backend calls in progress */
  long uploads, downloads, copies, zeros, layer_calls, adam_calls, loss_calls, reduce_calls;
  double bytes_up, bytes_down;
  long checked;             /* buffers checked to be backend memory */
  long violations;          /* buffers that were not, or bad frees */
  char first_violation[256];
} G;

#define MAX_HOST 64
#define MAX_PENDING 64

static struct {
  struct { char *p; size_t bytes; } host[MAX_HOST];
  struct { void *dst; const void *src; size_t bytes; } pend[MAX_PENDING];
  int npend;
  long async_uploads, waits;
} H;

static void violation(const char *fmt, const char *what, long long v) {
  if (!G.violations++) snprintf(G.first_violation, sizeof G.first_violation, fmt, what, v);
}

/* Every backend call opens the arena and closes it again (about 10^5 times
 * in this test, over 16-28 MB): mprotect's cost is one page-table entry per
 * page, 0.3 ms a call on 4 KiB pages (32 s of the test's 46 on a 2-core
 * host), so the arena asks for huge pages and toggles whole 2 MiB granules,
 * one entry each. Where the kernel gives none it is the same on 4 KiB pages. */
static void guard_toggle(int prot) {
  size_t n = (G.used + G.granule - 1) / G.granule * G.granule;
  if (mprotect(G.arena, n, prot) != 0) abort();
}

static void guard_open(void) {
  if (G.depth++ == 0 && G.used) guard_toggle(PROT_READ | PROT_WRITE);
}

static void guard_close(void) {
  if (--G.depth == 0 && G.used) guard_toggle(PROT_NONE);
}

static int in_arena(const void *p) {
  return (const char *)p >= G.arena && (const char *)p < G.arena + ARENA_BYTES;
}

/* Index of the live allocation holding [p, p + bytes), or -1. */
static int owner(const void *p, size_t bytes) {
  if (!p || !in_arena(p)) return -1;
  size_t off = (size_t)((const char *)p - G.arena);
  int lo = 0, hi = G.nallocs - 1; /* offsets increase with the index */
  while (lo <= hi) {
    int mid = (lo + hi) / 2;
    if (G.a[mid].off > off) hi = mid - 1;
    else if (off >= G.a[mid].off + G.a[mid].bytes) lo = mid + 1;
    else return G.a[mid].live && off + bytes <= G.a[mid].off + G.a[mid].bytes ? mid : -1;
  }
  return -1;
}

/* A buffer the call is about to touch must be backend memory. */
static int pending_dst(const void *p, size_t bytes);

static int owned(const void *p, size_t bytes, const char *what) {
  G.checked++;
  if (pending_dst(p, bytes)) {
    violation("%s: %lld bytes overlapping an upload_async not waited for (upload_wait)", what,
              (long long)bytes);
    return 1; /* backend memory all the same: the call goes on, on the old bytes */
  }
  if (owner(p, bytes) >= 0) return 1;
  violation("%s: %lld bytes that are not backend memory", what, (long long)bytes);
  return 0;
}

static int pending_dst(const void *p, size_t bytes) {
  for (int i = 0; i < H.npend; i++) {
    const char *a = H.pend[i].dst, *q = p;
    if (q < a + H.pend[i].bytes && a < q + bytes) return 1;
  }
  return 0;
}

static int guard_init(int threads) { return nn_backend_cpu.init(threads); }
static void guard_finish(void) { nn_backend_cpu.finish(); }

static void *guard_alloc(size_t bytes) {
  size_t off = (G.used + 63) & ~(size_t)63;
  if (G.nallocs == MAX_ALLOCS || bytes > ARENA_BYTES - off) {
    ce_err("guard backend: arena full (%zu of %zu bytes, %d allocations)", G.used, ARENA_BYTES,
           G.nallocs);
    return NULL;
  }
  G.a[G.nallocs].off = off; /* never reused, so untouched pages: zero-filled */
  G.a[G.nallocs].bytes = bytes;
  G.a[G.nallocs].live = 1;
  G.nallocs++;
  G.live++;
  G.used = off + bytes;
  return G.arena + off;
}

static void guard_free(void *p) {
  if (!p) return;
  int i = owner(p, 1);
  if (i < 0 || G.arena + G.a[i].off != (char *)p) {
    violation("%s %lld: free of memory the backend did not allocate (or freed twice)", "offset",
              in_arena(p) ? (long long)((char *)p - G.arena) : -1);
    return;
  }
  G.a[i].live = 0;
  G.live--;
}

static int guard_upload(void *dst, const void *src, size_t bytes) {
  G.uploads++;
  G.bytes_up += (double)bytes;
  if (!owned(dst, bytes, "upload destination")) return ce_err("guard: upload to host memory");
  if (in_arena(src)) violation("%s: %lld bytes from backend memory", "upload source", (long long)bytes);
  guard_open();
  int rc = nn_backend_cpu.upload(dst, src, bytes);
  guard_close();
  return rc;
}

static int guard_download(void *dst, const void *src, size_t bytes) {
  G.downloads++;
  G.bytes_down += (double)bytes;
  if (!owned(src, bytes, "download source")) return ce_err("guard: download from host memory");
  if (in_arena(dst)) violation("%s: %lld bytes into backend memory", "download destination", (long long)bytes);
  guard_open();
  int rc = nn_backend_cpu.download(dst, src, bytes);
  guard_close();
  return rc;
}

static int guard_copy(void *dst, const void *src, size_t bytes) {
  G.copies++;
  if (!owned(dst, bytes, "copy destination") || !owned(src, bytes, "copy source"))
    return ce_err("guard: copy outside backend memory");
  guard_open();
  int rc = nn_backend_cpu.copy(dst, src, bytes);
  guard_close();
  return rc;
}

static int guard_zero(void *p, size_t bytes) {
  G.zeros++;
  if (!owned(p, bytes, "zero")) return ce_err("guard: zeroing host memory");
  guard_open();
  int rc = nn_backend_cpu.zero(p, bytes);
  guard_close();
  return rc;
}

/* Every buffer a layer call reads or writes. */
static int node_buffers_owned(const nn_net *net, const nn_node *nd, int backward) {
  const size_t N = (size_t)net->batch;
  int ok = owned(nd->out, sizeof(float) * N * (size_t)nd->size, "layer output");
  if (backward) ok &= owned(nd->grad, sizeof(float) * N * (size_t)nd->size, "layer gradient");
  for (int j = 0; j < nd->nin; j++) {
    const nn_node *in = &net->nodes[nd->in[j]];
    ok &= owned(in->out, sizeof(float) * N * (size_t)in->size, "layer input");
    if (backward && in->needs_grad)
      ok &= owned(in->grad, sizeof(float) * N * (size_t)in->size, "layer input gradient");
  }
  for (int k = 0; k < nd->nparam; k++) {
    const nn_param *p = &net->params[nd->param[k]];
    ok &= owned(p->w, sizeof(float) * (size_t)p->n, "parameter");
    if (p->g) ok &= owned(p->g, sizeof(float) * (size_t)p->n, "parameter gradient");
  }
  if (nd->kind == NN_BATCHNORM) ok &= owned(nd->save, sizeof(float) * 2 * (size_t)nd->c, "saved state");
  if (nd->kind == NN_CONV && net->work_n) ok &= owned(net->work, sizeof(float) * net->work_n, "scratch");
  return ok;
}

static int guard_forward(nn_net *net, nn_node *nd, int train) {
  G.layer_calls++;
  if (!node_buffers_owned(net, nd, 0))
    return ce_err("guard: layer '%s' touches memory the backend did not allocate", nd->name);
  guard_open();
  int rc = nn_backend_cpu.forward(net, nd, train);
  guard_close();
  return rc;
}

static int guard_backward(nn_net *net, nn_node *nd) {
  G.layer_calls++;
  if (!node_buffers_owned(net, nd, 1))
    return ce_err("guard: layer '%s' touches memory the backend did not allocate", nd->name);
  guard_open();
  int rc = nn_backend_cpu.backward(net, nd);
  guard_close();
  return rc;
}

static size_t guard_workspace(const nn_net *net, const nn_node *nd) {
  return nn_backend_cpu.workspace(net, nd);
}

static int guard_adam_update(nn_net *net, float *const *m, float *const *v, const nn_adam_coef *c) {
  G.adam_calls++;
  int ok = 1;
  for (int i = 0; i < net->nparams; i++) {
    if (!m[i]) continue;
    size_t b = sizeof(float) * (size_t)net->params[i].n;
    ok &= owned(net->params[i].w, b, "adam weights") & owned(net->params[i].g, b, "adam gradient") &
          owned(m[i], b, "adam first moment") & owned(v[i], b, "adam second moment");
  }
  if (!ok) return ce_err("guard: adam touches memory the backend did not allocate");
  guard_open();
  int rc = nn_backend_cpu.adam_update(net, m, v, c);
  guard_close();
  return rc;
}

typedef struct {
  void *cpu;
  size_t pixels;
} guard_loss;

static void *guard_loss_create(int h, int w, int max_images) {
  guard_loss *l = malloc(sizeof *l);
  if (!l) return NULL;
  l->cpu = nn_backend_cpu.loss_create(h, w, max_images);
  l->pixels = (size_t)h * w;
  if (!l->cpu) {
    free(l);
    return NULL;
  }
  return l;
}

static void guard_loss_destroy(void *p) {
  guard_loss *l = p;
  if (!l) return;
  nn_backend_cpu.loss_destroy(l->cpu);
  free(l);
}

static int guard_loss_eval(void *p, const float *pred, const float *t, int m, float seed_scale,
                           struct loss_value *out, float *grad) {
  guard_loss *l = p;
  G.loss_calls++;
  size_t b = sizeof(float) * (size_t)m * l->pixels;
  int ok = owned(pred, b, "loss prediction") & owned(t, b, "loss target");
  if (grad) ok &= owned(grad, b, "loss gradient");
  if (!ok) return ce_err("guard: the loss touches memory the backend did not allocate");
  guard_open();
  int rc = nn_backend_cpu.loss_eval(l->cpu, pred, t, m, seed_scale, out, grad);
  guard_close();
  return rc;
}

static int guard_reduce_grads(nn_net *net) {
  G.reduce_calls++;
  if (!owned(net->grad_block, sizeof(float) * net->grad_used_n, "gradient block"))
    return ce_err("guard: reduction outside backend memory");
  guard_open();
  int rc = nn_backend_cpu.reduce_grads(net);
  guard_close();
  return rc;
}

static int guard_reduce_bucket(nn_net *net, size_t off, size_t n) {
  if (!owned(net->grad_block + off, sizeof(float) * n, "gradient bucket"))
    return ce_err("guard: bucket outside backend memory");
  guard_open();
  int rc = nn_backend_cpu.reduce_bucket(net, off, n);
  guard_close();
  return rc;
}

/* ---- host staging and the asynchronous copies --------------------------- */

/* Host staging is whole pages of its own, so that upload_async can make its
 * source read-only until upload_wait (a host write to it faults: the rule
 * that the host must not reuse the buffer before the wait); the copy itself
 * happens only in upload_wait, and a backend call that touches a pending
 * destination before it is a violation (owned), so work that reads the
 * batch too early sees old bytes and is reported. */
static size_t pages_of(size_t bytes) { return (bytes + G.page - 1) / G.page * G.page; }

static void *guard_host_alloc(size_t bytes) {
  for (int i = 0; i < MAX_HOST; i++) {
    if (H.host[i].p) continue;
    void *p = mmap(NULL, pages_of(bytes ? bytes : 1), PROT_READ | PROT_WRITE,
                   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) {
      ce_err("guard backend: host staging of %zu bytes: mmap failed", bytes);
      return NULL;
    }
    H.host[i].p = p;
    H.host[i].bytes = pages_of(bytes ? bytes : 1);
    return p;
  }
  ce_err("guard backend: more than %d host staging buffers", MAX_HOST);
  return NULL;
}

static void guard_host_free(void *p) {
  for (int i = 0; p && i < MAX_HOST; i++)
    if (H.host[i].p == p) {
      munmap(p, H.host[i].bytes);
      H.host[i].p = NULL;
      return;
    }
}

/* The pages of host staging that [p, p + bytes) lies in, or NULL. */
static char *host_pages(const void *p, size_t bytes, size_t *n) {
  for (int i = 0; i < MAX_HOST; i++) {
    char *b = H.host[i].p;
    if (b && (const char *)p >= b && (const char *)p + bytes <= b + H.host[i].bytes) {
      char *first = b + ((const char *)p - b) / G.page * G.page;
      *n = pages_of((size_t)((const char *)p + bytes - first));
      return first;
    }
  }
  return NULL;
}

static int in_pending_src(const void *a) {
  for (int i = 0; i < H.npend; i++) {
    size_t n;
    char *first = host_pages(H.pend[i].src, H.pend[i].bytes, &n);
    if (first && (const char *)a >= first && (const char *)a < first + n) return 1;
  }
  return 0;
}

static int guard_upload_async(void *dst, const void *src, size_t bytes) {
  H.async_uploads++;
  G.bytes_up += (double)bytes;
  if (!owned(dst, bytes, "upload_async destination"))
    return ce_err("guard: upload_async to host memory");
  size_t n;
  char *pages = host_pages(src, bytes, &n);
  if (!pages) violation("%s: %lld bytes that are not host staging (host_alloc)",
                        "upload_async source", (long long)bytes);
  if (H.npend == MAX_PENDING) return ce_err("guard: more than %d copies pending", MAX_PENDING);
  H.pend[H.npend].dst = dst;
  H.pend[H.npend].src = src;
  H.pend[H.npend].bytes = bytes;
  H.npend++;
  if (pages && mprotect(pages, n, PROT_READ) != 0) abort();
  return 0;
}

static int guard_upload_wait(void) {
  H.waits++;
  const int np = H.npend;
  H.npend = 0; /* the destinations are the backend's again */
  for (int i = 0; i < np; i++) {
    size_t n = 0;
    char *pages = host_pages(H.pend[i].src, H.pend[i].bytes, &n);
    guard_open();
    memcpy(H.pend[i].dst, H.pend[i].src, H.pend[i].bytes);
    guard_close();
    if (pages && mprotect(pages, n, PROT_READ | PROT_WRITE) != 0) abort();
  }
  return 0;
}

static int guard_normalise_inputs(const stats_norm *p, const float *in, float *out, int samples,
                                  size_t nvox) {
  const size_t bytes = sizeof(float) * (size_t)samples * 3 * nvox;
  if (!owned(in, bytes, "normalise_inputs input") || !owned(out, bytes, "normalise_inputs output"))
    return ce_err("guard: normalise_inputs outside backend memory");
  guard_open();
  int rc = nn_backend_cpu.normalise_inputs(p, in, out, samples, nvox);
  guard_close();
  return rc;
}

static int guard_normalise_targets(const stats_norm *p, const float *in, float *out, int samples,
                                   size_t nval) {
  const size_t bytes = sizeof(float) * (size_t)samples * nval;
  if (!owned(in, bytes, "normalise_targets input") || !owned(out, bytes, "normalise_targets output"))
    return ce_err("guard: normalise_targets outside backend memory");
  guard_open();
  int rc = nn_backend_cpu.normalise_targets(p, in, out, samples, nval);
  guard_close();
  return rc;
}

static int guard_metrics(const stats_norm *p, const float *pred, const float *target, int n,
                         int f, int h, int w, double *out) {
  const size_t bytes = sizeof(float) * (size_t)n * f * h * w;
  if (!owned(pred, bytes, "metrics prediction") || !owned(target, bytes, "metrics target"))
    return ce_err("guard: metrics outside backend memory");
  if (in_arena(out)) return ce_err("guard: metrics results go to host memory, not backend memory");
  guard_open();
  int rc = nn_backend_cpu.metrics(p, pred, target, n, f, h, w, out);
  guard_close();
  return rc;
}

static const nn_backend guard_backend = {
    .name = "guard",
    .precisions = NN_PRECISION_BIT(NN_TF32) | NN_PRECISION_BIT(NN_BF16), /* the CPU's */
    .init = guard_init,
    .finish = guard_finish,
    .alloc = guard_alloc,
    .free = guard_free,
    .upload = guard_upload,
    .download = guard_download,
    .copy = guard_copy,
    .zero = guard_zero,
    .forward = guard_forward,
    .backward = guard_backward,
    .workspace = guard_workspace,
    .adam_update = guard_adam_update,
    .loss_create = guard_loss_create,
    .loss_destroy = guard_loss_destroy,
    .loss_eval = guard_loss_eval,
    .reduce_grads = guard_reduce_grads,
    .reduce_bucket = guard_reduce_bucket,
    .host_alloc = guard_host_alloc,
    .host_free = guard_host_free,
    .upload_async = guard_upload_async,
    .upload_wait = guard_upload_wait,
    .normalise_inputs = guard_normalise_inputs,
    .normalise_targets = guard_normalise_targets,
    .metrics = guard_metrics,
};

static void on_segv(int sig, siginfo_t *si, void *uc) {
  (void)uc;
  if (in_arena(si->si_addr)) {
    static const char msg[] = "test_backend: host code touched backend memory outside a backend "
                              "call (it must go through upload/download)\n";
    if (write(2, msg, sizeof msg - 1) < 0) _exit(GUARD_EXIT);
    _exit(GUARD_EXIT);
  }
  if (in_pending_src(si->si_addr)) {
    static const char msg[] = "test_backend: host code wrote a host buffer that an upload_async "
                              "still reads (before upload_wait)\n";
    if (write(2, msg, sizeof msg - 1) < 0) _exit(GUARD_EXIT);
    _exit(GUARD_EXIT);
  }
  signal(sig, SIG_DFL); /* any other fault: the default action when it repeats */
}

static void guard_setup(void) {
  G.page = (size_t)sysconf(_SC_PAGESIZE);
  const size_t huge = (size_t)2 << 20;
  /* reserved with a huge page to spare, so that the arena starts on one */
  char *r = mmap(NULL, ARENA_BYTES + huge, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                 -1, 0);
  if (r == MAP_FAILED) {
    perror("mmap");
    exit(2);
  }
  G.arena = (char *)(((uintptr_t)r + huge - 1) / huge * huge);
  if (G.arena > r) munmap(r, (size_t)(G.arena - r));
  munmap(G.arena + ARENA_BYTES, (size_t)(r + huge - G.arena));
  G.granule = madvise(G.arena, ARENA_BYTES, MADV_HUGEPAGE) == 0 ? huge : G.page;
  struct sigaction sa;
  memset(&sa, 0, sizeof sa);
  sa.sa_sigaction = on_segv;
  sa.sa_flags = SA_SIGINFO;
  sigaction(SIGSEGV, &sa, NULL);
}

/* ---- a small COEmuNet on a backend -------------------------------------- */

enum { B = 3, STEPS = 3 };

typedef struct {
  coemunet m;
  adam o;
  trainer tr;
} model;

static const coemunet_config CFG = {2, 16, 2, {2, 3, 4}, 8, 8, COEMUNET_SHORTCUT_REFERENCE};

static size_t nx(void) { return (size_t)B * 3 * CFG.grid * CFG.grid * CFG.grid; }
static size_t nt(void) { return (size_t)B * CFG.nfreq * CFG.grid * CFG.grid; }

static void model_open(model *r, const nn_backend *be, uint64_t seed) {
  CHECK_OK(coemunet_build_on(&r->m, &CFG, seed, be));
  CHECK_OK(nn_set_batch(&r->m.net, B));
  adam_config ac = {ADAMW, 2e-3, 0.9, 0.999, 1e-8, 0.01};
  CHECK_OK(adam_init(&r->o, &r->m.net, &ac));
  CHECK_OK(trainer_init(&r->tr, &r->m, &r->o));
}

static void model_close(model *r) {
  trainer_free(&r->tr);
  adam_free(&r->o);
  coemunet_free(&r->m);
}

static void batch(int k, float *x, float *t) {
  ce_rng r = ce_rng_make(31, (uint32_t)k, 0, 1);
  gc_fill(x, nx(), &r, -1, 1);
  gc_fill(t, nt(), &r, 0, 1);
}

/* The parameters of two nets (any backends) hold the same bits. */
static int same_weights(const nn_net *a, const nn_net *b) {
  int same = a->nparams == b->nparams;
  for (int i = 0; same && i < a->nparams; i++) {
    float *x = gc_host_param(a, i), *y = gc_host_param(b, i);
    same = memcmp(x, y, sizeof(float) * (size_t)a->params[i].n) == 0;
    free(x);
    free(y);
  }
  return same;
}

static int same_files(const char *a, const char *b) {
  FILE *f = fopen(a, "rb"), *g = fopen(b, "rb");
  int same = f && g, ca, cb;
  while (same) { /* both files read to their ends: a shorter one differs (EOF != a byte) */
    ca = fgetc(f);
    cb = fgetc(g);
    if (ca == EOF && cb == EOF) break;
    same = ca == cb;
  }
  if (f) fclose(f);
  if (g) fclose(g);
  return same;
}

/* Every tensor of a model on the guard lies in its arena: the census. */
static void check_all_backend_memory(const model *r) {
  const nn_net *net = &r->m.net;
  long before = G.violations;
  for (int i = 0; i < net->nparams; i++) {
    owned(net->params[i].w, sizeof(float) * net->params[i].n, net->params[i].name);
    if (net->params[i].g) owned(net->params[i].g, sizeof(float) * net->params[i].n, net->params[i].name);
    if (adam_has_state(&r->o, i)) {
      owned(r->o.m[i], sizeof(float) * net->params[i].n, "adam m");
      owned(r->o.v[i], sizeof(float) * net->params[i].n, "adam v");
    }
  }
  for (int i = 0; i < net->nnodes; i++) {
    const nn_node *nd = &net->nodes[i];
    size_t b = sizeof(float) * (size_t)net->batch * (size_t)nd->size;
    owned(nd->out, b, nd->name);
    if (nd->needs_grad) owned(nd->grad, b, nd->name);
    if (nd->save) owned(nd->save, sizeof(float) * 2 * nd->c, nd->name);
  }
  owned(net->work, sizeof(float) * net->work_n, "scratch");
  owned(net->grad_block, sizeof(float) * net->grad_used_n, "gradient block");
  owned(r->tr.target, sizeof(float) * nt(), "trainer targets");
  CHECK_MSG(G.violations == before, "%ld buffers are not backend memory: %s", G.violations - before,
            G.first_violation);
}

/* ---- tests -------------------------------------------------------------- */

/* The CPU backend's init sets OpenBLAS to 1 thread and OpenMP only when
 * asked; the last finish restores both. Runs before anything initialised it. */
static void test_cpu_thread_settings(void) {
  nn_net net;
  nn_init(&net);
  int x = nn_input(&net, "x", 1, 2, 2, 2);
  nn_relu(&net, "r", x);
  CHECK_ERR(nn_finalize(&net, 1), "backend 'cpu' is not initialised");
  nn_free(&net);

  omp_set_num_threads(3);
  openblas_set_num_threads(2);
  CHECK_OK(nn_backend_init(&nn_backend_cpu, 0));
  CHECK(omp_get_max_threads() == 3); /* not asked for: left alone */
  CHECK(openblas_get_num_threads() == 1);
  CHECK_OK(nn_backend_init(&nn_backend_cpu, 2)); /* a second user asks for 2 */
  CHECK(omp_get_max_threads() == 2 && openblas_get_num_threads() == 1);
  nn_backend_finish(&nn_backend_cpu);
  CHECK(nn_backend_ready(&nn_backend_cpu) && openblas_get_num_threads() == 1);
  nn_backend_finish(&nn_backend_cpu); /* the last one: the caller's settings */
  CHECK(!nn_backend_ready(&nn_backend_cpu));
  CHECK(omp_get_max_threads() == 3 && openblas_get_num_threads() == 2);
  CHECK_ERR(nn_backend_init(&nn_backend_cpu, -1), "threads");
  omp_set_num_threads(1);
  openblas_set_num_threads(1);
}

/* Touching backend memory from host code faults, in a child process. */
static void test_guard_catches_host_access(void) {
  model r;
  model_open(&r, &guard_backend, 7);
  fprintf(stderr, "a host write and a host read of backend memory, each in a child process: "
                  "two messages expected\n");
  float *out = nn_out(&r.m.net, r.m.input), *w = r.m.net.params[0].w;
  for (int k = 0; k < 2; k++) {
    fflush(NULL);
    pid_t pid = fork();
    if (pid == 0) { /* no OpenMP here: only the access */
      volatile float *p = k ? w : out;
      if (k) {
        float v = p[0];
        (void)v;
      } else
        p[0] = 1.0f;
      _exit(0); /* not reached when the guard works */
    }
    int st = 0;
    CHECK(pid > 0 && waitpid(pid, &st, 0) == pid);
    CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == GUARD_EXIT,
              "a host %s of backend memory was not caught (status 0x%x)", k ? "read" : "write", st);
  }
  /* through the table it works, and a malloc'ed buffer in the net is refused */
  float *host = calloc(nx(), sizeof(float));
  CHECK_OK(nn_input_upload(&r.m.net, r.m.input, host));
  long before = G.violations;
  r.m.net.nodes[r.m.input].out = host;
  CHECK_ERR(nn_forward(&r.m.net, 0), "touches memory the backend did not allocate");
  CHECK(G.violations > before);
  G.violations = before;
  r.m.net.nodes[r.m.input].out = out;
  CHECK_OK(nn_forward(&r.m.net, 0));
  free(host);
  model_close(&r);
}

/* Training, evaluation, checkpoints, resume and encoder transfer on the
 * guard give the CPU backend's results bit for bit. */
static void test_guard_matches_cpu(void) {
  model g, c;
  model_open(&g, &guard_backend, 11);
  model_open(&c, &nn_backend_cpu, 11);
  check_all_backend_memory(&g);
  CHECK(same_weights(&g.m.net, &c.m.net));
  float *x = malloc(sizeof(float) * nx()), *t = malloc(sizeof(float) * nt());
  for (int k = 0; k < STEPS; k++) {
    batch(k, x, t);
    loss_value lg, lc;
    long up = G.uploads, down = G.downloads, layers = G.layer_calls, loss = G.loss_calls;
    double bytes = G.bytes_up;
    CHECK_OK(trainer_step(&g.tr, x, t, 2e-3, &lg));
    /* a step: the input and the targets in, nothing out but the loss value */
    CHECK_MSG(G.uploads - up == 2 && G.downloads == down, "step %d: %ld uploads, %ld downloads", k,
              G.uploads - up, G.downloads - down);
    CHECK(G.bytes_up - bytes == (double)sizeof(float) * (nx() + nt()));
    CHECK(G.layer_calls > layers && G.loss_calls == loss + 1);
    CHECK_OK(trainer_step(&c.tr, x, t, 2e-3, &lc));
    CHECK_MSG(lg.total == lc.total && lg.mse == lc.mse && lg.fft == lc.fft,
              "step %d: loss %.17g on the guard, %.17g on the CPU", k, lg.total, lc.total);
  }
  CHECK(same_weights(&g.m.net, &c.m.net));
  /* gradients and the output too */
  for (int i = 0; i < g.m.net.nparams; i++)
    if (g.m.net.params[i].g) {
      size_t n = (size_t)g.m.net.params[i].n;
      float *a = malloc(sizeof(float) * n), *b = malloc(sizeof(float) * n);
      CHECK_OK(nn_param_grad_download(&g.m.net, i, a));
      CHECK_OK(nn_param_grad_download(&c.m.net, i, b));
      CHECK_MSG(!memcmp(a, b, sizeof(float) * n), "gradient of %s differs", g.m.net.params[i].name);
      free(a);
      free(b);
    }
  loss_value eg, ec;
  CHECK_OK(trainer_eval(&g.tr, x, t, &eg));
  CHECK_OK(trainer_eval(&c.tr, x, t, &ec));
  CHECK(eg.total == ec.total);
  float *yg = gc_host_out(&g.m.net, g.m.output), *yc = gc_host_out(&c.m.net, c.m.output);
  CHECK(!memcmp(yg, yc, sizeof(float) * nt()));
  free(yg);
  free(yc);

  /* checkpoints: the same bytes; saving downloads exactly the tensors */
  const char *dir = check_scratch("backend");
  char pg[1100], pc[1100];
  snprintf(pg, sizeof pg, "%s/guard.ckpt", dir);
  snprintf(pc, sizeof pc, "%s/cpu.ckpt", dir);
  train_state st = {11, STEPS, 1, {2e-3, 0.5, 2}};
  double expect = 0, down = G.bytes_down;
  for (int i = 0; i < g.m.net.nparams; i++)
    expect += sizeof(float) * (double)g.m.net.params[i].n * (adam_has_state(&g.o, i) ? 3 : 1);
  CHECK_OK(checkpoint_save(pg, &g.m, &g.o, &st));
  CHECK_MSG(G.bytes_down - down == expect, "checkpoint: %.0f bytes downloaded, %.0f expected",
            G.bytes_down - down, expect);
  CHECK_OK(checkpoint_save(pc, &c.m, &c.o, &st));
  CHECK(same_files(pg, pc));

  /* resume on the guard from the CPU's checkpoint: the same next steps */
  model h;
  model_open(&h, &guard_backend, 99);
  train_state st2;
  CHECK_OK(checkpoint_load(pc, &h.m, &h.o, &st2));
  CHECK(same_weights(&h.m.net, &c.m.net) && h.o.t == c.o.t);
  for (int k = STEPS; k < STEPS + 2; k++) {
    batch(k, x, t);
    loss_value lh, lc;
    CHECK_OK(trainer_step(&h.tr, x, t, 1e-3, &lh));
    CHECK_OK(trainer_step(&c.tr, x, t, 1e-3, &lc));
    CHECK(lh.total == lc.total);
  }
  CHECK(same_weights(&h.m.net, &c.m.net));

  /* encoder transfer: guard -> guard (the backend's copy), guard -> CPU
     (through the host) */
  coemunet_config c1 = CFG;
  c1.nfreq = 1;
  coemunet d1, d2;
  CHECK_OK(coemunet_build_on(&d1, &c1, 5, &guard_backend));
  CHECK_OK(coemunet_build_on(&d2, &c1, 5, &nn_backend_cpu));
  long copies = G.copies;
  CHECK_OK(coemunet_transfer_encoder(&d1, &g.m, NULL, NULL));
  CHECK(G.copies > copies);
  CHECK_OK(coemunet_transfer_encoder(&d2, &g.m, NULL, NULL));
  CHECK(same_weights(&d1.net, &d2.net));
  coemunet_free(&d1);
  coemunet_free(&d2);

  free(x);
  free(t);
  model_close(&h);
  model_close(&g);
  model_close(&c);
  check_scratch_remove();
}

/* With a reducer: synchronised BatchNorm sums in the forward and backward,
 * the batch-size sum, and the gradient reduction through the table. */
typedef struct {
  long f64, f32;
  double f32_floats;
} sums;

static int count_f64(void *ctx, double *buf, size_t n) {
  (void)buf; (void)n;
  ((sums *)ctx)->f64++;
  return 0;
}

static int count_f32(void *ctx, float *buf, size_t n) {
  (void)buf;
  ((sums *)ctx)->f32++;
  ((sums *)ctx)->f32_floats += (double)n;
  return 0;
}

static void test_guard_reducer(void) {
  model g, c;
  model_open(&g, &guard_backend, 3);
  model_open(&c, &nn_backend_cpu, 3);
  sums sg = {0, 0, 0}, sc = {0, 0, 0};
  nn_reducer rg = {.world = 1, .sum_f64 = count_f64, .sum_f32 = count_f32, .ctx = &sg, .chunk = 1000},
             rc = {.world = 1, .sum_f64 = count_f64, .sum_f32 = count_f32, .ctx = &sc, .chunk = 1000};
  CHECK_OK(nn_set_reducer(&g.m.net, &rg));
  CHECK_OK(nn_set_reducer(&c.m.net, &rc));
  int nbn = 0;
  for (int i = 0; i < g.m.net.nnodes; i++) nbn += g.m.net.nodes[i].kind == NN_BATCHNORM;
  float *x = malloc(sizeof(float) * nx()), *t = malloc(sizeof(float) * nt());
  long reduces = G.reduce_calls;
  for (int k = 0; k < 2; k++) {
    batch(k, x, t);
    loss_value lg, lc;
    CHECK_OK(trainer_step(&g.tr, x, t, 2e-3, &lg));
    CHECK_OK(trainer_step(&c.tr, x, t, 2e-3, &lc));
    CHECK(lg.total == lc.total);
  }
  CHECK(G.reduce_calls - reduces == 2);
  CHECK(sg.f64 == 2 * (3 * nbn + 1) && sg.f64 == sc.f64);
  CHECK(sg.f32 == 2 * (long)((g.m.net.grad_used_n + 999) / 1000) && sg.f32 == sc.f32);
  CHECK(sg.f32_floats == 2.0 * (double)g.m.net.grad_used_n);
  CHECK(same_weights(&g.m.net, &c.m.net));
  free(x);
  free(t);
  model_close(&g);
  model_close(&c);
}

/* ---- the input feed: asynchronous copies, normalisation ------------------ */

/* The host normalisation as it was before stats/norm_body.h (transforms.c,
 * verbatim): the reference the one body must reproduce bit for bit. */
static void old_norm_inputs(const stats_norm *p, const float *in, size_t nvox, float *out) {
  const float *v = in, *T = in + nvox, *nc = in + 2 * nvox;
  for (size_t i = 0; i < nvox; i++) {
    out[i] = (float)(((double)v[i] - p->vz_mean) / p->vz_std);
    out[nvox + i] = (float)(((double)(float)log((double)T[i]) - p->lnT_min) / p->lnT_scale);
    out[2 * nvox + i] =
        (float)(((double)(float)log((double)nc[i]) - p->lnn_min) / p->lnn_scale);
  }
}

static void old_norm_targets(const stats_norm *p, const float *inten, size_t n, float *out) {
  float smallest = INFINITY;
  for (size_t i = 0; i < n; i++) {
    if (inten[i] > 0 && inten[i] < smallest) smallest = inten[i];
  }
  if (isinf(smallest)) smallest = 0;
  for (size_t i = 0; i < n; i++) {
    /* zeros and negatives (round-off: the exact intensity is >= 0) */
    double v = inten[i] <= 0 ? smallest : inten[i];
    double t = log(v);
    out[i] = (float)(t < p->lnI_clip ? p->lnI_clip : t);
  }
  for (size_t i = 0; i < n; i++) out[i] = (float)(((double)out[i] - p->lnI_min) / p->lnI_scale);
}

/* Bits that differ between a and b (NaN payloads included). */
static size_t bits_differ(const float *a, const float *b, size_t n) {
  size_t bad = 0;
  for (size_t i = 0; i < n; i++) bad += memcmp(a + i, b + i, sizeof(float)) != 0;
  return bad;
}

/* The normalisation body (stats/norm_body.h) gives the old host code's bits
 * on demo-like raw batches (plus a sample of zeros only, a negative
 * intensity, which counts as a zero, a NaN one, a zero temperature), in both
 * intensity modes: the host's
 * stats_norm_*, the CPU backend's and the guard's entries, and the bodies
 * driven as a kernel drives them (threads tid < stride of a grid-stride
 * loop, the targets' zero fill a min over the threads' partial minima). */
static void test_normalise_parity(void) {
  const int S = B;
  const size_t nv = (size_t)CFG.grid * CFG.grid * CFG.grid, nval = nt() / B;
  const size_t ni = (size_t)S * 3 * nv, nn = (size_t)S * nval;
  float *x = malloc(sizeof(float) * ni), *t = malloc(sizeof(float) * nn);
  float *ref_x = malloc(sizeof(float) * ni), *ref_t = malloc(sizeof(float) * nn);
  float *got_x = malloc(sizeof(float) * ni), *got_t = malloc(sizeof(float) * nn);
  for (int median = 0; median < 2; median++) {
    const stats_norm p = test_norm_params(median);
    test_raw_batch(&CFG, &p, S, 4, x, t);
    for (size_t i = 0; i < nval; i++) t[nval + i] = 0.0f; /* sample 1: zeros only */
    t[2 * nval + 3] = -1e-20f;                            /* a negative: as a zero */
    t[2 * nval + 4] = NAN;
    x[nv + 17] = 0.0f; /* T = 0: -inf */
    for (int k = 0; k < S; k++) {
      old_norm_inputs(&p, x + (size_t)k * 3 * nv, nv, ref_x + (size_t)k * 3 * nv);
      old_norm_targets(&p, t + (size_t)k * nval, nval, ref_t + (size_t)k * nval);
    }
    /* the host */
    for (int k = 0; k < S; k++) {
      stats_norm_inputs(&p, x + (size_t)k * 3 * nv, nv, got_x + (size_t)k * 3 * nv);
      stats_norm_targets(&p, t + (size_t)k * nval, nval, got_t + (size_t)k * nval);
    }
    CHECK_MSG(!bits_differ(got_x, ref_x, ni) && !bits_differ(got_t, ref_t, nn),
              "stats_norm_*: %zu input and %zu target values differ (mode %d)",
              bits_differ(got_x, ref_x, ni), bits_differ(got_t, ref_t, nn), median);
    /* the backends' entries, out of place and in place */
    const nn_backend *bes[2] = {&nn_backend_cpu, &guard_backend};
    for (int b = 0; b < 2; b++)
      for (int inplace = 0; inplace < 2; inplace++) {
        const nn_backend *be = bes[b];
        float *dx = be->alloc(sizeof(float) * ni), *dt = be->alloc(sizeof(float) * nn);
        float *ox = inplace ? dx : be->alloc(sizeof(float) * ni);
        float *ot = inplace ? dt : be->alloc(sizeof(float) * nn);
        CHECK(dx && dt && ox && ot);
        CHECK_OK(be->upload(dx, x, sizeof(float) * ni));
        CHECK_OK(be->upload(dt, t, sizeof(float) * nn));
        CHECK_OK(be->normalise_inputs(&p, dx, ox, S, nv));
        CHECK_OK(be->normalise_targets(&p, dt, ot, S, nval));
        CHECK_OK(be->download(got_x, ox, sizeof(float) * ni));
        CHECK_OK(be->download(got_t, ot, sizeof(float) * nn));
        CHECK_MSG(!bits_differ(got_x, ref_x, ni) && !bits_differ(got_t, ref_t, nn),
                  "backend %s (%s): %zu input and %zu target values differ (mode %d)", be->name,
                  inplace ? "in place" : "out of place", bits_differ(got_x, ref_x, ni),
                  bits_differ(got_t, ref_t, nn), median);
        if (!inplace) {
          be->free(ox);
          be->free(ot);
        }
        be->free(dx);
        be->free(dt);
      }
    /* the bodies as the kernels run them */
    const size_t strides[3] = {1, 7, 256 * 3};
    for (int si = 0; si < 3; si++) {
      const size_t stride = strides[si];
      float fill[B];
      memset(got_x, 0, sizeof(float) * ni);
      memset(got_t, 0, sizeof(float) * nn);
      for (size_t tid = 0; tid < stride; tid++)
        norm_body_inputs_thread(&p, x, got_x, (size_t)S, nv, tid, stride);
      for (int k = 0; k < S; k++) { /* one block per sample */
        float m = INFINITY;
        for (size_t tid = 0; tid < 256; tid++) {
          float part = norm_body_smallest_thread(t + (size_t)k * nval, nval, tid, 256, INFINITY);
          m = part < m ? part : m;
        }
        fill[k] = norm_body_zero_fill(m);
      }
      for (size_t tid = 0; tid < stride; tid++)
        norm_body_targets_thread(&p, t, fill, got_t, (size_t)S, nval, tid, stride);
      CHECK_MSG(!bits_differ(got_x, ref_x, ni) && !bits_differ(got_t, ref_t, nn),
                "the bodies with %zu threads: %zu input and %zu target values differ (mode %d)",
                stride, bits_differ(got_x, ref_x, ni), bits_differ(got_t, ref_t, nn), median);
    }
  }
  free(x);
  free(t);
  free(ref_x);
  free(ref_t);
  free(got_x);
  free(got_t);
}

/* The guard's rules for upload_async: the host buffer is read-only until
 * upload_wait (a write faults, in a child process), a backend call that
 * touches the destination before the wait is a violation and sees the old
 * bytes, and after the wait the bytes are there and the buffer is the
 * host's again. */
static void test_guard_async_rules(void) {
  const size_t n = 1000;
  float *h = guard_backend.host_alloc(sizeof(float) * n), *d = guard_backend.alloc(sizeof(float) * n);
  float *back = calloc(n, sizeof(float));
  CHECK(h && d && back);
  for (size_t i = 0; i < n; i++) h[i] = (float)i + 1.0f;
  CHECK_OK(guard_backend.upload_async(d, h, sizeof(float) * n));
  CHECK(h[n - 1] == (float)n); /* reading it is allowed */
  fprintf(stderr, "a host write to a buffer an upload_async still reads, in a child process: "
                  "one message expected\n");
  fflush(NULL);
  pid_t pid = fork();
  if (pid == 0) {
    ((volatile float *)h)[3] = -1.0f;
    _exit(0); /* not reached when the guard works */
  }
  int st = 0;
  CHECK(pid > 0 && waitpid(pid, &st, 0) == pid);
  CHECK_MSG(WIFEXITED(st) && WEXITSTATUS(st) == GUARD_EXIT,
            "a host write to a pending upload's buffer was not caught (status 0x%x)", st);
  long before = G.violations;
  CHECK_OK(guard_backend.download(back, d, sizeof(float) * n));
  CHECK_MSG(G.violations == before + 1, "a download of a pending upload's destination was not "
            "reported");
  CHECK(back[0] == 0.0f); /* the bytes are not there before the wait */
  G.violations = before;
  CHECK_OK(guard_backend.upload_wait());
  CHECK_OK(guard_backend.download(back, d, sizeof(float) * n));
  CHECK(G.violations == before && back[0] == 1.0f && back[n - 1] == (float)n);
  h[3] = -1.0f; /* the host's again */
  guard_backend.free(d);
  guard_backend.host_free(h);
  free(back);
}

/* Raw batches of test_raw_batch, STEPS per epoch. */
typedef struct {
  float *x, *t;
  int k;
  uint32_t epoch;
} raw_source;

static int raw_next(void *p, uint32_t epoch, const float **x, const float **t) {
  raw_source *r = p;
  if (epoch != r->epoch) {
    r->epoch = epoch;
    r->k = 0;
  }
  if (r->k == STEPS) return 0;
  const stats_norm norm = test_norm_params(0);
  test_raw_batch(&CFG, &norm, B, (int)epoch * STEPS + r->k++, r->x, r->t);
  *x = r->x;
  *t = r->t;
  return 1;
}

/* Two epochs through the feed's backend buffers on the guard (the copies
 * asynchronous, the normalisation the backend's; with and without the
 * reader thread) train the CPU backend's weights bit for bit from the same
 * raw batches normalised on the host: the feed waits for each copy before
 * it hands the host buffer back to the reader (else the reader's write
 * faults) and the step reads the batch only after the wait (else a
 * violation and other weights). */
static void test_guard_feed_trains(void) {
  const stats_norm norm = test_norm_params(0);
  model c;
  model_open(&c, &nn_backend_cpu, 21);
  raw_source rs = {malloc(sizeof(float) * nx()), malloc(sizeof(float) * nt()), 0, 0};
  float *hx = malloc(sizeof(float) * nx()), *ht = malloc(sizeof(float) * nt());
  for (uint32_t e = 0; e < 2; e++)
    for (int k = 0; k < STEPS; k++) {
      const float *x, *t;
      CHECK(raw_next(&rs, e, &x, &t) == 1);
      for (int s = 0; s < B; s++) {
        stats_norm_inputs(&norm, x + (size_t)s * (nx() / B), nx() / B / 3, hx + (size_t)s * (nx() / B));
        stats_norm_targets(&norm, t + (size_t)s * (nt() / B), nt() / B, ht + (size_t)s * (nt() / B));
      }
      loss_value lv;
      CHECK_OK(trainer_step(&c.tr, hx, ht, 1e-3, &lv));
    }
  for (int prefetch = 0; prefetch < 2; prefetch++) {
    model g;
    model_open(&g, &guard_backend, 21);
    raw_source gs = {rs.x, rs.t, 0, 0};
    train_feed_opts fo = {raw_next, &gs, nx(), nt(), 0, 2, &guard_backend, prefetch, 1};
    train_feed *f = NULL;
    CHECK_OK(train_feed_open(&fo, &f));
    const long up0 = H.async_uploads, v0 = G.violations;
    int steps = 0;
    for (uint32_t e = 0; e < 2 && f; e++)
      for (;;) {
        const float *x, *t;
        int got = train_feed_next_dev(f, e, &x, &t);
        CHECK_OK(got < 0 ? -1 : 0);
        if (got <= 0) break;
        loss_value lv;
        CHECK_OK(trainer_step_raw(&g.tr, x, t, &norm, 1e-3, &lv));
        steps++;
      }
    train_feed_close(f);
    CHECK(steps == 2 * STEPS && H.npend == 0);
    CHECK_MSG(H.async_uploads - up0 == 2 * 2 * STEPS, "%ld asynchronous copies, expected %d",
              H.async_uploads - up0, 2 * 2 * STEPS);
    CHECK_MSG(G.violations == v0, "%ld violations: %s", G.violations - v0, G.first_violation);
    CHECK_MSG(same_weights(&g.m.net, &c.m.net),
              "training through the feed's backend buffers on the guard (prefetch %d) differs "
              "from the CPU backend on host-normalised batches", prefetch);
    model_close(&g);
  }
  free(rs.x);
  free(rs.t);
  free(hx);
  free(ht);
  model_close(&c);
}

/* The bench's loops (trainer/train_bench.h) on the guard: every feed trains
 * the weights the CPU backend's trainer_step gives on the same batch, bit
 * for bit, and neither the steps nor the forwards break upload_async's rules
 * (the pinned feed's copies run beside the steps: a step that read its
 * batch before the wait, or a copy queued into a buffer before the step
 * reading it, is reported and changes the weights); the pinned feed copies
 * one batch ahead, each step's inputs and targets once. */
static void test_guard_bench_feeds(void) {
  float *x = malloc(sizeof(float) * nx()), *t = malloc(sizeof(float) * nt());
  CHECK(x && t);
  ce_rng g = ce_rng_make(77, 0, 0, 1);
  for (size_t i = 0; i < nx(); i++) x[i] = (float)(2 * ce_rng_uniform(&g) - 1);
  for (size_t i = 0; i < nt(); i++) t[i] = (float)ce_rng_uniform(&g);
  model c;
  model_open(&c, &nn_backend_cpu, 22);
  loss_value lv;
  for (int k = 0; k < 3; k++) CHECK_OK(trainer_step(&c.tr, x, t, 1e-3, &lv)); /* 1 warm + 2 */
  for (int f = 0; f < TRAIN_BENCH_NFEEDS; f++) {
    const char *name = train_bench_feed_name((train_bench_feed)f);
    model gm;
    model_open(&gm, &guard_backend, 22);
    const long v0 = G.violations, up0 = H.async_uploads;
    double secs = -1;
    CHECK_OK(train_bench_steps(&gm.tr, x, t, 1e-3, (train_bench_feed)f, 1, 2, &secs));
    const long ups = H.async_uploads - up0;
    CHECK_MSG(G.violations == v0, "%s steps: %ld violations: %s", name, G.violations - v0,
              G.first_violation);
    CHECK_MSG(H.npend == 0 && secs >= 0, "%s steps: %d copies left pending, %g s", name, H.npend,
              secs);
    CHECK_MSG(ups == (f == TRAIN_BENCH_PINNED ? 2 * 4 : 0),
              "%s steps: %ld asynchronous copies (pinned: inputs and targets of the 3 steps' "
              "batches and of one ahead, 8)", name, ups);
    CHECK_MSG(same_weights(&gm.m.net, &c.m.net),
              "3 steps fed %s on the guard differ from trainer_step's on the CPU backend", name);
    const long up1 = H.async_uploads;
    CHECK_OK(train_bench_forwards(&gm.tr, x, (train_bench_feed)f, 1, 2, &secs));
    CHECK_MSG(G.violations == v0 && H.npend == 0, "%s forwards: %ld violations: %s", name,
              G.violations - v0, G.first_violation);
    CHECK_MSG(H.async_uploads - up1 == (f == TRAIN_BENCH_PINNED ? 4 : 0),
              "%s forwards: %ld asynchronous copies (pinned: 4)", name, H.async_uploads - up1);
    model_close(&gm);
  }
  /* the copies alone: pinned through upload_async, pageable not */
  const long up2 = H.async_uploads;
  double secs = -1;
  CHECK_OK(train_bench_upload(&c.m.net, x, nx(), TRAIN_BENCH_PAGEABLE, 2, &secs));
  CHECK(secs >= 0 && H.async_uploads == up2);
  CHECK(train_bench_upload(&c.m.net, x, nx(), TRAIN_BENCH_RESIDENT, 2, &secs) < 0);
  unsigned mask = 0;
  CHECK(train_bench_feeds_parse("resident,pinned", &mask) == 0 &&
        mask == (1u << TRAIN_BENCH_RESIDENT | 1u << TRAIN_BENCH_PINNED));
  CHECK(train_bench_feeds_parse("pinned,dma", &mask) < 0 && strstr(ce_err_msg(), "'dma'"));
  model_close(&c);
  free(x);
  free(t);
}

/* Everything the nets allocated went back to the backend, and no buffer any
 * call touched was foreign. */
static void test_guard_accounts(void) {
  CHECK_MSG(G.live == 0, "%d backend allocations not freed", G.live);
  CHECK_MSG(G.violations == 0, "%ld violations, the first: %s", G.violations, G.first_violation);
  CHECK(G.checked > 1000 && G.layer_calls > 100 && G.adam_calls > 0 && G.zeros > 0);
  fprintf(stderr, "guard: %d allocations, %ld buffers checked, %ld layer calls, %ld uploads "
          "(%.0f bytes), %ld downloads (%.0f bytes)\n", G.nallocs, G.checked, G.layer_calls,
          G.uploads, G.bytes_up, G.downloads, G.bytes_down);
}

/* ---- the metrics on the backend ------------------------------------------ */

/* metrics.c as it was before trainer/metrics_body.h (verbatim but for the
 * names): the reference the one body must reproduce bit for bit. */
static int old_maxrel(const float *pred, const float *target, int n, int f, int h, int w,
                   intensity_inverse inv, const void *inv_params, double *per_sample) {
  const size_t hw = (size_t)h * w, ns = (size_t)f * hw;
  double *tp = ce_malloc_array(2 * ns, sizeof(double), "maxrel buffers");
  if (!tp) return -1;
  double *pp = tp + ns;
  for (int s = 0; s < n; s++) {
    if (inv(inv_params, target + s * ns, tp, ns) < 0 || inv(inv_params, pred + s * ns, pp, ns) < 0) {
      free(tp);
      return ce_err_prefix("maxrel: sample %d: inverse transform", s);
    }
    double acc = 0;
    for (size_t px = 0; px < hw; px++) {
      double tmax = tp[px];
      for (int c = 1; c < f; c++) tmax = fmax(tmax, tp[c * hw + px]);
      if (!(tmax > 0)) {
        free(tp);
        return ce_err("maxrel: sample %d pixel %zu: largest target intensity %g, expected > 0", s,
                      px, tmax);
      }
      for (int c = 0; c < f; c++) acc += fabs(tp[c * hw + px] - pp[c * hw + px]) / tmax;
    }
    per_sample[s] = 100.0 * acc / (double)ns;
  }
  free(tp);
  return 0;
}

static double old_zncc(const float *pred, const float *target, int n, int f, int h, int w,
                    double *per_sample) {
  const size_t hw = (size_t)h * w;
  double total = 0;
  for (int s = 0; s < n; s++) {
    double ss = 0;
    for (int c = 0; c < f; c++) {
      const float *p = pred + ((size_t)s * f + c) * hw, *t = target + ((size_t)s * f + c) * hw;
      double mp = 0, mt = 0;
      for (size_t i = 0; i < hw; i++) {
        mp += p[i];
        mt += t[i];
      }
      mp /= hw;
      mt /= hw;
      double spt = 0, spp = 0, stt = 0;
      for (size_t i = 0; i < hw; i++) {
        double a = p[i] - mp, b = t[i] - mt;
        spt += a * b;
        spp += a * a;
        stt += b * b;
      }
      double den = sqrt(spp * stt);
      ss += den > 0 ? spt / den : 0;
    }
    if (per_sample) per_sample[s] = ss / f;
    total += ss / f;
  }
  return total / n;
}

/* ---- SSIM --------------------------------------------------------------- */

#define OLD_SSIM_WIN 11
#define OLD_SSIM_HALF 5

/* Separable Gaussian filter of one image, "valid" part of a padded input:
 * in (ph x pw) -> out ((ph - 10) x (pw - 10)). tmp holds ph x (pw - 10). */
static void old_gauss_valid(const double *in, int ph, int pw, const double *g, double *tmp, double *out) {
  int ow = pw - 2 * OLD_SSIM_HALF, oh = ph - 2 * OLD_SSIM_HALF;
  for (int y = 0; y < ph; y++)
    for (int x = 0; x < ow; x++) {
      double a = 0;
      for (int k = 0; k < OLD_SSIM_WIN; k++) a += g[k] * in[(size_t)y * pw + x + k];
      tmp[(size_t)y * ow + x] = a;
    }
  for (int y = 0; y < oh; y++)
    for (int x = 0; x < ow; x++) {
      double a = 0;
      for (int k = 0; k < OLD_SSIM_WIN; k++) a += g[k] * tmp[(size_t)(y + k) * ow + x];
      out[(size_t)y * ow + x] = a;
    }
}

static int old_reflect(int i, int n) { /* numpy/torch 'reflect': no edge repeat */
  if (i < 0) return -i;
  if (i >= n) return 2 * (n - 1) - i;
  return i;
}

static double old_ssim(const float *pred, const float *target, int n, int f, int h, int w,
                    ssim_mode mode, double *per_sample) {
  if (h < OLD_SSIM_WIN || w < OLD_SSIM_WIN) {
    ce_err("ssim: images of %d x %d are smaller than the %d px window", h, w, OLD_SSIM_WIN);
    return NAN;
  }
  double g[OLD_SSIM_WIN], gs = 0;
  for (int k = 0; k < OLD_SSIM_WIN; k++) {
    double d = k - OLD_SSIM_HALF;
    g[k] = exp(-d * d / (2 * 1.5 * 1.5));
    gs += g[k];
  }
  for (int k = 0; k < OLD_SSIM_WIN; k++) g[k] /= gs;
  const int pad = mode == SSIM_REFLECT ? OLD_SSIM_HALF : 0;
  const int ph = h + 2 * pad, pw = w + 2 * pad, oh = ph - 2 * OLD_SSIM_HALF, ow = pw - 2 * OLD_SSIM_HALF;
  const size_t hw = (size_t)h * w, psz = (size_t)ph * pw, osz = (size_t)oh * ow;
  /* 5 padded inputs (x, y, x^2, y^2, xy), their 5 filtered maps, one temp */
  double *buf = ce_malloc_array(5 * psz + 5 * osz + (size_t)ph * ow, sizeof(double), "ssim buffers");
  if (!buf) return NAN;
  double *in = buf, *mu = buf + 5 * psz, *tmp = mu + 5 * osz;
  double total = 0;
  if (per_sample) memset(per_sample, 0, sizeof(double) * n);
  for (int c = 0; c < f; c++) {
    double tmin = INFINITY, tmax = -INFINITY;
    for (int s = 0; s < n; s++) {
      const float *t = target + ((size_t)s * f + c) * hw;
      for (size_t i = 0; i < hw; i++) {
        tmin = fmin(tmin, t[i]);
        tmax = fmax(tmax, t[i]);
      }
    }
    double L = tmax - tmin, C1 = (0.01 * L) * (0.01 * L), C2 = (0.03 * L) * (0.03 * L);
    for (int s = 0; s < n; s++) {
      const float *p = pred + ((size_t)s * f + c) * hw, *t = target + ((size_t)s * f + c) * hw;
      for (int y = 0; y < ph; y++)
        for (int x = 0; x < pw; x++) {
          size_t src = (size_t)old_reflect(y - pad, h) * w + old_reflect(x - pad, w), dst = (size_t)y * pw + x;
          double a = p[src], b = t[src];
          in[dst] = a;
          in[psz + dst] = b;
          in[2 * psz + dst] = a * a;
          in[3 * psz + dst] = b * b;
          in[4 * psz + dst] = a * b;
        }
      for (int q = 0; q < 5; q++) old_gauss_valid(in + q * psz, ph, pw, g, tmp, mu + q * osz);
      double acc = 0;
      for (size_t i = 0; i < osz; i++) {
        double mx = mu[i], my = mu[osz + i];
        double sxx = mu[2 * osz + i] - mx * mx, syy = mu[3 * osz + i] - my * my;
        double sxy = mu[4 * osz + i] - mx * my;
        double num = (2 * mx * my + C1) * (2 * sxy + C2);
        double den = (mx * mx + my * my + C1) * (sxx + syy + C2);
        acc += den != 0 ? num / den : 1.0; /* both constant and equal to 0: identical */
      }
      double v = acc / osz;
      if (per_sample) per_sample[s] += v / f;
      total += v;
    }
  }
  free(buf);
  return total / ((double)n * f);
}

/* Values of the four per-sample fields (out[k n + s]) whose bits differ. */
static int metrics_differ(const double *a, const double *b, int n) {
  int bad = 0;
  for (int i = 0; i < METRICS_FIELDS * n; i++) bad += memcmp(a + i, b + i, sizeof(double)) != 0;
  return bad;
}

/* The old metrics.c of (pred, target) into ref[METRICS_FIELDS n]. */
static void old_metrics(const stats_norm *p, const float *pr, const float *tg, int n, int f, int h,
                        int w, double *ref) {
  CHECK_OK(old_maxrel(pr, tg, n, f, h, w, metrics_stats_inverse, p, ref + METRICS_MAXREL * n));
  old_zncc(pr, tg, n, f, h, w, ref + METRICS_ZNCC * n);
  old_ssim(pr, tg, n, f, h, w, SSIM_INTERIOR, ref + METRICS_SSIM_I * n);
  old_ssim(pr, tg, n, f, h, w, SSIM_REFLECT, ref + METRICS_SSIM_R * n);
}

/* The bodies driven by a plain loop, a sample (and channel) at a time, as
 * the CUDA kernels drive them: a thread per sample, a thread per (sample,
 * channel) for SSIM. */
static void body_metrics(const stats_norm *p, const float *pr, const float *tg, int n, int f,
                         int h, int w, double *out) {
  const size_t hw = (size_t)h * w, ns = (size_t)f * hw;
  double *tp = malloc(sizeof(double) * 2 * ns), *pp = tp + ns, g[METRICS_SSIM_WIN];
  double *scr = malloc(sizeof(double) * metrics_body_ssim_scratch(h, w, 1));
  double *v = malloc(sizeof(double) * (size_t)n * f), *range = malloc(sizeof(double) * 2 * f);
  for (int s = 0; s < n; s++) {
    double bad;
    metrics_body_inverse(p, tg + s * ns, tp, ns);
    metrics_body_inverse(p, pr + s * ns, pp, ns);
    out[METRICS_MAXREL * n + s] = metrics_body_maxrel(tp, pp, f, hw, &bad);
    CHECK(bad == -1);
    out[METRICS_ZNCC * n + s] = metrics_body_zncc_sample(pr + s * ns, tg + s * ns, f, hw);
  }
  metrics_body_ssim_window(g);
  for (int c = 0; c < f; c++) metrics_body_range(tg, n, f, c, hw, &range[2 * c], &range[2 * c + 1]);
  for (int r = 0; r < 2; r++) {
    for (int i = 0; i < n * f; i++)
      v[i] = metrics_body_ssim(pr + i * hw, tg + i * hw, h, w, r, g,
                               range[2 * (i % f) + 1] - range[2 * (i % f)], scr);
    for (int s = 0; s < n; s++)
      out[(METRICS_SSIM_I + r) * n + s] = metrics_body_channel_mean(v + (size_t)s * f, f);
  }
  free(tp);
  free(scr);
  free(v);
  free(range);
}

static float uniform(uint64_t *st) {
  *st ^= *st << 13, *st ^= *st >> 7, *st ^= *st << 17;
  return (float)((*st >> 40) * 0x1p-24);
}

/* Per-sample MaxRel, ZNCC and SSIM (both modes) of random data (a
 * non-square 13 x 12, a constant image among them) and of demo-like batches
 * (test_step_batch's targets, predictions off by a little noise) in both
 * intensity modes: metrics.c, the bodies in a plain loop, the CPU backend's
 * and the guard's entries all give the old metrics.c's bits (summing a
 * sample's SSIM over channels before / f, as ZNCC does, breaks this: 3
 * channels). A prediction off at one pixel changes all four fields of its
 * sample and nothing else (the comparison can fail), and a pixel with no
 * positive intensity is an error naming it. */
static void test_metrics_parity(void) {
  enum { NR = 3, FR = 3, HR = 13, WR = 12 }; /* 3 channels: / f is inexact */
  const int F = CFG.nfreq, Gd = CFG.grid;
  const size_t nd = nt(), nr = (size_t)NR * FR * HR * WR, cap = nd > nr ? nd : nr;
  float *pr = malloc(sizeof(float) * cap), *tg = malloc(sizeof(float) * cap);
  float *x = malloc(sizeof(float) * nx());
  double ref[METRICS_FIELDS * 64], got[METRICS_FIELDS * 64];
  uint64_t st = 0x9e3779b97f4a7c15ull;
  for (int set = 0; set < 4; set++) {
    const int demo = set >= 2;
    const stats_norm p = test_norm_params(set & 1);
    const int n = demo ? B : NR, f = demo ? F : FR, h = demo ? Gd : HR, w = demo ? Gd : WR;
    const size_t nv = (size_t)n * f * h * w;
    if (demo) {
      test_step_batch(&CFG, B, set, x, tg);
      for (size_t i = 0; i < nv; i++) pr[i] = tg[i] + 0.05f * (uniform(&st) - 0.5f);
    } else {
      for (size_t i = 0; i < nv; i++) tg[i] = uniform(&st), pr[i] = uniform(&st);
      for (int i = 0; i < h * w; i++) pr[(size_t)f * h * w + i] = 0.25f; /* sample 1, channel 0 */
    }
    old_metrics(&p, pr, tg, n, f, h, w, ref);
    /* metrics.c, now on the bodies */
    CHECK_OK(metrics_maxrel(pr, tg, n, f, h, w, metrics_stats_inverse, &p,
                            got + METRICS_MAXREL * n));
    CHECK(metrics_zncc(pr, tg, n, f, h, w, got + METRICS_ZNCC * n) ==
          old_zncc(pr, tg, n, f, h, w, NULL));
    CHECK(metrics_ssim(pr, tg, n, f, h, w, SSIM_INTERIOR, got + METRICS_SSIM_I * n) ==
          old_ssim(pr, tg, n, f, h, w, SSIM_INTERIOR, NULL));
    CHECK(metrics_ssim(pr, tg, n, f, h, w, SSIM_REFLECT, got + METRICS_SSIM_R * n) ==
          old_ssim(pr, tg, n, f, h, w, SSIM_REFLECT, NULL));
    CHECK_MSG(!metrics_differ(got, ref, n), "metrics.c (set %d): %d values differ", set,
              metrics_differ(got, ref, n));
    body_metrics(&p, pr, tg, n, f, h, w, got);
    CHECK_MSG(!metrics_differ(got, ref, n), "the bodies (set %d): %d values differ", set,
              metrics_differ(got, ref, n));
    const nn_backend *bes[2] = {&nn_backend_cpu, &guard_backend};
    for (int b = 0; b < 2; b++) {
      const nn_backend *be = bes[b];
      float *dp = be->alloc(sizeof(float) * nv), *dt = be->alloc(sizeof(float) * nv);
      CHECK(dp && dt);
      CHECK_OK(be->upload(dp, pr, sizeof(float) * nv));
      CHECK_OK(be->upload(dt, tg, sizeof(float) * nv));
      memset(got, 0, sizeof got);
      CHECK_OK(be->metrics(&p, dp, dt, n, f, h, w, got));
      CHECK_MSG(!metrics_differ(got, ref, n), "backend %s (set %d): %d values differ", be->name,
                set, metrics_differ(got, ref, n));
      if (demo) { /* images of one row, under the window: no SSIM */
        CHECK_OK(be->metrics(&p, dp, dt, n * h, f, 1, w, got));
        CHECK(isnan(got[METRICS_SSIM_I * n * h]) && isnan(got[METRICS_SSIM_R * n * h + 1]));
      }
      be->free(dp);
      be->free(dt);
    }
    /* the negative control: sample 0's prediction a little off at one pixel
     * moves its four fields and nothing else */
    pr[3] += 0.01f;
    body_metrics(&p, pr, tg, n, f, h, w, got);
    int moved = 0;
    for (int k = 0; k < METRICS_FIELDS; k++) moved += got[k * n] != ref[k * n];
    CHECK_MSG(moved == METRICS_FIELDS && metrics_differ(got, ref, n) == METRICS_FIELDS,
              "set %d: a changed pixel moved %d of sample 0's fields, %d values in all", set, moved,
              metrics_differ(got, ref, n));
    /* no positive intensity at sample 1, pixel 7: exp underflows to 0 */
    for (int c = 0; c < f; c++) tg[(size_t)(f + c) * h * w + 7] = -1e30f;
    ce_err_clear();
    CHECK(nn_backend_cpu.metrics(&p, pr, tg, n, f, h, w, got) == -1);
    CHECK_MSG(strstr(ce_err_msg(), "maxrel: sample 1 pixel 7: largest target intensity 0"),
              "error: %s", ce_err_msg());
  }
  free(pr);
  free(tg);
  free(x);
}

int main(void) {
  RUN(test_cpu_thread_settings);
  guard_setup();
  if (nn_backend_init(&nn_backend_cpu, 1) < 0 || nn_backend_init(&guard_backend, 1) < 0) {
    fprintf(stderr, "%s\n", ce_err_msg());
    return 1;
  }
  RUN(test_guard_catches_host_access);
  RUN(test_guard_matches_cpu);
  RUN(test_guard_reducer);
  RUN(test_normalise_parity);
  RUN(test_metrics_parity);
  RUN(test_guard_async_rules);
  RUN(test_guard_feed_trains);
  RUN(test_guard_bench_feeds);
  RUN(test_guard_accounts);
  nn_backend_finish(&guard_backend);
  nn_backend_finish(&nn_backend_cpu);
  return check_report();
}
