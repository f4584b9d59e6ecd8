/* test_common.c - the foundation: errors, checked allocation, .npy, the
 * counter-based generator and PNG output (option parsing: test_cli.c).
 * Tolerances: the generator is integer arithmetic (Philox), the same draws
 * on every host; the mean of 1e5 uniforms is within 0.005 of 1/2 (5.5
 * standard deviations) for these fixed draws, exactly reproducible. */
#include <stdint.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#include "check.h"
#include "common/checksum.h"
#include "common/env.h"
#include "common/error.h"
#include "common/fsutil.h"
#include "common/image.h"
#include "common/npy.h"
#include "common/progress.h"
#include "common/rows.h"
#include "common/rng.h"

static const char *tmpdir;

static void path_in_tmp(char *buf, size_t n, const char *name) {
  snprintf(buf, n, "%s/%s", tmpdir, name);
}

static void test_alloc_limits(void) {
  CHECK(ce_malloc_array(SIZE_MAX / 2, 4, "huge") == NULL);
  CHECK(strstr(ce_err_msg(), "huge") != NULL);
  size_t old = ce_alloc_limit();
  ce_set_alloc_limit(1000);
  CHECK(ce_malloc_array(1001, 1, "x") == NULL);
  void *p = ce_malloc_array(1000, 1, "x");
  CHECK(p != NULL);
  free(p);
  ce_set_alloc_limit(old);
}

static void test_err_prefix(void) {
  ce_err("byte %d: bad", 7);
  ce_err_prefix("file.dat");
  CHECK(!strcmp(ce_err_msg(), "file.dat: byte 7: bad"));
}

/* a failed open says why when the file cannot be read at all, and only
 * that it failed when the file is there (the library refused it) */
static void test_err_open(void) {
  char path[4200];
  path_in_tmp(path, sizeof path, "no-such-file.h5");
  CHECK(ce_err_open(path, "as HDF5") == -1);
  CHECK_MSG(strstr(ce_err_msg(), "no-such-file.h5: cannot open as HDF5: No such file or directory"),
            "%s", ce_err_msg());
  path_in_tmp(path, sizeof path, "there.txt");
  FILE *f = fopen(path, "w");
  CHECK(f != NULL);
  if (f) fclose(f);
  ce_err_open(path, "as HDF5");
  CHECK_MSG(strstr(ce_err_msg(), "there.txt: cannot open as HDF5") &&
                !strstr(ce_err_msg(), "as HDF5:"),
            "%s", ce_err_msg());
}

static void test_npy_roundtrip(void) {
  char p[512];
  path_in_tmp(p, sizeof p, "a.npy");
  double d[24];
  for (int i = 0; i < 24; i++) d[i] = i * 0.5 - 3;
  size_t shape[3] = {2, 3, 4};
  CHECK_OK(npy_write(p, d, NPY_F64, 3, shape));
  npy_info info;
  double *r = NULL;
  CHECK_OK(npy_read_f64(p, &info, &r));
  CHECK(info.ndim == 3 && info.shape[0] == 2 && info.shape[1] == 3 && info.shape[2] == 4);
  CHECK(info.dtype == NPY_F64 && info.data_offset % 64 == 0);
  for (int i = 0; r && i < 24; i++) CHECK(r[i] == d[i]);
  free(r);
  float f[5] = {1, 2.5f, -3, 4, 1e-30f};
  size_t s1[1] = {5};
  CHECK_OK(npy_write(p, f, NPY_F32, 1, s1));
  CHECK_OK(npy_read_f64(p, &info, &r));
  for (int i = 0; r && i < 5; i++) CHECK(r[i] == (double)f[i]);
  free(r);
}

static void write_bytes(const char *path, const void *b, size_t n) {
  FILE *f = fopen(path, "wb");
  fwrite(b, 1, n, f);
  fclose(f);
}

