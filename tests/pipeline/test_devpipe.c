/* test_devpipe.c - the sample + solve pipeline (pipeline/generate/devpipe.h)
 * on the host: its driver (batches, the order of the outputs, buffers, the
 * transpose) through the CPU implementation must give the bytes of the
 * producer's per-sample path on the demo job's model 0 (the inputs and the
 * images, every direction, any batch size, an implementation that does
 * fewer cubes per call than asked, as the device does at its chunk); the
 * device implementation where it cannot run gives a clear error. */
#include "check.h"
#include "common/checksum.h"
#include "common/error.h"

#include <stdint.h>

#include "devpipe_fixture.h"

#define NDIR 7

static dpf_sample_setup S[2]; /* constant, linear */
static float *ref_in[2][NDIR], *ref_tg[2][NDIR];
static double q[NDIR][4];
static size_t nin, ntg;

/* devpipe_cpu, at most 2 cubes a call (as the device does at its chunk) */
static int chunky_run(devpipe *p, int nc, const double (*qq)[4], float *const *tg,
                      float *const *in, uint64_t *h) {
  return devpipe_cpu.run(p, nc < 2 ? nc : 2, qq, tg, in, h);
}
static int chunky_open(devpipe *p, int o, char *d, size_t nd) { return devpipe_cpu.open(p, o, d, nd); }
static void chunky_close(devpipe *p) { devpipe_cpu.close(p); }
static const devpipe_impl chunky = {"cpu, 2 a call", chunky_open, chunky_run, chunky_close, 0, 0};

/* a table that takes every remaining direction at once (devpipe_impl.whole,
 * as devpipe_cuda) and cuts them itself: devpipe_cpu 2 at a time */
static int whole_first_nc = -1; /* the first call's nc */
static int whole_run(devpipe *p, int nc, const double (*qq)[4], float *const *tg, float *const *in,
                     uint64_t *h) {
  if (whole_first_nc < 0) whole_first_nc = nc;
  int done = 0;
  while (done < nc) {
    int k = devpipe_cpu.run(p, nc - done < 2 ? nc - done : 2, qq + done, tg + done,
                            in ? in + done : NULL, h ? h + done : NULL);
    if (k < 0) return k;
    done += k;
  }
  return nc;
}
static const devpipe_impl wholesale = {"cpu, all at once", chunky_open, whole_run, chunky_close, 1,
                                        0};

static void setup(void) {
  for (int r = 0; r < 2; r++) {
    CHECK_OK(dpf_open(&S[r], 0, 2, 24, r == 0 ? SAMPLER_CONSTANT : SAMPLER_LINEAR));
    nin = 3 * (size_t)24 * 24 * 24, ntg = (size_t)S[r].nf * 24 * 24;
    for (int d = 0; d < NDIR; d++) {
      if (r == 0) dpf_direction(0, d, q[d]);
      ref_in[r][d] = malloc(nin * sizeof(float));
      ref_tg[r][d] = malloc(ntg * sizeof(float));
      CHECK_OK(dpf_reference(&S[r], q[d], ref_in[r][d], ref_tg[r][d]));
    }
  }
}

/* The pipeline's outputs against the per-sample path, byte for byte: the
 * same sampler and the same CPU kernel, each ray computed alone. block:
 * the rows as the producer makes them (one block each, from
 * devpipe_host_alloc), else one allocation per row. */
