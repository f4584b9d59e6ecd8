/* moments.c - exact mergeable moments (see moments.h). */
#include "stats/moments.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/error.h"

/* Fold the bins every this many values: a bin of squares holds at most
 * 2^16 significands squared (< 2^48 each), so it cannot overflow 64 bits. */
#define STATS_FOLD 65536

void stats_moments_init(stats_moments *m) {
  memset(m, 0, sizeof *m);
  m->min = INFINITY;
  m->max = -INFINITY;
}

/* limbs += v * 2^shift (v < 2^64), with the carry running to the top limb
 * (the top limb of S is its sign; wrap-around is two's complement). */
static void big_add_shifted(uint64_t *limbs, int nl, uint64_t v, int shift) {
  int li = shift / 64, bs = shift % 64;
  uint64_t lo = v << bs, hi = bs ? v >> (64 - bs) : 0;
  unsigned __int128 c = (unsigned __int128)limbs[li] + lo;
  limbs[li] = (uint64_t)c;
  c = (c >> 64) + hi;
  for (int i = li + 1; i < nl && c; i++) {
    c += limbs[i];
    limbs[i] = (uint64_t)c;
    c >>= 64;
  }
}

static void big_sub_shifted(uint64_t *limbs, int nl, uint64_t v, int shift) {
  int li = shift / 64, bs = shift % 64;
  uint64_t lo = v << bs, hi = bs ? v >> (64 - bs) : 0;
  uint64_t borrow = limbs[li] < lo;
  limbs[li] -= lo;
  for (int i = li + 1; i < nl; i++) {
    uint64_t d = hi + borrow;  /* hi < 2^63, no overflow */
    borrow = limbs[i] < d;
    limbs[i] -= d;
    hi = 0;
    if (!borrow) break;
  }
}

static void big_add(uint64_t *a, const uint64_t *b, int nl) {
  unsigned __int128 c = 0;
  for (int i = 0; i < nl; i++) {
    c += (unsigned __int128)a[i] + b[i];
    a[i] = (uint64_t)c;
    c >>= 64;
  }
}

/* Exponent field e (0..254) -> power of two of the significand's unit
 * relative to 2^-149 (subnormals share the unit of e = 1). */
static inline int unit_shift(int e) { return e ? e - 1 : 0; }

static void fold(stats_moments *m) {
  for (int e = 0; e < 255; e++) {
    int64_t s = m->sum_bin[e];
    if (s > 0) big_add_shifted(m->S, STATS_S_LIMBS, (uint64_t)s, unit_shift(e));
    else if (s < 0) big_sub_shifted(m->S, STATS_S_LIMBS, (uint64_t)(-s), unit_shift(e));
    if (m->sq_bin[e]) big_add_shifted(m->Q, STATS_Q_LIMBS, m->sq_bin[e], 2 * unit_shift(e));
    m->sum_bin[e] = 0;
    m->sq_bin[e] = 0;
  }
  m->unfolded = 0;
}

/* The hot loop. Two sets of bins (even and odd positions) let consecutive
 * values with the same exponent update memory independently. */
static void add_block(stats_moments *m, const float *x, size_t n) {
  int64_t sb[2][256];
  uint64_t qb[2][256];
  memset(sb, 0, sizeof sb);
  memset(qb, 0, sizeof qb);
  float mn = m->min, mx = m->max;
  int64_t bad_nan = 0, bad_inf = 0;
  size_t i = 0;
  for (; i < n; i++) {
    uint32_t b;
    memcpy(&b, x + i, 4);
    uint32_t e = (b >> 23) & 0xffu;
    if (e == 255) {
      if (b & 0x7fffffu) bad_nan++;
      else bad_inf++;
      continue;
    }
    uint32_t sig = (b & 0x7fffffu) | (e ? 0x800000u : 0);
    int64_t s = (b >> 31) ? -(int64_t)sig : (int64_t)sig;
    int k = (int)(i & 1);
    sb[k][e] += s;
    qb[k][e] += (uint64_t)sig * sig;
    float v = x[i];
    mn = v < mn ? v : mn;
    mx = v > mx ? v : mx;
  }
  for (int e = 0; e < 255; e++) {
    m->sum_bin[e] += sb[0][e] + sb[1][e];
    m->sq_bin[e] += qb[0][e] + qb[1][e];
  }
  m->min = mn;
  m->max = mx;
  m->nan_count += bad_nan;
  m->inf_count += bad_inf;
  m->count += (int64_t)n - bad_nan - bad_inf;
  m->unfolded += (int64_t)n;
}

void stats_moments_add_f32(stats_moments *m, const float *x, size_t n) {
  while (n > 0) {
    size_t room = (size_t)(STATS_FOLD - m->unfolded);
    size_t k = n < room ? n : room;
    add_block(m, x, k);
    x += k;
    n -= k;
    if (m->unfolded >= STATS_FOLD) fold(m);
  }
}

void stats_moments_merge(stats_moments *a, stats_moments *b) {
  fold(a);
  fold(b);
  big_add(a->S, b->S, STATS_S_LIMBS);
  big_add(a->Q, b->Q, STATS_Q_LIMBS);
  a->count += b->count;
  a->nan_count += b->nan_count;
  a->inf_count += b->inf_count;
  if (b->min < a->min) a->min = b->min;
  if (b->max > a->max) a->max = b->max;
}