static void test_npy_bad(void) {
  char p[512];
  npy_info info;
  double *r = NULL;
  path_in_tmp(p, sizeof p, "bad.npy");
  write_bytes(p, "hello", 5);
  CHECK_ERR(npy_read_f64(p, &info, &r), "bad.npy");
  write_bytes(p, "\x93NUMPYxxxxxxxxxxxxxxxx", 20);
  CHECK_ERR(npy_read_f64(p, &info, &r), "version");
  const char hdr_i8[] = "\x93NUMPY\x01\x00\x36\x00{'descr': '<i8', 'fortran_order': False, 'shape': (2,), }  \n";
  write_bytes(p, hdr_i8, sizeof hdr_i8 - 1);
  CHECK_ERR(npy_read_f64(p, &info, &r), "'<i8' is not supported");
  const char hdr_f[] = "\x93NUMPY\x01\x00\x36\x00{'descr': '<f8', 'fortran_order': True, 'shape': (2,), }   \n";
  write_bytes(p, hdr_f, sizeof hdr_f - 1);
  CHECK_ERR(npy_read_f64(p, &info, &r), "Fortran order");
  const char hdr_be[] = "\x93NUMPY\x01\x00\x36\x00{'descr': '>f8', 'fortran_order': False, 'shape': (2,), }  \n";
  write_bytes(p, hdr_be, sizeof hdr_be - 1);
  CHECK_ERR(npy_read_f64(p, &info, &r), "'>f8' is not supported");
  /* truncated data: a valid header promising 100 doubles, 8 bytes of data */
  double d[100] = {0};
  size_t s[1] = {100};
  CHECK_OK(npy_write(p, d, NPY_F64, 1, s));
  CHECK(truncate(p, 64 + 8) == 0);
  CHECK_ERR(npy_read_f64(p, &info, &r), "truncated");
  path_in_tmp(p, sizeof p, "missing.npy");
  CHECK_ERR(npy_read_f64(p, &info, &r), "missing.npy: cannot open");
}

static void test_rng(void) {
  /* Philox4x32-10 known-answer test (Random123 kat_vectors). */
  uint32_t ctr[4] = {0, 0, 0, 0}, out[4];
  ce_philox4x32_10(ctr, 0, out);
  CHECK(out[0] == 0x6627e8d5u && out[1] == 0xe169c58du && out[2] == 0xbc57ac4cu &&
        out[3] == 0x9b00dbd8u);
  uint32_t ctr2[4] = {0x243f6a88u, 0x85a308d3u, 0x13198a2eu, 0x03707344u}, out2[4];
  ce_philox4x32_10(ctr2, ((uint64_t)0x299f31d0u << 32) | 0xa4093822u, out2);
  CHECK(out2[0] == 0xd16cfe09u && out2[1] == 0x94fdcceb && out2[2] == 0x5001e420u &&
        out2[3] == 0x24126ea1u);
  /* Same key, same draws; the mean of many uniforms is 1/2. */
  ce_rng a = ce_rng_make(42, 3, 7, 0), b = ce_rng_make(42, 3, 7, 0);
  double sum = 0;
  for (int i = 0; i < 100000; i++) {
    double u = ce_rng_uniform(&a);
    CHECK(u == ce_rng_uniform(&b));
    CHECK(u >= 0 && u < 1);
    sum += u;
  }
  CHECK_CLOSE(sum / 100000, 0.5, 0, 0.005);
  ce_rng c = ce_rng_make(42, 3, 8, 0);
  a = ce_rng_make(42, 3, 7, 0);
  CHECK(ce_rng_u64(&a) != ce_rng_u64(&c));
}

