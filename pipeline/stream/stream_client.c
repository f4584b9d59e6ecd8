/* stream_client.c - credit-granting DEALER consumer. */
#include "pipeline/stream/stream_client.h"

#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include <zmq.h>

#include "common/checksum.h"
#include "common/error.h"
#include "common/progress.h"
#include "pipeline/stream/stream_security.h"

struct stream_client {
  stream_client_opts o;
  char endpoint[1024];
  void *zctx, *sock;
  void *mon;      /* with CURVE: the socket's handshake-failure events (PAIR) */
  unsigned nmon;  /* monitors made, for their inproc names */
  uint32_t epoch;
  uint64_t position;
  int welcomed, pending_credit;
  uint64_t hello_gen; /* HELLOs said: every CREDIT and HEARTBEAT carries it as chunk_id, and
                         a RESET echoes the chunk_id of the message it answers */
  uint64_t dataset_id, samples_per_epoch;
  double last_recv, last_sent;
  zmq_msg_t held[4]; /* ids, row checksums, inputs, targets of a one-sample chunk returned
                        (of a larger one: its ids) */
  int nheld;
  zmq_msg_t *f;      /* the frames of the message being received */
  size_t fcap;
  /* ZeroMQ may deliver frames at any byte offset inside its receive buffer:
   * misaligned payloads are copied here so callers get aligned arrays. */
  void *aligned[3];
  size_t aligned_cap[3];
  const uint8_t *shm; /* this session's shared segment, mapped read-only, or NULL */
  size_t shm_size;
  char shm_why[256];
  char notice[1024]; /* the producer's last NOTICE */
  stream_client_stats st;
};

static int send_ctl_ex(stream_client *c, int type, uint32_t value, uint32_t flags,
                       uint64_t chunk_id) {
  stream_header h = {.type = (uint16_t)type, .value = value, .flags = flags, .chunk_id = chunk_id,
                     .dataset_id = c->o.dataset_id, .epoch = c->epoch, .position = c->position,
                     .rank = c->o.rank, .nsamples = c->o.world};
  uint8_t b[STREAM_HEADER_SIZE];
  stream_header_encode(&h, b);
  if (zmq_send(c->sock, b, sizeof b, ZMQ_DONTWAIT) < 0 && errno != EAGAIN)
    CE_FAIL("stream client: send to %s failed: %s", c->endpoint, zmq_strerror(errno));
  c->last_sent = ce_now();
  return 0;
}

static int send_ctl(stream_client *c, int type, uint32_t value) {
  return send_ctl_ex(c, type, value, c->o.flags, c->hello_gen);
}

/* HELLO, from (epoch, position): a new session, whose messages carry the
 * next generation. */
static int say_hello(stream_client *c) {
  c->welcomed = 0;
  c->pending_credit = 0;
  c->hello_gen++;
  return send_ctl(c, STREAM_HELLO, c->o.credit);
}

static void shm_unmap(stream_client *c) {
  if (c->shm) munmap((void *)c->shm, c->shm_size);
  c->shm = NULL;
  c->shm_size = 0;
}

/* Only names of coemu's own form are opened: a producer cannot make the
 * consumer open another file. */
static int shm_name_ok(const char *name) {
  static const char prefix[] = "/coemu-stream-";
  size_t len = strlen(name), np = sizeof prefix - 1;
  if (len <= np || len > 63 || strncmp(name, prefix, np) != 0) return 0;
  for (size_t i = np; i < len; i++)
    if (!((name[i] >= '0' && name[i] <= '9') || (name[i] >= 'a' && name[i] <= 'f') ||
          name[i] == '-'))
      return 0;
  return 1;
}

/* The WELCOME's answer to a HELLO that asked for shared memory: map the
 * segment it names read-only and answer with the nonce read from it (the
 * proof that this consumer is on the producer's host and has it mapped), or
 * answer 0 and take rows as frames (o.shm 2: an error instead). */