static void run_against_reference_rows(const devpipe_impl *impl, int r, int batch, int with_inputs,
                                       int block) {
  devpipe_args a = {S[r].m, &S[r].so, &S[r].line, &S[r].opt, S[r].freqs, S[r].nf, batch};
  devpipe *p = NULL;
  CHECK_OK(devpipe_open(impl, &a, 0, &p, NULL, 0));
  if (!p) return;
  float *in[NDIR], *tg[NDIR], *inb = NULL, *tgb = NULL;
  int inb_pinned = 0, tgb_pinned = 0;
  if (block) {
    inb = devpipe_host_alloc(impl, 0, NDIR, nin * sizeof(float), "inputs", &inb_pinned);
    tgb = devpipe_host_alloc(impl, 0, NDIR, ntg * sizeof(float), "targets", &tgb_pinned);
    CHECK(inb && tgb && !inb_pinned && !tgb_pinned); /* pageable for a CPU table */
    memset(inb, 0, NDIR * nin * sizeof(float)), memset(tgb, 0, NDIR * ntg * sizeof(float));
  }
  for (int d = 0; d < NDIR; d++) {
    in[d] = block ? inb + d * nin : calloc(nin, sizeof(float));
    tg[d] = block ? tgb + d * ntg : calloc(ntg, sizeof(float));
  }
  int done = -1;
  uint64_t hash[NDIR] = {0};
  CHECK_OK(devpipe_run(p, NDIR, (const double (*)[4])q, tg, with_inputs ? in : NULL, hash, &done));
  CHECK(done == NDIR);
  int same_tg = 0, same_in = 0, same_hash = 0;
  for (int d = 0; d < NDIR; d++) {
    same_tg += !memcmp(tg[d], ref_tg[r][d], ntg * sizeof(float));
    same_in += !memcmp(in[d], ref_in[r][d], nin * sizeof(float));
    same_hash += hash[d] == ce_xxh64(ref_in[r][d], nin * sizeof(float), 0);
  }
  /* images only: the rows' checksums (what /checksums records) instead,
   * in the directions' order, the caller's input buffers untouched */
  if (!with_inputs)
    CHECK_MSG(same_hash == NDIR && same_in == 0,
              "%s, batch %d, images only: %d of %d input checksums equal the per-sample rows' "
              "XXH64, %d input buffers written",
              impl->name, batch, same_hash, NDIR, same_in);
  else
    CHECK_MSG(same_hash == 0, "%s: checksums made though the inputs came back", impl->name);
  CHECK_MSG(same_tg == NDIR, "%s, %s, batch %d: %d of %d images equal the per-sample path's",
            impl->name, r ? "linear" : "constant", batch, same_tg, NDIR);
  if (with_inputs)
    CHECK_MSG(same_in == NDIR, "%s, batch %d: %d of %d input cubes equal", impl->name, batch,
              same_in, NDIR);
  if (block)
    devpipe_host_free(inb, inb_pinned), devpipe_host_free(tgb, tgb_pinned);
  else
    for (int d = 0; d < NDIR; d++) free(in[d]), free(tg[d]);
  devpipe_close(p);
}

static void run_against_reference(const devpipe_impl *impl, int r, int batch, int with_inputs) {
  run_against_reference_rows(impl, r, batch, with_inputs, 0);
}

static void test_cpu_equals_producer(void) {
  for (int r = 0; r < 2; r++) {
    run_against_reference(&devpipe_cpu, r, 1, 1);
    run_against_reference(&devpipe_cpu, r, 3, 1); /* 3 + 3 + 1 */
    run_against_reference(&devpipe_cpu, r, 0, 0); /* the default batch, images only */
  }
}

static void test_fewer_per_call(void) {
  run_against_reference(&chunky, 0, 5, 1); /* 2 + 2 + 1, 2 */
  run_against_reference(&chunky, 1, 5, 0); /* images only */
}

/* whole: the driver hands run() every direction though the batch is 2 */
static void test_whole(void) {
  whole_first_nc = -1;
  run_against_reference(&wholesale, 0, 2, 1);
  CHECK_MSG(whole_first_nc == NDIR, "whole: the first run() got %d of %d directions",
            whole_first_nc, NDIR);
  run_against_reference(&wholesale, 1, 2, 0); /* images only */
}

/* The producer's rows: one block each (devpipe_host_alloc), the same bytes */
static void test_block_rows(void) {
  run_against_reference_rows(&devpipe_cpu, 0, 3, 1, 1);
  run_against_reference_rows(&wholesale, 1, 2, 1, 1);
  run_against_reference_rows(&wholesale, 0, 2, 0, 1); /* images only */
}

/* A device table's rows without a device (CI): pageable memory that works,
 * and nothing left behind: the device pipeline's message afterwards is
 * still the one about the device */
