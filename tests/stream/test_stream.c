/* test_stream.c - the stream protocol: header codec, credit bound, resume
 * without loss or repetition, malformed messages dropped, a vanished
 * producer detected and reconnected, CURVE authentication. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <pthread.h>
#include <stdatomic.h>
#include <sys/socket.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <zmq.h>

#include "check.h"
#include "common/progress.h"
#include "pipeline/stream/stream_client.h"
#include "pipeline/stream/stream_proto.h"
#include "pipeline/stream/stream_security.h"
#include "pipeline/stream/stream_server.h"

#define N 4
#define NF 2
#define SAMPLES 40

static const char *tmpdir;

/* Source: sample s of epoch e for rank r of W is id = e*1000 + r + s*W; its
 * inputs are filled with the id so the consumer can check them. */
typedef struct {
  atomic_long served;   /* chunks handed out */
  atomic_long consumed; /* chunks the test consumer has finished */
  int credit;
  atomic_int credit_violation;
  int chunk;            /* samples per chunk */
  int bad_sums;         /* 1: hand the server row checksums, the last sample's targets one wrong */
  int row_views;        /* 1: hand rows one by one (stream_chunk.in_rows), stored in reverse */
  atomic_long rows_released, rows_wrong; /* row_release calls; rows not released exactly once
                                            before their chunk */
} src_ctx;

typedef struct {
  uint64_t ids[8], sums[16];
  float in[8 * 3 * N * N * N], out[8 * NF * N * N];
  const void *in_rows[8], *tg_rows[8];
  void *tokens[16];
  atomic_int freed[16]; /* row_release calls per row frame */
  uint32_t n;
  src_ctx *s;
} chunk_buf;

static void release_buf(void *t) { free(t); }

static void release_row(void *t) { atomic_fetch_add((atomic_int *)t, 1); }

static void release_rows_buf(void *t) {
  chunk_buf *b = t;
  for (uint32_t j = 0; j < 2 * b->n; j++) {
    int f = atomic_load(&b->freed[j]);
    atomic_fetch_add(&b->s->rows_released, f);
    if (f != 1) atomic_fetch_add(&b->s->rows_wrong, 1);
  }
  free(b);
}

static int source(void *ctx, const stream_consumer *c, uint32_t epoch, uint64_t pos,
                  stream_chunk *out) {
  src_ctx *s = ctx;
  uint64_t per_rank = SAMPLES / c->world;
  if (pos >= per_rank) return 0;
  long inflight = atomic_load(&s->served) - atomic_load(&s->consumed);
  if (inflight >= s->credit + 1) atomic_store(&s->credit_violation, 1);
  atomic_fetch_add(&s->served, 1);
  chunk_buf *b = malloc(sizeof *b);
  uint32_t k = 0;
  for (; k < (uint32_t)s->chunk && pos + k < per_rank; k++) {
    uint64_t id = epoch * 1000u + c->rank + (pos + k) * c->world;
    b->ids[k] = id;
    for (int i = 0; i < 3 * N * N * N; i++) b->in[k * 3 * N * N * N + i] = (float)id;
    for (int i = 0; i < NF * N * N; i++) b->out[k * NF * N * N + i] = (float)id + 0.5f;
  }
  out->nsamples = k;
  out->ids = b->ids;
  out->inputs = b->in;
  out->targets = b->out;
  out->in_shape[0] = 3;
  out->in_shape[1] = out->in_shape[2] = out->in_shape[3] = N;
  out->out_shape[0] = NF;
  out->out_shape[1] = out->out_shape[2] = N;
  out->release = release_buf;
  out->token = b;
  if (s->row_views) { /* sample j's rows in slot k - 1 - j: not one block */
    b->n = k;
    b->s = s;
    for (uint32_t j = 0; j < k; j++) {
      uint32_t at = k - 1 - j;
      b->in_rows[j] = b->in + at * 3 * N * N * N;
      b->tg_rows[j] = b->out + at * NF * N * N;
    }
    for (uint32_t j = 0; j < k / 2; j++) { /* swap the rows into their reversed slots */
      float *x = b->in + j * 3 * N * N * N, *y = b->in + (k - 1 - j) * 3 * N * N * N;
      for (int i = 0; i < 3 * N * N * N; i++) { float v = x[i]; x[i] = y[i]; y[i] = v; }
      x = b->out + j * NF * N * N, y = b->out + (k - 1 - j) * NF * N * N;
      for (int i = 0; i < NF * N * N; i++) { float v = x[i]; x[i] = y[i]; y[i] = v; }
    }
    for (uint32_t j = 0; j < 2 * k; j++) {
      atomic_init(&b->freed[j], 0);
      b->tokens[j] = &b->freed[j];
    }
    out->inputs = out->targets = NULL;
    out->in_rows = b->in_rows;
    out->tg_rows = b->tg_rows;
    out->row_release = release_row;
    out->row_tokens = b->tokens;
    out->release = release_rows_buf;
  }
  if (s->bad_sums) { /* the source's own row checksums, forwarded as they are */
    stream_row_sums(b->in, 4 * 3 * N * N * N, b->out, 4 * NF * N * N, k, b->sums);
    for (uint32_t j = 0; j < k; j++)
      if (pos + j == per_rank - 1) b->sums[2 * j + 1] ^= 1;
    out->sums = b->sums;
  }
  return 1;
}

