/* checksum.c - XXH64 and its streaming form on common/xxh64_body.h (the
 * functions the device's row hash compiles too). */
#include "common/checksum.h"

#include <string.h>

#include "common/xxh64_body.h"

void ce_xxh64_init(ce_xxh64_state *s, uint64_t seed) {
  memset(s, 0, sizeof *s);
  s->seed = seed;
  for (int l = 0; l < 4; l++) s->v[l] = xxh64_lane_init(seed, l);
}

void ce_xxh64_update(ce_xxh64_state *s, const void *data, size_t len) {
  const uint8_t *p = data, *end = p + len;
  s->total += len;
  if (s->nbuf + len < 32) {
    memcpy(s->buf + s->nbuf, p, len);
    s->nbuf += len;
    return;
  }
  if (s->nbuf) {
    size_t fill = 32 - s->nbuf;
    memcpy(s->buf + s->nbuf, p, fill);
    for (int i = 0; i < 4; i++) s->v[i] = xxh64_round(s->v[i], xxh64_rd64(s->buf + 8 * i));
    p += fill;
    s->nbuf = 0;
  }
  uint64_t v0 = s->v[0], v1 = s->v[1], v2 = s->v[2], v3 = s->v[3];
  while (end - p >= 32) {
    v0 = xxh64_round(v0, xxh64_rd64(p));
    v1 = xxh64_round(v1, xxh64_rd64(p + 8));
    v2 = xxh64_round(v2, xxh64_rd64(p + 16));
    v3 = xxh64_round(v3, xxh64_rd64(p + 24));
    p += 32;
  }
  s->v[0] = v0;
  s->v[1] = v1;
  s->v[2] = v2;
  s->v[3] = v3;
  if (p < end) {
    memcpy(s->buf, p, (size_t)(end - p));
    s->nbuf = (size_t)(end - p);
  }
}

/* nbuf is total % 32: the tail xxh64_finish reads */
uint64_t ce_xxh64_digest(const ce_xxh64_state *s) {
  return xxh64_finish(s->v, s->buf, s->total, s->seed);
}

/* the streaming form whole: its stripe loop (four scalars, pointer bound)
 * is the shape GCC -O3 vectorizes with AVX-512DQ, 1.8x the scalar loop on
 * Zen 4 (docs/benchmarks.md, issue 17's XXH64 section) */
uint64_t ce_xxh64(const void *data, size_t len, uint64_t seed) {
  ce_xxh64_state s;
  ce_xxh64_init(&s, seed);
  ce_xxh64_update(&s, data, len);
  return ce_xxh64_digest(&s);
}