void stats_moments_pack(stats_moments *m, stats_moments_packed *p) {
  fold(m);
  memset(p, 0, sizeof *p);
  p->count = m->count;
  p->nan_count = m->nan_count;
  p->inf_count = m->inf_count;
  p->min = m->min;
  p->max = m->max;
  memcpy(p->S, m->S, sizeof p->S);
  memcpy(p->Q, m->Q, sizeof p->Q);
}

/* a's bins need no fold first: integer addition is associative. */
void stats_moments_merge_packed(stats_moments *a, const stats_moments_packed *p) {
  big_add(a->S, p->S, STATS_S_LIMBS);
  big_add(a->Q, p->Q, STATS_Q_LIMBS);
  a->count += p->count;
  a->nan_count += p->nan_count;
  a->inf_count += p->inf_count;
  if (p->min < a->min) a->min = p->min;
  if (p->max > a->max) a->max = p->max;
}

/* Unsigned big integer -> nearest double times 2^scale: the top 64 bits with
 * the rest folded into a sticky bit, so the conversion rounds once. */
static double big_to_double(const uint64_t *a, int nl, int scale) {
  int top = nl - 1;
  while (top >= 0 && a[top] == 0) top--;
  if (top < 0) return 0.0;
  int lz = __builtin_clzll(a[top]);
  uint64_t hi = a[top] << lz;
  uint64_t rest = 0;
  if (top > 0) {
    if (lz) hi |= a[top - 1] >> (64 - lz);
    rest = a[top - 1] << lz;
    for (int i = top - 2; i >= 0; i--) rest |= a[i];
    if (lz == 0) rest = a[top - 1] | rest;
  }
  hi |= rest != 0;
  return ldexp((double)hi, 64 * top - lz + scale);
}

static void big_neg(uint64_t *a, int nl) {
  unsigned __int128 c = 1;
  for (int i = 0; i < nl; i++) {
    c += (uint64_t)~a[i];
    a[i] = (uint64_t)c;
    c >>= 64;
  }
}

void stats_moments_summary(stats_moments *m, stats_summary *s) {
  fold(m);
  memset(s, 0, sizeof *s);
  s->count = m->count;
  s->nan_count = m->nan_count;
  s->inf_count = m->inf_count;
  if (m->count == 0) {
    s->mean = s->m2 = s->var = s->std = s->min = s->max = NAN;
    return;
  }
  s->min = m->min;
  s->max = m->max;
  uint64_t absS[STATS_S_LIMBS];
  memcpy(absS, m->S, sizeof absS);
  int neg = (int64_t)absS[STATS_S_LIMBS - 1] < 0;
  if (neg) big_neg(absS, STATS_S_LIMBS);
  double n = (double)m->count;
  double sum = big_to_double(absS, STATS_S_LIMBS, -149);
  s->mean = (neg ? -sum : sum) / n;
  /* D = n Q - S^2 >= 0, exactly, in units of 2^-298. */
  enum { DL = 2 * STATS_S_LIMBS };
  uint64_t D[DL] = {0}, S2[DL] = {0};
  unsigned __int128 c = 0;
  for (int i = 0; i < STATS_Q_LIMBS; i++) {
    c += (unsigned __int128)m->Q[i] * (uint64_t)m->count;
    D[i] = (uint64_t)c;
    c >>= 64;
  }
  D[STATS_Q_LIMBS] = (uint64_t)c;
  for (int i = 0; i < STATS_S_LIMBS; i++) {
    c = 0;
    for (int j = 0; j < STATS_S_LIMBS; j++) {
      c += (unsigned __int128)absS[i] * absS[j] + S2[i + j];
      S2[i + j] = (uint64_t)c;
      c >>= 64;
    }
    S2[i + STATS_S_LIMBS] = (uint64_t)c;
  }
  big_neg(S2, DL);
  big_add(D, S2, DL);
  if ((int64_t)D[DL - 1] < 0) CE_BUG("stats_moments_summary: n Q - S^2 < 0");
  s->m2 = big_to_double(D, DL, -298) / n;
  s->var = s->m2 / n;
  s->std = sqrt(s->var);
}

void stats_summary_merge(stats_summary *a, const stats_summary *b) {
  if (b->count > 0) {
    if (a->count == 0) {
      a->mean = b->mean;
      a->m2 = b->m2;
      a->min = b->min;
      a->max = b->max;
    } else {
      double na = (double)a->count, nb = (double)b->count, n = na + nb;
      double delta = b->mean - a->mean;
      a->mean += delta * (nb / n);
      a->m2 += b->m2 + delta * delta * (na * nb / n);
      if (b->min < a->min) a->min = b->min;
      if (b->max > a->max) a->max = b->max;
    }
    a->count += b->count;
    a->var = a->m2 / (double)a->count;
    a->std = sqrt(a->var);
  }
  a->nan_count += b->nan_count;
  a->inf_count += b->inf_count;
}