typedef struct {
  stream_server *srv;
  volatile int stop;
} srv_thread;

static void *serve(void *a) {
  srv_thread *t = a;
  stream_server_run(t->srv, &t->stop);
  return NULL;
}

static void start(srv_thread *t, pthread_t *th, const char *ep, src_ctx *ctx, uint32_t epochs,
                  const char *seckey, const char *authdir) {
  stream_server_opts o = {.endpoint = ep, .dataset_id = 77, .max_epochs = epochs, .max_credit = 64,
                          .heartbeat_s = 0.1, .timeout_s = 2,
                          .curve_secret_key_file = seckey, .curve_authorized_dir = authdir};
  t->stop = 0;
  if (stream_server_create(&o, source, ctx, &t->srv) < 0) {
    fprintf(stderr, "server: %s\n", ce_err_msg());
    exit(2);
  }
  pthread_create(th, NULL, serve, t);
}

static void stop(srv_thread *t, pthread_t th) {
  t->stop = 1;
  pthread_join(th, NULL);
  stream_server_destroy(t->srv);
}

static void test_header_codec(void) {
  stream_header h = {.type = STREAM_CHUNK, .flags = 1, .dataset_id = 5, .epoch = 3, .nsamples = 2,
                     .chunk_id = 9, .position = 18, .dtype = 1, .in_shape = {3, 4, 4, 4},
                     .out_shape = {7, 4, 4}, .payload_xxh64 = 0x1234};
  uint8_t b[STREAM_HEADER_SIZE];
  stream_header_encode(&h, b);
  stream_header d;
  CHECK_OK(stream_header_decode(b, sizeof b, &d));
  CHECK(d.type == STREAM_CHUNK && d.epoch == 3 && d.position == 18 && d.in_shape[3] == 4 &&
        d.out_shape[0] == 7 && d.payload_xxh64 == 0x1234 && d.dataset_id == 5);
  CHECK_ERR(stream_header_decode(b, sizeof b - 1, &d), "96");
  b[40] ^= 1;
  CHECK_ERR(stream_header_decode(b, sizeof b, &d), "checksum");
  b[40] ^= 1;
  b[0] = 'X';
  CHECK_ERR(stream_header_decode(b, sizeof b, &d), "magic");
  h.in_shape[1] = 0;
  stream_header_encode(&h, b);
  CHECK_ERR(stream_header_decode(b, sizeof b, &d), "shapes");
  h.in_shape[1] = 4;
  stream_header_encode(&h, b); /* a version forged without its checksum */
  b[4] = 4;
  CHECK_ERR(stream_header_decode(b, sizeof b, &d), "checksum");
  h.version = 2; /* a sound header of protocol version 2: told apart, with its type */
  stream_header_encode(&h, b);
  int dv = stream_header_decode(b, sizeof b, &d);
  CHECK_MSG(dv == STREAM_E_VERSION && d.version == 2 && d.type == STREAM_CHUNK, "decode %d", dv);
  CHECK(strstr(ce_err_msg(), "protocol version 2, expected 3") != NULL);
  h.version = 0;
  /* HELLO: world, rank and credit range-checked before anything uses them
   * (issue 13: world 65536 + W truncated to 16 bits) */
  stream_header hh = {.type = STREAM_HELLO, .value = 4, .nsamples = 65536 + 2, .rank = 1};
  stream_header_encode(&hh, b);
  CHECK_ERR(stream_header_decode(b, sizeof b, &d), "world 65538");
  hh.nsamples = 0;
  stream_header_encode(&hh, b);
  CHECK_ERR(stream_header_decode(b, sizeof b, &d), "world 0");
  hh.nsamples = 2;
  hh.rank = 2;
  stream_header_encode(&hh, b);
  CHECK_ERR(stream_header_decode(b, sizeof b, &d), "rank 2 of 2");
  hh.rank = 1;
  hh.value = 0;
  stream_header_encode(&hh, b);
  CHECK_ERR(stream_header_decode(b, sizeof b, &d), "no credit");
  hh.value = 1;
  stream_header_encode(&hh, b);
  CHECK_OK(stream_header_decode(b, sizeof b, &d));
  CHECK(d.nsamples == 2 && d.rank == 1);
}