static void test_xxh64(void) {
  /* Known answers from the reference implementation (python xxhash 3.x). */
  CHECK(ce_xxh64("", 0, 0) == 0xef46db3751d8e999ULL);
  CHECK(ce_xxh64("a", 1, 0) == 0xd24ec4f1a98c6e5bULL);
  unsigned char b[768];
  for (int i = 0; i < 768; i++) b[i] = (unsigned char)(i & 255);
  CHECK(ce_xxh64(b, 768, 7) == 0xb1e10f6c5294cd6bULL);
  char abc[34];
  for (int i = 0; i < 33; i++) abc[i] = "abc"[i % 3];
  CHECK(ce_xxh64(abc, 33, 0) == 0xacf9834eb61fa3aULL);
  /* streaming over any split equals one shot */
  for (size_t cut = 0; cut <= 768; cut += 37) {
    ce_xxh64_state s;
    ce_xxh64_init(&s, 7);
    ce_xxh64_update(&s, b, cut);
    ce_xxh64_update(&s, b + cut, 768 - cut);
    CHECK(ce_xxh64_digest(&s) == 0xb1e10f6c5294cd6bULL);
  }
}

static void test_png(void) {
  char p[512];
  path_in_tmp(p, sizeof p, "panels.png");
  double a[16 * 8];
  for (int i = 0; i < 16 * 8; i++) a[i] = i;
  ce_map2d maps[2] = {{a, 16, 8, 8, 1}, {a, 16, 8, 8, 1}};
  ce_panel_style st = {.cmap = CE_CMAP_INFERNO, .shared_range = 1};
  CHECK_OK(ce_write_panels_png(p, maps, 2, &st));
  FILE *f = fopen(p, "rb");
  unsigned char sig[8] = {0};
  CHECK(f && fread(sig, 1, 8, f) == 8);
  if (f) fclose(f);
  CHECK(!memcmp(sig, "\x89PNG\r\n\x1a\n", 8));
  uint8_t lo[3], hi[3];
  ce_cmap_rgb(CE_CMAP_VIRIDIS, 0, lo);
  ce_cmap_rgb(CE_CMAP_VIRIDIS, 1, hi);
  CHECK(lo[0] == 68 && hi[1] == 231);
}

/* fs_lock_dir: a nested lock in one process counts; another process is
 * refused at once, with the holder's pid; the lock goes with its holder. */
static void test_lock_dir(void) {
  char dir[] = "/tmp/coemu-lock-XXXXXX";
  CHECK(mkdtemp(dir) != NULL);
  CHECK(fs_lock_dir(dir, "generate") == 0);
  CHECK(fs_lock_dir(dir, "stats") == 0); /* nested: generate computing /stats */
  fs_unlock_dir(dir);
  int pipefd[2];
  CHECK(pipe(pipefd) == 0);
  pid_t child = fork();
  if (child == 0) {
    char msg[512] = "";
    if (fs_lock_dir(dir, "stats") < 0) snprintf(msg, sizeof msg, "%s", ce_err_msg());
    if (write(pipefd[1], msg, strlen(msg) + 1) < 0) _exit(2);
    _exit(0);
  }
  char msg[512] = "";
  CHECK(read(pipefd[0], msg, sizeof msg) > 0);
  waitpid(child, NULL, 0);
  char want[256], host[128] = "";
  CHECK(gethostname(host, sizeof host - 1) == 0);
  snprintf(want, sizeof want, "(pid %ld on %s: coemu generate)", (long)getpid(), host);
  CHECK(strstr(msg, "in use by another coemu") != NULL && strstr(msg, want) != NULL);
  fs_unlock_dir(dir);
  child = fork();
  if (child == 0) _exit(fs_lock_dir(dir, "stats") == 0 ? 0 : 1);
  int st = -1;
  waitpid(child, &st, 0);
  CHECK(WIFEXITED(st) && WEXITSTATUS(st) == 0); /* released */
  close(pipefd[0]);
  close(pipefd[1]);
  char p[128];
  /* fs_remove_tmp: a killed run's temporary files go, finished files stay */
  snprintf(p, sizeof p, "%s/last.ckpt.tmp.123", dir);
  FILE *f = fopen(p, "w");
  if (f) fclose(f);
  snprintf(p, sizeof p, "%s/last.ckpt", dir);
  f = fopen(p, "w");
  if (f) fclose(f);
  CHECK(fs_remove_tmp(dir) == 0);
  CHECK(access(p, F_OK) == 0);
  unlink(p);
  snprintf(p, sizeof p, "%s/last.ckpt.tmp.123", dir);
  CHECK(access(p, F_OK) != 0);
  snprintf(p, sizeof p, "%s/.lock", dir);
  unlink(p);
  rmdir(dir);
}

