/* emu.cpp - the CUDA emulator's runtime (include/cuda_runtime.h says what it
 * is for and what it is not): one emulated device, its memory as host
 * memory, streams as queues of work run in the lazy or the eager order,
 * events, and kernel launches run block by block on fibers.
 *
 * Settings (environment):
 *   COEMU_CUDA_EMU          lazy (default) | eager: when a stream's work runs
 *   COEMU_CUDA_EMU_DEVICES  0 | 1 (default): 0 emulates a host without a device
 *   COEMU_CUDA_EMU_MEM_MB   the device's memory, 16..65536 MiB (default 2048)
 *   COEMU_CUDA_EMU_REGS     NAME=REGS,...: registers a thread of kernel NAME
 *                           takes (as ptxas -v reports them); a launch of more
 *                           than 65,536 registers a block is refused with
 *                           cudaErrorLaunchOutOfResources, as the device does.
 *                           NAME is the launch's text (lte_fused_kernel<0>).
 * A value outside these ends the process with a message (exit 2).
 *
 * Misuse that a device would answer with an error gets that error and one
 * line on stderr saying why ("cuda emulator: cudaMemcpyAsync: 4096 bytes
 * at 0x... are not inside one device allocation"): a copy of the wrong kind
 * or past an allocation's end, a free of memory not allocated so, a launch
 * of more threads than a block holds. */
#include <errno.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <ucontext.h>
#include <unistd.h>

#include <deque>
#include <functional>
#include <map>
#include <memory>
#include <mutex>
#include <string>
#include <vector>

#define __CUDACC__ 1
#include "cuda_runtime.h"

#if defined(__SANITIZE_ADDRESS__)
#define EMU_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define EMU_ASAN 1
#endif
#endif
#ifdef EMU_ASAN
#include <sanitizer/common_interface_defs.h>
#endif

namespace coemu_emu {
thread_local thread_ctx cur;
}

/* ---- settings ------------------------------------------------------------ */

static void emu_vsay(const char *fmt, va_list ap) {
  fprintf(stderr, "cuda emulator: ");
  vfprintf(stderr, fmt, ap);
  fprintf(stderr, "\n");
}

static void emu_say(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  emu_vsay(fmt, ap);
  va_end(ap);
}

/* a setting or a kernel the emulator cannot take: the process ends */
[[noreturn]] static void emu_fatal(const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  emu_vsay(fmt, ap);
  va_end(ap);
  fflush(stderr);
  _exit(2);
}

static struct settings {
  int lazy, devices;
  size_t mem;
  std::map<std::string, int> regs;
} S;

static long env_long(const char *name, long lo, long hi, long dflt) {
  const char *v = getenv(name);
  if (!v) return dflt;
  char *end = NULL;
  errno = 0;
  long x = strtol(v, &end, 10);
  if (!*v || *end || errno || x < lo || x > hi)
    emu_fatal("%s = '%s': expected a whole number in %ld..%ld", name, v, lo, hi);
  return x;
}

static void settings_init(void) {
  static std::once_flag once;
  std::call_once(once, [] {
    const char *m = getenv("COEMU_CUDA_EMU");
    if (!m || !strcmp(m, "lazy")) S.lazy = 1;
    else if (!strcmp(m, "eager")) S.lazy = 0;
    else emu_fatal("COEMU_CUDA_EMU = '%s': expected lazy (the default) or eager", m);
    S.devices = (int)env_long("COEMU_CUDA_EMU_DEVICES", 0, 1, 1);
    S.mem = (size_t)env_long("COEMU_CUDA_EMU_MEM_MB", 16, 65536, 2048) << 20;
    const char *r = getenv("COEMU_CUDA_EMU_REGS");
    if (r) {
      std::string all(r);
      size_t at = 0;
      while (at <= all.size()) {
        size_t comma = all.find(',', at);
        if (comma == std::string::npos) comma = all.size();
        std::string item = all.substr(at, comma - at);
        size_t eq = item.rfind('=');
        char *end = NULL;
        long n = eq == std::string::npos ? 0 : strtol(item.c_str() + eq + 1, &end, 10);
        if (eq == std::string::npos || eq == 0 || !end || *end || n < 1 || n > 255)
          emu_fatal("COEMU_CUDA_EMU_REGS: '%s': expected NAME=REGS (1..255), comma-separated",
                    item.c_str());
        S.regs[item.substr(0, eq)] = (int)n;
        at = comma + 1;
      }
    }
  });
}

/* ---- errors -------------------------------------------------------------- */

static thread_local cudaError_t last_error = cudaSuccess;

static cudaError_t fail(cudaError_t e) {
  last_error = e;
  return e;
}