/* One rank reads two whole epochs; the credit bound is never exceeded. */
static void test_epochs_and_credit(void) {
  char ep[300];
  snprintf(ep, sizeof ep, "ipc://%s/a.sock", tmpdir);
  src_ctx ctx = {.credit = 3, .chunk = 3};
  srv_thread t;
  pthread_t th;
  start(&t, &th, ep, &ctx, 2, NULL, NULL);
  stream_client_opts o = {.endpoint = ep, .rank = 0, .world = 1, .credit = 3, .heartbeat_s = 0.1,
                          .timeout_s = 5};
  stream_client *c;
  CHECK_OK(stream_client_open(&o, &c));
  int seen[2][SAMPLES] = {{0}};
  int ends = 0, r, bad = 0;
  stream_chunk_view v;
  while (c && ends < 2 && (r = stream_client_next(c, &v)) >= 0) {
    if (r == 0) {
      ends++;
      continue;
    }
    usleep(2000); /* a slow consumer: the producer must wait for credit */
    for (uint32_t k = 0; k < v.h.nsamples; k++) {
      uint64_t id = v.ids[k];
      int e = (int)(id / 1000), s = (int)(id % 1000);
      if (e != (int)v.h.epoch || s >= SAMPLES || v.inputs[k * 3 * N * N * N + 5] != (float)id ||
          v.targets[k * NF * N * N] != (float)id + 0.5f)
        bad++;
      else
        seen[e][s]++;
    }
    atomic_fetch_add(&ctx.consumed, 1);
  }
  CHECK(ends == 2 && bad == 0);
  for (int e = 0; e < 2; e++)
    for (int s = 0; s < SAMPLES; s++) CHECK_MSG(seen[e][s] == 1, "epoch %d sample %d seen %d times", e, s, seen[e][s]);
  CHECK(atomic_load(&ctx.credit_violation) == 0);
  CHECK(stream_client_dataset_id(c) == 77);
  stream_client_close(c);
  stop(&t, th);
}

/* Two ranks get disjoint halves; a consumer that stops mid-epoch and
 * resumes from its state loses and repeats nothing. */
static void test_ranks_and_resume(void) {
  char ep[300];
  snprintf(ep, sizeof ep, "ipc://%s/b.sock", tmpdir);
  src_ctx ctx = {.credit = 4, .chunk = 2};
  srv_thread t;
  pthread_t th;
  start(&t, &th, ep, &ctx, 1, NULL, NULL);
  int seen[SAMPLES] = {0};
  for (int rank = 0; rank < 2; rank++) {
    stream_client_opts o = {.endpoint = ep, .rank = (uint16_t)rank, .world = 2, .credit = 4,
                            .heartbeat_s = 0.1, .timeout_s = 5};
    stream_client *c;
    CHECK_OK(stream_client_open(&o, &c));
    stream_chunk_view v;
    int r = -1, chunks = 0;
    while (c && (r = stream_client_next(c, &v)) == 1) {
      for (uint32_t k = 0; k < v.h.nsamples; k++) seen[v.ids[k] % 1000]++;
      atomic_fetch_add(&ctx.consumed, 1);
      if (rank == 1 && ++chunks == 3) break; /* "killed" after 3 chunks */
    }
    if (rank == 1) {
      uint32_t epoch;
      uint64_t pos;
      stream_client_state(c, &epoch, &pos);
      CHECK(epoch == 0 && pos == 6);
      stream_client_close(c); /* without finishing: resume from (0, 6) */
      o.epoch = epoch;
      o.position = pos;
      CHECK_OK(stream_client_open(&o, &c));
      while (c && (r = stream_client_next(c, &v)) == 1) {
        for (uint32_t k = 0; k < v.h.nsamples; k++) seen[v.ids[k] % 1000]++;
        atomic_fetch_add(&ctx.consumed, 1);
      }
    }
    CHECK(r == 0);
    stream_client_close(c);
  }
  for (int s = 0; s < SAMPLES; s++) CHECK_MSG(seen[s] == 1, "sample %d seen %d times", s, seen[s]);
  stop(&t, th);
}