static int shm_welcome(stream_client *c, const stream_header *h, zmq_msg_t *f, int n) {
  shm_unmap(c);
  c->shm_why[0] = 0;
  if (!c->o.shm) return 0;
  char name[64] = "";
  if (!(h->flags & STREAM_FLAG_SHM))
    snprintf(c->shm_why, sizeof c->shm_why, "the producer did not offer shared memory (coemu "
             "serve --no-shm, a producer without it, or it could not make a segment)");
  else if (n != 2 || zmq_msg_size(&f[1]) >= sizeof name ||
           ce_xxh64(zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), 0) != h->payload_xxh64)
    snprintf(c->shm_why, sizeof c->shm_why, "the WELCOME's segment name is damaged");
  else {
    memcpy(name, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]));
    name[zmq_msg_size(&f[1])] = 0;
    int fd = shm_name_ok(name) ? shm_open(name, O_RDONLY, 0) : -1;
    struct stat sb;
    void *p = MAP_FAILED;
    if (fd >= 0 && fstat(fd, &sb) == 0 && sb.st_size > STREAM_SHM_HEAD)
      p = mmap(NULL, (size_t)sb.st_size, PROT_READ, MAP_SHARED, fd, 0);
    int e = errno;
    if (fd >= 0) close(fd);
    uint64_t head[3] = {0, 0, 0};
    if (p != MAP_FAILED) memcpy(head, p, sizeof head);
    if (p != MAP_FAILED && head[0] == STREAM_SHM_MAGIC && head[2] == (uint64_t)sb.st_size) {
      c->shm = p;
      c->shm_size = (size_t)sb.st_size;
      c->st.shm_mapped++;
      return send_ctl_ex(c, STREAM_CREDIT, 0, c->o.flags | STREAM_FLAG_SHM_ANSWER, head[1]);
    }
    if (p != MAP_FAILED) munmap(p, (size_t)sb.st_size);
    snprintf(c->shm_why, sizeof c->shm_why, "cannot map shared-memory segment %.63s: %s", name,
             !shm_name_ok(name) ? "not a coemu stream segment's name"
             : fd < 0 || p == MAP_FAILED ? strerror(e) : "not a coemu stream segment");
  }
  if (h->flags & STREAM_FLAG_SHM) /* frames then, for this session */
    CE_TRY(send_ctl_ex(c, STREAM_CREDIT, 0, c->o.flags | STREAM_FLAG_SHM_ANSWER, 0));
  if (c->o.shm == 2) CE_FAIL("stream client: shm required: %s", c->shm_why);
  return 0;
}

const char *stream_client_notice(const stream_client *c) { return c->notice; }

const char *stream_client_shm_error(const stream_client *c) { return c->shm_why; }

static void release_held(stream_client *c) {
  for (int i = 0; i < c->nheld; i++) zmq_msg_close(&c->held[i]);
  c->nheld = 0;
}

/* With CURVE, a producer that refuses this consumer's key sends nothing at
 * all; ZeroMQ tells the socket's monitor (ZMQ_EVENT_HANDSHAKE_FAILED_AUTH,
 * with the ZAP status), so the consumer can say so instead of timing out. */
static int watch_handshakes(stream_client *c) {
  char name[64];
  snprintf(name, sizeof name, "inproc://coemu-client-monitor-%u", c->nmon++);
  if (zmq_socket_monitor(c->sock, name, ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) != 0 ||
      !(c->mon = zmq_socket(c->zctx, ZMQ_PAIR)) || zmq_connect(c->mon, name) != 0)
    CE_FAIL("stream client: cannot watch the CURVE handshake: %s", zmq_strerror(errno));
  int zero = 0;
  zmq_setsockopt(c->mon, ZMQ_LINGER, &zero, sizeof zero);
  return 0;
}

/* 1 and the ZAP status when the producer refused this consumer's key, else 0. */
static int handshake_refused(stream_client *c, unsigned *status) {
  if (!c->mon) return 0;
  for (;;) {
    zmq_msg_t ev, addr;
    zmq_msg_init(&ev);
    if (zmq_msg_recv(&ev, c->mon, ZMQ_DONTWAIT) < 0) {
      zmq_msg_close(&ev);
      return 0;
    }
    int more = zmq_msg_more(&ev);
    uint16_t id = 0;
    uint32_t value = 0;
    if (zmq_msg_size(&ev) >= 6) {
      memcpy(&id, zmq_msg_data(&ev), 2);
      memcpy(&value, (char *)zmq_msg_data(&ev) + 2, 4);
    }
    zmq_msg_close(&ev);
    if (more) { /* the endpoint frame */
      zmq_msg_init(&addr);
      zmq_msg_recv(&addr, c->mon, 0);
      zmq_msg_close(&addr);
    }
    if (id == ZMQ_EVENT_HANDSHAKE_FAILED_AUTH) {
      *status = value;
      return 1;
    }
  }
}