extern "C" cudaError_t cudaGetLastError(void) {
  cudaError_t e = last_error;
  last_error = cudaSuccess;
  return e;
}
extern "C" cudaError_t cudaPeekAtLastError(void) { return last_error; }

extern "C" const char *cudaGetErrorName(cudaError_t e) {
  switch (e) {
#define N(x) \
  case x:    \
    return #x;
    N(cudaSuccess) N(cudaErrorInvalidValue) N(cudaErrorMemoryAllocation)
    N(cudaErrorInitializationError) N(cudaErrorInvalidConfiguration) N(cudaErrorInvalidDevice)
    N(cudaErrorNoDevice) N(cudaErrorNoKernelImageForDevice) N(cudaErrorInvalidResourceHandle)
    N(cudaErrorNotReady) N(cudaErrorLaunchOutOfResources) N(cudaErrorLaunchFailure)
#undef N
  }
  return "cudaErrorUnknown";
}

extern "C" const char *cudaGetErrorString(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "no error";
    case cudaErrorInvalidValue: return "invalid argument";
    case cudaErrorMemoryAllocation: return "out of memory";
    case cudaErrorInitializationError: return "initialization error";
    case cudaErrorInvalidConfiguration: return "invalid configuration argument";
    case cudaErrorInvalidDevice: return "invalid device ordinal";
    case cudaErrorNoDevice: return "no CUDA-capable device is detected";
    case cudaErrorNoKernelImageForDevice: return "no kernel image is available for execution on the device";
    case cudaErrorInvalidResourceHandle: return "invalid resource handle";
    case cudaErrorNotReady: return "device not ready";
    case cudaErrorLaunchOutOfResources: return "too many resources requested for launch";
    case cudaErrorLaunchFailure: return "unspecified launch failure";
  }
  return "unknown error";
}

/* ---- the device ---------------------------------------------------------- */

static thread_local int current_device = 0;

extern "C" cudaError_t cudaGetDeviceCount(int *count) {
  settings_init();
  *count = S.devices;
  return S.devices ? cudaSuccess : fail(cudaErrorNoDevice);
}

static cudaError_t need_device(void) {
  settings_init();
  return S.devices ? cudaSuccess : fail(cudaErrorNoDevice);
}

extern "C" cudaError_t cudaSetDevice(int d) {
  if (need_device()) return cudaErrorNoDevice;
  if (d < 0 || d >= S.devices) return fail(cudaErrorInvalidDevice);
  current_device = d;
  return cudaSuccess;
}

extern "C" cudaError_t cudaGetDevice(int *d) {
  if (need_device()) return cudaErrorNoDevice;
  *d = current_device;
  return cudaSuccess;
}

extern "C" cudaError_t cudaGetDeviceProperties(cudaDeviceProp *p, int d) {
  if (need_device()) return cudaErrorNoDevice;
  if (d < 0 || d >= S.devices) return fail(cudaErrorInvalidDevice);
  memset(p, 0, sizeof *p);
  /* an H200's launch limits (the figures of the device the project measures on) */
  snprintf(p->name, sizeof p->name, "coemu CUDA emulator (%s order, host CPU: no timing meaning)",
           S.lazy ? "lazy" : "eager");
  p->totalGlobalMem = S.mem;
  p->sharedMemPerBlock = 48 << 10;
  p->sharedMemPerBlockOptin = 227 << 10;
  p->sharedMemPerMultiprocessor = 228 << 10;
  p->regsPerBlock = 65536;
  p->regsPerMultiprocessor = 65536;
  p->warpSize = 32;
  p->maxThreadsPerBlock = 1024;
  p->maxThreadsDim[0] = 1024, p->maxThreadsDim[1] = 1024, p->maxThreadsDim[2] = 64;
  p->maxGridSize[0] = INT_MAX, p->maxGridSize[1] = 65535, p->maxGridSize[2] = 65535;
  p->major = 9, p->minor = 0;
  p->multiProcessorCount = 132;
  p->maxThreadsPerMultiProcessor = 2048;
  return cudaSuccess;
}

/* ---- memory -------------------------------------------------------------- */

enum { MEM_DEVICE = 1, MEM_PINNED = 2, MEM_REGISTERED = 3 };
struct region {
  size_t bytes;
  int kind;
};
static std::mutex reg_lock;
static std::map<uintptr_t, region> regions; /* by start address */
static size_t device_used;

/* the region holding [p, p + n), or NULL */
static const region *region_of(const void *p, size_t n) {
  uintptr_t a = (uintptr_t)p;
  auto it = regions.upper_bound(a);
  if (it == regions.begin()) return NULL;
  --it;
  size_t span = it->second.bytes ? it->second.bytes : 1;
  if (a - it->first >= span || n > span - (a - it->first)) return NULL;
  return &it->second;
}