/* Garbage sent to the producer is counted and dropped; it keeps serving. */
static void test_malformed_dropped(void) {
  char ep[300];
  snprintf(ep, sizeof ep, "ipc://%s/c.sock", tmpdir);
  src_ctx ctx = {.credit = 4, .chunk = 4};
  srv_thread t;
  pthread_t th;
  start(&t, &th, ep, &ctx, 1, NULL, NULL);
  void *z = zmq_ctx_new(), *raw = zmq_socket(z, ZMQ_DEALER);
  int zero = 0;
  zmq_setsockopt(raw, ZMQ_LINGER, &zero, sizeof zero);
  zmq_connect(raw, ep);
  zmq_send(raw, "hello there", 11, 0);               /* wrong size */
  uint8_t junk[STREAM_HEADER_SIZE] = {0};
  zmq_send(raw, junk, sizeof junk, 0);               /* bad magic */
  stream_header h = {.type = STREAM_CREDIT, .value = 1000};
  uint8_t b[STREAM_HEADER_SIZE];
  stream_header_encode(&h, b);
  zmq_send(raw, b, sizeof b, 0);                     /* CREDIT before HELLO */
  char big[2 << 20];
  memset(big, 1, sizeof big);
  zmq_send(raw, big, sizeof big, 0);                 /* oversized: refused by MAXMSGSIZE */
  stream_client_opts o = {.endpoint = ep, .rank = 0, .world = 1, .credit = 2, .timeout_s = 5};
  stream_client *c;
  CHECK_OK(stream_client_open(&o, &c));
  stream_chunk_view v;
  int r, n = 0;
  while (c && (r = stream_client_next(c, &v)) == 1) n += (int)v.h.nsamples;
  CHECK(r == 0 && n == SAMPLES);
  stream_client_close(c);
  /* the raw socket connects on its own, and its messages may reach the
   * server after the client's whole epoch (seen on a loaded host): wait
   * for them, up to 10 s */
  stream_server_stats st;
  for (int ms = 0; ms < 10000; ms += 10) {
    stream_server_get_stats(t.srv, &st);
    if (st.malformed >= 2 && st.unexpected >= 1) break;
    nanosleep(&(struct timespec){0, 10000000}, NULL);
  }
  CHECK_MSG(st.malformed >= 2 && st.unexpected >= 1, "malformed %llu unexpected %llu",
            (unsigned long long)st.malformed, (unsigned long long)st.unexpected);
  zmq_close(raw);
  zmq_ctx_term(z);
  stop(&t, th);
}

/* One consumer at ep reads the whole epoch: SAMPLES samples in order, each
 * input row filled with its id and each target row with id + 0.5. */
static void consume_id_rows(const char *ep) {
  const size_t inb = 4 * 3 * N * N * N, outb = 4 * NF * N * N;
  stream_client_opts o = {.endpoint = ep, .rank = 0, .world = 1, .credit = 2, .timeout_s = 5};
  stream_client *c;
  CHECK_OK(stream_client_open(&o, &c));
  stream_chunk_view v;
  int r = -1, n = 0, bad = 0;
  while (c && (r = stream_client_next(c, &v)) == 1) {
    for (uint32_t k = 0; k < v.h.nsamples; k++) {
      bad += v.ids[k] != (uint64_t)(n + (int)k);
      for (size_t i = 0; i < inb / 4; i++) bad += v.inputs[k * inb / 4 + i] != (float)v.ids[k];
      for (size_t i = 0; i < outb / 4; i++)
        bad += v.targets[k * outb / 4 + i] != (float)v.ids[k] + 0.5f;
    }
    n += (int)v.h.nsamples;
  }
  CHECK_MSG(r == 0 && n == SAMPLES && bad == 0, "r %d, %d samples, %d values wrong (%s)", r, n,
            bad, ce_err_msg());
  if (c) stream_client_close(c);
}

/* Protocol 2: the row checksums a source hands over are sent as they are and
 * every row is checked against them by the consumer: the last chunk, whose
 * last sample carries a wrong targets checksum, is dropped (counted
 * malformed), never returned; the chunks before it arrive. (The last one, so
 * that the epoch's end follows: a consumer that dropped a chunk waits at its
 * position and drops what comes after it.) */
static void test_forwarded_row_sums(void) {
  char ep[300];
  snprintf(ep, sizeof ep, "ipc://%s/rows.sock", tmpdir);
  src_ctx ctx = {.credit = 4, .chunk = 2, .bad_sums = 1};
  srv_thread t;
  pthread_t th;
  start(&t, &th, ep, &ctx, 1, NULL, NULL);
  stream_client_opts o = {.endpoint = ep, .rank = 0, .world = 1, .credit = 4, .timeout_s = 5};
  stream_client *c;
  CHECK_OK(stream_client_open(&o, &c));
  stream_chunk_view v;
  int r, n = 0, saw_bad = 0;
  while (c && (r = stream_client_next(c, &v)) == 1) {
    n += (int)v.h.nsamples;
    for (uint32_t k = 0; k < v.h.nsamples; k++) saw_bad |= v.ids[k] >= SAMPLES - 2;
    /* what is returned is what was sent: id-filled rows */
    CHECK(v.inputs[0] == (float)v.ids[0] && v.targets[0] == (float)v.ids[0] + 0.5f);
  }
  stream_client_stats st;
  stream_client_get_stats(c, &st);
  CHECK_MSG(r == 0 && !saw_bad && st.malformed == 1 && n == SAMPLES - 2,
            "r %d n %d malformed %llu", r, n, (unsigned long long)st.malformed);
  stream_client_close(c);
  stop(&t, th);
}

/* A raw DEALER socket of context z at ep (5 s receive timeout) that has
 * sent a HELLO of protocol `version` asking for `credit` chunks. */