static void close_socket(stream_client *c) {
  if (c->mon) {
    zmq_socket_monitor(c->sock, NULL, 0);
    zmq_close(c->mon);
    c->mon = NULL;
  }
  zmq_close(c->sock);
  c->sock = NULL;
}

static int connect_socket(stream_client *c) {
  c->sock = zmq_socket(c->zctx, ZMQ_DEALER);
  if (!c->sock) CE_FAIL("stream client: cannot create a DEALER socket: %s", zmq_strerror(errno));
  int zero = 0, hwm = (int)(c->o.credit * 4 + 16);
  zmq_setsockopt(c->sock, ZMQ_LINGER, &zero, sizeof zero);
  zmq_setsockopt(c->sock, ZMQ_RCVHWM, &hwm, sizeof hwm);
  CE_TRY(stream_security_client(c->sock, c->o.curve_server_key, c->o.curve_client_key));
  if (c->o.curve_server_key) CE_TRY(watch_handshakes(c));
  if (zmq_connect(c->sock, c->endpoint) != 0)
    CE_FAIL("stream client: cannot connect to %s: %s", c->endpoint, zmq_strerror(errno));
  c->last_recv = ce_now();
  if (c->o.shm) c->o.flags |= STREAM_FLAG_SHM;
  c->o.flags |= STREAM_FLAG_RESETS | STREAM_FLAG_NOTICES;
  return say_hello(c);
}

int stream_client_open(const stream_client_opts *o, stream_client **out) {
  if (!o->endpoint) CE_FAIL("stream client: no endpoint");
  stream_tune_malloc();
  if (o->world == 0 || o->rank >= o->world)
    CE_FAIL("stream client: rank %u of %u ranks is not valid", o->rank, o->world);
  stream_client *c = calloc(1, sizeof *c);
  if (!c) CE_FAIL("stream client: out of memory");
  c->o = *o;
  snprintf(c->endpoint, sizeof c->endpoint, "%s", o->endpoint);
  c->o.endpoint = c->endpoint;
  if (!c->o.credit) c->o.credit = 4;
  if (c->o.heartbeat_s <= 0) c->o.heartbeat_s = 1.0;
  if (c->o.timeout_s <= 0) c->o.timeout_s = 10.0;
  c->epoch = o->epoch;
  c->position = o->position;
  c->zctx = zmq_ctx_new();
  if (!c->zctx || connect_socket(c) < 0) {
    stream_client_close(c);
    return -1;
  }
  *out = c;
  return 0;
}

int stream_client_reconnect(stream_client *c) {
  release_held(c);
  shm_unmap(c);
  if (c->sock) close_socket(c);
  return connect_socket(c);
}

/* Receive one whole message into c->f: up to STREAM_MAX_FRAMES frames kept
 * (a CHUNK of the most samples), more make it malformed (returns 1). */
static int recv_message(stream_client *c, int *n) {
  *n = 0;
  int more = 1, extra = 0;
  while (more) {
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, c->sock, 0) < 0) {
      zmq_msg_close(&m);
      for (int i = 0; i < *n; i++) zmq_msg_close(&c->f[i]);
      CE_FAIL("stream client: receive from %s failed: %s", c->endpoint, zmq_strerror(errno));
    }
    more = zmq_msg_more(&m);
    if ((size_t)*n == c->fcap && c->fcap < STREAM_MAX_FRAMES) {
      size_t cap = c->fcap ? c->fcap * 2 : 8;
      if (cap > STREAM_MAX_FRAMES) cap = STREAM_MAX_FRAMES;
      zmq_msg_t *g = realloc(c->f, cap * sizeof *g);
      if (g) c->f = g, c->fcap = cap;
    }
    if ((size_t)*n < c->fcap)
      c->f[(*n)++] = m;
    else
      zmq_msg_close(&m), extra = 1;
  }
  return extra;
}

/* Room for len bytes in the client's aligned buffer i (kept: reused by
 * the next chunk, so a batch is not a fresh block faulted in every time). */
static void *aligned_room(stream_client *c, int i, size_t len) {
  if (c->aligned_cap[i] < len) {
    free(c->aligned[i]);
    c->aligned[i] = aligned_alloc(64, (len + 63) / 64 * 64);
    c->aligned_cap[i] = c->aligned[i] ? len : 0;
  }
  return c->aligned[i];
}

/* A chunk of n > 1 samples: each row checked against its row checksum in
 * its own frame, then copied into the client's batch buffers (hashed and
 * copied while in cache); the row frames are closed at once, so the
 * receiver's blocks are reused. 0, 1: a row does not match (malformed),
 * -1: out of memory. */
