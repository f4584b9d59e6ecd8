/* lte_kernel_cuda.cu - the CUDA backend of lte_kernel.h (LTE_BACKEND_CUDA).
 *
 * The per-thread work is solver/lte_kernel_body.h, compiled here for the
 * device (and, in the tests, for the host): one thread per cell, then one
 * thread per (ray, channel); or both in one kernel with the cells through
 * shared memory (the same bits): COEMU_CUDA_SOLVER_FORM, by default the
 * fastest form on the device, timed once per shape (pick_form). This file
 * holds only what a device needs beyond it: the device, the line's tables
 * in device memory (uploaded once per line: kept while the next call's
 * tables are the same), two streams with pinned host buffers, and the
 * batch cut into chunks of cubes
 * (lte_body_chunk_cubes: an eighth of the batch, at least a wave of the
 * ray kernel): while the device solves one chunk the host gathers the
 * cells of the next and scatters the images of the last. Images and
 * targets go straight into the caller's rows where those are one
 * page-locked block (common/rows.h), with no host copy after. Build with
 * --fmad=false (solver/meson.build): no contraction, as on the CPU.
 *
 * Errors: every CUDA call is checked; a failure is a message naming the
 * call and CUDA's reason ("solver backend 'cuda': cudaMalloc (device
 * buffers, 3.2 GiB): out of memory"), never a crash; after one the state is
 * dropped and the next call starts afresh. No device (or no driver) is the
 * message of lte_backend_open. A cube that does not fit in the device's
 * free memory is refused before anything is copied.
 */
#include <cuda_runtime.h>
#include <limits.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cuda_check.h"
#include "common/env.h"
#include "common/rows.h"
#include "solver/lte_kernel_body.h"

#define NSLOT 2    /* streams (and buffer sets) in flight */
#define BLOCK 256  /* threads per block */
/* Threads per block of the ray kernels in the form two (half that in
 * two-small: lte_kernel_body.h's LTE_FORM_*; a build option too).
 * Registers are allocated per warp in steps of 256, so the float64 ray
 * kernel's 84 a thread take 88: 22,528 a block of 256 threads, 2 blocks
 * (512 threads) in an SM's 65,536; in blocks of 128 the same SM holds 5
 * (640 threads, a quarter more warps for a kernel that Nsight Compute found
 * latency-bound at its occupancy). The float32 ray kernel (48 registers)
 * and the cell kernel fit as many threads either way. The bits do not
 * depend on it. */
#ifndef LTE_RAYS_BLOCK
#define LTE_RAYS_BLOCK BLOCK
#endif

/* Launch bounds of the cell and ray kernels: at least this many blocks of
 * BLOCK threads resident per SM, the registers fitted to that by ptxas (0:
 * no bound, the default). The kernels are latency-bound at the occupancy
 * their registers allow (ray kernel: 86 registers, 2 blocks, 25 %); a
 * device sweep sets these with -D (scripts/gpu-check.sh, GPU_NVCC_DEFS) and
 * keeps what the figures say. The bits do not depend on them. */
#ifndef LTE_CELLS_MIN_BLOCKS
#define LTE_CELLS_MIN_BLOCKS 0
#endif
#ifndef LTE_RAYS_MIN_BLOCKS
#define LTE_RAYS_MIN_BLOCKS 0
#endif
#if LTE_CELLS_MIN_BLOCKS > 0
#define LTE_CELLS_BOUNDS __launch_bounds__(BLOCK, LTE_CELLS_MIN_BLOCKS)
#else
#define LTE_CELLS_BOUNDS
#endif
#if LTE_RAYS_MIN_BLOCKS > 0
#define LTE_RAYS_BOUNDS __launch_bounds__(LTE_RAYS_BLOCK, LTE_RAYS_MIN_BLOCKS)
#else
#define LTE_RAYS_BOUNDS
#endif

__global__ void LTE_CELLS_BOUNDS lte_cells_kernel(lte_kernel_model m, lte_body_view v) {
  const long long n = v.nray * v.nz;
  for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < n;
       t += (long long)gridDim.x * blockDim.x)
    lte_body_cell_thread(&m, &v, t);
}

__global__ void LTE_RAYS_BOUNDS lte_rays_kernel(lte_kernel_model m, lte_body_view v) {
  const long long n = v.nray * v.nf;
  for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < n;
       t += (long long)gridDim.x * blockDim.x)
    lte_body_ray_thread(&m, &v, t);
}

/* the float32 path (lte_kernel_model.f32): the same cells, float32 rays */
__global__ void LTE_RAYS_BOUNDS lte_rays_f32_kernel(lte_kernel_model m, lte_body_view v) {
  const long long n = v.nray * v.nf;
  for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < n;
       t += (long long)gridDim.x * blockDim.x)
    lte_body_ray_thread_f32(&m, &v, t);
}