static void *raw_hello(void *z, const char *ep, uint16_t version, uint64_t credit) {
  void *raw = zmq_socket(z, ZMQ_DEALER);
  int zero = 0, tmo = 5000;
  zmq_setsockopt(raw, ZMQ_LINGER, &zero, sizeof zero);
  zmq_setsockopt(raw, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
  zmq_connect(raw, ep);
  stream_header h = {.version = version, .type = STREAM_HELLO, .value = credit, .nsamples = 1};
  uint8_t b[STREAM_HEADER_SIZE];
  stream_header_encode(&h, b);
  zmq_send(raw, b, sizeof b, 0);
  return raw;
}

/* Protocol 3: a CHUNK of n samples is the header, the ids, the row
 * checksums and one frame per row (n inputs rows, then n targets rows), so
 * no frame is larger than a sample's row (version 2: 5 frames, the rows of
 * a chunk in one inputs and one targets frame); read here frame by frame
 * from a raw socket. The C client hands out the rows gathered into one
 * batch, every value in place, across chunks of 3 and a last one of 1
 * (handed out as its own frames). */
static void test_row_frames(void) {
  char ep[300];
  snprintf(ep, sizeof ep, "ipc://%s/rowframes.sock", tmpdir);
  src_ctx ctx = {.credit = 4, .chunk = 3};
  srv_thread t;
  pthread_t th;
  start(&t, &th, ep, &ctx, 1, NULL, NULL);
  void *z = zmq_ctx_new(), *raw = raw_hello(z, ep, STREAM_VERSION, 1);
  const size_t inb = 4 * 3 * N * N * N, outb = 4 * NF * N * N;
  int got_chunk = 0;
  for (int msg = 0; msg < 10 && !got_chunk; msg++) {
    zmq_msg_t f[16];
    int nf = 0, more = 1;
    while (more) {
      zmq_msg_t m;
      zmq_msg_init(&m);
      if (zmq_msg_recv(&m, raw, 0) < 0) {
        zmq_msg_close(&m);
        break;
      }
      more = zmq_msg_more(&m);
      if (nf < 16)
        f[nf++] = m;
      else
        zmq_msg_close(&m);
    }
    stream_header d;
    if (nf >= 1 && stream_header_decode(zmq_msg_data(&f[0]), zmq_msg_size(&f[0]), &d) == 0 &&
        d.type == STREAM_CHUNK) {
      got_chunk = 1;
      CHECK_MSG(d.nsamples == 3 && nf == 9, "a CHUNK of %u samples in %d frames, expected 3 in 9",
                d.nsamples, nf);
      for (int k = 0; k < 3 && nf == 9; k++) {
        /* a raw frame may lie at any byte offset of ZeroMQ's receive buffer
         * (small ones are not copied out of it): its floats are read with
         * memcpy, as the clients realign such frames */
        const char *in = zmq_msg_data(&f[3 + k]), *tg = zmq_msg_data(&f[6 + k]);
        uint64_t id;
        float in0, in1, tg0, tg1;
        memcpy(&id, (const char *)zmq_msg_data(&f[1]) + 8 * k, 8);
        int sized = zmq_msg_size(&f[3 + k]) == inb && zmq_msg_size(&f[6 + k]) == outb;
        if (sized) {
          memcpy(&in0, in, 4), memcpy(&in1, in + inb - 4, 4);
          memcpy(&tg0, tg, 4), memcpy(&tg1, tg + outb - 4, 4);
        }
        CHECK_MSG(sized && in0 == (float)id && in1 == (float)id && tg0 == (float)id + 0.5f &&
                      tg1 == (float)id + 0.5f,
                  "row %d: frames of %zu and %zu bytes", k, zmq_msg_size(&f[3 + k]),
                  zmq_msg_size(&f[6 + k]));
      }
    }
    for (int i = 0; i < nf; i++) zmq_msg_close(&f[i]);
  }
  CHECK(got_chunk);
  zmq_close(raw);
  zmq_ctx_term(z);
  stop(&t, th);

  start(&t, &th, ep, &ctx, 1, NULL, NULL);
  consume_id_rows(ep);
  stop(&t, th);
}

/* Rows handed one by one (stream_chunk.in_rows, here in reverse order in
 * the source's buffer, so not one block): the consumer gets every sample
 * in order with its own rows (the server hashes each where it lies), and
 * every row frame's row_release runs exactly once, before its chunk's
 * release (2 x SAMPLES calls once the server is gone). */
static void test_row_pointers(void) {
  char ep[300];
  snprintf(ep, sizeof ep, "ipc://%s/rowptrs.sock", tmpdir);
  src_ctx ctx = {.credit = 4, .chunk = 3, .row_views = 1};
  srv_thread t;
  pthread_t th;
  start(&t, &th, ep, &ctx, 1, NULL, NULL);
  consume_id_rows(ep);
  stop(&t, th);
  CHECK_MSG(atomic_load(&ctx.rows_released) == 2 * SAMPLES && atomic_load(&ctx.rows_wrong) == 0,
            "%ld row frames released (expected %d), %ld not exactly once",
            (long)atomic_load(&ctx.rows_released), 2 * SAMPLES, (long)atomic_load(&ctx.rows_wrong));
}

/* A consumer of another protocol version gets an ERROR in its own version
 * naming both versions, not silence. */
static void test_version_mismatch(void) {
  char ep[300];
  snprintf(ep, sizeof ep, "ipc://%s/ver.sock", tmpdir);
  src_ctx ctx = {.credit = 4, .chunk = 4};
  srv_thread t;
  pthread_t th;
  start(&t, &th, ep, &ctx, 1, NULL, NULL);
  void *z = zmq_ctx_new(), *raw = raw_hello(z, ep, 2, 4);
  uint8_t rb[STREAM_HEADER_SIZE];
  int got = zmq_recv(raw, rb, sizeof rb, 0);
  stream_header d;
  int dv = got == STREAM_HEADER_SIZE ? stream_header_decode(rb, sizeof rb, &d) : -1;
  CHECK_MSG(dv == STREAM_E_VERSION && d.version == 2 && d.type == STREAM_ERROR,
            "received %d bytes, decode %d", got, dv);
  char text[512] = "";
  int more = 0;
  size_t ml = sizeof more;
  zmq_getsockopt(raw, ZMQ_RCVMORE, &more, &ml);
  int tl = more ? zmq_recv(raw, text, sizeof text - 1, 0) : -1;
  if (tl > 0) text[tl < (int)sizeof text ? tl : (int)sizeof text - 1] = 0;
  CHECK_MSG(strstr(text, "protocol version 2") && strstr(text, "version 3"), "'%s'", text);
  zmq_close(raw);
  zmq_ctx_term(z);
  stop(&t, th);
}

/* A producer that vanishes is reported within the timeout; when it comes
 * back the consumer reconnects and carries on from where it was. */
static void test_producer_restart(void) {
  char ep[300];
  snprintf(ep, sizeof ep, "ipc://%s/d.sock", tmpdir);
  src_ctx ctx = {.credit = 2, .chunk = 1};
  srv_thread t;
  pthread_t th;
  start(&t, &th, ep, &ctx, 1, NULL, NULL);
  stream_client_opts o = {.endpoint = ep, .rank = 0, .world = 1, .credit = 1, .heartbeat_s = 0.1,
                          .timeout_s = 0.5};
  stream_client *c;
  CHECK_OK(stream_client_open(&o, &c));
  int seen[SAMPLES] = {0};
  stream_chunk_view v;
  for (int i = 0; c && i < 5; i++)
    if (stream_client_next(c, &v) == 1) seen[v.ids[0]]++;
  stop(&t, th); /* the producer dies */
  double t0 = ce_now();
  int r = c ? stream_client_next(c, &v) : -1;
  while (r == 1) { /* chunks already queued locally are still valid */
    seen[v.ids[0]]++;
    r = stream_client_next(c, &v);
  }
  CHECK(r == STREAM_E_SILENT);
  CHECK(ce_now() - t0 < 2.0);
  start(&t, &th, ep, &ctx, 1, NULL, NULL); /* it returns */
  CHECK_OK(stream_client_reconnect(c));
  while (c && (r = stream_client_next(c, &v)) == 1) seen[v.ids[0]]++;
  CHECK(r == 0);
  for (int s = 0; s < SAMPLES; s++) CHECK_MSG(seen[s] == 1, "sample %d seen %d times", s, seen[s]);
  stream_client_close(c);
  stop(&t, th);
}

/* A producer restarted within the consumer's timeout: the consumer's next
 * HEARTBEAT reaches the new producer, which has no session for it and says
 * RESET; the consumer says HELLO again and carries on from where it was,
 * with no timeout and no reconnect. The heartbeats queued while the producer
 * was away all get a RESET: only the first (of the consumer's current
 * session) is acted on, the rest are stale (one HELLO said again). */
typedef struct {
  srv_thread *t;
  pthread_t *th;
  const char *ep;
  src_ctx *ctx;
} restart_args;

/* A consumer (credit 1, heartbeat 0.1 s, timeout 5 s) that has read the
 * epoch's first 5 chunks of one sample into seen[] */
static stream_client *consumer_after_five(const char *ep, int *seen) {
  stream_client_opts o = {.endpoint = ep, .rank = 0, .world = 1, .credit = 1, .heartbeat_s = 0.1,
                          .timeout_s = 5};
  stream_client *c = NULL;
  stream_chunk_view v;
  CHECK_OK(stream_client_open(&o, &c));
  for (int i = 0; c && i < 5; i++)
    if (stream_client_next(c, &v) == 1) seen[v.ids[0]]++;
  return c;
}

/* the rest of the epoch into seen[]: next()'s last status (0: the epoch's
 * end), and every sample seen once */
static int rest_of_epoch_once(stream_client *c, int *seen) {
  stream_chunk_view v;
  int r = -1;
  while (c && (r = stream_client_next(c, &v)) == 1) seen[v.ids[0]]++;
  CHECK_MSG(r == 0, "next: %d (%s)", r, r < 0 ? ce_err_msg() : "");
  for (int s = 0; s < SAMPLES; s++) CHECK_MSG(seen[s] == 1, "sample %d seen %d times", s, seen[s]);
  return r;
}

static void *restart_later(void *a) {
  restart_args *r = a;
  usleep(500000); /* 5 heartbeats of the consumer queued meanwhile */
  start(r->t, r->th, r->ep, r->ctx, 1, NULL, NULL);
  return NULL;
}

static void test_producer_restart_reset(void) {
  char ep[300];
  snprintf(ep, sizeof ep, "ipc://%s/reset.sock", tmpdir);
  src_ctx ctx = {.credit = 2, .chunk = 1};
  srv_thread t;
  pthread_t th, rt;
  start(&t, &th, ep, &ctx, 1, NULL, NULL);
  int seen[SAMPLES] = {0};
  stream_client *c = consumer_after_five(ep, seen);
  stop(&t, th); /* the producer goes, and is back 0.5 s later */
  restart_args ra = {&t, &th, ep, &ctx};
  pthread_create(&rt, NULL, restart_later, &ra);
  double t0 = ce_now();
  rest_of_epoch_once(c, seen);
  double took = ce_now() - t0;
  pthread_join(rt, NULL);
  CHECK_MSG(took < 3.0, "the epoch's rest took %.2f s (the consumer's timeout is 5 s)", took);
  stream_client_stats cs = {0};
  if (c) stream_client_get_stats(c, &cs);
  stream_server_stats ss;
  stream_server_get_stats(t.srv, &ss);
  CHECK_MSG(cs.resets == 1 && ss.resets >= 1, "consumer said HELLO again %llu times on %llu RESETs",
            (unsigned long long)cs.resets, (unsigned long long)ss.resets);
  stream_client_close(c);
  stop(&t, th);
}

/* RESET goes only to peers that say they understand it (flag
 * STREAM_FLAG_RESETS): a HEARTBEAT without a session gets a RESET echoing
 * its chunk_id with the flag, nothing without it (what an older consumer
 * sends: it would count RESETs as malformed and, never silent, never reach
 * its timeout and reconnect). */
static void test_reset_only_when_understood(void) {
  char ep[300];
  snprintf(ep, sizeof ep, "ipc://%s/resetflag.sock", tmpdir);
  src_ctx ctx = {.credit = 2, .chunk = 1};
  srv_thread t;
  pthread_t th;
  start(&t, &th, ep, &ctx, 1, NULL, NULL);
  void *z = zmq_ctx_new(), *raw = zmq_socket(z, ZMQ_DEALER);
  int zero = 0, tmo = 500;
  zmq_setsockopt(raw, ZMQ_LINGER, &zero, sizeof zero);
  zmq_setsockopt(raw, ZMQ_RCVTIMEO, &tmo, sizeof tmo);
  zmq_connect(raw, ep);
  for (int understood = 0; understood < 2; understood++) {
    stream_header h = {.type = STREAM_HEARTBEAT, .chunk_id = 41 + (uint64_t)understood,
                       .epoch = 2, .position = 7, .flags = understood ? STREAM_FLAG_RESETS : 0};
    uint8_t b[STREAM_HEADER_SIZE];
    stream_header_encode(&h, b);
    zmq_send(raw, b, sizeof b, 0);
    int got = zmq_recv(raw, b, sizeof b, 0);
    stream_header d = {0};
    int ok = got == STREAM_HEADER_SIZE && stream_header_decode(b, sizeof b, &d) == 0;
    if (understood)
      CHECK_MSG(ok && d.type == STREAM_RESET && d.chunk_id == 42 && d.epoch == 2 && d.position == 7,
                "received %d bytes, type %u, chunk_id %llu", got, d.type,
                (unsigned long long)d.chunk_id);
    else
      CHECK_MSG(got < 0, "a peer without the flag got %d bytes (type %u)", got, d.type);
  }
  zmq_close(raw);
  zmq_ctx_term(z);
  stop(&t, th);
}

/* A consumer the producer dropped (silent past the producer's 2 s timeout:
 * busy elsewhere, no keep-alive) is told so by a RESET when it next asks,
 * and resumes from where it was. */
static void test_dropped_consumer_reset(void) {
  char ep[300];
  snprintf(ep, sizeof ep, "ipc://%s/dropped.sock", tmpdir);
  src_ctx ctx = {.credit = 2, .chunk = 1};
  srv_thread t;
  pthread_t th;
  start(&t, &th, ep, &ctx, 1, NULL, NULL);
  int seen[SAMPLES] = {0};
  stream_client *c = consumer_after_five(ep, seen);
  usleep(2600000);
  stream_server_stats ss;
  stream_server_get_stats(t.srv, &ss);
  uint64_t dropped = ss.consumers_dropped;
  rest_of_epoch_once(c, seen);
  stream_client_stats cs = {0};
  if (c) stream_client_get_stats(c, &cs);
  stream_server_get_stats(t.srv, &ss);
  CHECK_MSG(dropped == 1 && cs.resets == 1 && ss.resets >= 1,
            "dropped %llu, HELLO again %llu times, %llu RESETs", (unsigned long long)dropped,
            (unsigned long long)cs.resets, (unsigned long long)ss.resets);
  stream_client_close(c);
  stop(&t, th);
}

/* CURVE: an authorised consumer is served, an unknown key is refused. */
/* A TCP port on 127.0.0.1 that nothing listens on now (the kernel's choice). */
static int free_tcp_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM, 0), port = 0;
  struct sockaddr_in a = {0};
  socklen_t len = sizeof a;
  a.sin_family = AF_INET;
  a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (fd >= 0 && bind(fd, (struct sockaddr *)&a, sizeof a) == 0 &&
      getsockname(fd, (struct sockaddr *)&a, &len) == 0)
    port = ntohs(a.sin_port);
  if (fd >= 0) close(fd);
  CHECK_MSG(port > 0, "no free TCP port on 127.0.0.1");
  return port > 0 ? port : 27893;
}