/* common/rows.h: one block means row c at row 0 + c * stride, every c */
static void test_rows_one_block(void) {
  float buf[40];
  const void *rows[4] = {buf, buf + 10, buf + 20, buf + 30};
  CHECK(ce_rows_one_block(rows, 4, 10 * sizeof(float)));
  CHECK(ce_rows_one_block(rows, 1, 12345)); /* one row is a block at any stride */
  CHECK(!ce_rows_one_block(rows, 4, 9 * sizeof(float)));
  CHECK(!ce_rows_one_block(rows, 0, 10 * sizeof(float)));
  const void *swapped[4] = {buf, buf + 20, buf + 10, buf + 30};
  CHECK(!ce_rows_one_block(swapped, 4, 10 * sizeof(float)));
  const void *last_off[4] = {buf, buf + 10, buf + 20, buf + 31};
  CHECK(!ce_rows_one_block(last_off, 4, 10 * sizeof(float)));
  const void *none[1] = {NULL};
  CHECK(!ce_rows_one_block(none, 1, 10));
}

/* common/env.h: unset leaves the value; a whole number in range is taken;
 * empty, trailing text, out of range or beyond long are errors that name
 * the variable, its value and what was expected */
/* ce_progress: the final line is printed once, also when the last update
 * already said the total (generate's "512/512" was printed twice); stderr
 * goes to a file for the count */
static int progress_lines(int last_update, int total) {
  char path[4200];
  path_in_tmp(path, sizeof path, "progress.txt");
  fflush(stderr);
  int saved = dup(2);
  FILE *f = fopen(path, "w+");
  if (!f || saved < 0) return -1;
  dup2(fileno(f), 2);
  ce_progress p;
  ce_progress_init(&p, "unit", "samples", total, 0);
  p.interval = 0; /* every update prints */
  ce_progress_update(&p, last_update);
  ce_progress_done(&p, total);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  rewind(f);
  int n = 0, c;
  while ((c = fgetc(f)) != EOF) n += c == '\n';
  fclose(f);
  return n;
}

static void test_progress_final_once(void) {
  CHECK(progress_lines(5, 5) == 1); /* the update said 5/5: no second line */
  CHECK(progress_lines(3, 5) == 2); /* 3/5, then the final 5/5 */
}

/* The rate and the ETA count only the units made now: a resume's kept
 * units are in the count, not in the rate (a resumed generate printed the
 * kept samples over the time of the resume checks as its rate). 1,000 units
 * made in 100 s with 400 kept: 10/s and 500 left, ETA 50 s. */
static void test_progress_rate_kept(void) {
  char path[4200];
  path_in_tmp(path, sizeof path, "progress-kept.txt");
  fflush(stderr);
  int saved = dup(2);
  FILE *f = fopen(path, "w+");
  CHECK(f && saved >= 0);
  if (!f || saved < 0) return;
  dup2(fileno(f), 2);
  ce_progress p;
  ce_progress_init(&p, "unit", "samples", 1900, 0);
  p.t0 = ce_now() - 100;
  p.kept = 400;
  ce_progress_done(&p, 1400);
  ce_progress_init(&p, "unit", "samples", 10, 0);
  p.kept = 10; /* all kept: no rate, no ETA */
  ce_progress_done(&p, 10);
  fflush(stderr);
  dup2(saved, 2);
  close(saved);
  rewind(f);
  char a[256] = "", b[256] = "";
  CHECK(fgets(a, sizeof a, f) && fgets(b, sizeof b, f));
  fclose(f);
  CHECK(strstr(a, "1400/1900 samples (73.7%)  10/s  ") && strstr(a, "ETA 50.0s"));
  CHECK(strstr(b, "10/10 samples (100.0%)  0/s  ") && strstr(b, "ETA -"));
}

