/* test_shard_crc.c - shard_crc32 (the shards' crc32 attributes) equals
 * zlib's crc32_z for every length, alignment and starting value, so the
 * fast path cannot change a checksum the readers and `coemu verify`
 * compare against. */
#include <stdint.h>
#include <zlib.h>

#include "check.h"
#include "pipeline/dataset/shard.h"

static uint64_t rng_state = 0x9E3779B97F4A7C15ULL;
static uint32_t rnd(void) {
  rng_state ^= rng_state << 13, rng_state ^= rng_state >> 7, rng_state ^= rng_state << 17;
  return (uint32_t)(rng_state >> 11);
}

static void test_known_answer(void) {
  /* CRC-32 of "123456789" is CBF43926 (the check value of the CRC catalogue) */
  CHECK(shard_crc32(0, "123456789", 9) == 0xCBF43926u);
  /* 64 x '1'..'8' repeated: through the folding path, against zlib */
  unsigned char b[512];
  for (int i = 0; i < 512; i++) b[i] = (unsigned char)('1' + i % 8);
  CHECK(shard_crc32(0, b, 512) == (uint32_t)crc32_z(0, b, 512));
  CHECK(shard_crc32(0, b, 0) == 0);
}

static void test_every_length_and_alignment(void) {
  enum { MAX = 1100 };
  static unsigned char buf[MAX + 64];
  for (size_t i = 0; i < sizeof buf; i++) buf[i] = (unsigned char)rnd();
  int bad = 0;
  for (size_t off = 0; off < 16; off++)
    for (size_t len = 0; len <= MAX; len++) {
      uint32_t start = (len % 3 == 0) ? 0 : rnd();
      uint32_t a = shard_crc32(start, buf + off, len), b = (uint32_t)crc32_z(start, buf + off, len);
      if (a != b && bad++ < 5)
        CHECK_MSG(0, "offset %zu length %zu start %08x: %08x, zlib %08x", off, len, start, a, b);
    }
  CHECK(bad == 0);
}

static void test_large_and_chained(void) {
  size_t n = 3 * 64 * 64 * 64 * 4 + 7 * 64 * 64 * 4 + 13; /* a demo sample and an odd tail */
  unsigned char *b = malloc(n);
  CHECK(b != NULL);
  if (!b) return;
  for (size_t i = 0; i < n; i++) b[i] = (unsigned char)rnd();
  uint32_t whole = (uint32_t)crc32_z(0, b, n);
  CHECK(shard_crc32(0, b, n) == whole);
  /* in pieces, as shard_put accumulates rows */
  uint32_t c = 0;
  for (size_t at = 0; at < n;) {
    size_t len = 1 + rnd() % 200000;
    if (len > n - at) len = n - at;
    c = shard_crc32(c, b + at, len);
    at += len;
  }
  CHECK(c == whole);
  free(b);
}

int main(void) {
  RUN(test_known_answer);
  RUN(test_every_length_and_alignment);
  RUN(test_large_and_chained);
  return check_report();
}