/* The fused form (lte_kernel_body.h, section 4; COEMU_CUDA_SOLVER_FORM=fused):
 * a block per group of LTE_FUSED_RAYS rays, LTE_FUSED_RAYS x nf threads,
 * the cells a tile at a time through shared memory. F32: the float32 path's
 * ray steps. */
#ifndef LTE_FUSED_MIN_BLOCKS
#define LTE_FUSED_MIN_BLOCKS 0
#endif
/* (a build option for the device sweep, as the launch bounds above; with
 * one, a block holds at most 7 channels' threads, COEmuNet's, and more
 * channels take the two launches) */
#if LTE_FUSED_MIN_BLOCKS > 0
#define LTE_FUSED_BLOCK_MAX (LTE_FUSED_RAYS * 7)
#define LTE_FUSED_BOUNDS __launch_bounds__(LTE_FUSED_BLOCK_MAX, LTE_FUSED_MIN_BLOCKS)
#else
#define LTE_FUSED_BLOCK_MAX (LTE_FUSED_RAYS * LTE_FUSED_MAX_NF)
#define LTE_FUSED_BOUNDS
#endif
template <int F32>
__global__ void LTE_FUSED_BOUNDS lte_fused_kernel(lte_kernel_model m, lte_body_view v) {
  __shared__ lte_fused_tile tile;
  const long long g = blockIdx.x; /* the launch has one block per group */
  const int tid = threadIdx.x, nthr = blockDim.x;
  lte_fused_ray r;
  lte_body_ray_state s;
  lte_f32_ray_state s32;
  lte_fused_begin(&v, g, tid, &tile, &r);
  if (v.pl) { /* non-LTE: which rays have a masing segment, before their first step */
    __syncthreads(); /* masing[] cleared */
    lte_fused_masing(&m, &v, g, &tile, tid, nthr);
  }
  for (int z0 = 0; z0 < v.nz; z0 += LTE_FUSED_TILE) {
    __syncthreads(); /* bad[] cleared; the tile's last readers are done */
    lte_fused_cells(&m, &v, g, z0, &tile, tid, nthr);
    __syncthreads(); /* the tile is whole */
    if (F32)
      lte_fused_rays_f32(&m, &v, z0, &tile, &r, &s32);
    else
      lte_fused_rays(&m, &v, z0, &tile, &r, &s);
  }
  lte_fused_end(&m, &v, &r, &s, &s32);
}

/* the images as stored targets (lte_kernel_batch.targets) */
__global__ void lte_targets_kernel(lte_body_view v) {
  const long long n = v.nray * v.nf;
  for (long long t = (long long)blockIdx.x * blockDim.x + threadIdx.x; t < n;
       t += (long long)gridDim.x * blockDim.x)
    lte_body_target_thread(&v, t);
}

static unsigned grid_for(long long n, int block = BLOCK) {
  long long g = (n + block - 1) / block;
  return (unsigned)(g < 1 ? 1 : g > (1 << 20) ? (1 << 20) : g);
}

/* one stream and its buffers, sized for `cap` cubes of `cube_bytes` */
typedef struct {
  cudaStream_t stream;
  size_t cap_bytes;     /* device bytes allocated */
  size_t pin_bytes;     /* pinned host bytes allocated */
  unsigned char *dev;   /* one device allocation, cut below */
  unsigned char *pin;   /* one pinned host allocation: cells in, images and flags out */
  int busy, c0, nc;     /* a chunk in flight: cubes [c0, c0 + nc) */
  int direct;           /* its images or targets copied straight into the caller's rows */
} slot;

static struct {
  pthread_mutex_t lock;
  int device, count;    /* -1: not opened */
  long long dev_threads; /* resident threads of the device: SMs x threads per SM */
  int ordinal;          /* what open was asked for: reopened with it after an error */
  char desc[320];
  slot s[NSLOT];
  /* the line's tables on the device, and the host copy they came from */
  int nlev;
  double *d_tab;        /* neg_e_over_k [nlev], g [nlev], ztab */
  unsigned char *d_zdirect;
  double *h_tab;
  unsigned char *h_zdirect;
  /* channels and background map of the current call */
  double *d_freqs;
  size_t freqs_cap;
  /* the kernel form each shape timed fastest (pick_form) */
  lte_form_cache forms;
} st = {PTHREAD_MUTEX_INITIALIZER, -1, 0, 0, 0, "", {}, 0, NULL, NULL, NULL, NULL, NULL, 0, {}};

/* a failed CUDA call: the message names this backend and the step */
#define WHO "solver backend 'cuda'"
static int cu_fail(const char *what, cudaError_t e) { return ce_cuda_fail(WHO, what, e); }
#define CU(call, what) CE_CUDA_TRY(WHO, call, what)

