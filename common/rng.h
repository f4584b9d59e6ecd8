/* rng.h - counter-based random numbers (Philox4x32-10, Salmon et al. 2011).
 *
 * Every random choice in coemu is a pure function of a key and a counter,
 * so a sample does not depend on how many ranks made it or in what order:
 *   key     = (job seed)                     64 bits
 *   counter = (model id, direction index, stream, draw)   4 x 32 bits
 * A "stream" separates independent uses (e.g. 0 = rotation, 1 = model
 * parameters, 2 = split assignment) so adding a draw to one never shifts
 * another. Philox4x32-10 passes BigCrush and is what cuRAND and Random123
 * ship; the constants below are the published ones.
 */
#ifndef COEMU_RNG_H
#define COEMU_RNG_H

#include <stdint.h>

typedef struct {
  uint64_t seed;
  uint32_t ctr[4]; /* ctr[3] advances with each block of four draws */
  uint32_t buf[4];
  int left;        /* unused words in buf */
} ce_rng;

static inline void ce_philox4x32_10(const uint32_t in[4], uint64_t key,
                                    uint32_t out[4]) {
  uint32_t c0 = in[0], c1 = in[1], c2 = in[2], c3 = in[3];
  uint32_t k0 = (uint32_t)key, k1 = (uint32_t)(key >> 32);
  for (int r = 0; r < 10; r++) {
    uint64_t p0 = (uint64_t)0xD2511F53u * c0;
    uint64_t p1 = (uint64_t)0xCD9E8D57u * c2;
    uint32_t n0 = (uint32_t)(p1 >> 32) ^ c1 ^ k0;
    uint32_t n1 = (uint32_t)p1;
    uint32_t n2 = (uint32_t)(p0 >> 32) ^ c3 ^ k1;
    uint32_t n3 = (uint32_t)p0;
    c0 = n0; c1 = n1; c2 = n2; c3 = n3;
    k0 += 0x9E3779B9u;
    k1 += 0xBB67AE85u;
  }
  out[0] = c0; out[1] = c1; out[2] = c2; out[3] = c3;
}

/* A generator for one (seed, a, b, stream) tuple, e.g. (seed, model, direction, 0). */
static inline ce_rng ce_rng_make(uint64_t seed, uint32_t a, uint32_t b,
                                 uint32_t stream) {
  ce_rng r;
  r.seed = seed;
  r.ctr[0] = a; r.ctr[1] = b; r.ctr[2] = stream; r.ctr[3] = 0;
  r.left = 0;
  return r;
}

static inline uint32_t ce_rng_u32(ce_rng *r) {
  if (r->left == 0) {
    ce_philox4x32_10(r->ctr, r->seed, r->buf);
    r->ctr[3]++;
    r->left = 4;
  }
  return r->buf[4 - r->left--];
}

static inline uint64_t ce_rng_u64(ce_rng *r) {
  uint64_t hi = ce_rng_u32(r);
  return (hi << 32) | ce_rng_u32(r);
}

/* Uniform double in [0, 1) with 53 random bits. */
static inline double ce_rng_uniform(ce_rng *r) {
  return (double)(ce_rng_u64(r) >> 11) * 0x1.0p-53;
}

/* Uniform double in (0, 1]: safe for log(). */
static inline double ce_rng_uniform_pos(ce_rng *r) {
  return ((double)(ce_rng_u64(r) >> 11) + 1.0) * 0x1.0p-53;
}

#endif
