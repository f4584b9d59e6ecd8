/* fuzz_stream.c - the consumer side of the stream (stream_client.c) against
 * whatever a producer may send: a broken, foreign or hostile one. A trainer
 * rank that reads a malformed message must count and drop it, or fail with a
 * message; never crash, read past a frame, or hang.
 *
 * A fake producer (a ROUTER on an ipc:// endpoint of this process) takes a
 * real client's HELLO and sends it the messages the input describes, then an
 * ERROR of its own so that the client always ends; the client's next() is
 * called until it fails. Every chunk it returns is read whole (the sanitizers
 * see a short array) and must have the shapes and count its header says.
 *
 * The input: one byte of client options (bit 0: ask for normalised data,
 * bit 1: expect dataset id 42, bit 2: start at epoch 1, position 3), then
 * messages, each
 *
 *   mode (1 byte)   bit 0: write the header's checksum (bytes 88..95) after
 *                   the others; bit 1: write the payload XXH64 (bytes 80..87:
 *                   of frames 1 and 2 for a CHUNK, of frame 1 otherwise);
 *                   bit 2: write a CHUNK's row checksums (frame 2) from its
 *                   row frames
 *   header (96 bytes, as sent but for what mode writes)
 *   frames (1 byte), then for each: length (2 bytes, little-endian), bytes
 *
 * so that mutations reach past the checksums into what the client does with
 * a message it believes (shapes, counts, frame sizes, positions, epochs,
 * RESETs, shared-memory offers). A message cut short by the input's end is
 * not sent. The built-in seeds are a producer's session made with
 * stream_header_encode: WELCOME, one- and two-sample chunks, EPOCH_END,
 * HEARTBEAT, INFO, NOTICE, RESET; and an ERROR without its text. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#define FUZZ_BUILTIN_SEEDS
#include "common/checksum.h"
#include "common/error.h"
#include "fuzz_main.h"
#include "pipeline/stream/stream_client.h"
#include "pipeline/stream/stream_proto.h"

static void *g_ctx, *g_router;
static char g_endpoint[128];

/* A fake producer of its own for each input (a fresh ipc endpoint): no
 * message of an earlier input's client (its late CREDITs, BYE, or a HELLO
 * said again on a RESET) can be taken for this one's. */
static void producer_open(void) {
  static unsigned long n;
  if (!g_ctx && !(g_ctx = zmq_ctx_new())) abort();
  snprintf(g_endpoint, sizeof g_endpoint, "ipc:///tmp/coemu-fuzz-stream-%d-%lu.sock", (int)getpid(),
           n++);
  unlink(g_endpoint + 6);
  g_router = zmq_socket(g_ctx, ZMQ_ROUTER);
  int linger = 0;
  if (!g_router || zmq_setsockopt(g_router, ZMQ_LINGER, &linger, sizeof linger) != 0 ||
      zmq_bind(g_router, g_endpoint) != 0) {
    fprintf(stderr, "fuzz_stream: cannot bind %s: %s\n", g_endpoint, zmq_strerror(zmq_errno()));
    abort();
  }
}

static void producer_close(void) {
  zmq_close(g_router);
  g_router = NULL;
  unlink(g_endpoint + 6);
}

/* The identity of the client whose HELLO comes next (waits at most 3 s
 * for each message); *others counts the messages before it. */
static size_t hello_identity(uint8_t *id, size_t cap, int *others) {
  zmq_pollitem_t it = {g_router, 0, ZMQ_POLLIN, 0};
  for (*others = 0;; ++*others) {
    if (zmq_poll(&it, 1, 3000) <= 0) return 0;
    int more = 0;
    size_t n = 0, more_len = sizeof more;
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, g_router, 0) < 0) return zmq_msg_close(&m), 0;
    n = zmq_msg_size(&m);
    if (n > cap) n = cap;
    memcpy(id, zmq_msg_data(&m), n);
    zmq_msg_close(&m);
    int hello = 0;
    for (int k = 0;; k++) { /* the message's frames: its header says HELLO */
      zmq_getsockopt(g_router, ZMQ_RCVMORE, &more, &more_len);
      if (!more) break;
      zmq_msg_init(&m);
      if (zmq_msg_recv(&m, g_router, 0) < 0) return zmq_msg_close(&m), 0;
      stream_header h;
      if (k == 0 && stream_header_decode(zmq_msg_data(&m), zmq_msg_size(&m), &h) == 0)
        hello = h.type == STREAM_HELLO;
      zmq_msg_close(&m);
    }
    if (hello) return n;
  }
}