/* Drop everything (after an error, or to reopen): the next call starts afresh. */
static void drop_state(void) {
  if (st.device >= 0) {
    cudaSetDevice(st.device);
    for (int i = 0; i < NSLOT; i++) {
      /* after an error the other slot may still have kernels and a copy
       * into the caller's rows queued: wait for them (errors ignored)
       * before the buffers go and the caller reuses its rows */
      if (st.s[i].stream) {
        cudaStreamSynchronize(st.s[i].stream);
        cudaStreamDestroy(st.s[i].stream);
      }
      cudaFree(st.s[i].dev);
      cudaFreeHost(st.s[i].pin);
    }
    cudaFree(st.d_tab);
    cudaFree(st.d_zdirect);
    cudaFree(st.d_freqs);
  }
  free(st.h_tab);
  free(st.h_zdirect);
  memset(st.s, 0, sizeof st.s);
  st.d_tab = NULL, st.d_zdirect = NULL, st.h_tab = NULL, st.h_zdirect = NULL;
  st.d_freqs = NULL, st.freqs_cap = 0, st.nlev = 0;
  memset(&st.forms, 0, sizeof st.forms); /* the forms are timed again on the next device */
  st.device = -1;
  cudaGetLastError(); /* clear a non-sticky error */
}

static int open_locked(int ordinal) {
  int count = 0;
  cudaError_t e = cudaGetDeviceCount(&count);
  if (e != cudaSuccess)
    return ce_err("solver backend 'cuda' was asked for, but no CUDA device can be used here: "
                  "cudaGetDeviceCount: %s (%s)",
                  cudaGetErrorString(e), cudaGetErrorName(e));
  if (count < 1)
    return ce_err("solver backend 'cuda' was asked for, but this host has no CUDA device");
  st.ordinal = ordinal;
  int dev = (ordinal < 0 ? 0 : ordinal) % count;
  if (st.device == dev) return 0;
  drop_state();
  CU(cudaSetDevice(dev), "cudaSetDevice");
  st.device = dev, st.count = count;
  for (int i = 0; i < NSLOT; i++) {
    e = cudaStreamCreateWithFlags(&st.s[i].stream, cudaStreamNonBlocking);
    if (e != cudaSuccess) {
      drop_state();
      return cu_fail("cudaStreamCreate", e);
    }
  }
  cudaDeviceProp p;
  e = cudaGetDeviceProperties(&p, dev);
  if (e != cudaSuccess) {
    drop_state();
    return cu_fail("cudaGetDeviceProperties", e);
  }
  st.dev_threads = (long long)p.multiProcessorCount * p.maxThreadsPerMultiProcessor;
  snprintf(st.desc, sizeof st.desc, "cuda device %d of %d: %.200s (compute capability %d.%d, %.0f GiB)",
           dev, count, p.name, p.major, p.minor, p.totalGlobalMem / 1073741824.0);
  return 0;
}

static int cuda_open(int ordinal, char *desc, size_t ndesc) {
  pthread_mutex_lock(&st.lock);
  int rc = open_locked(ordinal);
  if (rc == 0 && desc && ndesc) snprintf(desc, ndesc, "%s", st.desc);
  pthread_mutex_unlock(&st.lock);
  return rc;
}

/* The line's tables on the device (uploaded when they differ from the last). */
static int upload_tables(const lte_kernel_model *M) {
  const size_t ntab = (size_t)2 * M->nlev + (size_t)LTE_ZT_PIECES * LTE_ZT_NC;
  if (st.h_tab && st.nlev == M->nlev &&
      !memcmp(st.h_tab, M->neg_e_over_k, M->nlev * sizeof(double)) &&
      !memcmp(st.h_tab + M->nlev, M->g, M->nlev * sizeof(double)) &&
      !memcmp(st.h_tab + 2 * M->nlev, M->ztab, (size_t)LTE_ZT_PIECES * LTE_ZT_NC * sizeof(double)) &&
      !memcmp(st.h_zdirect, M->zdirect, LTE_ZT_PIECES))
    return 0;
  cudaFree(st.d_tab), cudaFree(st.d_zdirect);
  free(st.h_tab), free(st.h_zdirect);
  st.d_tab = NULL, st.d_zdirect = NULL, st.nlev = 0;
  st.h_tab = (double *)malloc(ntab * sizeof(double));
  st.h_zdirect = (unsigned char *)malloc(LTE_ZT_PIECES);
  if (!st.h_tab || !st.h_zdirect) CE_FAIL("solver backend 'cuda': out of host memory");
  memcpy(st.h_tab, M->neg_e_over_k, M->nlev * sizeof(double));
  memcpy(st.h_tab + M->nlev, M->g, M->nlev * sizeof(double));
  memcpy(st.h_tab + 2 * M->nlev, M->ztab, (size_t)LTE_ZT_PIECES * LTE_ZT_NC * sizeof(double));
  memcpy(st.h_zdirect, M->zdirect, LTE_ZT_PIECES);
  CU(cudaMalloc(&st.d_tab, ntab * sizeof(double)), "cudaMalloc (line tables)");
  CU(cudaMalloc(&st.d_zdirect, LTE_ZT_PIECES), "cudaMalloc (line tables)");
  /* on the first slot's stream, waited for in solve_locked before any launch */
  CU(cudaMemcpyAsync(st.d_tab, st.h_tab, ntab * sizeof(double), cudaMemcpyHostToDevice,
                     st.s[0].stream),
     "cudaMemcpyAsync (line tables)");
  CU(cudaMemcpyAsync(st.d_zdirect, st.h_zdirect, LTE_ZT_PIECES, cudaMemcpyHostToDevice,
                     st.s[0].stream),
     "cudaMemcpyAsync (line tables)");
  st.nlev = M->nlev;
  return 0;
}

