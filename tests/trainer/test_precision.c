/* test_precision.c - the operand rounding of trainer/precision.h (bfloat16,
 * TF32: to nearest, ties to even) against exact cases and an independent
 * reference (the two neighbours compared in double), and the precision
 * setting's errors. The emulated layers are checked by the parity harness
 * (test_backend_parity.c). */
#include <float.h>
#include <stdint.h>
#include <string.h>

#include "check.h"
#include "common/rng.h"
#include "trainer/nn.h"
#include "trainer/precision.h"

static uint32_t bits(float x) {
  uint32_t u;
  memcpy(&u, &x, sizeof u);
  return u;
}

static float of(uint32_t u) {
  float x;
  memcpy(&x, &u, sizeof x);
  return x;
}

#define ROUNDS(fn, in, out)                                                                      \
  CHECK_MSG(bits(fn(of(in))) == (out), #fn "(0x%08x) = 0x%08x, expected 0x%08x", (unsigned)(in), \
            (unsigned)bits(fn(of(in))), (unsigned)(out))

static void test_bf16_exact(void) {
  ROUNDS(nn_round_bf16, 0x3f800000u, 0x3f800000u); /* 1 */
  ROUNDS(nn_round_bf16, 0x3f808000u, 0x3f800000u); /* 1 + 2^-8: a tie, to even (down) */
  ROUNDS(nn_round_bf16, 0x3f818000u, 0x3f820000u); /* 1 + 3 2^-8: a tie, to even (up) */
  ROUNDS(nn_round_bf16, 0x3f808001u, 0x3f810000u); /* just above the tie */
  ROUNDS(nn_round_bf16, 0x3f807fffu, 0x3f800000u); /* just below */
  ROUNDS(nn_round_bf16, 0xbf818000u, 0xbf820000u); /* negative: the magnitude rounds */
  ROUNDS(nn_round_bf16, 0x3fffffffu, 0x40000000u); /* a carry into the exponent */
  ROUNDS(nn_round_bf16, 0x00000000u, 0x00000000u); /* +0 */
  ROUNDS(nn_round_bf16, 0x80000000u, 0x80000000u); /* -0 */
  /* subnormals: the same rule on the same bits */
  ROUNDS(nn_round_bf16, 0x00000001u, 0x00000000u);
  ROUNDS(nn_round_bf16, 0x00008000u, 0x00000000u); /* tie, to even (zero) */
  ROUNDS(nn_round_bf16, 0x00018000u, 0x00020000u); /* tie, to even (up) */
  ROUNDS(nn_round_bf16, 0x00008001u, 0x00010000u); /* the smallest bf16 subnormal */
  ROUNDS(nn_round_bf16, 0x807fffffu, 0x80800000u); /* the largest subnormal: the smallest normal */
  /* overflow: above bf16's largest finite value by half an ulp or more is infinity */
  ROUNDS(nn_round_bf16, 0x7f7f7fffu, 0x7f7f0000u);
  ROUNDS(nn_round_bf16, 0x7f7f8000u, 0x7f800000u); /* tie: 0x7f7f is odd, the even one is Inf */
  ROUNDS(nn_round_bf16, 0x7f7fffffu, 0x7f800000u); /* FLT_MAX */
  ROUNDS(nn_round_bf16, 0xff7fffffu, 0xff800000u);
  ROUNDS(nn_round_bf16, 0x7f800000u, 0x7f800000u); /* Inf */
  ROUNDS(nn_round_bf16, 0xff800000u, 0xff800000u); /* -Inf */
  /* NaN stays NaN, quiet, sign kept: a payload in the low bits only would
     round to Inf or carry into the sign bit without the quiet bit */
  ROUNDS(nn_round_bf16, 0x7fc00000u, 0x7fc00000u);
  ROUNDS(nn_round_bf16, 0x7f800001u, 0x7fc00000u);
  ROUNDS(nn_round_bf16, 0xff800001u, 0xffc00000u);
  ROUNDS(nn_round_bf16, 0x7fffffffu, 0x7fff0000u);
}