static void test_host_rows_without_device(void) {
  int pinned = -1;
  const size_t bytes = (size_t)3 << 20;
  unsigned char *b = devpipe_host_alloc(&devpipe_cuda, 0, bytes, 1, "rows", &pinned);
  CHECK(b != NULL && (pinned == 0 || pinned == 1));
  if (!b) return;
  memset(b, 0x5a, bytes); /* every byte is ours (ASan builds check) */
  CHECK(b[0] == 0x5a && b[bytes - 1] == 0x5a);
  devpipe_host_free(b, pinned);
  /* a count x size that overflows, or passes the allocation limit, is
   * refused with a message naming the rows, on either table, before any
   * device is asked */
  for (int t = 0; t < 2; t++) {
    const devpipe_impl *impl = t ? &devpipe_cuda : &devpipe_cpu;
    pinned = -1;
    CHECK(devpipe_host_alloc(impl, 0, SIZE_MAX / 2, 4, "hostile rows", &pinned) == NULL &&
          pinned == 0 && strstr(ce_err_msg(), "hostile rows"));
    CHECK(devpipe_host_alloc(impl, 0, ce_alloc_limit() / 8 + 1, 8, "hostile rows", &pinned) == NULL &&
          pinned == 0 && strstr(ce_err_msg(), "allocation limit"));
  }
  if (getenv("COEMU_REQUIRE_DEVICE")) return;
  CHECK_MSG(pinned == 0, "page-locked memory on a host without a device");
  unsigned char *c = devpipe_host_alloc(&devpipe_cpu, 0, 0, 1, "rows", &pinned); /* 0 bytes: still a pointer */
  CHECK(c != NULL && pinned == 0);
  devpipe_host_free(c, pinned);
}

/* The references differ between directions, so a driver that mixed up the
 * order could not pass the checks above. */
static void test_directions_differ(void) {
  int differ = 0;
  for (int d = 1; d < NDIR; d++) differ += !!memcmp(ref_tg[0][d], ref_tg[0][0], ntg * sizeof(float));
  CHECK(differ == NDIR - 1);
}

static void test_impl_choice(void) {
  CHECK(devpipe_impl_for(LTE_BACKEND_CPU, SAMPLER_LINEAR) == &devpipe_cpu);
  CHECK(devpipe_impl_for(LTE_BACKEND_CUDA, SAMPLER_CONSTANT) ==
        (sampler_device_supports(SAMPLER_CONSTANT) ? &devpipe_cuda : NULL));
  CHECK(devpipe_impl_for(LTE_BACKEND_CUDA, SAMPLER_LIMITED) ==
        devpipe_impl_for(LTE_BACKEND_CUDA, SAMPLER_CONSTANT)); /* all three on the device */
  CHECK(devpipe_impl_for(LTE_BACKEND_CUDA, 7) == NULL);
  CHECK(devpipe_batch_size(64, 7, 1, (size_t)256 << 20) == 79); /* 256 MiB / 3.2 MiB */
  CHECK(devpipe_batch_size(64, 7, 0, (size_t)256 << 20) == 256);
  CHECK(devpipe_batch_size(64, 7, 1, 1) == 1);
}

/* Without a device (CI) or a CUDA build the device pipeline says which. */
static void test_cuda_without_device(void) {
  if (getenv("COEMU_REQUIRE_DEVICE")) return; /* a GPU machine: gpu_devpipe_check runs it */
  devpipe_args a = {S[0].m, &S[0].so, &S[0].line, &S[0].opt, S[0].freqs, S[0].nf, 4};
  devpipe *p = NULL;
  int rc = devpipe_open(&devpipe_cuda, &a, 0, &p, NULL, 0);
  if (rc == 0) { /* a device after all */
    devpipe_close(p);
    return;
  }
  CHECK(p == NULL);
  const char *m = ce_err_msg();
  CHECK_MSG(strstr(m, "sample + solve pipeline 'cuda'") &&
                (strstr(m, "not built") || strstr(m, "no CUDA device")),
            "message: %s", m);
}

int main(void) {
  RUN(setup);
  RUN(test_directions_differ);
  RUN(test_cpu_equals_producer);
  RUN(test_fewer_per_call);
  RUN(test_whole);
  RUN(test_block_rows);
  RUN(test_impl_choice);
  RUN(test_host_rows_without_device);
  RUN(test_cuda_without_device); /* after it: no error of the allocation left behind */
  for (int r = 0; r < 2; r++) {
    for (int d = 0; d < NDIR; d++) free(ref_in[r][d]), free(ref_tg[r][d]);
    dpf_close(&S[r]);
  }
  return check_report();
}