static int gather_rows(stream_client *c, const stream_header *h, size_t inb, size_t outb,
                       zmq_msg_t *f) {
  uint32_t n = h->nsamples;
  char *in = aligned_room(c, 1, n * inb), *tg = aligned_room(c, 2, n * outb);
  if (!in || !tg) CE_FAIL("stream client: out of memory for a chunk of %u samples", n);
  const char *sums = zmq_msg_data(&f[2]);
  for (uint32_t k = 0; k < n; k++) {
    zmq_msg_t *fi = &f[3 + k], *ft = &f[3 + n + k];
    if (stream_rows_check(zmq_msg_data(fi), inb, zmq_msg_data(ft), outb, 1, sums + 16 * k) >= 0)
      return 1;
    memcpy(in + k * inb, zmq_msg_data(fi), inb);
    memcpy(tg + k * outb, zmq_msg_data(ft), outb);
  }
  return 0;
}

/* A chunk whose rows came as frames (protocol 3: header, ids, row
 * checksums, then one frame per row): the frame sizes, the ids' and row
 * checksums' XXH64, then every row against its row checksum (a one-sample
 * chunk's in its frames, a larger one's gathered into the batch buffers).
 * 0, 1: malformed, -1: out of memory. */
static int check_frames(stream_client *c, const stream_header *h, size_t inb, size_t outb,
                        zmq_msg_t *f, int n) {
  size_t nid = (size_t)h->nsamples * 8;
  if ((size_t)n != STREAM_CHUNK_FRAMES(h->nsamples) || zmq_msg_size(&f[1]) != nid ||
      zmq_msg_size(&f[2]) != 2 * nid)
    return 1;
  for (uint32_t k = 0; k < h->nsamples; k++)
    if (zmq_msg_size(&f[3 + k]) != inb || zmq_msg_size(&f[3 + h->nsamples + k]) != outb) return 1;
  ce_xxh64_state xs;
  ce_xxh64_init(&xs, 0);
  for (int i = 1; i < 3; i++) ce_xxh64_update(&xs, zmq_msg_data(&f[i]), zmq_msg_size(&f[i]));
  if (ce_xxh64_digest(&xs) != h->payload_xxh64) return 1;
  if (h->nsamples == 1)
    return stream_rows_check(zmq_msg_data(&f[3]), inb, zmq_msg_data(&f[4]), outb, 1,
                             zmq_msg_data(&f[2])) >= 0;
  return gather_rows(c, h, inb, outb, f);
}

/* A chunk whose rows lie in the shared segment (flag STREAM_FLAG_SHM):
 * frames ids, row checksums and 2n (offset, length) descriptors; every
 * descriptor must lie in the segment past its header and have its row's
 * size; each row is checked where it lies and copied into the batch
 * buffers (one pass). 0, 1: malformed, -1: out of memory. */
static int gather_shm(stream_client *c, const stream_header *h, size_t inb, size_t outb,
                      zmq_msg_t *f, int n) {
  uint32_t ns = h->nsamples;
  size_t nid = (size_t)ns * 8;
  if (!c->shm || n != 4 || zmq_msg_size(&f[1]) != nid || zmq_msg_size(&f[2]) != 2 * nid ||
      zmq_msg_size(&f[3]) != 4 * nid)
    return 1;
  ce_xxh64_state xs;
  ce_xxh64_init(&xs, 0);
  for (int i = 1; i < 4; i++) ce_xxh64_update(&xs, zmq_msg_data(&f[i]), zmq_msg_size(&f[i]));
  if (ce_xxh64_digest(&xs) != h->payload_xxh64) return 1;
  char *in = aligned_room(c, 1, ns * inb), *tg = aligned_room(c, 2, ns * outb);
  if (!in || !tg) CE_FAIL("stream client: out of memory for a chunk of %u samples", ns);
  const char *sums = zmq_msg_data(&f[2]);
  const char *desc = zmq_msg_data(&f[3]);
  const uint8_t *rows[2];
  for (uint32_t k = 0; k < ns; k++) {
    for (int t = 0; t < 2; t++) {
      uint64_t d[2];
      memcpy(d, desc + 16 * ((size_t)t * ns + k), sizeof d);
      if (d[1] != (t ? outb : inb) || d[0] < STREAM_SHM_HEAD || d[0] > c->shm_size ||
          d[1] > c->shm_size - d[0])
        return 1;
      rows[t] = c->shm + d[0];
    }
    if (stream_rows_check(rows[0], inb, rows[1], outb, 1, sums + 16 * k) >= 0) return 1;
    memcpy(in + k * inb, rows[0], inb);
    memcpy(tg + k * outb, rows[1], outb);
  }
  return 0;
}