static void test_tf32_exact(void) {
  ROUNDS(nn_round_tf32, 0x3f801000u, 0x3f800000u); /* 1 + 2^-11: tie, to even (down) */
  ROUNDS(nn_round_tf32, 0x3f803000u, 0x3f804000u); /* 1 + 3 2^-11: tie, to even (up) */
  ROUNDS(nn_round_tf32, 0x3f801001u, 0x3f802000u);
  ROUNDS(nn_round_tf32, 0x00001000u, 0x00000000u); /* subnormal tie to zero */
  ROUNDS(nn_round_tf32, 0x7f7fffffu, 0x7f800000u);
  ROUNDS(nn_round_tf32, 0x7f800001u, 0x7fc00000u);
  ROUNDS(nn_round_tf32, 0xff800000u, 0xff800000u);
  /* nn_round_operand dispatches; float32 is the identity, bit for bit */
  CHECK(bits(nn_round_operand(of(0x3f818000u), NN_BF16)) == 0x3f820000u);
  CHECK(bits(nn_round_operand(of(0x3f803000u), NN_TF32)) == 0x3f804000u);
  CHECK(bits(nn_round_operand(of(0x7f800001u), NN_FLOAT32)) == 0x7f800001u);
  CHECK(bits(nn_round_operand(of(0x3f818001u), NN_FLOAT32)) == 0x3f818001u);
}

/* The reference: the two representable neighbours lo <= |x| < hi (the
 * pattern with the dropped bits cleared, and the next one), the nearer one
 * by their distances in double (exact), the even one on a tie. */
static uint32_t reference(uint32_t u, int drop) {
  const uint32_t sign = u & 0x80000000u, mag = u & 0x7fffffffu, step = 1u << drop;
  const uint32_t lo = mag & ~(step - 1), hi = lo + step; /* hi may be Inf's pattern */
  /* hi at Inf's pattern stands for 2^128, where the exponent range ends */
  const double x = of(mag), dlo = x - (double)of(lo);
  const double dhi = (hi >= 0x7f800000u ? 0x1p128 : (double)of(hi)) - x;
  uint32_t r = dlo < dhi ? lo : dhi < dlo ? hi : ((lo >> drop) & 1u) ? hi : lo;
  if (r > 0x7f800000u) r = 0x7f800000u;
  return sign | r;
}

static void test_against_reference(void) {
  ce_rng g = ce_rng_make(2026, 18, 0, 3);
  long bad = 0, n = 0;
  for (int drop = 13; drop <= 16; drop += 3)
    for (long i = 0; i < 2000000; i++) {
      uint32_t u = ce_rng_u32(&g);
      /* half the draws near a tie, where the rule matters */
      if (i & 1) u = (u & ~((1u << drop) - 1)) | (1u << (drop - 1)) | (u & 1u);
      if ((u & 0x7f800000u) == 0x7f800000u) continue; /* Inf, NaN: the exact cases */
      const uint32_t want = reference(u, drop);
      const uint32_t got = bits(drop == 16 ? nn_round_bf16(of(u)) : nn_round_tf32(of(u)));
      n++;
      if (got != want && bad++ < 5)
        fprintf(stderr, "  drop %d: 0x%08x -> 0x%08x, reference 0x%08x\n", drop, (unsigned)u,
                (unsigned)got, (unsigned)want);
    }
  CHECK_MSG(bad == 0, "%ld of %ld values differ from the reference", bad, n);
}

/* bf16 storage (the CUDA backend's native operands, precision.h): the bits
 * are nn_round_bf16's high half, and back, bit for bit; every high half with
 * low halves at and around the tie (0x8000), both ends and random ones; and
 * every bf16 pattern back and forth (a signalling NaN comes back quiet). */