/* Bytes per cube: device (cells, scratch, flags, image) and pinned host
 * (cells, flags, image), each part rounded to 256 bytes. */
typedef struct {
  size_t ncell, npix, esz, narr;
  size_t cells, scratch, flags, image; /* per cube, rounded */
  size_t targets;                      /* per cube, rounded: float32 targets (0: none wanted) */
  size_t pin_cells;                    /* cells per cube in the pinned buffer (0: solve_dev) */
  size_t dev, pin;
} sizes;

static size_t r256(size_t x) { return (x + 255) / 256 * 256; }

static sizes sizes_of(const lte_kernel_batch *B, int dev) {
  sizes z;
  z.ncell = (size_t)B->nx * B->ny * B->nz;
  z.npix = (size_t)B->nx * B->ny;
  z.esz = B->dtype == LTE_KERNEL_F32 ? 4 : 8;
  z.narr = B->pop_l ? 5 : 3;
  z.cells = r256(z.ncell * z.esz);
  z.scratch = r256(z.ncell * sizeof(double));
  z.flags = r256(z.npix * sizeof(int));
  z.image = r256(z.npix * B->nf * sizeof(double));
  z.targets = B->targets ? r256(z.npix * B->nf * sizeof(float)) : 0;
  z.dev = z.narr * z.cells + 4 * z.scratch + z.flags + z.image + z.targets;
  z.pin_cells = dev ? 0 : z.cells;
  z.pin = z.narr * z.pin_cells + z.flags + z.image;
  return z;
}

/* Make slot i hold at least nc cubes. */
static int slot_reserve(slot *s, const sizes *z, int nc) {
  size_t dev = z->dev * nc, pin = z->pin * nc;
  if (s->cap_bytes < dev) {
    cudaFree(s->dev);
    s->dev = NULL, s->cap_bytes = 0;
    CU(cudaMalloc(&s->dev, dev), "cudaMalloc (device buffers)");
    s->cap_bytes = dev;
  }
  if (s->pin_bytes < pin) {
    cudaFreeHost(s->pin);
    s->pin = NULL, s->pin_bytes = 0;
    CU(cudaHostAlloc(&s->pin, pin, cudaHostAllocDefault), "cudaHostAlloc (pinned buffers)");
    s->pin_bytes = pin;
  }
  return 0;
}

/* The pinned buffer of a slot: narr cell arrays of nc cubes, flags, images. */
typedef struct {
  unsigned char *cells[5];
  int *flags;
  double *image;
} pinned;

static pinned pinned_of(slot *s, const sizes *z, int nc) {
  pinned p;
  unsigned char *q = s->pin;
  for (size_t a = 0; a < z->narr; a++, q += z->pin_cells * nc) p.cells[a] = q;
  p.flags = (int *)q;
  q += z->flags * nc;
  p.image = (double *)q;
  return p;
}

/* Wait for slot s's chunk; copy its images out; count its bad rays. */
static int slot_finish(slot *s, const sizes *z, const lte_kernel_batch *B, int *bad) {
  if (!s->busy) return 0;
  s->busy = 0;
  CU(cudaStreamSynchronize(s->stream), "the kernels (cudaStreamSynchronize)");
  pinned p = pinned_of(s, z, s->nc);
  const size_t nimg = z->npix * B->nf;
  if (s->direct) {
    /* already in the caller's rows */
  } else if (B->targets) /* float32 targets, back to back in the images' place */
    for (int c = 0; c < s->nc; c++)
      memcpy(B->targets[s->c0 + c], (const float *)p.image + c * nimg, nimg * sizeof(float));
  else
    for (int c = 0; c < s->nc; c++)
      memcpy(B->image[s->c0 + c], p.image + c * nimg, nimg * sizeof(double));
  for (size_t r = 0; r < z->npix * s->nc; r++)
    if (p.flags[r]) *bad = 1;
  return 0;
}