static void put64(uint8_t *p, uint64_t v) {
  for (int i = 0; i < 8; i++) p[i] = (uint8_t)(v >> (8 * i));
}

static uint32_t get32(const uint8_t *p) {
  return (uint32_t)p[0] | (uint32_t)p[1] << 8 | (uint32_t)p[2] << 16 | (uint32_t)p[3] << 24;
}

#define MAX_FRAMES 256
typedef struct {
  uint8_t mode, header[STREAM_HEADER_SIZE];
  int nframes;
  uint8_t *frame[MAX_FRAMES];
  size_t len[MAX_FRAMES];
} message;

/* One message from the input at *p (0: the input ends before it is whole).
 * Frames point into a buffer of their own (mode may rewrite frame 2). */
static int take_message(const uint8_t **p, const uint8_t *end, message *m) {
  if (end - *p < 1 + STREAM_HEADER_SIZE + 1) return 0;
  m->mode = *(*p)++;
  memcpy(m->header, *p, STREAM_HEADER_SIZE);
  *p += STREAM_HEADER_SIZE;
  int want = *(*p)++;
  for (m->nframes = 0; m->nframes < want; m->nframes++) { /* nframes: those held */
    if (end - *p < 2) return 0;
    size_t n = (size_t)(*p)[0] | (size_t)(*p)[1] << 8;
    *p += 2;
    if ((size_t)(end - *p) < n) return 0;
    uint8_t *f = malloc(n ? n : 1);
    if (!f) abort();
    memcpy(f, *p, n);
    m->frame[m->nframes] = f, m->len[m->nframes] = n;
    *p += n;
  }
  return 1;
}

static void message_free(message *m) {
  for (int i = 0; i < m->nframes; i++) free(m->frame[i]);
  m->nframes = 0;
}

/* What mode asks: row checksums, the payload XXH64, the header checksum. */
static void fix_up(message *m) {
  uint8_t *h = m->header;
  int chunk = (h[6] | h[7] << 8) == STREAM_CHUNK;
  uint32_t ns = get32(h + 28);
  /* m->frame[i] is the message's frame i + 1 (frame 0 is the header):
   * ids, row checksums, then the rows */
  if ((m->mode & 4) && chunk && m->nframes >= 2 && ns <= (uint32_t)(m->nframes - 2) / 2 &&
      m->len[1] >= 16 * (size_t)ns) {
    for (uint32_t k = 0; k < ns; k++) {
      put64(m->frame[1] + 16 * k, ce_xxh64(m->frame[2 + k], m->len[2 + k], 0));
      put64(m->frame[1] + 16 * k + 8, ce_xxh64(m->frame[2 + ns + k], m->len[2 + ns + k], 0));
    }
  }
  if (m->mode & 2) {
    ce_xxh64_state s;
    ce_xxh64_init(&s, 0);
    for (int i = 0; i < m->nframes && i < (chunk ? 2 : 1); i++)
      ce_xxh64_update(&s, m->frame[i], m->len[i]);
    put64(h + 80, ce_xxh64_digest(&s));
  }
  if (m->mode & 1) put64(h + 88, ce_xxh64(h, 88, 0));
}

static void send_to(const uint8_t *id, size_t idlen, const message *m) {
  zmq_send(g_router, id, idlen, ZMQ_SNDMORE);
  zmq_send(g_router, m->header, STREAM_HEADER_SIZE, m->nframes ? ZMQ_SNDMORE : 0);
  for (int i = 0; i < m->nframes; i++)
    zmq_send(g_router, m->frame[i], m->len[i], i + 1 < m->nframes ? ZMQ_SNDMORE : 0);
}

/* The producer's last word: an ERROR, so that the client's next() ends. */
static void send_final_error(const uint8_t *id, size_t idlen) {
  static const char text[] = "fuzz: end of the input";
  stream_header h = {.type = STREAM_ERROR, .payload_xxh64 = ce_xxh64(text, sizeof text - 1, 0)};
  message m = {.nframes = 1, .frame = {(uint8_t *)text}, .len = {sizeof text - 1}};
  stream_header_encode(&h, m.header);
  send_to(id, idlen, &m);
}