static int kind_of(const void *p, size_t n) {
  std::lock_guard<std::mutex> g(reg_lock);
  const region *r = region_of(p, n ? n : 1);
  return r ? r->kind : 0;
}

/* the first byte of p (device memory or not): for the kind checks */
static int is_device_byte(const void *p) { return kind_of(p, 1) == MEM_DEVICE; }

extern "C" cudaError_t cudaMalloc(void **p, size_t bytes) {
  *p = NULL;
  if (need_device()) return cudaErrorNoDevice;
  std::lock_guard<std::mutex> g(reg_lock);
  if (bytes > S.mem - device_used) return fail(cudaErrorMemoryAllocation);
  void *q = NULL;
  if (posix_memalign(&q, 256, bytes ? bytes : 1)) return fail(cudaErrorMemoryAllocation);
  memset(q, 0xff, bytes); /* a device's new memory holds whatever it held: NaN here */
  regions[(uintptr_t)q] = {bytes, MEM_DEVICE};
  device_used += bytes;
  *p = q;
  return cudaSuccess;
}

extern "C" cudaError_t cudaHostAlloc(void **p, size_t bytes, unsigned int flags) {
  (void)flags;
  *p = NULL;
  if (need_device()) return cudaErrorNoDevice;
  void *q = NULL;
  if (posix_memalign(&q, 4096, bytes ? bytes : 1)) return fail(cudaErrorMemoryAllocation);
  memset(q, 0xff, bytes);
  std::lock_guard<std::mutex> g(reg_lock);
  regions[(uintptr_t)q] = {bytes, MEM_PINNED};
  *p = q;
  return cudaSuccess;
}

extern "C" cudaError_t cudaMallocHost(void **p, size_t bytes) {
  return cudaHostAlloc(p, bytes, cudaHostAllocDefault);
}

extern "C" cudaError_t cudaHostRegister(void *p, size_t bytes, unsigned int flags) {
  (void)flags;
  if (need_device()) return cudaErrorNoDevice;
  std::lock_guard<std::mutex> g(reg_lock);
  if (!p || !bytes || region_of(p, 1)) return fail(cudaErrorInvalidValue);
  regions[(uintptr_t)p] = {bytes, MEM_REGISTERED};
  return cudaSuccess;
}

extern "C" cudaError_t cudaHostUnregister(void *p) {
  std::lock_guard<std::mutex> g(reg_lock);
  auto it = regions.find((uintptr_t)p);
  if (it == regions.end() || it->second.kind != MEM_REGISTERED) return fail(cudaErrorInvalidValue);
  regions.erase(it);
  return cudaSuccess;
}

extern "C" cudaError_t cudaPointerGetAttributes(cudaPointerAttributes *a, const void *p) {
  memset(a, 0, sizeof *a);
  int k = kind_of(p, 1);
  a->type = k == MEM_DEVICE ? cudaMemoryTypeDevice : k ? cudaMemoryTypeHost : cudaMemoryTypeUnregistered;
  if (k == MEM_DEVICE) a->devicePointer = (void *)p;
  else if (k) a->hostPointer = (void *)p, a->devicePointer = (void *)p;
  return cudaSuccess;
}

extern "C" cudaError_t cudaMemGetInfo(size_t *fre, size_t *tot) {
  if (need_device()) return cudaErrorNoDevice;
  std::lock_guard<std::mutex> g(reg_lock);
  *fre = S.mem - device_used, *tot = S.mem;
  return cudaSuccess;
}

static void flush_all(void);

/* free memory of one of the allocating kinds (implicitly waiting for the
 * device, as cudaFree and cudaFreeHost do) */
static cudaError_t free_kind(void *p, int kind, const char *who) {
  if (!p) return cudaSuccess;
  flush_all();
  std::lock_guard<std::mutex> g(reg_lock);
  auto it = regions.find((uintptr_t)p);
  if (it == regions.end() || it->second.kind != kind) {
    emu_say("%s(%p): not the start of memory that %s allocated", who, p,
            kind == MEM_DEVICE ? "cudaMalloc" : "cudaHostAlloc");
    return fail(cudaErrorInvalidValue);
  }
  if (kind == MEM_DEVICE) device_used -= it->second.bytes;
  regions.erase(it);
  free(p);
  return cudaSuccess;
}

extern "C" cudaError_t cudaFree(void *p) { return free_kind(p, MEM_DEVICE, "cudaFree"); }
extern "C" cudaError_t cudaFreeHost(void *p) { return free_kind(p, MEM_PINNED, "cudaFreeHost"); }