static void test_curve(void) {
  char srvkey[300], good[300], bad[300], auth[300], cmd[1400];
  snprintf(srvkey, sizeof srvkey, "%s/server", tmpdir);
  snprintf(good, sizeof good, "%s/good", tmpdir);
  snprintf(bad, sizeof bad, "%s/bad", tmpdir);
  snprintf(auth, sizeof auth, "%s/authorized", tmpdir);
  CHECK_OK(stream_keygen(srvkey));
  CHECK_OK(stream_keygen(good));
  CHECK_OK(stream_keygen(bad));
  snprintf(cmd, sizeof cmd, "mkdir -p %s && cp %s.key %s/", auth, good, auth);
  CHECK(system(cmd) == 0);
  char sec[320], spub[320], gsec[320], bsec[320];
  snprintf(sec, sizeof sec, "%s.key_secret", srvkey);
  snprintf(spub, sizeof spub, "%s.key", srvkey);
  snprintf(gsec, sizeof gsec, "%s.key_secret", good);
  snprintf(bsec, sizeof bsec, "%s.key_secret", bad);
  src_ctx ctx = {.credit = 4, .chunk = 4};
  srv_thread t;
  pthread_t th;
  /* a port free now, not a fixed one: other test runs on a shared host
     (CI's configurations, other checkouts) may hold any fixed port */
  char ep[64];
  snprintf(ep, sizeof ep, "tcp://127.0.0.1:%d", free_tcp_port());
  start(&t, &th, ep, &ctx, 1, sec, auth);
  stream_client_opts o = {.endpoint = ep, .rank = 0, .world = 1, .credit = 2, .heartbeat_s = 0.1,
                          .timeout_s = 5.0, .curve_server_key = spub, .curve_client_key = bsec};
  stream_client *c;
  stream_chunk_view v;
  CHECK_OK(stream_client_open(&o, &c));
  /* refused: nothing arrives, and the client is told so before its timeout */
  double t0 = ce_now();
  CHECK(c && stream_client_next(c, &v) == STREAM_E_REFUSED);
  CHECK(strstr(ce_err_msg(), "refused this consumer's CURVE key") && ce_now() - t0 < 4.5);
  stream_client_close(c);
  o.curve_client_key = gsec;
  o.timeout_s = 5;
  CHECK_OK(stream_client_open(&o, &c));
  int r, n = 0;
  while (c && (r = stream_client_next(c, &v)) == 1) n += (int)v.h.nsamples;
  CHECK(r == 0 && n == SAMPLES);
  stream_client_close(c);
  stop(&t, th);
  char rd[41];
  CHECK_ERR(stream_read_key_file(spub, NULL, rd), "secret-key");
  CHECK(stream_endpoint_is_local("ipc:///tmp/x") && stream_endpoint_is_local("tcp://127.0.0.1:5") &&
        !stream_endpoint_is_local("tcp://10.0.0.1:5") && !stream_endpoint_is_local("tcp://*:5"));
}

int main(void) {
  tmpdir = check_scratch("test_stream");
  RUN(test_header_codec);
  RUN(test_epochs_and_credit);
  RUN(test_ranks_and_resume);
  RUN(test_malformed_dropped);
  RUN(test_forwarded_row_sums);
  RUN(test_version_mismatch);
  RUN(test_row_frames);
  RUN(test_row_pointers);
  RUN(test_producer_restart);
  RUN(test_producer_restart_reset);
  RUN(test_dropped_consumer_reset);
  RUN(test_reset_only_when_understood);
  RUN(test_curve);
  check_scratch_remove();
  return check_report();
}