/* Read a returned chunk whole and check it against its header. */
static void read_chunk(const stream_chunk_view *v) {
  size_t inb = stream_input_bytes(&v->h), outb = stream_target_bytes(&v->h);
  if (v->h.nsamples == 0 || !v->ids || !v->inputs || !v->targets || !inb || !outb) {
    fprintf(stderr, "fuzz_stream: a chunk returned without its arrays or shapes\n");
    abort();
  }
  volatile uint8_t sink = 0;
  const uint8_t *a = (const uint8_t *)v->ids, *b = (const uint8_t *)v->inputs,
                *c = (const uint8_t *)v->targets;
  for (size_t i = 0; i < 8 * (size_t)v->h.nsamples; i++) sink ^= a[i];
  for (size_t i = 0; i < inb * v->h.nsamples; i++) sink ^= b[i];
  for (size_t i = 0; i < outb * v->h.nsamples; i++) sink ^= c[i];
  (void)sink;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
  if (size < 1) return 0;
  producer_open();
  stream_client_opts o = {.endpoint = g_endpoint, .rank = 0, .world = 1, .credit = 4,
                          .flags = data[0] & 1, .dataset_id = data[0] & 2 ? 42 : 0,
                          .epoch = data[0] & 4 ? 1 : 0, .position = data[0] & 4 ? 3 : 0,
                          .heartbeat_s = 1, .timeout_s = 5};
  stream_client *c = NULL;
  if (stream_client_open(&o, &c) < 0) {
    fprintf(stderr, "fuzz_stream: stream_client_open: %s\n", ce_err_msg());
    abort();
  }
  /* A HELLO can be lost (ZeroMQ drops what a pipe held when its first
   * connection fails and is made again: seen once in some thousands of
   * inputs on a loaded host); a consumer then finds it by its HEARTBEAT's
   * RESET, which this one-thread producer cannot wait for: the client
   * reconnects instead, as a trainer's does after its timeout. */
  uint8_t id[256];
  int others = 0;
  size_t idlen = 0;
  for (int tries = 0; tries < 5 && !(idlen = hello_identity(id, sizeof id, &others)); tries++)
    if (stream_client_reconnect(c) < 0) {
      fprintf(stderr, "fuzz_stream: reconnect: %s\n", ce_err_msg());
      abort();
    }
  if (!idlen) {
    fprintf(stderr, "fuzz_stream: no HELLO from the client in 5 connections (%d other "
                    "messages)\n", others);
    abort();
  }
  const uint8_t *p = data + 1, *end = data + size;
  message m = {0};
  while (take_message(&p, end, &m)) {
    fix_up(&m);
    send_to(id, idlen, &m);
    message_free(&m);
  }
  message_free(&m);
  send_final_error(id, idlen);
  /* every message sent is queued for the client: it reads them all, then the
   * ERROR; 1 (a chunk) and 0 (an epoch's end) go on, anything else ends */
  for (int calls = 0;; calls++) {
    stream_chunk_view v;
    ce_err_clear();
    int rc = stream_client_next(c, &v);
    if (rc == 1) {
      read_chunk(&v);
      continue;
    }
    if (rc == 0) continue;
    if (!ce_err_msg()[0]) {
      fprintf(stderr, "fuzz_stream: next() failed (%d) without a message\n", rc);
      abort();
    }
    if (rc == STREAM_E_SILENT) {
      fprintf(stderr, "fuzz_stream: the client waited past its timeout for messages that were "
                      "all sent: %s\n", ce_err_msg());
      abort();
    }
    break;
  }
  stream_client_close(c);
  producer_close();
  return 0;
}

/* ---- the built-in seeds: one producer session, as coemu serve sends it -- */

typedef struct {
  uint8_t b[8192];
  size_t n;
} seedbuf;

static void seed_put(seedbuf *s, const void *d, size_t n) {
  if (s->n + n > sizeof s->b) abort();
  memcpy(s->b + s->n, d, n);
  s->n += n;
}

/* A message of the seed: mode, header, frames. */
static void seed_message(seedbuf *s, uint8_t mode, const stream_header *h, int nframes,
                         const void *const *frames, const size_t *lens) {
  uint8_t hb[STREAM_HEADER_SIZE], nf = (uint8_t)nframes;
  stream_header_encode(h, hb);
  seed_put(s, &mode, 1);
  seed_put(s, hb, sizeof hb);
  seed_put(s, &nf, 1);
  for (int i = 0; i < nframes; i++) {
    uint8_t l[2] = {(uint8_t)lens[i], (uint8_t)(lens[i] >> 8)};
    seed_put(s, l, 2);
    seed_put(s, frames[i], lens[i]);
  }
}