/* ---- streams and events -------------------------------------------------- */

struct coemu_emu_stream {
  std::deque<std::function<void()>> q; /* under qlock */
  std::mutex run;                      /* held while its work runs: in order */
  unsigned flags;
};
struct coemu_emu_event {
  std::mutex m;
  cudaStream_t s;     /* the stream of the last record */
  int recorded, done; /* done: the record's place in its stream has run */
  double t;           /* seconds, when it ran */
};

static std::mutex qlock;
static coemu_emu_stream legacy_stream = {{}, {}, cudaStreamDefault}; /* stream 0 */
static std::vector<coemu_emu_stream *> streams;                     /* under qlock */

static coemu_emu_stream *stream_of(cudaStream_t s) { return s ? s : &legacy_stream; }

/* run everything queued on s so far, in order */
static void flush(coemu_emu_stream *s) {
  std::lock_guard<std::mutex> r(s->run);
  for (;;) {
    std::function<void()> op;
    {
      std::lock_guard<std::mutex> g(qlock);
      if (s->q.empty()) return;
      op = std::move(s->q.front());
      s->q.pop_front();
    }
    op();
  }
}

static void flush_all(void) {
  std::vector<coemu_emu_stream *> all;
  {
    std::lock_guard<std::mutex> g(qlock);
    all = streams;
  }
  all.push_back(&legacy_stream);
  for (coemu_emu_stream *s : all) flush(s);
}

/* the legacy stream's rule: its work waits for the blocking streams' work
 * before it, and theirs for its; running that work first is an order the
 * rule allows */
static void legacy_order(coemu_emu_stream *s) {
  if (s == &legacy_stream) {
    std::vector<coemu_emu_stream *> blocking;
    {
      std::lock_guard<std::mutex> g(qlock);
      for (coemu_emu_stream *o : streams)
        if (!(o->flags & cudaStreamNonBlocking)) blocking.push_back(o);
    }
    for (coemu_emu_stream *o : blocking) flush(o);
  } else if (!(s->flags & cudaStreamNonBlocking)) {
    flush(&legacy_stream);
  }
}

/* queue work on a stream: lazy, it runs when the host waits; eager, now */
static void enqueue(cudaStream_t st, std::function<void()> op) {
  settings_init();
  coemu_emu_stream *s = stream_of(st);
  legacy_order(s);
  {
    std::lock_guard<std::mutex> g(qlock);
    s->q.push_back(std::move(op));
  }
  if (!S.lazy) flush(s);
}

static int stream_known(cudaStream_t s) {
  if (!s) return 1;
  std::lock_guard<std::mutex> g(qlock);
  for (coemu_emu_stream *o : streams)
    if (o == s) return 1;
  return 0;
}

extern "C" cudaError_t cudaStreamCreateWithFlags(cudaStream_t *s, unsigned int flags) {
  if (need_device()) return cudaErrorNoDevice;
  coemu_emu_stream *n = new coemu_emu_stream;
  n->flags = flags;
  std::lock_guard<std::mutex> g(qlock);
  streams.push_back(n);
  *s = n;
  return cudaSuccess;
}

extern "C" cudaError_t cudaStreamCreate(cudaStream_t *s) {
  return cudaStreamCreateWithFlags(s, cudaStreamDefault);
}

extern "C" cudaError_t cudaStreamDestroy(cudaStream_t s) {
  if (!s || !stream_known(s)) return fail(cudaErrorInvalidResourceHandle);
  flush(s); /* its work completes (the runtime lets it finish after the call) */
  {
    std::lock_guard<std::mutex> g(qlock);
    for (size_t i = 0; i < streams.size(); i++)
      if (streams[i] == s) streams.erase(streams.begin() + (long)i);
  }
  delete s;
  return cudaSuccess;
}

extern "C" cudaError_t cudaStreamSynchronize(cudaStream_t s) {
  if (!stream_known(s)) return fail(cudaErrorInvalidResourceHandle);
  legacy_order(stream_of(s));
  flush(stream_of(s));
  return cudaSuccess;
}

