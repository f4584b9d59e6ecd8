/* test_xxh64_body.c - common/xxh64_body.h, host-compiled, against an
 * independent implementation: libxxhash's XXH64 (the system's
 * libxxhash.so.0, scripts/setup.sh's libxxhash0, opened with dlopen: the
 * package ships no header). Exact equality (integer arithmetic):
 *   - every length 0..300, five seeds, starts at offsets 0..7 (unaligned);
 *   - random lengths up to 4 MB, random offsets and seeds;
 *   - a 3 n^3 float32 row (n = 64, 3 MiB: the device pipeline's input row)
 *     and n = 5 (a tail of 4 bytes after the stripes);
 * each by the device's scheme (four lanes, one "thread" each, driven by a
 * plain loop, then combined: xxh64_lane_run + xxh64_finish), by the device
 * kernel's staging (the lanes run tile by tile over copies of the row's
 * 8 KiB tiles, xxh64_tiles) and by the
 * host's common/checksum.h on the same functions (ce_xxh64, one thread,
 * and its streaming form fed random pieces). Negative control: one flipped byte (random
 * place and bit) changes every form's value.
 *   test_xxh64_body --bench [MB] [REPS]: GB/s of ce_xxh64 and of
 *   libxxhash's XXH64 on one core, interleaved runs, medians
 *   (docs/benchmarks.md). */
#include <dlfcn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check.h"
#include "common/checksum.h"
#include "common/clock.h"
#include "common/xxh64_body.h"

typedef uint64_t (*xxh64_fn)(const void *, size_t, uint64_t);
static xxh64_fn lib_xxh64;

static uint64_t rng_state = 0x243F6A8885A308D3ULL;
static uint64_t rnd(void) { /* splitmix64: fixed draws on every host */
  uint64_t z = (rng_state += 0x9E3779B97F4A7C15ULL);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
  return z ^ (z >> 31);
}

/* the device kernel's scheme: lane l = thread l, then one combines */
static uint64_t by_lanes(const void *data, size_t len, uint64_t seed) {
  const unsigned char *p = data;
  uint64_t acc[4];
  for (int t = 0; t < 4; t++) acc[t] = xxh64_lane_run(xxh64_lane_init(seed, t), p, len / 32, t);
  return xxh64_finish(acc, p + (len & ~(size_t)31), len, seed);
}

/* the device kernel's staging: each tile of XXH64_TILE_STRIPES stripes
 * copied into a buffer of its own (the kernel's shared memory), the four
 * lanes run over one tile after the other, the tail from the row */
static uint64_t by_tiles(const void *data, size_t len, uint64_t seed) {
  const unsigned char *p = data;
  const size_t nst = len / 32;
  unsigned char tile[XXH64_TILE_STRIPES * 32];
  uint64_t acc[4];
  for (int t = 0; t < 4; t++) acc[t] = xxh64_lane_init(seed, t);
  for (size_t t = 0; t < xxh64_tiles(nst); t++) {
    const size_t ns = xxh64_tile_stripes(nst, t);
    memset(tile, 0xA5, sizeof tile); /* stale bytes past a short tile must not count */
    memcpy(tile, p + t * XXH64_TILE_STRIPES * 32, ns * 32);
    for (int l = 0; l < 4; l++) acc[l] = xxh64_lane_run(acc[l], tile, ns, l);
  }
  return xxh64_finish(acc, p + nst * 32, len, seed);
}

static uint64_t streamed(const void *data, size_t len, uint64_t seed) {
  const unsigned char *p = data;
  ce_xxh64_state s;
  ce_xxh64_init(&s, seed);
  while (len) {
    size_t k = (size_t)(rnd() % 97);
    if (k > len) k = len;
    ce_xxh64_update(&s, p, k);
    p += k, len -= k;
  }
  return ce_xxh64_digest(&s);
}

/* every form equals the library; *out its value; counts a miss per form */
static int forms_equal(const unsigned char *p, size_t len, uint64_t seed, uint64_t *out) {
  uint64_t want = lib_xxh64(p, len, seed);
  uint64_t got[4] = {by_lanes(p, len, seed), ce_xxh64(p, len, seed), streamed(p, len, seed),
                     by_tiles(p, len, seed)};
  static const char *name[4] = {"four lanes", "ce_xxh64", "streamed", "tiles"};
  int ok = 1;
  for (int f = 0; f < 4; f++)
    if (got[f] != want) {
      if (ok)
        CHECK_FAIL_("%s: length %zu seed %#llx: %016llx, libxxhash %016llx", name[f], len,
                    (unsigned long long)seed, (unsigned long long)got[f], (unsigned long long)want);
      ok = 0;
    }
  if (out) *out = want;
  return ok;
}

static unsigned char *random_bytes(size_t n) {
  unsigned char *b = malloc(n ? n : 1);
  if (!b) abort();
  for (size_t i = 0; i < n; i++) b[i] = (unsigned char)rnd();
  return b;
}

static void test_every_short_length(void) {
  static const uint64_t seeds[5] = {0, 1, 7, 0x9E3779B185EBCA87ULL, UINT64_MAX};
  unsigned char *b = random_bytes(300 + 8);
  long miss = 0;
  for (int s = 0; s < 5; s++)
    for (size_t off = 0; off < 8; off++)
      for (size_t len = 0; len <= 300; len++) miss += !forms_equal(b + off, len, seeds[s], NULL);
  CHECK_MSG(miss == 0, "%ld of %d (length, seed, offset) cases differ", miss, 5 * 8 * 301);
  free(b);
}