/* rows [0, nc) of `bytes` each one block of page-locked host memory: the
 * device's copy can go straight into them */
static int rows_pinned(const void *const *rows, int nc, size_t bytes) {
  return ce_rows_one_block(rows, nc, bytes) && ce_cuda_host_pinned(rows[0]) &&
         ce_cuda_host_pinned((const char *)rows[nc - 1] + bytes - 1);
}

/* The kernels of one chunk in the given form (LTE_FORM_*): the cell kernel
 * then the ray kernel, in blocks of LTE_RAYS_BLOCK threads or half that
 * (the form's only difference: the same threads, so the same bits), or the
 * fused kernel. A failed launch: -1 with the message, and its CUDA error
 * in *launch_err where that is given (pick_form skips a form the device
 * cannot launch). */
static int launch_form(const lte_kernel_model *Md, const lte_body_view *v, int nf, int form,
                       cudaStream_t stream, cudaError_t *launch_err = NULL) {
  cudaError_t e;
#define LAUNCHED(what)                                                                  \
  if ((e = cudaGetLastError()) != cudaSuccess) {                                        \
    if (launch_err) *launch_err = e;                                                    \
    return cu_fail(what, e);                                                            \
  }
  if (form == LTE_FORM_FUSED) {
    /* one block per group of rays; the scratch arrays are not used */
    const long long ngroup = lte_fused_groups(v);
    if (ngroup > INT_MAX) CE_FAIL("solver backend 'cuda': %lld groups of rays in one chunk", ngroup);
    const unsigned grid = (unsigned)ngroup;
    const int threads = LTE_FUSED_RAYS * nf;
    if (Md->f32)
      lte_fused_kernel<1><<<grid, threads, 0, stream>>>(*Md, *v);
    else
      lte_fused_kernel<0><<<grid, threads, 0, stream>>>(*Md, *v);
    LAUNCHED("launching the fused kernel");
    return 0;
  }
  lte_cells_kernel<<<grid_for(v->nray * v->nz), BLOCK, 0, stream>>>(*Md, *v);
  LAUNCHED("launching the cell kernel");
  const int rb = form == LTE_FORM_TWO_SMALL ? LTE_RAYS_BLOCK / 2 : LTE_RAYS_BLOCK;
  if (Md->f32)
    lte_rays_f32_kernel<<<grid_for(v->nray * nf, rb), rb, 0, stream>>>(*Md, *v);
  else
    lte_rays_kernel<<<grid_for(v->nray * nf, rb), rb, 0, stream>>>(*Md, *v);
  LAUNCHED("launching the ray kernel");
  return 0;
#undef LAUNCHED
}

/* a launch the device refuses for the kernel's configuration (its
 * registers, shared memory or block size on this device): the form is
 * left out of auto's choice, not an error */
static int launch_refused(cudaError_t e) {
  return e == cudaErrorLaunchOutOfResources || e == cudaErrorInvalidConfiguration ||
         e == cudaErrorNoKernelImageForDevice;
}

/* COEMU_CUDA_SOLVER_FORM=auto (the default): the first chunk of each shape
 * times every form on its own cells, after its copies (three runs of each
 * on the chunk's stream, the first a warm-up: a kernel's first launch
 * loads its code; the faster of the other two kept, or the one where a
 * round of them takes over 0.2 s), and the shape keeps the fastest form
 * for the rest of the process. The kernels only rewrite
 * the chunk's scratch, flags and images, so the trial runs leave nothing
 * behind but the choice; the images are the same bits in every form.
 * announce (the variable set to auto explicitly): one line on stderr with
 * the times and the choice. */