extern "C" cudaError_t cudaDeviceSynchronize(void) {
  if (need_device()) return cudaErrorNoDevice;
  flush_all();
  return cudaSuccess;
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

extern "C" cudaError_t cudaEventCreateWithFlags(cudaEvent_t *e, unsigned int flags) {
  (void)flags;
  if (need_device()) return cudaErrorNoDevice;
  *e = new coemu_emu_event();
  return cudaSuccess;
}
extern "C" cudaError_t cudaEventCreate(cudaEvent_t *e) { return cudaEventCreateWithFlags(e, 0); }

extern "C" cudaError_t cudaEventDestroy(cudaEvent_t e) {
  if (!e) return fail(cudaErrorInvalidResourceHandle);
  if (e->recorded) flush(stream_of(e->s)); /* a queued record must not outlive it */
  delete e;
  return cudaSuccess;
}

extern "C" cudaError_t cudaEventRecord(cudaEvent_t e, cudaStream_t s) {
  if (!e || !stream_known(s)) return fail(cudaErrorInvalidResourceHandle);
  {
    std::lock_guard<std::mutex> g(e->m);
    e->s = s, e->recorded = 1, e->done = 0;
  }
  enqueue(s, [e] {
    std::lock_guard<std::mutex> g(e->m);
    e->done = 1, e->t = now_s();
  });
  return cudaSuccess;
}

extern "C" cudaError_t cudaEventSynchronize(cudaEvent_t e) {
  if (!e) return fail(cudaErrorInvalidResourceHandle);
  if (e->recorded) flush(stream_of(e->s));
  return cudaSuccess;
}

extern "C" cudaError_t cudaEventQuery(cudaEvent_t e) {
  if (!e) return fail(cudaErrorInvalidResourceHandle);
  std::lock_guard<std::mutex> g(e->m);
  return !e->recorded || e->done ? cudaSuccess : cudaErrorNotReady;
}

extern "C" cudaError_t cudaStreamWaitEvent(cudaStream_t s, cudaEvent_t e, unsigned int flags) {
  (void)flags;
  if (!e || !stream_known(s)) return fail(cudaErrorInvalidResourceHandle);
  /* s's later work waits for the record: running the record's stream up to
   * now satisfies it */
  if (e->recorded && stream_of(e->s) != stream_of(s)) flush(stream_of(e->s));
  return cudaSuccess;
}

extern "C" cudaError_t cudaEventElapsedTime(float *ms, cudaEvent_t a, cudaEvent_t b) {
  if (!a || !b) return fail(cudaErrorInvalidResourceHandle);
  int done[2];
  double t[2];
  cudaEvent_t e[2] = {a, b};
  for (int i = 0; i < 2; i++) {
    std::lock_guard<std::mutex> g(e[i]->m);
    done[i] = e[i]->done, t[i] = e[i]->t;
  }
  if (!done[0] || !done[1]) return fail(cudaErrorNotReady);
  *ms = (float)((t[1] - t[0]) * 1e3);
  return cudaSuccess;
}

/* ---- copies -------------------------------------------------------------- */

static const char *kind_name(enum cudaMemcpyKind k) {
  static const char *n[] = {"HostToHost", "HostToDevice", "DeviceToHost", "DeviceToDevice",
                            "Default"};
  return (unsigned)k < 5 ? n[k] : "?";
}

/* the copy's two ranges against its kind: device ranges inside one device
 * allocation, host ranges outside device memory */
static cudaError_t check_copy(const char *who, void *dst, const void *src, size_t n,
                              enum cudaMemcpyKind k) {
  if (!n) return cudaSuccess;
  if ((unsigned)k > cudaMemcpyDefault) return fail(cudaErrorInvalidValue);
  if (k == cudaMemcpyDefault) return cudaSuccess;
  const int dd = k == cudaMemcpyHostToDevice || k == cudaMemcpyDeviceToDevice;
  const int sd = k == cudaMemcpyDeviceToHost || k == cudaMemcpyDeviceToDevice;
  const void *side[2] = {dst, src};
  const int dev[2] = {dd, sd};
  for (int i = 0; i < 2; i++) {
    int kind = kind_of(side[i], n);
    if (dev[i] && kind != MEM_DEVICE) {
      emu_say("%s (%s): %zu bytes at %p (the %s) are not inside one device allocation", who,
              kind_name(k), n, side[i], i ? "source" : "destination");
      return fail(cudaErrorInvalidValue);
    }
    if (!dev[i] && is_device_byte(side[i])) {
      emu_say("%s (%s): the %s %p is device memory", who, kind_name(k), i ? "source" : "destination",
              side[i]);
      return fail(cudaErrorInvalidValue);
    }
  }
  return cudaSuccess;
}

/* An asynchronous copy, as the runtime treats it: from pageable host memory
 * the bytes are taken when the call is made (staged); into pageable host
 * memory the call waits for the stream and copies then; page-locked and
 * device memory are copied when the stream runs the copy. */
static cudaError_t copy_async(void *dst, const void *src, size_t n, enum cudaMemcpyKind k,
                              cudaStream_t s, const char *who) {
  if (need_device()) return cudaErrorNoDevice;
  if (!stream_known(s)) return fail(cudaErrorInvalidResourceHandle);
  cudaError_t e = check_copy(who, dst, src, n, k);
  if (e != cudaSuccess || !n) return e;
  const int src_host = !is_device_byte(src), dst_host = !is_device_byte(dst);
  if (src_host && !kind_of(src, n)) { /* pageable source: staged now */
    std::shared_ptr<std::vector<unsigned char>> stage(
        new std::vector<unsigned char>((const unsigned char *)src, (const unsigned char *)src + n));
    enqueue(s, [dst, stage, n] { memcpy(dst, stage->data(), n); });
    return cudaSuccess;
  }
  if (dst_host && !kind_of(dst, n)) { /* pageable destination: synchronous */
    legacy_order(stream_of(s));
    flush(stream_of(s));
    memcpy(dst, src, n);
    return cudaSuccess;
  }
  enqueue(s, [dst, src, n] { memmove(dst, src, n); });
  return cudaSuccess;
}

extern "C" cudaError_t cudaMemcpyAsync(void *dst, const void *src, size_t n,
                                       enum cudaMemcpyKind k, cudaStream_t s) {
  return copy_async(dst, src, n, k, s, "cudaMemcpyAsync");
}

extern "C" cudaError_t cudaMemcpy(void *dst, const void *src, size_t n, enum cudaMemcpyKind k) {
  cudaError_t e = copy_async(dst, src, n, k, 0, "cudaMemcpy");
  if (e == cudaSuccess) {
    legacy_order(&legacy_stream);
    flush(&legacy_stream);
  }
  return e;
}

extern "C" cudaError_t cudaMemcpy2DAsync(void *dst, size_t dpitch, const void *src, size_t spitch,
                                         size_t width, size_t height, enum cudaMemcpyKind k,
                                         cudaStream_t s) {
  if (need_device()) return cudaErrorNoDevice;
  if (!stream_known(s)) return fail(cudaErrorInvalidResourceHandle);
  if (width > dpitch || width > spitch) return fail(cudaErrorInvalidValue);
  if (!width || !height) return cudaSuccess;
  /* each row of each side: a device side's rows inside device allocations
   * (one each: the rows of a pitch may lie in allocations of their own, as
   * cubes cudaMalloc'd one by one at an even stride) */
  if (k != cudaMemcpyDeviceToDevice) {
    emu_say("cudaMemcpy2DAsync: only device-to-device copies are emulated");
    return fail(cudaErrorInvalidValue);
  }
  for (size_t r = 0; r < height; r++) {
    cudaError_t e = check_copy("cudaMemcpy2DAsync, a row", (unsigned char *)dst + r * dpitch,
                               (const unsigned char *)src + r * spitch, width, k);
    if (e != cudaSuccess) {
      emu_say("cudaMemcpy2DAsync: row %zu of %zu (%zu bytes, pitches %zu and %zu)", r, height,
              width, dpitch, spitch);
      return e;
    }
  }
  enqueue(s, [=] {
    for (size_t r = 0; r < height; r++)
      memmove((unsigned char *)dst + r * dpitch, (const unsigned char *)src + r * spitch, width);
  });
  return cudaSuccess;
}

extern "C" cudaError_t cudaMemsetAsync(void *dst, int value, size_t n, cudaStream_t s) {
  if (need_device()) return cudaErrorNoDevice;
  if (!stream_known(s)) return fail(cudaErrorInvalidResourceHandle);
  if (n && kind_of(dst, n) != MEM_DEVICE) {
    emu_say("cudaMemsetAsync: %zu bytes at %p are not inside one device allocation", n, dst);
    return fail(cudaErrorInvalidValue);
  }
  enqueue(s, [=] { memset(dst, value, n); });
  return cudaSuccess;
}

extern "C" cudaError_t cudaMemset(void *dst, int value, size_t n) {
  cudaError_t e = cudaMemsetAsync(dst, value, n, 0);
  if (e == cudaSuccess) flush(&legacy_stream);
  return e;
}

/* ---- kernels: blocks of threads on fibers ---------------------------------- */

namespace coemu_emu {

enum { F_RUN, F_BLOCK_BAR, F_WARP_BAR, F_DONE };
#define EMU_STACK (256 << 10)
#define EMU_MAX_THREADS 1024

struct fiber {
  ucontext_t uc;
  int state;
  thread_ctx ctx;
};

/* the fibers of the block this host thread runs */
struct block_run {
  ucontext_t sched;
  fiber f[EMU_MAX_THREADS];
  unsigned char *stacks; /* EMU_MAX_THREADS stacks, mapped once a host thread */
  int n, at;             /* threads; the one running */
  int fibers;            /* the block runs on fibers (not plain calls) */
  int met_barrier;
  const char *kernel;
  kernel_thunk run;
  void *args;
  uint64_t shfl_slot[EMU_MAX_THREADS];
  std::vector<unsigned char> dyn; /* the launch's dynamic shared memory */
  const void *host_stack; /* the host thread's own stack (the scheduler's), for ASan */
  size_t host_stack_size;
};
static thread_local block_run *B;

static void fiber_entry(void) {
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(NULL, NULL, NULL);
#endif
  B->run(B->args);
  B->f[B->at].state = F_DONE;
#ifdef EMU_ASAN
  /* back to the scheduler; this fiber ends */
  __sanitizer_start_switch_fiber(NULL, B->host_stack, B->host_stack_size);
#endif
  /* returns through uc_link to the scheduler */
}

static void to_scheduler(int state) {
  fiber *me = &B->f[B->at];
  me->state = state;
  B->met_barrier = 1;
#ifdef EMU_ASAN
  void *fs = NULL;
  __sanitizer_start_switch_fiber(&fs, B->host_stack, B->host_stack_size);
#endif
  swapcontext(&me->uc, &B->sched);
#ifdef EMU_ASAN
  __sanitizer_finish_switch_fiber(fs, NULL, NULL);
#endif
  cur = me->ctx;
}

void syncthreads(void) {
  if (!B || !B->fibers)
    emu_fatal("kernel %s: __syncthreads in a block run as plain calls (the launch's first block "
              "met no barrier)", B ? B->kernel : "?");
  to_scheduler(F_BLOCK_BAR);
}

static int linear_tid(const thread_ctx &c) {
  return (int)(c.tid.x + c.bdim.x * (c.tid.y + c.bdim.y * c.tid.z));
}

uint64_t shfl(uint64_t v, int lane) {
  if (!B || !B->fibers)
    emu_fatal("kernel %s: __shfl_sync in a block run as plain calls (the launch's first block "
              "met no barrier)", B ? B->kernel : "?");
  const int me = linear_tid(cur);
  B->shfl_slot[me] = v;
  to_scheduler(F_WARP_BAR); /* every lane has written */
  const int src = (me & ~31) + (lane & 31);
  const uint64_t r = src < B->n ? B->shfl_slot[src] : v;
  to_scheduler(F_WARP_BAR); /* every lane has read */
  return r;
}

void *dynamic_shared(void) { return B && !B->dyn.empty() ? B->dyn.data() : NULL; }

static thread_ctx ctx_of(const launch_cfg &c, unsigned bx, unsigned by, unsigned bz, int i) {
  thread_ctx t;
  t.bdim = c.block, t.gdim = c.grid;
  t.bid = {bx, by, bz};
  t.tid = {(unsigned)i % c.block.x, (unsigned)i / c.block.x % c.block.y,
           (unsigned)i / (c.block.x * c.block.y)};
  return t;
}

/* one block: on fibers, each thread until it finishes or waits at a
 * barrier, the barriers released when all it holds are there */
static void run_block_fibers(const launch_cfg &c, unsigned bx, unsigned by, unsigned bz) {
  for (int i = 0; i < B->n; i++) {
    fiber *f = &B->f[i];
    f->state = F_RUN;
    f->ctx = ctx_of(c, bx, by, bz, i);
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = B->stacks + (size_t)i * EMU_STACK;
    f->uc.uc_stack.ss_size = EMU_STACK;
    f->uc.uc_link = &B->sched;
    makecontext(&f->uc, fiber_entry, 0);
  }
  for (;;) {
    for (int i = 0; i < B->n; i++) {
      if (B->f[i].state != F_RUN) continue;
      B->at = i;
      cur = B->f[i].ctx;
#ifdef EMU_ASAN
      void *fs = NULL;
      __sanitizer_start_switch_fiber(&fs, B->stacks + (size_t)i * EMU_STACK, EMU_STACK);
#endif
      swapcontext(&B->sched, &B->f[i].uc);
#ifdef EMU_ASAN
      __sanitizer_finish_switch_fiber(fs, NULL, NULL);
#endif
    }
    int live = 0, at_block = 0, released = 0;
    for (int i = 0; i < B->n; i++)
      if (B->f[i].state != F_DONE) live++, at_block += B->f[i].state == F_BLOCK_BAR;
    if (!live) return;
    if (at_block == live) {
      for (int i = 0; i < B->n; i++)
        if (B->f[i].state == F_BLOCK_BAR) B->f[i].state = F_RUN;
      continue;
    }
    for (int w = 0; w * 32 < B->n; w++) {
      int wl = 0, ww = 0;
      for (int i = w * 32; i < B->n && i < w * 32 + 32; i++)
        if (B->f[i].state != F_DONE) wl++, ww += B->f[i].state == F_WARP_BAR;
      if (wl && ww == wl) {
        for (int i = w * 32; i < B->n && i < w * 32 + 32; i++)
          if (B->f[i].state == F_WARP_BAR) B->f[i].state = F_RUN;
        released = 1;
      }
    }
    if (!released)
      emu_fatal("kernel %s, block (%u, %u, %u): a barrier no thread can pass (%d threads at "
                "__syncthreads, %d not finished)", B->kernel, bx, by, bz, at_block, live);
  }
}

static void run_launch(const char *name, launch_cfg c, kernel_thunk run, void *args) {
  /* this host thread's fibers, freed when it ends (the device pipeline's
   * sampling thread) */
  struct owner {
    block_run *b = NULL;
    ~owner() {
      if (!b) return;
      munmap(b->stacks, (size_t)EMU_MAX_THREADS * EMU_STACK);
      delete b;
    }
  };
  static thread_local owner own;
  block_run *&mine = own.b;
  if (!mine) {
    mine = new block_run();
    mine->stacks = (unsigned char *)mmap(NULL, (size_t)EMU_MAX_THREADS * EMU_STACK,
                                         PROT_READ | PROT_WRITE,
                                         MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (mine->stacks == MAP_FAILED) emu_fatal("no memory for the fibers' stacks");
    pthread_attr_t a;
    void *lo = NULL;
    size_t sz = 0;
    if (!pthread_getattr_np(pthread_self(), &a)) {
      pthread_attr_getstack(&a, &lo, &sz);
      pthread_attr_destroy(&a);
    }
    mine->host_stack = lo, mine->host_stack_size = sz;
  }
  block_run *saved = B;
  B = mine;
  B->kernel = name, B->run = run, B->args = args;
  B->n = (int)(c.block.x * c.block.y * c.block.z);
  B->dyn.assign(c.shared, 0xff); /* shared memory starts undefined: NaN here */
  int first = 1;
  for (unsigned bz = 0; bz < c.grid.z; bz++)
    for (unsigned by = 0; by < c.grid.y; by++)
      for (unsigned bx = 0; bx < c.grid.x; bx++) {
        if (first) {
          B->fibers = 1, B->met_barrier = 0;
          run_block_fibers(c, bx, by, bz);
          B->fibers = B->met_barrier;
          first = 0;
        } else if (B->fibers) {
          run_block_fibers(c, bx, by, bz);
        } else {
          for (int i = 0; i < B->n; i++) {
            cur = ctx_of(c, bx, by, bz, i);
            run(args);
          }
        }
      }
  B = saved;
}

cudaError_t enqueue_launch(const char *name, const launch_cfg &c, kernel_thunk run, void *args,
                           void (*drop)(void *)) {
  settings_init();
  cudaError_t e = cudaSuccess;
  const unsigned long long threads = (unsigned long long)c.block.x * c.block.y * c.block.z;
  if (!S.devices) e = cudaErrorNoDevice;
  else if (!stream_known(c.stream)) e = cudaErrorInvalidResourceHandle;
  else if (!c.grid.x || !c.grid.y || !c.grid.z || !threads || c.block.x > 1024 ||
           c.block.y > 1024 || c.block.z > 64 || threads > 1024 || c.grid.x > (unsigned)INT_MAX ||
           c.grid.y > 65535 || c.grid.z > 65535) {
    emu_say("kernel %s: a grid of (%u, %u, %u) blocks of (%u, %u, %u) threads", name, c.grid.x,
            c.grid.y, c.grid.z, c.block.x, c.block.y, c.block.z);
    e = cudaErrorInvalidConfiguration;
  } else if (c.shared > (48u << 10)) {
    emu_say("kernel %s: %zu bytes of dynamic shared memory (48 KiB without opting in)", name,
            c.shared);
    e = cudaErrorInvalidValue;
  } else {
    auto it = S.regs.find(name);
    if (it != S.regs.end()) {
      /* registers are allocated per warp, each thread's rounded up to 8 */
      const unsigned long long warps = (threads + 31) / 32;
      const unsigned long long need = warps * 32 * (unsigned long long)((it->second + 7) / 8 * 8);
      if (need > 65536) e = cudaErrorLaunchOutOfResources;
    }
  }
  if (e != cudaSuccess) {
    drop(args);
    return fail(e);
  }
  std::string nm(name);
  launch_cfg cfg = c;
  std::shared_ptr<void> held(args, drop);
  enqueue(c.stream, [nm, cfg, run, held] { run_launch(nm.c_str(), cfg, run, held.get()); });
  return cudaSuccess;
}

} /* namespace coemu_emu */
