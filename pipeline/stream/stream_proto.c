/* stream_proto.c - header encoding, decoding and validation. */
#include "pipeline/stream/stream_proto.h"

#include <pthread.h>
#include <stdlib.h>
#include <string.h>
#if defined(__GLIBC__)
#include <malloc.h>
#endif

#include "common/checksum.h"
#include "common/error.h"

static void put16(uint8_t *p, uint16_t v) { memcpy(p, &v, 2); }
static void put32(uint8_t *p, uint32_t v) { memcpy(p, &v, 4); }
static void put64(uint8_t *p, uint64_t v) { memcpy(p, &v, 8); }
static uint16_t get16(const uint8_t *p) { uint16_t v; memcpy(&v, p, 2); return v; }
static uint32_t get32(const uint8_t *p) { uint32_t v; memcpy(&v, p, 4); return v; }
static uint64_t get64(const uint8_t *p) { uint64_t v; memcpy(&v, p, 8); return v; }

void stream_header_encode(const stream_header *h, uint8_t out[STREAM_HEADER_SIZE]) {
  memset(out, 0, STREAM_HEADER_SIZE);
  put32(out + 0, STREAM_MAGIC);
  put16(out + 4, h->version ? h->version : STREAM_VERSION);
  put16(out + 6, h->type);
  put32(out + 8, h->flags);
  put32(out + 12, h->value);
  put64(out + 16, h->dataset_id);
  put32(out + 24, h->epoch);
  put32(out + 28, h->nsamples);
  put64(out + 32, h->chunk_id);
  put64(out + 40, h->position);
  put16(out + 48, h->dtype);
  put16(out + 50, h->rank);
  for (int i = 0; i < 4; i++) put32(out + 52 + 4 * i, h->in_shape[i]);
  for (int i = 0; i < 3; i++) put32(out + 68 + 4 * i, h->out_shape[i]);
  put64(out + 80, h->payload_xxh64);
  put64(out + 88, ce_xxh64(out, 88, 0));
}

const char *stream_type_name(int type) {
  static const char *names[] = {"?", "HELLO", "WELCOME", "CREDIT", "CHUNK",
                                "EPOCH_END", "HEARTBEAT", "ERROR", "BYE", "INFO", "RESET", "NOTICE"};
  return type >= 1 && type <= STREAM_NOTICE ? names[type] : "unknown";
}

static size_t shape_bytes(const uint32_t *s, int n) {
  size_t b = 4;
  for (int i = 0; i < n; i++) {
    if (s[i] == 0 || s[i] > 65536) return 0;
    b *= s[i];
    if (b > ((size_t)1 << 32)) return 0;
  }
  return b;
}
size_t stream_input_bytes(const stream_header *h) { return shape_bytes(h->in_shape, 4); }
size_t stream_target_bytes(const stream_header *h) { return shape_bytes(h->out_shape, 3); }

int stream_header_decode(const void *buf, size_t len, stream_header *h) {
  const uint8_t *p = buf;
  if (len != STREAM_HEADER_SIZE)
    CE_FAIL("header frame of %zu bytes, expected %d", len, STREAM_HEADER_SIZE);
  if (get32(p) != STREAM_MAGIC) CE_FAIL("bad magic 0x%08x, expected \"CEMS\"", get32(p));
  if (get64(p + 88) != ce_xxh64(p, 88, 0)) CE_FAIL("header checksum mismatch");
  h->version = get16(p + 4);
  h->type = get16(p + 6);
  if (h->version != STREAM_VERSION) {
    ce_err("protocol version %u, expected %d", h->version, STREAM_VERSION);
    return STREAM_E_VERSION;
  }
  if (h->type < STREAM_HELLO || h->type > STREAM_NOTICE) CE_FAIL("unknown message type %u", h->type);
  h->flags = get32(p + 8);
  h->value = get32(p + 12);
  h->dataset_id = get64(p + 16);
  h->epoch = get32(p + 24);
  h->nsamples = get32(p + 28);
  h->chunk_id = get64(p + 32);
  h->position = get64(p + 40);
  h->dtype = get16(p + 48);
  h->rank = get16(p + 50);
  for (int i = 0; i < 4; i++) h->in_shape[i] = get32(p + 52 + 4 * i);
  for (int i = 0; i < 3; i++) h->out_shape[i] = get32(p + 68 + 4 * i);
  h->payload_xxh64 = get64(p + 80);
  if (h->type == STREAM_HELLO) { /* a peer's claims, checked before anything uses them */
    if (h->nsamples == 0 || h->nsamples > 65535)
      CE_FAIL("HELLO with world %u, expected 1..65535 ranks", h->nsamples);
    if (h->rank >= h->nsamples) CE_FAIL("HELLO with rank %u of %u ranks", h->rank, h->nsamples);
    if (h->value == 0) CE_FAIL("HELLO with no credit");
  }
  if (h->type == STREAM_CHUNK) {
    if (h->dtype != STREAM_DTYPE_F32) CE_FAIL("CHUNK dtype %u, expected 1 (float32)", h->dtype);
    if (!stream_input_bytes(h) || !stream_target_bytes(h)) CE_FAIL("CHUNK with absurd shapes");
    if (h->nsamples == 0 || h->nsamples > 65536)
      CE_FAIL("CHUNK with %u samples, expected 1..65536", h->nsamples);
  }
  return 0;
}

void stream_row_sums(const void *inputs, size_t in_bytes, const void *targets, size_t out_bytes,
                     uint32_t nsamples, uint64_t *sums) {
  for (uint32_t k = 0; k < nsamples; k++) {
    sums[2 * (size_t)k] = ce_xxh64((const uint8_t *)inputs + k * in_bytes, in_bytes, 0);
    sums[2 * (size_t)k + 1] = ce_xxh64((const uint8_t *)targets + k * out_bytes, out_bytes, 0);
  }
}

int64_t stream_rows_check(const void *inputs, size_t in_bytes, const void *targets,
                          size_t out_bytes, uint32_t nsamples, const void *sums) {
  for (uint32_t k = 0; k < nsamples; k++) {
    uint64_t want[2];
    memcpy(want, (const uint8_t *)sums + 16 * (size_t)k, 16);
    if (ce_xxh64((const uint8_t *)inputs + k * in_bytes, in_bytes, 0) != want[0] ||
        ce_xxh64((const uint8_t *)targets + k * out_bytes, out_bytes, 0) != want[1])
      return k;
  }
  return -1;
}

static void tune_malloc_once(void) {
#if defined(__GLIBC__)
  if (getenv("MALLOC_MMAP_THRESHOLD_") || getenv("MALLOC_TRIM_THRESHOLD_")) return;
  mallopt(M_MMAP_THRESHOLD, 32 << 20); /* glibc's maximum (half its 64 MiB arena heaps) */
  mallopt(M_TRIM_THRESHOLD, 256 << 20);
#endif
}

void stream_tune_malloc(void) {
  static pthread_once_t once = PTHREAD_ONCE_INIT;
  pthread_once(&once, tune_malloc_once);
}