static int pick_form(const lte_kernel_model *Md, const lte_body_view *v, const lte_kernel_batch *B,
                     int nc, cudaStream_t stream, int announce, int *form) {
  const int f32 = Md->f32, pops = v->pl != NULL;
  const lte_form_key key = {v->npix, v->nz, v->nf, f32, (int)B->dtype, pops};
  if (lte_form_find(&st.forms, &key, form)) return 0;
  const int nform = lte_fused_fits(v->nf, LTE_FUSED_BLOCK_MAX) ? LTE_FORMS : LTE_FORM_FUSED;
  cudaEvent_t ev[2] = {NULL, NULL};
  float best[LTE_FORMS] = {0};
  int rc = 0, refused[LTE_FORMS] = {0};
  cudaError_t e = cudaEventCreate(&ev[0]);
  if (e == cudaSuccess) e = cudaEventCreate(&ev[1]);
  float rep_ms = 0; /* the last round's time, all forms */
  for (int rep = 0; rep < 3 && e == cudaSuccess && rc == 0; rep++) {
    /* a chunk so large that one timed round took over 0.2 s (a single big
     * cube) keeps that round: the trial then costs 2 rounds, not 3 */
    if (rep == 2 && rep_ms > 200.0f) break;
    rep_ms = 0;
    for (int f = 0; f < nform && e == cudaSuccess && rc == 0; f++) {
      float ms = 0;
      cudaError_t le = cudaSuccess;
      if (refused[f]) continue;
      e = cudaEventRecord(ev[0], stream);
      if (e == cudaSuccess) rc = launch_form(Md, v, v->nf, f, stream, &le);
      if (rc < 0 && launch_refused(le)) { /* (what was queued only rewrites the scratch) */
        refused[f] = 1, rc = 0;
        fprintf(stderr, "solver backend 'cuda': the %s form cannot run on this device (%s); "
                "the others are timed\n", lte_form_names()[f], ce_err_msg());
        continue;
      }
      if (e == cudaSuccess && rc == 0) e = cudaEventRecord(ev[1], stream);
      if (e == cudaSuccess && rc == 0) e = cudaEventSynchronize(ev[1]);
      if (e == cudaSuccess && rc == 0) e = cudaEventElapsedTime(&ms, ev[0], ev[1]);
      if (rep > 0 && (rep == 1 || ms < best[f])) best[f] = ms;
      rep_ms += ms;
    }
  }
  if (ev[0]) cudaEventDestroy(ev[0]);
  if (ev[1]) cudaEventDestroy(ev[1]);
  if (rc < 0) return -1;
  if (e != cudaSuccess) return cu_fail("the kernels, timed in each form (cudaEvent*)", e);
  int usable = 0;
  for (int f = 0; f < nform; f++)
    if (refused[f]) best[f] = INFINITY; /* never the fastest */
    else usable++;
  if (!usable) return ce_err("solver backend 'cuda': no kernel form can run on this device");
  *form = lte_form_fastest(best, nform);
  lte_form_put(&st.forms, &key, *form);
  if (announce) {
    char times[160] = "";
    for (int f = 0, o = 0; f < nform; f++)
      if (!refused[f])
        o += snprintf(times + o, sizeof times - o, "%s%s %.3f ms", o ? ", " : "",
                      lte_form_names()[f], best[f]);
    fprintf(stderr,
            "solver backend 'cuda': %lld rays of %d cells, %d channels, %s arithmetic, %s cells%s: "
            "a chunk of %d cubes in %s: %s\n",
            v->npix, v->nz, v->nf, f32 ? "float32" : "float64",
            B->dtype == LTE_KERNEL_F32 ? "float32" : "float64", pops ? ", populations" : "", nc,
            times, lte_form_names()[*form]);
  }
  return 0;
}

/* Gather cubes [c0, c0 + nc) into slot s, copy them over, launch, copy back.
 * dev: the cubes are device memory (solve_dev), gathered on the device. */