static void test_env_int(void) {
  const char *name = "COEMU_TEST_ENV_INT";
  long v = 7;
  unsetenv(name);
  CHECK(ce_env_int(name, 1, 4096, "a number of cubes", &v) == 0 && v == 7);
  setenv(name, "32", 1);
  CHECK(ce_env_int(name, 1, 4096, "a number of cubes", &v) == 1 && v == 32);
  setenv(name, "4096", 1);
  CHECK(ce_env_int(name, 1, 4096, "a number of cubes", &v) == 1 && v == 4096);
  static const char *bad[] = {"", "0", "4097", "-3", "12x", "x", " ", "99999999999999999999999"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    setenv(name, bad[i], 1);
    v = 7;
    char want[128];
    snprintf(want, sizeof want, "COEMU_TEST_ENV_INT = '%s': expected a number of cubes, 1..4096",
             bad[i]);
    CHECK_ERR(ce_env_int(name, 1, 4096, "a number of cubes", &v), want);
    CHECK(v == 7);
  }
  unsetenv(name);
}

/* common/env.h: unset leaves the value; one of the words gives its index
 * (ce_env_switch: unset or the first word 0, the second 1);
 * anything else, the empty string and a word with trailing text too, is an
 * error that names the variable, its value and what was expected */
static void test_env_word(void) {
  const char *name = "COEMU_TEST_ENV_WORD";
  static const char *const words[] = {"beside", "after"};
  const char *expected = "beside (the default) or after";
  int w = 5;
  unsetenv(name);
  CHECK(ce_env_word(name, words, 2, expected, &w) == 0 && w == 5);
  setenv(name, "after", 1);
  CHECK(ce_env_word(name, words, 2, expected, &w) == 1 && w == 1);
  setenv(name, "beside", 1);
  CHECK(ce_env_word(name, words, 2, expected, &w) == 1 && w == 0);
  static const char *bad[] = {"", "Beside", "after ", "aft", "besides", "1"};
  for (size_t i = 0; i < sizeof bad / sizeof *bad; i++) {
    setenv(name, bad[i], 1);
    w = 5;
    char want[128];
    snprintf(want, sizeof want, "COEMU_TEST_ENV_WORD = '%s': expected beside (the default) or after",
             bad[i]);
    CHECK_ERR(ce_env_word(name, words, 2, expected, &w), want);
    CHECK(w == 5);
    /* the two-way switch over the same words: the same error */
    CHECK_ERR(ce_env_switch(name, "beside", "after", expected), want);
  }
  unsetenv(name);
  CHECK(ce_env_switch(name, "beside", "after", expected) == 0);
  setenv(name, "beside", 1);
  CHECK(ce_env_switch(name, "beside", "after", expected) == 0);
  setenv(name, "after", 1);
  CHECK(ce_env_switch(name, "beside", "after", expected) == 1);
  unsetenv(name);
}

int main(void) {
  tmpdir = check_scratch("test_common");
  RUN(test_alloc_limits);
  RUN(test_err_prefix);
  RUN(test_err_open);
  RUN(test_npy_roundtrip);
  RUN(test_npy_bad);
  RUN(test_rng);
  RUN(test_xxh64);
  RUN(test_png);
  RUN(test_lock_dir);
  RUN(test_rows_one_block);
  RUN(test_progress_final_once);
  RUN(test_progress_rate_kept);
  RUN(test_env_int);
  RUN(test_env_word);
  check_scratch_remove();
  return check_report();
}