static void test_bf16_storage(void) {
  static const uint32_t LOW[] = {0x0000u, 0x0001u, 0x7fffu, 0x8000u, 0x8001u, 0xffffu};
  ce_rng r = ce_rng_make(2026, 18, 1, 0);
  long bad = 0;
  for (uint32_t hi = 0; hi < 65536u; hi++) {
    for (int k = 0; k < 8; k++) {
      const uint32_t lo = k < 6 ? LOW[k] : ce_rng_u32(&r) & 0xffffu;
      const float x = of(hi << 16 | lo);
      const uint32_t want = bits(nn_round_bf16(x));
      const uint16_t b = nn_bf16_bits(x);
      if ((uint32_t)b << 16 != want || bits(nn_bf16_value(b)) != want) {
        if (!bad)
          fprintf(stderr, "  0x%08x: bf16 bits 0x%04x, back 0x%08x, nn_round_bf16 0x%08x\n",
                  (unsigned)bits(x), (unsigned)b, (unsigned)bits(nn_bf16_value(b)),
                  (unsigned)want);
        bad++;
      }
    }
    const uint16_t h = (uint16_t)hi;
    const int snan = (h & 0x7f80u) == 0x7f80u && (h & 0x7fu) && !(h & 0x40u);
    if (nn_bf16_bits(nn_bf16_value(h)) != (snan ? (uint16_t)(h | 0x40u) : h)) bad++;
  }
  CHECK_MSG(bad == 0, "%ld bf16 storage patterns differ from nn_round_bf16", bad);
}

static void test_names_and_errors(void) {
  CHECK(nn_precision_parse("float32") == NN_FLOAT32);
  CHECK(nn_precision_parse("tf32") == NN_TF32);
  CHECK(nn_precision_parse("bf16") == NN_BF16);
  CHECK_ERR(nn_precision_parse("fp16"), "precision 'fp16': expected float32, tf32 or bf16");
  CHECK(!strcmp(nn_precision_name(NN_BF16), "bf16"));
  /* a backend that runs float32 only: a clear error naming it */
  nn_backend plain = nn_backend_cpu;
  plain.name = "plain";
  plain.precisions = 0;
  nn_net net;
  nn_init(&net);
  CHECK_OK(nn_set_backend(&net, &plain));
  CHECK_ERR(nn_set_precision(&net, NN_BF16),
            "precision bf16: the trainer backend 'plain' does not run it (it runs: float32)");
  CHECK(net.precision == NN_FLOAT32);
  CHECK_OK(nn_set_precision(&net, NN_FLOAT32));
  CHECK_ERR(nn_set_precision(&net, 7), "precision 7");
  nn_free(&net);
  nn_init(&net);
  CHECK_OK(nn_set_precision(&net, NN_BF16)); /* the CPU backend emulates both */
  CHECK(net.precision == NN_BF16);
  CHECK_OK(nn_set_precision(&net, NN_TF32));
  /* after nn_set_batch: refused (a device backend's scratch depends on it) */
  CHECK(nn_conv(&net, "c", nn_input(&net, "x", 1, 2, 2, 2), 1, NN_K3(1, 1, 1), NN_K3(1, 1, 1),
                NN_K3(0, 0, 0)) >= 0);
  CHECK_OK(nn_finalize(&net, 1));
  CHECK_OK(nn_set_batch(&net, 2));
  CHECK_ERR(nn_set_precision(&net, NN_BF16), "before nn_set_batch");
  CHECK_OK(nn_set_precision(&net, NN_TF32)); /* unchanged: fine */
  nn_free(&net);
}

int main(void) {
  if (nn_backend_init(&nn_backend_cpu, 0) < 0) {
    fprintf(stderr, "%s\n", ce_err_msg());
    return 1;
  }
  RUN(test_bf16_exact);
  RUN(test_tf32_exact);
  RUN(test_against_reference);
  RUN(test_bf16_storage);
  RUN(test_names_and_errors);
  nn_backend_finish(&nn_backend_cpu);
  return check_report();
}