static int slot_launch(slot *s, const sizes *z, const lte_kernel_model *Md,
                       const lte_kernel_batch *B, int c0, int nc, int dev, int form,
                       int announce) {
  pinned p = pinned_of(s, z, nc);
  s->direct = 0;
  const void *const *src[5] = {B->v, B->T, B->n, B->pop_l, B->pop_u};
  const size_t cbytes = z->ncell * z->esz;
  if (!dev)
    for (size_t a = 0; a < z->narr; a++)
      for (int c = 0; c < nc; c++) memcpy(p.cells[a] + c * cbytes, src[a][c0 + c], cbytes);
  /* device layout: the same order as the pinned buffer, then the scratch */
  unsigned char *d = s->dev;
  unsigned char *dcells[5];
  for (size_t a = 0; a < z->narr; a++, d += z->cells * nc) dcells[a] = d;
  int *dflags = (int *)d;
  d += z->flags * nc;
  double *dimage = (double *)d;
  d += z->image * nc;
  double *scratch[4];
  for (int i = 0; i < 4; i++, d += z->scratch * nc) scratch[i] = (double *)d;
  float *dtargets = (float *)d; /* z->targets * nc bytes, when targets are wanted */
  /* every cell array in one copy: the device buffer starts with the same layout */
  const size_t in_bytes = z->narr * z->cells * nc;
  if (!dev)
    CU(cudaMemcpyAsync(s->dev, s->pin, in_bytes, cudaMemcpyHostToDevice, s->stream),
       "cudaMemcpyAsync (cells to the device)");
  for (size_t a = 0; dev && a < z->narr; a++) {
    /* cubes at one stride (a sampler's chunk): one strided copy per array */
    const char *p0 = (const char *)src[a][c0];
    long long step = nc > 1 ? (const char *)src[a][c0 + 1] - p0 : (long long)cbytes;
    int even = step >= (long long)cbytes && step <= INT_MAX; /* a pitch CUDA takes */
    for (int c = 2; c < nc && even; c++)
      even = (const char *)src[a][c0 + c] - (const char *)src[a][c0 + c - 1] == step;
    if (even)
      CU(cudaMemcpy2DAsync(dcells[a], cbytes, p0, (size_t)step, cbytes, nc,
                           cudaMemcpyDeviceToDevice, s->stream),
         "cudaMemcpy2DAsync (device cells)");
    for (int c = 0; !even && c < nc; c++)
      CU(cudaMemcpyAsync(dcells[a] + c * cbytes, src[a][c0 + c], cbytes, cudaMemcpyDeviceToDevice,
                         s->stream),
         "cudaMemcpyAsync (device cells)");
  }
  CU(cudaMemsetAsync(dflags, 0, z->flags * nc, s->stream), "cudaMemsetAsync");
  /* the cubes of a chunk lie back to back in each array: rays c*npix + pix */
  lte_body_view v;
  memset(&v, 0, sizeof v);
  v.nray = (long long)z->npix * nc;
  v.npix = (long long)z->npix;
  v.nz = B->nz, v.nf = B->nf, v.dtype = B->dtype;
  v.v = dcells[0], v.T = dcells[1], v.n = dcells[2];
  v.pl = z->narr == 5 ? dcells[3] : NULL;
  v.pu = z->narr == 5 ? dcells[4] : NULL;
  v.freqs = st.d_freqs;
  v.background = B->background;
  v.background_map = B->background_map ? st.d_freqs + B->nf : NULL;
  v.S = scratch[0], v.adx = scratch[1], v.iw = scratch[2], v.shift = scratch[3];
  v.bad = dflags;
  v.image = dimage;
  if (form == LTE_FORM_AUTO) CE_TRY(pick_form(Md, &v, B, nc, s->stream, announce, &form));
  CE_TRY(launch_form(Md, &v, B->nf, form, s->stream));
  CU(cudaMemcpyAsync(p.flags, dflags, z->flags * nc, cudaMemcpyDeviceToHost, s->stream),
     "cudaMemcpyAsync (flags to the host)");
  if (B->targets) {
    /* half the images' bytes come back, in the stored order */
    v.targets = dtargets;
    lte_targets_kernel<<<grid_for(v.nray * v.nf), BLOCK, 0, s->stream>>>(v);
    CU(cudaGetLastError(), "launching the targets kernel");
    /* rows that are one page-locked block (the pipeline's) take them in
     * one copy, with no host copy after (common/rows.h) */
    const size_t tbytes = z->npix * B->nf * sizeof(float);
    s->direct = rows_pinned((const void *const *)(B->targets + c0), nc, tbytes);
    CU(cudaMemcpyAsync(s->direct ? (void *)B->targets[c0] : (void *)p.image, v.targets,
                       tbytes * nc, cudaMemcpyDeviceToHost, s->stream),
       "cudaMemcpyAsync (targets to the host)");
  } else {
    /* the same for float64 images into rows that are one page-locked block */
    const size_t ibytes = z->npix * B->nf * sizeof(double);
    s->direct = rows_pinned((const void *const *)(B->image + c0), nc, ibytes);
    CU(cudaMemcpyAsync(s->direct ? (void *)B->image[c0] : (void *)p.image, dimage, ibytes * nc,
                       cudaMemcpyDeviceToHost, s->stream),
       "cudaMemcpyAsync (images to the host)");
  }
  s->busy = 1, s->c0 = c0, s->nc = nc;
  return 0;
}