static void test_random_long(void) {
  const size_t cap = (size_t)4 << 20;
  unsigned char *b = random_bytes(cap + 8);
  for (int i = 0; i < 24; i++) {
    size_t len = (size_t)(rnd() % cap), off = (size_t)(rnd() % 8);
    uint64_t seed = i % 3 == 0 ? 0 : rnd();
    forms_equal(b + off, len, seed, NULL);
  }
  free(b);
}

/* lengths about the kernel's tile edges: whole tiles, one stripe or byte
 * more or less, at offsets 0 and 3 */
static void test_tile_edges(void) {
  const size_t T = (size_t)XXH64_TILE_STRIPES * 32;
  const size_t lens[] = {T - 32, T - 1, T, T + 1, T + 31, T + 32, 2 * T, 2 * T + 4, 3 * T - 32};
  unsigned char *b = random_bytes(3 * T + 8);
  long miss = 0;
  for (size_t i = 0; i < sizeof lens / sizeof *lens; i++)
    for (size_t off = 0; off < 8; off += 3) miss += !forms_equal(b + off, lens[i], 0, NULL);
  CHECK_MSG(miss == 0, "%ld tile-edge cases differ", miss);
  CHECK(xxh64_tiles(0) == 0 && xxh64_tiles(1) == 1 && xxh64_tiles(XXH64_TILE_STRIPES) == 1 &&
        xxh64_tiles(XXH64_TILE_STRIPES + 1) == 2);
  CHECK(xxh64_tile_stripes(XXH64_TILE_STRIPES + 5, 1) == 5 &&
        xxh64_tile_stripes(XXH64_TILE_STRIPES + 5, 0) == XXH64_TILE_STRIPES);
  free(b);
}

/* the device pipeline's rows: 3 n^3 float32 (v_z, T, n_CO), seed 0 */
static void test_float_rows(void) {
  static const int ns[2] = {64, 5};
  for (int k = 0; k < 2; k++) {
    size_t nf = 3 * (size_t)ns[k] * ns[k] * ns[k];
    float *row = malloc(nf * sizeof *row);
    if (!row) abort();
    for (size_t i = 0; i < nf; i++) row[i] = (float)(rnd() >> 11) * 0x1p-40f - 1.0f;
    forms_equal((const unsigned char *)row, nf * sizeof *row, 0, NULL);
    free(row);
  }
}

static void test_flipped_byte_differs(void) {
  static const size_t lens[6] = {1, 31, 32, 33, 300, (size_t)3 << 20};
  for (int i = 0; i < 6; i++) {
    unsigned char *b = random_bytes(lens[i]);
    uint64_t before;
    forms_equal(b, lens[i], 0, &before);
    size_t at = (size_t)(rnd() % lens[i]);
    b[at] ^= (unsigned char)(1u << (rnd() % 8));
    uint64_t after;
    forms_equal(b, lens[i], 0, &after);
    CHECK_MSG(after != before && ce_xxh64(b, lens[i], 0) != before &&
                  by_lanes(b, lens[i], 0) != before && by_tiles(b, lens[i], 0) != before,
              "length %zu: a flipped byte at %zu left the hash %016llx", lens[i], at,
              (unsigned long long)before);
    free(b);
  }
}

static int bench(int argc, char **argv) {
  size_t mb = argc > 2 ? (size_t)atoi(argv[2]) : 64;
  int reps = argc > 3 ? atoi(argv[3]) : 15;
  if (mb < 1 || reps < 1 || reps > 101) {
    fprintf(stderr, "usage: test_xxh64_body --bench [MB >= 1] [REPS 1..101]\n");
    return 2;
  }
  size_t len = mb << 20;
  unsigned char *b = random_bytes(len);
  double t[2][101];
  volatile uint64_t sink = 0;
  for (int r = 0; r < reps; r++)
    for (int f = 0; f < 2; f++) { /* interleaved: body, library, body, ... */
      double t0 = ce_now_s();
      sink ^= f == 0 ? ce_xxh64(b, len, 0) : lib_xxh64(b, len, 0);
      t[f][r] = ce_now_s() - t0;
    }
  (void)sink; /* written only so that no call is optimised away */
  for (int f = 0; f < 2; f++) {
    qsort(t[f], (size_t)reps, sizeof t[f][0], ce_cmp_double);
    printf("xxh64 %s: %.2f GB/s (median of %d, %zu MiB, one core)\n",
           f == 0 ? "body (ce_xxh64)" : "libxxhash XXH64", (double)len / t[f][reps / 2] / 1e9,
           reps, mb);
  }
  free(b);
  return 0;
}

int main(int argc, char **argv) {
  void *h = dlopen("libxxhash.so.0", RTLD_NOW);
  lib_xxh64 = h ? (xxh64_fn)(uintptr_t)dlsym(h, "XXH64") : NULL;
  if (!lib_xxh64) {
    fprintf(stderr, "test_xxh64_body: libxxhash.so.0 (package libxxhash0, scripts/setup.sh) with "
                    "XXH64, the reference, is needed: %s\n", dlerror());
    return 1;
  }
  if (argc > 1 && !strcmp(argv[1], "--bench")) return bench(argc, argv);
  RUN(test_every_short_length);
  RUN(test_tile_edges);
  RUN(test_random_long);
  RUN(test_float_rows);
  RUN(test_flipped_byte_differs);
  return check_report();
}