int stream_client_next(stream_client *c, stream_chunk_view *v) {
  release_held(c);
  if (c->pending_credit) { /* the previous chunk has been consumed */
    CE_TRY(send_ctl(c, STREAM_CREDIT, (uint32_t)c->pending_credit));
    c->pending_credit = 0;
  }
  for (;;) {
    double now = ce_now();
    if (now - c->last_sent > c->o.heartbeat_s) CE_TRY(send_ctl(c, STREAM_HEARTBEAT, 0));
    double left = c->o.timeout_s - (now - c->last_recv);
    if (left <= 0) {
      ce_err("stream client: producer at %s silent for %.1f s (timeout)", c->endpoint,
             now - c->last_recv);
      return STREAM_E_SILENT;
    }
    double wait = left < c->o.heartbeat_s ? left : c->o.heartbeat_s;
    zmq_pollitem_t it = {c->sock, 0, ZMQ_POLLIN, 0};
    int rc = zmq_poll(&it, 1, (long)(wait * 1000) + 1);
    if (rc < 0) {
      if (errno == EINTR) continue;
      CE_FAIL("stream client: poll failed: %s", zmq_strerror(errno));
    }
    unsigned status;
    if (rc == 0 && !c->welcomed && handshake_refused(c, &status)) {
      ce_err("stream client: the producer at %s refused this consumer's CURVE key (ZAP status "
             "%u): its public key must be among the producer's authorised keys "
             "(coemu serve --curve-authorized, stream.curve_authorized)",
             c->endpoint, status);
      return STREAM_E_REFUSED;
    }
    if (rc == 0) continue;
    int n;
    int extra = recv_message(c, &n);
    if (extra < 0) return -1;
    zmq_msg_t *f = c->f;
    c->last_recv = ce_now();
    stream_header h;
    if (extra || n < 1 || stream_header_decode(zmq_msg_data(&f[0]), zmq_msg_size(&f[0]), &h) < 0) {
      c->st.malformed++;
      for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
      continue;
    }
    if (h.type == STREAM_CHUNK) {
      size_t inb = stream_input_bytes(&h), outb = stream_target_bytes(&h);
      size_t nid = (size_t)h.nsamples * 8, nin = h.nsamples * inb, nout = h.nsamples * outb;
      int via_shm = (h.flags & STREAM_FLAG_SHM) != 0;
      int g = via_shm ? gather_shm(c, &h, inb, outb, f, n) : check_frames(c, &h, inb, outb, f, n);
      if (g < 0) {
        for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
        return -1;
      }
      int ok = g == 0;
      if (!ok) {
        c->st.malformed++;
        for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
        /* the credit of a dropped chunk is returned, or the stream would stall */
        CE_TRY(send_ctl(c, STREAM_CREDIT, 1));
        continue;
      }
      if (h.epoch != c->epoch || h.position != c->position) {
        /* e.g. chunks still in flight from before a reconnect */
        c->st.dropped_out_of_order++;
        for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
        continue;
      }
      zmq_msg_close(&f[0]);
      const void *data[3];
      int nd = h.nsamples == 1 && !via_shm ? 3 : 1; /* frames handed out as they are */
      c->st.shm_chunks += via_shm;
      if (nd == 3) {
        for (int i = 0; i < 4; i++) c->held[i] = f[i + 1];
        c->nheld = 4;
      } else { /* its rows were gathered (gather_rows): only the ids are held */
        c->held[0] = f[1];
        c->nheld = 1;
        for (int i = 2; i < n; i++) zmq_msg_close(&f[i]);
        data[1] = c->aligned[1];
        data[2] = c->aligned[2];
      }
      static const int frame_of[3] = {0, 2, 3}; /* ids, inputs, targets among held */
      for (int i = 0; i < nd; i++) {
        data[i] = zmq_msg_data(&c->held[frame_of[i]]);
        size_t len = zmq_msg_size(&c->held[frame_of[i]]);
        if ((uintptr_t)data[i] % 8 != 0 && len > 0) {
          /* (a gathered chunk's inputs and targets are in buffers 1 and 2: ids use 0) */
          if (!aligned_room(c, i, len))
            CE_FAIL("stream client: out of memory for a %zu-byte frame", len);
          memcpy(c->aligned[i], data[i], len);
          c->st.realigned++;
          data[i] = c->aligned[i];
        }
      }
      v->h = h;
      v->ids = data[0];
      v->inputs = data[1];
      v->targets = data[2];
      c->position += h.nsamples;
      c->pending_credit++;
      c->st.chunks++;
      c->st.samples += h.nsamples;
      c->st.bytes += 3 * nid + nin + nout + STREAM_HEADER_SIZE;
      return 1;
    }
    if (h.type == STREAM_WELCOME && shm_welcome(c, &h, f, n) < 0) {
      for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
      return -1;
    }
    for (int i = 1; i < n; i++) {
      if (h.type == STREAM_ERROR && i == 1) {
        size_t len = zmq_msg_size(&f[1]);
        ce_err("stream client: producer error: %.*s", (int)(len > 1000 ? 1000 : len),
               (const char *)zmq_msg_data(&f[1]));
      }
      if (h.type == STREAM_NOTICE && i == 1) {
        size_t len = zmq_msg_size(&f[1]);
        if (len < 1024 && ce_xxh64(zmq_msg_data(&f[1]), len, 0) == h.payload_xxh64) {
          memcpy(c->notice, zmq_msg_data(&f[1]), len);
          c->notice[len] = 0;
          /* the consumer's operator must see it: a trainer that waits
           * for chunks nothing makes any more looks hung otherwise */
          fprintf(stderr, "stream client: notice from the producer at %s: %s\n", c->endpoint,
                  c->notice);
          c->st.notices++;
        } else {
          c->st.malformed++;
        }
      }
      zmq_msg_close(&f[i]);
    }
    zmq_msg_close(&f[0]);
    switch (h.type) {
    case STREAM_WELCOME:
      c->welcomed = 1;
      c->dataset_id = h.dataset_id;
      c->samples_per_epoch = h.nsamples;
      break;
    case STREAM_HEARTBEAT:
      c->st.heartbeats++;
      break;
    case STREAM_EPOCH_END:
      if (h.epoch != c->epoch) {
        c->st.dropped_out_of_order++;
        break;
      }
      memset(v, 0, sizeof *v);
      v->h = h;
      c->epoch++;
      c->position = 0;
      return 0;
    case STREAM_ERROR:
      /* an ERROR without its text frame (a broken producer; found by
       * tests/stream/fuzz_stream.c) still fails with a message, not with
       * whatever message was left from before */
      if (n < 2) ce_err("stream client: producer error (the producer at %s sent no text)", c->endpoint);
      return STREAM_E_REMOTE;
    case STREAM_NOTICE: /* logged above; the stream goes on */
      break;
    case STREAM_RESET:
      /* the producer has no session for this connection (it restarted, or
       * dropped this consumer): HELLO again, from (epoch, position). Only
       * for a RESET answering a message of the latest session: those that
       * answer messages sent before its HELLO are stale (the producer got
       * that HELLO after them, or has not got it yet). A HELLO that got
       * lost (a producer gone between it and its WELCOME) is so found too:
       * the next HEARTBEAT carries its generation. */
      if (h.chunk_id != c->hello_gen) break;
      c->st.resets++;
      CE_TRY(say_hello(c));
      break;
    default:
      c->st.malformed++;
    }
  }
}

void stream_client_state(const stream_client *c, uint32_t *epoch, uint64_t *position) {
  *epoch = c->epoch;
  *position = c->position;
}
void stream_client_get_stats(const stream_client *c, stream_client_stats *st) { *st = c->st; }
uint64_t stream_client_dataset_id(const stream_client *c) { return c->dataset_id; }
uint64_t stream_client_samples_per_epoch(const stream_client *c) { return c->samples_per_epoch; }

void stream_client_close(stream_client *c) {
  if (!c) return;
  release_held(c);
  if (c->sock) {
    int linger = 200; /* ms: give the BYE a chance to leave */
    zmq_setsockopt(c->sock, ZMQ_LINGER, &linger, sizeof linger);
    send_ctl(c, STREAM_BYE, 0);
    close_socket(c);
  }
  if (c->zctx) zmq_ctx_term(c->zctx);
  shm_unmap(c);
  for (int i = 0; i < 3; i++) free(c->aligned[i]);
  free(c->f);
  free(c);
}