static int solve_locked(const lte_kernel_model *M, const lte_kernel_batch *B, int dev) {
  if (st.device < 0) CE_TRY(open_locked(st.ordinal));
  CU(cudaSetDevice(st.device), "cudaSetDevice");
  CE_TRY(upload_tables(M));
  /* channels, then the background map, in one small buffer */
  const size_t npix = (size_t)B->nx * B->ny;
  size_t nfr = B->nf + (B->background_map ? npix * B->nf : 0);
  if (st.freqs_cap < nfr) {
    cudaFree(st.d_freqs);
    st.d_freqs = NULL, st.freqs_cap = 0;
    CU(cudaMalloc(&st.d_freqs, nfr * sizeof(double)), "cudaMalloc (channels)");
    st.freqs_cap = nfr;
  }
  CU(cudaMemcpyAsync(st.d_freqs, B->freqs, B->nf * sizeof(double), cudaMemcpyHostToDevice,
                     st.s[0].stream),
     "cudaMemcpyAsync (channels)");
  if (B->background_map)
    CU(cudaMemcpyAsync(st.d_freqs + B->nf, B->background_map, npix * B->nf * sizeof(double),
                       cudaMemcpyHostToDevice, st.s[0].stream),
       "cudaMemcpyAsync (background map)");
  /* the tables' and channels' copies, all on the first slot's stream (so
   * that no default-stream mode, legacy or per-thread, changes what is
   * waited for), are complete before the other slot's kernels can read
   * them; the device is not waited for: another host thread may be
   * sampling the next cubes on its own stream meanwhile (devpipe) */
  CU(cudaStreamSynchronize(st.s[0].stream), "cudaStreamSynchronize (tables and channels)");
  lte_kernel_model Md = *M;
  Md.neg_e_over_k = st.d_tab;
  Md.g = st.d_tab + M->nlev;
  Md.ztab = st.d_tab + 2 * M->nlev;
  Md.zdirect = st.d_zdirect;

  /* chunk size: half the batch per stream, within the free device memory */
  sizes z = sizes_of(B, dev);
  size_t fre = 0, tot = 0;
  CU(cudaMemGetInfo(&fre, &tot), "cudaMemGetInfo");
  size_t have = fre;
  for (int i = 0; i < NSLOT; i++) have += st.s[i].cap_bytes;
  const size_t budget = (size_t)(0.8 * (double)have) / NSLOT;
  if (z.dev > budget)
    CE_FAIL("solver backend 'cuda': a cube of %d x %d x %d cells at %d channels needs %.3g GiB "
            "on the device (twice, for two streams), %.3g GiB of %.3g GiB are free",
            B->nx, B->ny, B->nz, B->nf, z.dev / 1073741824.0, have / 1073741824.0,
            tot / 1073741824.0);
  /* COEMU_CUDA_SOLVER_FORM: the kernels' form (LTE_FORM_*), or auto (the
   * default): the fastest on this device, timed once per shape (pick_form);
   * the fused form only where a block holds the channels */
  int form = LTE_FORM_AUTO;
  const int set = ce_env_word("COEMU_CUDA_SOLVER_FORM", lte_form_names(), LTE_FORMS + 1,
                              "two (a cell kernel, then a ray kernel), two-small (the same, the "
                              "ray kernel in blocks of half the threads), fused (one kernel, the "
                              "cells through shared memory) or auto (the fastest of them, timed "
                              "once per shape: the default)",
                              &form);
  if (set < 0) return -1;
  const int announce = set == 1 && form == LTE_FORM_AUTO;
  if (form == LTE_FORM_FUSED && !lte_fused_fits(B->nf, LTE_FUSED_BLOCK_MAX)) form = LTE_FORM_TWO;
  /* COEMU_CUDA_SOLVER_CHUNK=N: N cubes per chunk (scripts/gpu-tune.sh's
   * sweep; the default is lte_body_chunk_cubes's rule) */
  long forced = 0;
  CE_TRY(ce_env_int("COEMU_CUDA_SOLVER_CHUNK", 1, 4096, "a number of cubes", &forced));
  size_t cap = budget / z.dev;
  const size_t target = (size_t)1 << 30; /* at most ~1 GiB per chunk: keep both streams busy */
  if (cap * z.dev > target && target / z.dev >= 1) cap = target / z.dev;
  const int chunk = lte_body_chunk_cubes(B->ncube, NSLOT, (long long)z.npix * B->nf,
                                         st.dev_threads, (long long)(cap < 1 ? 1 : cap), (int)forced);
  for (int i = 0; i < NSLOT; i++) CE_TRY(slot_reserve(&st.s[i], &z, chunk));

  int bad = 0, k = 0;
  for (int c0 = 0; c0 < B->ncube; c0 += chunk, k++) {
    slot *s = &st.s[k % NSLOT];
    CE_TRY(slot_finish(s, &z, B, &bad));
    int nc = B->ncube - c0 < chunk ? B->ncube - c0 : chunk;
    CE_TRY(slot_launch(s, &z, &Md, B, c0, nc, dev, form, announce));
  }
  for (int i = 0; i < NSLOT; i++) CE_TRY(slot_finish(&st.s[(k + i) % NSLOT], &z, B, &bad));
  return bad ? LTE_KERNEL_BAD_INPUT : 0;
}

static int solve_on(const lte_kernel_model *M, const lte_kernel_batch *B, int dev) {
  pthread_mutex_lock(&st.lock);
  int rc = solve_locked(M, B, dev);
  if (rc < 0) {
    /* keep the message; a failed launch leaves the context unusable */
    for (int i = 0; i < NSLOT; i++) st.s[i].busy = 0;
    if (st.device >= 0) drop_state();
  }
  pthread_mutex_unlock(&st.lock);
  return rc;
}

static int cuda_solve(const lte_kernel_model *M, const lte_kernel_batch *B) {
  return solve_on(M, B, 0);
}

static int cuda_solve_dev(const lte_kernel_model *M, const lte_kernel_batch *B) {
  return solve_on(M, B, 1);
}

extern "C" const lte_kernel lte_kernel_cuda = {"cuda", "cuda-f64", cuda_solve, cuda_open,
                                               cuda_solve_dev};