/* A chunk of ns samples of a 3 x 2^3 input and 2 x 2^2 target, at position. */
static void seed_chunk(seedbuf *s, uint8_t mode, uint32_t epoch, uint64_t position, uint32_t ns) {
  enum { NIN = 3 * 8, NOUT = 2 * 4 };
  static float in[4][NIN], out[4][NOUT];
  uint64_t ids[4], sums[8];
  for (uint32_t k = 0; k < ns; k++) {
    ids[k] = position + k;
    for (int i = 0; i < NIN; i++) in[k][i] = (float)(k * 100 + i);
    for (int i = 0; i < NOUT; i++) out[k][i] = (float)(k * 10 + i) * 0.5f;
  }
  stream_row_sums(in, sizeof in[0], out, sizeof out[0], ns, sums);
  ce_xxh64_state xs;
  ce_xxh64_init(&xs, 0);
  ce_xxh64_update(&xs, ids, 8 * ns);
  ce_xxh64_update(&xs, sums, 16 * ns);
  stream_header h = {.type = STREAM_CHUNK, .epoch = epoch, .nsamples = ns, .position = position,
                     .dtype = STREAM_DTYPE_F32, .in_shape = {3, 2, 2, 2}, .out_shape = {2, 2, 2},
                     .payload_xxh64 = ce_xxh64_digest(&xs)};
  const void *fr[3 + 2 * 4] = {ids, sums};
  size_t len[3 + 2 * 4] = {8 * ns, 16 * ns};
  for (uint32_t k = 0; k < ns; k++) {
    fr[2 + k] = in[k], len[2 + k] = sizeof in[k];
    fr[2 + ns + k] = out[k], len[2 + ns + k] = sizeof out[k];
  }
  seed_message(s, mode, &h, 2 + 2 * (int)ns, fr, len);
}

static void seed_session(seedbuf *s, uint8_t options, uint8_t mode) {
  s->n = 0;
  seed_put(s, &options, 1);
  stream_header w = {.type = STREAM_WELCOME, .dataset_id = 42, .nsamples = 3,
                     .dtype = STREAM_DTYPE_F32, .in_shape = {3, 2, 2, 2}, .out_shape = {2, 2, 2}};
  seed_message(s, mode, &w, 0, NULL, NULL);
  seed_chunk(s, mode, 0, 0, 1);
  seed_chunk(s, mode, 0, 1, 2);
  stream_header e = {.type = STREAM_EPOCH_END, .epoch = 0, .position = 3};
  seed_message(s, mode, &e, 0, NULL, NULL);
  stream_header hb = {.type = STREAM_HEARTBEAT};
  seed_message(s, mode, &hb, 0, NULL, NULL);
  static const char json[] = "{\"world\": 1}";
  stream_header info = {.type = STREAM_INFO, .value = 1, .nsamples = 3,
                        .payload_xxh64 = ce_xxh64(json, sizeof json - 1, 0)};
  const void *jf[1] = {json};
  size_t jl[1] = {sizeof json - 1};
  seed_message(s, mode, &info, 1, jf, jl);
  static const char note[] = "the job making the chunks stopped";
  stream_header nt = {.type = STREAM_NOTICE, .value = STREAM_NOTICE_STOPPED,
                      .payload_xxh64 = ce_xxh64(note, sizeof note - 1, 0)};
  const void *nf[1] = {note};
  size_t nl[1] = {sizeof note - 1};
  seed_message(s, mode, &nt, 1, nf, nl);
  seed_chunk(s, mode, 1, 0, 3);
  stream_header r = {.type = STREAM_RESET, .epoch = 1, .chunk_id = 1};
  seed_message(s, mode, &r, 0, NULL, NULL);
}

static int fuzz_builtin_seeds(fuzz_seed_fn add, void *ctx) {
  seedbuf *s = malloc(sizeof *s);
  if (!s) return -1;
  /* as sent; with every fix-up asked for (the same bytes); other options */
  static const uint8_t cases[][2] = {{0, 0}, {0, 7}, {3, 0}, {4, 7}};
  for (size_t i = 0; i < sizeof cases / sizeof cases[0]; i++) {
    seed_session(s, cases[i][0], cases[i][1]);
    add(s->b, s->n, ctx);
  }
  /* an ERROR without its text frame ends the session: the client said
   * nothing (its next() failed with no message) until the fuzzer found it */
  s->n = 0;
  uint8_t options = 0;
  seed_put(s, &options, 1);
  stream_header e = {.type = STREAM_ERROR};
  seed_message(s, 0, &e, 0, NULL, NULL);
  add(s->b, s->n, ctx);
  free(s);
  return 0;
}
