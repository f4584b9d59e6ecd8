/* stream_server.c - credit-based ROUTER producer. */
#include "pipeline/stream/stream_server.h"

#include <errno.h>
#include <fcntl.h>
#include <stdarg.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>
#include <zmq.h>

#include "common/checksum.h"
#include "common/error.h"
#include "common/progress.h"
#include "pipeline/stream/stream_proto.h"
#include "pipeline/stream/stream_security.h"

#define MAX_ID 256

/* What ZeroMQ still holds of the chunks sent on one connection: updated by
 * frame_done (ZeroMQ's I/O thread) when a chunk's frames have been written
 * out, so it outlives the consumer entry while chunks are queued. */
typedef struct {
  atomic_int refs;    /* the consumer (or the zombie list) + one per queued chunk */
  atomic_int chunks;  /* chunks queued, not yet written to the socket */
  atomic_ullong released; /* chunks written so far */
} peer_acct;

/* A consumer's shared segment (docs/stream-protocol.md, "Shared memory"):
 * a header page, then nslots slots of slot_bytes used as a ring in the
 * order chunks are sent; a slot is free again when a CREDIT says the
 * consumer is done with the chunk in it (credits come back in order). */
typedef struct {
  char name[64];     /* "" once unlinked */
  uint8_t *base;
  size_t size, slot_bytes;
  uint32_t nslots, head, inflight;
  uint64_t nonce;
  int mapped;        /* the consumer answered with the nonce: rows go through it */
} shm_seg;

typedef struct {
  uint8_t id[MAX_ID];
  size_t idlen;
  stream_consumer c;
  shm_seg *shm;      /* NULL: rows as frames */
  uint32_t epoch, credit;
  uint64_t position, chunk_id;
  double last_seen, last_sent, last_progress;
  uint64_t released_seen;
  peer_acct *acct;
  /* the consumer's own epoch, as its messages say (HELLO, then every
   * CREDIT, HEARTBEAT and BYE), and 1 + the last epoch whose EPOCH_END
   * this server sent it: it read epochs below the smaller of the two */
  uint32_t seen_epoch, ended;
  int notices; /* it understands NOTICE (STREAM_FLAG_NOTICES) */
  int told;    /* it was sent STREAM_NOTICE_STOPPED and not yet RESUMED */
  int done; /* all epochs sent */
  /* a send to it failed (gone, or its queue is full): dropped after the next
   * read of incoming messages, so a BYE it sent just before leaving still
   * counts (a peer that says BYE and disconnects at once is no vanished one) */
  int gone;
  /* the TCP connection the HELLO came on (ZMQ_SRCFD) and its peer address,
   * so that a dropped peer's connection can be shut down (see drop_consumer) */
  double admitted; /* when its HELLO was accepted */
  int fd;
  struct sockaddr_storage peer;
  socklen_t peerlen;
} consumer_state;

struct stream_server {
  stream_server_opts o;
  stream_source_fn source;
  void *ctx;
  void *zctx, *sock;
  consumer_state *cons;
  int ncons, capcons;
  uint8_t *rank_done;  /* per rank of the world: all epochs sent and BYE received */
  uint8_t *final_sent; /* per rank: the last epoch's EPOCH_END was sent to it */
  uint32_t *epochs_read; /* per rank: 1 + the last epoch a session of it read to its end */
  int world, ranks_done;
  peer_acct **zombies; /* dropped connections whose chunks ZeroMQ still holds */
  int nzombies;
  atomic_ullong queued_bytes;
  stream_server_stats st;
  stream_security *sec;
  /* the distinct ERROR texts logged (XXH64 of each; later ones counted) */
  uint64_t errors_logged[64];
  int nerrors_logged;
  /* opts.producing: stopped since when; the next probe; a -1 logged */
  int stopped, unknown_logged;
  double stopped_since, next_probe;
  char stop_why[1024];
};

typedef struct chunk_ref_s {
  atomic_int refs;
  void (*release)(void *);
  void (*row_release)(void *);
  void *token;
  peer_acct *acct;
  atomic_ullong *queued;
  uint64_t bytes;
  struct row_hint *rows; /* per row frame (stream_chunk.row_release), or NULL */
  uint64_t sums[]; /* the row checksums, when made here (the source had none) */
} chunk_ref;

/* A row frame's own release (stream_chunk.row_release), then the chunk's. */
typedef struct row_hint {
  struct chunk_ref_s *ref;
  void *token;
} row_hint;

static void acct_unref(peer_acct *a) {
  if (a && atomic_fetch_sub(&a->refs, 1) == 1) free(a);
}

static void frame_done(void *data, void *hint) {
  (void)data;
  chunk_ref *r = hint;
  if (atomic_fetch_sub(&r->refs, 1) == 1) {
    if (r->release) r->release(r->token);
    atomic_fetch_sub(r->queued, r->bytes);
    atomic_fetch_sub(&r->acct->chunks, 1);
    atomic_fetch_add(&r->acct->released, 1);
    acct_unref(r->acct);
    free(r->rows);
    free(r);
  }
}

/* A chunk not sent at all: its row references and the chunk released. */
static void release_chunk(const stream_chunk *ch) {
  if (ch->in_rows && ch->row_release)
    for (uint32_t j = 0; j < 2 * ch->nsamples; j++) ch->row_release(ch->row_tokens[j]);
  if (ch->release) ch->release(ch->token);
}

static void row_frame_done(void *data, void *hint) {
  row_hint *h = hint;
  chunk_ref *r = (chunk_ref *)h->ref;
  r->row_release(h->token);
  frame_done(data, r);
}

static void shm_unlink_seg(shm_seg *g) {
  if (g && g->name[0]) {
    shm_unlink(g->name);
    g->name[0] = 0;
  }
}

/* The segment's name is gone at once; its pages when the consumer unmaps
 * them too (the descriptors already sent stay readable by it). */
static void shm_free(shm_seg *g) {
  if (!g) return;
  shm_unlink_seg(g);
  if (g->base) munmap(g->base, g->size);
  free(g);
}

/* A segment of nslots slots of slot_bytes, mode 0600, under a random name,
 * its pages reserved (posix_fallocate: a full /dev/shm is an error here,
 * not a SIGBUS on a later write). NULL when it cannot be made (the consumer
 * then gets frames). */
static shm_seg *shm_make(size_t slot_bytes, uint32_t nslots) {
  shm_seg *g = calloc(1, sizeof *g);
  if (!g) return NULL;
  uint64_t r[2];
  if (getrandom(r, sizeof r, 0) != (ssize_t)sizeof r || getrandom(&g->nonce, 8, 0) != 8) {
    free(g);
    return NULL;
  }
  g->nonce |= 1; /* 0 is the consumer's "cannot map" */
  snprintf(g->name, sizeof g->name, "/coemu-stream-%d-%016llx%016llx", (int)getpid(),
           (unsigned long long)r[0], (unsigned long long)r[1]);
  g->slot_bytes = (slot_bytes + 4095) & ~(size_t)4095;
  g->nslots = nslots;
  g->size = STREAM_SHM_HEAD + (size_t)nslots * g->slot_bytes;
  int fd = shm_open(g->name, O_RDWR | O_CREAT | O_EXCL, 0600);
  if (fd < 0) {
    free(g);
    return NULL;
  }
  void *p = MAP_FAILED;
  if (posix_fallocate(fd, 0, (off_t)g->size) == 0)
    p = mmap(NULL, g->size, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
  close(fd);
  if (p == MAP_FAILED) {
    shm_unlink_seg(g);
    free(g);
    return NULL;
  }
  g->base = p;
  uint64_t head[5] = {STREAM_SHM_MAGIC, g->nonce, g->size, g->slot_bytes, nslots};
  memcpy(g->base, head, sizeof head);
  return g;
}

/* ZeroMQ binds an ipc:// path that another process listens on by unlinking
 * it and taking it over, without an error: the first server runs on,
 * unreachable by new consumers, and removes the path when it stops, which
 * leaves the second unreachable too. 1 when a process accepts connections
 * on the path of an ipc:// endpoint (a stale socket file, or none, is 0). */
static int ipc_path_in_use(const char *endpoint) {
  if (strncmp(endpoint, "ipc://", 6) != 0 || endpoint[6] == '@') return 0; /* abstract: bind fails */
  struct sockaddr_un a = {.sun_family = AF_UNIX};
  const char *path = endpoint + 6;
  if (!*path || strlen(path) >= sizeof a.sun_path) return 0;
  memcpy(a.sun_path, path, strlen(path) + 1);
  int fd = socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) return 0;
  int r = connect(fd, (struct sockaddr *)&a, sizeof a);
  close(fd);
  return r == 0;
}

static int ipc_busy(const char *endpoint) {
  CE_FAIL("stream server: cannot bind %s: Address already in use (another process, e.g. a "
          "coemu serve still running, listens there)", endpoint);
}

int stream_endpoint_probe(const char *endpoint) {
  if (ipc_path_in_use(endpoint)) return ipc_busy(endpoint);
  if (strncmp(endpoint, "tcp://", 6) != 0) return 0; /* ipc: the path itself is the test */
  void *zc = zmq_ctx_new(), *sock = zc ? zmq_socket(zc, ZMQ_ROUTER) : NULL;
  int zero = 0, rc = sock ? 0 : ce_err("stream server: cannot create a socket: %s", zmq_strerror(errno));
  if (sock) zmq_setsockopt(sock, ZMQ_LINGER, &zero, sizeof zero);
  if (rc == 0 && zmq_bind(sock, endpoint) != 0)
    rc = ce_err("stream server: cannot bind %s: %s", endpoint, zmq_strerror(errno));
  if (sock) zmq_close(sock); /* the port is free again for the server itself */
  if (zc) zmq_ctx_term(zc);
  return rc;
}

int stream_server_create(const stream_server_opts *o, stream_source_fn source, void *ctx,
                         stream_server **out) {
  stream_server *s = calloc(1, sizeof *s);
  if (!s) CE_FAIL("stream server: out of memory");
  stream_tune_malloc();
  s->o = *o;
  if (!s->o.max_credit) s->o.max_credit = 8;
  if (s->o.world > 65535) {
    free(s);
    CE_FAIL("stream server: %u ranks, at most 65535", o->world);
  }
  if (!s->o.max_consumers) s->o.max_consumers = s->o.world ? 2 * s->o.world + 8 : 64;
  atomic_init(&s->queued_bytes, 0);
  s->world = (int)s->o.world;
  if (s->world) {
    s->rank_done = calloc((size_t)s->world, 1);
    s->final_sent = calloc((size_t)s->world, 1);
    s->epochs_read = calloc((size_t)s->world, sizeof *s->epochs_read);
  }
  s->zombies = calloc(s->o.max_consumers, sizeof *s->zombies);
  if ((s->world && (!s->rank_done || !s->final_sent || !s->epochs_read)) || !s->zombies) {
    stream_server_destroy(s);
    CE_FAIL("stream server: out of memory");
  }
  if (s->o.heartbeat_s <= 0) s->o.heartbeat_s = 1.0;
  if (s->o.timeout_s <= 0) s->o.timeout_s = 10.0;
  s->source = source;
  s->ctx = ctx;
  s->zctx = zmq_ctx_new();
  s->sock = s->zctx ? zmq_socket(s->zctx, ZMQ_ROUTER) : NULL;
  if (!s->sock) {
    stream_server_destroy(s);
    CE_FAIL("stream server: cannot create a ZeroMQ ROUTER socket: %s", zmq_strerror(errno));
  }
  int one = 1, zero = 0, hwm = (int)(4 * s->o.max_credit * 4 + 64);
  zmq_setsockopt(s->sock, ZMQ_ROUTER_MANDATORY, &one, sizeof one);
  zmq_setsockopt(s->sock, ZMQ_SNDHWM, &hwm, sizeof hwm);
  zmq_setsockopt(s->sock, ZMQ_LINGER, &zero, sizeof zero);
  int64_t maxmsg = (int64_t)1 << 20; /* consumers only send small control messages */
  zmq_setsockopt(s->sock, ZMQ_MAXMSGSIZE, &maxmsg, sizeof maxmsg);
  if (s->o.info && strlen(s->o.info) > STREAM_INFO_MAX) {
    stream_server_destroy(s);
    CE_FAIL("stream server: INFO text of %zu bytes, at most %d", strlen(o->info), STREAM_INFO_MAX);
  }
  if (stream_security_server(s->zctx, s->sock, s->o.curve_secret_key_file,
                             s->o.curve_authorized_dir, s->o.curve_refused,
                             s->o.curve_refused_ctx, &s->sec) < 0) {
    stream_server_destroy(s);
    return -1;
  }
  if (ipc_path_in_use(o->endpoint)) {
    stream_server_destroy(s);
    return ipc_busy(o->endpoint);
  }
  if (zmq_bind(s->sock, o->endpoint) != 0) {
    int e = errno;
    stream_server_destroy(s);
    CE_FAIL("stream server: cannot bind %s: %s", o->endpoint, zmq_strerror(e));
  }
  *out = s;
  return 0;
}

void stream_server_destroy(stream_server *s) {
  if (!s) return;
  if (s->sock) zmq_close(s->sock);
  if (s->zctx) zmq_ctx_term(s->zctx); /* every queued chunk is released by now */
  stream_security_free(s->sec);
  for (int i = 0; i < s->ncons; i++) {
    acct_unref(s->cons[i].acct);
    shm_free(s->cons[i].shm);
  }
  for (int i = 0; i < s->nzombies; i++) acct_unref(s->zombies[i]);
  free(s->zombies);
  free(s->cons);
  free(s->rank_done);
  free(s->final_sent);
  free(s->epochs_read);
  free(s);
}

void stream_server_get_stats(const stream_server *s, stream_server_stats *st) {
  *st = s->st;
  st->queued_bytes = atomic_load(&((stream_server *)s)->queued_bytes);
  st->curve_refused = stream_security_refused(s->sec);
  st->ranks_done = (uint32_t)s->ranks_done;
}

/* Never blocks: a peer whose queue is full (EAGAIN) or gone (EHOSTUNREACH)
 * makes it fail, and the caller drops that peer. */
static int send_frames(stream_server *s, consumer_state *c, const stream_header *h,
                       zmq_msg_t *extra, int nextra) {
  uint8_t hb[STREAM_HEADER_SIZE];
  stream_header_encode(h, hb);
  if (zmq_send(s->sock, c->id, c->idlen, ZMQ_SNDMORE | ZMQ_DONTWAIT) < 0) goto fail;
  if (zmq_send(s->sock, hb, sizeof hb, (nextra ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) < 0) goto fail;
  for (int i = 0; i < nextra; i++)
    if (zmq_msg_send(&extra[i], s->sock, (i + 1 < nextra ? ZMQ_SNDMORE : 0) | ZMQ_DONTWAIT) < 0) {
      for (int j = i; j < nextra; j++) zmq_msg_close(&extra[j]);
      goto fail;
    }
  c->last_sent = ce_now();
  return 0;
fail:
  for (int j = 0; j < nextra; j++) zmq_msg_close(&extra[j]); /* no-op on sent msgs */
  return -1;
}

/* Where the connection a HELLO came on is TCP, remember its descriptor and
 * peer address (fd -1 otherwise: inproc, ipc). */
static void note_connection(consumer_state *c, zmq_msg_t *m) {
  c->fd = -1;
  int fd = zmq_msg_get(m, ZMQ_SRCFD);
  if (fd < 0) return;
  c->peerlen = sizeof c->peer;
  if (getpeername(fd, (struct sockaddr *)&c->peer, &c->peerlen) != 0) return;
  if (c->peer.ss_family != AF_INET && c->peer.ss_family != AF_INET6) return;
  c->fd = fd;
}

/* ZeroMQ's ROUTER cannot close one peer's connection, and a dropped peer that
 * neither reads nor disconnects would keep its queued chunks (and its place
 * under max_consumers) for ever. So the server shuts the TCP connection down
 * itself: ZeroMQ's I/O thread then sees the connection fail, closes it and
 * releases the queued chunks. The descriptor is ZeroMQ's: it is only shut
 * down, never closed here, and only while it still is the same connection
 * (same peer address and port: a descriptor reused for another connection
 * has another peer). */
static void shut_connection(const consumer_state *c) {
  if (c->fd < 0) return;
  struct sockaddr_storage now;
  socklen_t len = sizeof now;
  if (getpeername(c->fd, (struct sockaddr *)&now, &len) != 0 || len != c->peerlen ||
      memcmp(&now, &c->peer, len) != 0)
    return;
  shutdown(c->fd, SHUT_RDWR);
}

static void drop_consumer(stream_server *s, int i) {
  consumer_state *c = &s->cons[i];
  shm_free(c->shm);
  c->shm = NULL;
  if (atomic_load(&c->acct->chunks) > 0) {
    s->st.connections_shut += c->fd >= 0;
    shut_connection(c); /* its chunks are released once ZeroMQ notices */
  }
  if (atomic_load(&c->acct->chunks) > 0 && s->nzombies < (int)s->o.max_consumers)
    s->zombies[s->nzombies++] = c->acct; /* counts against max_consumers until released */
  else
    acct_unref(c->acct);
  stream_consumer gone = c->c;
  s->cons[i] = s->cons[--s->ncons];
  if (s->o.leave) {
    for (int k = 0; k < s->ncons; k++)
      if (s->cons[k].c.rank == gone.rank) return; /* another session serves this rank */
    s->o.leave(s->ctx, &gone);
  }
}

/* Forget dropped connections whose queued chunks ZeroMQ has released. */
static void prune_zombies(stream_server *s) {
  for (int i = 0; i < s->nzombies; i++)
    if (atomic_load(&s->zombies[i]->chunks) == 0) {
      acct_unref(s->zombies[i]);
      s->zombies[i--] = s->zombies[--s->nzombies];
    }
}

static consumer_state *find(stream_server *s, const uint8_t *id, size_t len) {
  for (int i = 0; i < s->ncons; i++)
    if (s->cons[i].idlen == len && !memcmp(s->cons[i].id, id, len)) return &s->cons[i];
  return NULL;
}

static int send_simple(stream_server *s, consumer_state *c, int type, uint32_t value) {
  stream_header h = {.type = (uint16_t)type, .value = value, .dataset_id = s->o.dataset_id,
                     .epoch = c->epoch, .position = c->position};
  if (type == STREAM_WELCOME)
    h.nsamples = (uint32_t)(s->o.samples_per_epoch > UINT32_MAX ? UINT32_MAX : s->o.samples_per_epoch);
  return send_frames(s, c, &h, NULL, 0);
}

static void send_error_version(stream_server *s, consumer_state *c, const char *text,
                               uint16_t version) {
  stream_header h = {.version = version, .type = STREAM_ERROR, .dataset_id = s->o.dataset_id,
                     .epoch = c->epoch, .position = c->position};
  zmq_msg_t m;
  zmq_msg_init_size(&m, strlen(text));
  memcpy(zmq_msg_data(&m), text, strlen(text));
  h.payload_xxh64 = ce_xxh64(text, strlen(text), 0);
  send_frames(s, c, &h, &m, 1);
}

static void send_error(stream_server *s, consumer_state *c, const char *text) {
  send_error_version(s, c, text, 0);
}

static void slog(stream_server *s, const char *fmt, ...) CE_PRINTF(2, 3);
static void slog(stream_server *s, const char *fmt, ...) {
  if (!s->o.log) return;
  char line[2048];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(line, sizeof line, fmt, ap);
  va_end(ap);
  s->o.log(s->ctx, line);
}

/* An ERROR that ends what a consumer (of `rank`) asked for: a damaged
 * shard, another dataset, the producer gone. The consumer alone would know
 * otherwise, so the operator is told too: each distinct text once (the
 * first 64; a consumer that retries, or every rank hitting the same shard,
 * is counted, not logged again). */
static void send_consumer_error(stream_server *s, consumer_state *c, unsigned rank,
                                const char *text) {
  send_error(s, c, text);
  s->st.errors_sent++;
  uint64_t h = ce_xxh64(text, strlen(text), 0);
  for (int i = 0; i < s->nerrors_logged; i++)
    if (s->errors_logged[i] == h) return;
  int n = (int)(sizeof s->errors_logged / sizeof s->errors_logged[0]);
  if (s->nerrors_logged == n) return;
  s->errors_logged[s->nerrors_logged++] = h;
  slog(s, "error sent to rank %u: %s%s", rank, text,
       s->nerrors_logged == n ? " (later errors are only counted)" : "");
}

/* A NOTICE (stream_proto.h) to a consumer that understands it: best effort,
 * as a heartbeat (a consumer gone or not reading misses it). */
static void send_notice(stream_server *s, consumer_state *c, uint32_t code, const char *text) {
  if (!c->notices || c->gone) return;
  size_t len = strlen(text);
  stream_header h = {.type = STREAM_NOTICE, .value = code, .dataset_id = s->o.dataset_id,
                     .epoch = c->epoch, .position = c->position,
                     .payload_xxh64 = ce_xxh64(text, len, 0)};
  zmq_msg_t m;
  zmq_msg_init_size(&m, len);
  memcpy(zmq_msg_data(&m), text, len);
  if (send_frames(s, c, &h, &m, 1) == 0) s->st.notices++;
  c->told = code == STREAM_NOTICE_STOPPED;
}

/* What the consumer's message says of its own epoch: it has read every
 * epoch below it (it moves on only past an EPOCH_END); counted only up to
 * the ends this server sent it, so a peer's claim alone counts nothing. */
static void consumer_epoch(stream_server *s, consumer_state *c, uint32_t epoch) {
  if (epoch > c->seen_epoch) c->seen_epoch = epoch;
  uint32_t read = epoch < c->ended ? epoch : c->ended;
  if (s->world && c->c.rank < s->world && read > s->epochs_read[c->c.rank])
    s->epochs_read[c->c.rank] = read;
}

/* The session a HELLO of `rank` may take the place of when every place is
 * taken, or -1 (the HELLO is then refused: "producer busy"). Places belong
 * to readers, and every rank of the world has a right to one:
 *  - a session of the same rank that does not read (past a grace of
 *    timeout/4 after its HELLO: never had a chunk taken, or none for
 *    timeout/2 while chunks wait) gives way: that is a consumer resuming
 *    elsewhere, or a dead one not yet noticed; a session that reads, or has
 *    just arrived, is never displaced by a newcomer of its rank;
 *  - a rank with no session takes the place of a session of the rank holding
 *    the most places (at least 2), one that does not read if there is one,
 *    else the one with the oldest progress.
 * So a crowd of peers claiming some ranks cannot lock out another rank, nor
 * a reading consumer of their own rank. */
static int place_for(stream_server *s, uint16_t rank, double now) {
  int same = -1, nsame = 0;
  for (int i = 0; i < s->ncons; i++) {
    const consumer_state *c = &s->cons[i];
    if (c->c.rank != rank) continue;
    nsame++;
    int idle = now - c->admitted > s->o.timeout_s / 4 &&
               (atomic_load(&c->acct->released) == 0 ||
                (atomic_load(&c->acct->chunks) > 0 && now - c->last_progress > s->o.timeout_s / 2));
    if (idle && (same < 0 || c->last_progress < s->cons[same].last_progress)) same = i;
  }
  if (nsame > 0) return same;
  /* the rank holding the most places */
  int best = -1, most = 1;
  for (int i = 0; i < s->ncons; i++) {
    int n = 0;
    for (int k = 0; k < s->ncons; k++) n += s->cons[k].c.rank == s->cons[i].c.rank;
    if (n > most) most = n, best = i;
  }
  if (best < 0) return -1;
  int victim = -1, victim_idle = 0;
  for (int i = 0; i < s->ncons; i++) {
    const consumer_state *c = &s->cons[i];
    if (c->c.rank != s->cons[best].c.rank) continue;
    int idle = atomic_load(&c->acct->released) == 0;
    if (victim < 0 || idle > victim_idle ||
        (idle == victim_idle && c->last_progress < s->cons[victim].last_progress))
      victim = i, victim_idle = idle;
  }
  return victim;
}

/* The addressee of a reply to a peer with no session (the INFO reply,
 * refusals, RESET): its routing id, and the epoch and position the reply's
 * header echoes. */
static consumer_state *peer_without_session(consumer_state *t, const void *id, size_t idlen,
                                            uint32_t epoch, uint64_t position) {
  *t = (consumer_state){.idlen = idlen, .epoch = epoch, .position = position};
  memcpy(t->id, id, idlen);
  return t;
}

/* The INFO reply (docs/stream-protocol.md): asked before a HELLO, so it
 * needs no session; the world, the samples per epoch per rank, the epochs,
 * the silence timeout and the heartbeat (ms) in the header, the source's own
 * description as one text frame. */
static void send_info(stream_server *s, const uint8_t *id, size_t idlen) {
  consumer_state tmp;
  peer_without_session(&tmp, id, idlen, 0, 0);
  const char *text = s->o.info ? s->o.info : "{}";
  size_t len = strlen(text);
  stream_header h = {.type = STREAM_INFO, .value = (uint32_t)s->world,
                     .dataset_id = s->o.dataset_id, .epoch = s->o.max_epochs,
                     .position = (uint64_t)(s->o.timeout_s * 1000), /* ms */
                     .chunk_id = (uint64_t)(s->o.heartbeat_s * 1000),
                     .payload_xxh64 = ce_xxh64(text, len, 0)};
  h.nsamples = (uint32_t)(s->o.samples_per_epoch > UINT32_MAX ? UINT32_MAX : s->o.samples_per_epoch);
  zmq_msg_t m;
  zmq_msg_init_size(&m, len);
  memcpy(zmq_msg_data(&m), text, len);
  send_frames(s, &tmp, &h, &m, 1); /* a peer that is gone or not reading misses it */
}

/* Receive and handle one message (all its frames). */
static void handle_incoming(stream_server *s) {
  zmq_msg_t part[4];
  int n = 0, more = 1;
  while (more) {
    zmq_msg_t m;
    zmq_msg_init(&m);
    if (zmq_msg_recv(&m, s->sock, 0) < 0) {
      zmq_msg_close(&m);
      break;
    }
    more = zmq_msg_more(&m);
    if (n < 4)
      part[n++] = m;
    else
      zmq_msg_close(&m), n = 5; /* too many frames: malformed */
  }
  stream_header h;
  int dec = n == 2 && zmq_msg_size(&part[0]) <= MAX_ID
                ? stream_header_decode(zmq_msg_data(&part[1]), zmq_msg_size(&part[1]), &h) : -1;
  if (dec == STREAM_E_VERSION && (h.type == STREAM_HELLO || h.type == STREAM_INFO)) {
    /* a peer of another protocol version: told so in its own version (the
     * header layout is the same), so it fails with this message, not a timeout */
    consumer_state tmp;
    peer_without_session(&tmp, zmq_msg_data(&part[0]), zmq_msg_size(&part[0]), 0, 0);
    char msg[256];
    snprintf(msg, sizeof msg, "protocol version mismatch: the consumer speaks coemu stream "
             "protocol version %u, this producer version %d (docs/stream-protocol.md): use a "
             "client (C or python/coemu) of the same coemu release as the producer",
             (unsigned)h.version, STREAM_VERSION);
    send_error_version(s, &tmp, msg, h.version);
    s->st.refused++;
    goto done;
  }
  if (dec < 0) {
    s->st.malformed++;
    goto done;
  }
  const uint8_t *id = zmq_msg_data(&part[0]);
  size_t idlen = zmq_msg_size(&part[0]);
  consumer_state *c = find(s, id, idlen);
  double now = ce_now();
  if (h.type == STREAM_INFO) {
    send_info(s, id, idlen);
    goto done;
  }
  if (h.type == STREAM_HELLO) { /* world 1..65535, rank < world, credit > 0: checked by decode */
    if (s->world && h.nsamples != (uint32_t)s->world) {
      consumer_state tmp;
      peer_without_session(&tmp, id, idlen, h.epoch, h.position);
      char msg[160];
      snprintf(msg, sizeof msg, "consumer says there are %u ranks, the producer serves %d ranks",
               h.nsamples, s->world);
      send_consumer_error(s, &tmp, h.rank, msg);
      s->st.refused++;
      if (c) { /* a known consumer changing its world: it leaves */
        s->st.consumers_dropped++;
        drop_consumer(s, (int)(c - s->cons));
      }
      goto done;
    }
    if (!c) {
      prune_zombies(s);
      if (s->ncons + s->nzombies >= (int)s->o.max_consumers) {
        /* full: first forget sessions whose peer is gone (a heartbeat to it
         * fails: ROUTER_MANDATORY), then see whose place this HELLO may take */
        for (int i = 0; i < s->ncons; i++)
          if (send_simple(s, &s->cons[i], STREAM_HEARTBEAT, 0) < 0) {
            s->st.consumers_dropped++;
            drop_consumer(s, i--);
          }
        prune_zombies(s);
      }
      if (s->ncons + s->nzombies >= (int)s->o.max_consumers) {
        int old = place_for(s, h.rank, now);
        if (old >= 0) {
          char msg[160];
          snprintf(msg, sizeof msg, "superseded: a session of rank %u took this place (at most %u "
                   "connections); say HELLO again to resume", (unsigned)h.rank, s->o.max_consumers);
          send_error(s, &s->cons[old], msg); /* best effort: it may be gone */
          s->st.consumers_dropped++;
          s->st.superseded++;
          drop_consumer(s, old);
        }
      }
      if (s->ncons + s->nzombies >= (int)s->o.max_consumers) {
        consumer_state tmp;
        peer_without_session(&tmp, id, idlen, h.epoch, h.position);
        char msg[160];
        snprintf(msg, sizeof msg, "producer busy: %d connections, at most %u", s->ncons + s->nzombies,
                 s->o.max_consumers);
        send_error(s, &tmp, msg);
        s->st.refused++;
        goto done;
      }
      peer_acct *a = calloc(1, sizeof *a);
      if (!a) goto done;
      if (s->ncons == s->capcons) {
        int cap = s->capcons ? 2 * s->capcons : 8;
        consumer_state *nc = realloc(s->cons, (size_t)cap * sizeof *nc);
        if (!nc) {
          free(a);
          goto done;
        }
        s->cons = nc;
        s->capcons = cap;
      }
      atomic_init(&a->refs, 1);
      atomic_init(&a->chunks, 0);
      atomic_init(&a->released, 0);
      c = &s->cons[s->ncons++];
      memset(c, 0, sizeof *c);
      memcpy(c->id, id, idlen);
      c->idlen = idlen;
      c->acct = a;
      c->last_progress = now;
      c->admitted = now;
      note_connection(c, &part[1]); /* the body frame carries the source fd */
    }
    c->c.rank = h.rank;
    c->c.world = (uint16_t)h.nsamples; /* 1..65535: checked by stream_header_decode */
    c->c.flags = h.flags;
    c->epoch = h.epoch;
    c->position = h.position;
    c->chunk_id = 0;
    c->seen_epoch = h.epoch;
    c->ended = 0;
    c->notices = (h.flags & STREAM_FLAG_NOTICES) != 0;
    c->told = 0;
    c->credit = h.value < s->o.max_credit ? h.value : s->o.max_credit;
    c->done = s->o.max_epochs && c->epoch >= s->o.max_epochs;
    c->last_seen = now;
    s->st.hellos++;
    if (h.dataset_id && h.dataset_id != s->o.dataset_id) {
      send_consumer_error(s, c, c->c.rank, "dataset id mismatch: the consumer expects another dataset");
      drop_consumer(s, (int)(c - s->cons));
      goto done;
    }
    if (s->world && c->c.rank < s->world && h.position == 0 &&
        h.epoch < s->epochs_read[c->c.rank] &&
        s->st.repeated++ == 0 && s->o.repeat)
      s->o.repeat(s->ctx, &c->c, h.epoch);
    shm_free(c->shm); /* a HELLO again: a fresh segment, or none */
    c->shm = NULL;
    if ((h.flags & STREAM_FLAG_SHM) && s->o.shm_chunk_bytes) {
      /* the credit granted bounds the chunks it holds unread: one slot each
       * (a consumer that grants more later waits for a free slot) */
      c->shm = shm_make(s->o.shm_chunk_bytes, c->credit);
      if (!c->shm) s->st.shm_refused++;
    }
    if (c->shm) { /* granted: the name travels, the nonce stays in the segment */
      stream_header w = {.type = STREAM_WELCOME, .flags = STREAM_FLAG_SHM, .value = c->credit,
                         .dataset_id = s->o.dataset_id, .epoch = c->epoch,
                         .position = c->position};
      w.nsamples = (uint32_t)(s->o.samples_per_epoch > UINT32_MAX ? UINT32_MAX
                                                                  : s->o.samples_per_epoch);
      size_t len = strlen(c->shm->name);
      w.payload_xxh64 = ce_xxh64(c->shm->name, len, 0);
      zmq_msg_t m;
      zmq_msg_init_size(&m, len);
      memcpy(zmq_msg_data(&m), c->shm->name, len);
      send_frames(s, c, &w, &m, 1);
    } else {
      send_simple(s, c, STREAM_WELCOME, c->credit);
    }
    if (s->stopped) send_notice(s, c, STREAM_NOTICE_STOPPED, s->stop_why); /* told at once */
    goto done;
  }
  if (!c) { /* a message from a consumer that never said HELLO (or was dropped) */
    s->st.unexpected++;
    if ((h.type == STREAM_CREDIT || h.type == STREAM_HEARTBEAT) && (h.flags & STREAM_FLAG_RESETS)) {
      /* a consumer that is reading, from where this producer stands: it
       * was restarted, or it dropped this peer (silent past the timeout).
       * Told so at once, the consumer says HELLO again and resumes where it
       * is, instead of waiting out its own silence timeout. One header,
       * never queued (send_frames): no session is opened for the peer. */
      consumer_state tmp;
      peer_without_session(&tmp, id, idlen, h.epoch, h.position);
      stream_header r = {.type = STREAM_RESET, .dataset_id = s->o.dataset_id, .epoch = h.epoch,
                         .position = h.position, .chunk_id = h.chunk_id};
      if (send_frames(s, &tmp, &r, NULL, 0) == 0) s->st.resets++;
    }
    goto done;
  }
  c->last_seen = now;
  if (h.type == STREAM_CREDIT || h.type == STREAM_HEARTBEAT || h.type == STREAM_BYE)
    consumer_epoch(s, c, h.epoch);
  switch (h.type) {
  case STREAM_CREDIT: {
    shm_seg *g = c->shm;
    if ((h.flags & STREAM_FLAG_SHM_ANSWER) && g && !g->mapped) {
      /* the nonce is only in the segment: a consumer that read it has it
       * mapped (and is on this host); the name is not needed any more */
      shm_unlink_seg(g);
      if (h.chunk_id == g->nonce) {
        g->mapped = 1;
        s->st.shm_consumers++;
      } else {
        shm_free(g);
        c->shm = NULL;
        s->st.shm_refused++;
      }
    } else if (g && g->mapped) { /* each credit: the oldest chunk in the segment is read */
      uint32_t done = h.value < g->inflight ? h.value : g->inflight;
      g->head = (g->head + done) % g->nslots;
      g->inflight -= done;
    }
    uint64_t cr = (uint64_t)c->credit + h.value;
    c->credit = cr > s->o.max_credit ? s->o.max_credit : (uint32_t)cr;
    break;
  }
  case STREAM_HEARTBEAT:
    break;
  case STREAM_BYE:
    /* the BYE carries the consumer's own state: it is finished only if it
     * consumed every epoch, not merely because they were all sent; and only
     * if this server did send that rank its last epoch's end (a peer's claim
     * alone decides nothing) */
    if (s->o.max_epochs && h.epoch >= s->o.max_epochs && s->world && c->c.rank < s->world &&
        s->final_sent[c->c.rank] && !s->rank_done[c->c.rank]) {
      s->rank_done[c->c.rank] = 1;
      s->ranks_done++;
    }
    drop_consumer(s, (int)(c - s->cons));
    break;
  default:
    s->st.unexpected++;
  }
done:
  for (int i = 0; i < n && i < 4; i++) zmq_msg_close(&part[i]);
}

/* Send a chunk whose rows are copied into the consumer's next free slot:
 * the frames are the ids, the row checksums and the rows' descriptors
 * (offset, length in the segment), so no row crosses the socket. The
 * source's chunk (and its rows) is released once ZeroMQ has sent the ids
 * and checksums; the slot when the consumer's credit says it read it. */
static int feed_shm(stream_server *s, consumer_state *c, stream_header *h, stream_chunk *ch,
                    chunk_ref *ref, const uint64_t *sums, ce_xxh64_state *xs, size_t inb,
                    size_t outb) {
  shm_seg *g = c->shm;
  uint32_t n = ch->nsamples, slot = (g->head + g->inflight) % g->nslots;
  size_t nid = n * sizeof(uint64_t), nsum = 2 * nid, ndesc = 2 * nsum;
  uint64_t off = STREAM_SHM_HEAD + (uint64_t)slot * g->slot_bytes;
  zmq_msg_t m[3];
  if (zmq_msg_init_size(&m[2], ndesc) != 0) {
    free(ref->rows);
    free(ref);
    release_chunk(ch);
    return 0;
  }
  uint64_t *desc = zmq_msg_data(&m[2]);
  for (uint32_t k = 0; k < 2 * n; k++) { /* inputs rows, then targets rows */
    int tg = k >= n;
    uint32_t j = tg ? k - n : k;
    size_t b = tg ? outb : inb;
    const void *src = ch->in_rows ? (tg ? ch->tg_rows[j] : ch->in_rows[j])
                                  : (const char *)(tg ? ch->targets : ch->inputs) + j * b;
    memcpy(g->base + off, src, b);
    desc[2 * k] = off;
    desc[2 * k + 1] = b;
    off += b;
  }
  if (ch->in_rows && ch->row_release) /* no frame points at the rows */
    for (uint32_t j = 0; j < 2 * n; j++) ch->row_release(ch->row_tokens[j]);
  free(ref->rows);
  ref->rows = NULL;
  ce_xxh64_update(xs, desc, ndesc);
  h->payload_xxh64 = ce_xxh64_digest(xs);
  h->flags |= STREAM_FLAG_SHM;
  atomic_init(&ref->refs, 2);
  ref->release = ch->release;
  ref->row_release = NULL;
  ref->token = ch->token;
  ref->acct = c->acct;
  ref->queued = &s->queued_bytes;
  ref->bytes = nid + nsum;
  atomic_fetch_add(&c->acct->refs, 1);
  atomic_fetch_add(&c->acct->chunks, 1);
  atomic_fetch_add(&s->queued_bytes, ref->bytes);
  zmq_msg_init_data(&m[0], (void *)ch->ids, nid, frame_done, ref);
  zmq_msg_init_data(&m[1], (void *)sums, nsum, frame_done, ref);
  if (send_frames(s, c, h, m, 3) < 0) {
    c->gone = 1;
    return 0;
  }
  g->inflight++;
  c->credit--;
  c->position += n;
  c->chunk_id++;
  s->st.chunks_sent++;
  s->st.shm_chunks++;
  s->st.samples_sent += n;
  s->st.bytes_sent += nid + nsum + ndesc + STREAM_HEADER_SIZE + n * (inb + outb);
  return 1;
}

/* Send one chunk (or the epoch end) to consumer i if it has credit.
 * Returns 1 if something was sent, else 0 (a failed send marks it gone). */
static int feed(stream_server *s, int i) {
  consumer_state *c = &s->cons[i];
  if (c->gone || c->done || c->credit == 0) return 0;
  /* whatever credit the peer grants, ZeroMQ holds at most max_credit of its
   * chunks: a peer that does not read gets nothing more */
  if (atomic_load(&c->acct->chunks) >= (int)s->o.max_credit) return 0;
  /* Past an epoch's end, one chunk of the next epoch and no more until the
   * consumer says (its next CREDIT or HEARTBEAT carries its epoch) that it
   * read that end: a consumer that leaves there (a torch DataLoader's
   * workers, one iteration per epoch) was sent at most that chunk for
   * nothing, whatever credit it gave (a HELLO's, before it knew the epoch's
   * length, gave a whole further epoch). One chunk keeps a consumer that
   * reads on busy, and its CREDIT for it lifts the stop. */
  if (c->epoch > c->seen_epoch && (c->epoch - c->seen_epoch > 1 || c->position > 0)) return 0;
  shm_seg *g = c->shm;
  if (g && (!g->mapped || g->inflight >= g->nslots)) return 0; /* its answer, or a free slot */
  stream_chunk ch;
  memset(&ch, 0, sizeof ch);
  ce_err_clear();
  int r = s->source(s->ctx, &c->c, c->epoch, c->position, &ch);
  if (r < 0) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s", ce_err_msg());
    send_consumer_error(s, c, c->c.rank, msg);
    c->done = 1;
    return 1;
  }
  if (r == STREAM_SOURCE_WAIT) return 0;
  if (r == 0) {
    if (send_simple(s, c, STREAM_EPOCH_END, 0) < 0) {
      c->gone = 1;
      return 0;
    }
    if (c->epoch < UINT32_MAX) c->ended = c->epoch + 1;
    if (c->epoch == UINT32_MAX) { /* no epoch after the last one a header can name */
      c->done = 1;
      return 1;
    }
    c->epoch++;
    c->position = 0;
    c->chunk_id = 0;
    if (s->o.max_epochs && c->epoch >= s->o.max_epochs) {
      c->done = 1;
      if (s->world && c->c.rank < s->world) s->final_sent[c->c.rank] = 1;
    }
    return 1;
  }
  stream_header h = {.type = STREAM_CHUNK, .flags = ch.flags, .dataset_id = s->o.dataset_id,
                     .epoch = c->epoch, .nsamples = ch.nsamples, .chunk_id = c->chunk_id,
                     .position = c->position, .dtype = STREAM_DTYPE_F32};
  memcpy(h.in_shape, ch.in_shape, sizeof h.in_shape);
  memcpy(h.out_shape, ch.out_shape, sizeof h.out_shape);
  size_t nid = ch.nsamples * sizeof(uint64_t), nsum = 2 * nid;
  size_t inb = stream_input_bytes(&h), outb = stream_target_bytes(&h);
  size_t nin = ch.nsamples * inb, nout = ch.nsamples * outb;
  /* the row checksums travel with the chunk (stream_proto.h): forwarded when
   * the source has them (a dataset's, verified as read), else made here */
  chunk_ref *ref = malloc(sizeof *ref + (ch.sums ? 0 : nsum));
  if (!ref) {
    release_chunk(&ch);
    return 0;
  }
  ref->rows = NULL;
  if (ch.in_rows && ch.row_release) {
    ref->rows = malloc(2 * (size_t)ch.nsamples * sizeof *ref->rows);
    if (!ref->rows) {
      free(ref);
      release_chunk(&ch);
      return 0;
    }
  }
  const uint64_t *sums = ch.sums;
  if (!sums) {
    if (ch.in_rows)
      for (uint32_t k = 0; k < ch.nsamples; k++)
        stream_row_sums(ch.in_rows[k], inb, ch.tg_rows[k], outb, 1, ref->sums + 2 * k);
    else
      stream_row_sums(ch.inputs, inb, ch.targets, outb, ch.nsamples, ref->sums);
    sums = ref->sums;
  }
  ce_xxh64_state xs;
  ce_xxh64_init(&xs, 0);
  ce_xxh64_update(&xs, ch.ids, nid);
  ce_xxh64_update(&xs, sums, nsum);
  if (g && nin + nout <= g->slot_bytes)
    return feed_shm(s, c, &h, &ch, ref, sums, &xs, inb, outb);
  h.payload_xxh64 = ce_xxh64_digest(&xs);
  /* protocol 3: every row its own frame (stream_proto.h), each sent from
   * where the source holds it */
  int nframes = 2 + 2 * (int)ch.nsamples;
  zmq_msg_t *m = malloc((size_t)nframes * sizeof *m);
  if (!m) {
    free(ref->rows);
    free(ref);
    release_chunk(&ch);
    return 0;
  }
  atomic_init(&ref->refs, nframes);
  ref->release = ch.release;
  ref->row_release = ch.row_release;
  ref->token = ch.token;
  ref->acct = c->acct;
  ref->queued = &s->queued_bytes;
  ref->bytes = nid + nsum + nin + nout;
  atomic_fetch_add(&c->acct->refs, 1);
  atomic_fetch_add(&c->acct->chunks, 1);
  atomic_fetch_add(&s->queued_bytes, ref->bytes);
  zmq_msg_init_data(&m[0], (void *)ch.ids, nid, frame_done, ref);
  zmq_msg_init_data(&m[1], (void *)sums, nsum, frame_done, ref);
  for (uint32_t k = 0; k < ch.nsamples; k++) {
    const void *in = ch.in_rows ? ch.in_rows[k] : (const char *)ch.inputs + k * inb;
    const void *tg = ch.in_rows ? ch.tg_rows[k] : (const char *)ch.targets + k * outb;
    if (ref->rows) {
      row_hint *hi = &ref->rows[2 * k], *ht = &ref->rows[2 * k + 1];
      *hi = (row_hint){(struct chunk_ref_s *)ref, ch.row_tokens[2 * k]};
      *ht = (row_hint){(struct chunk_ref_s *)ref, ch.row_tokens[2 * k + 1]};
      zmq_msg_init_data(&m[2 + k], (void *)in, inb, row_frame_done, hi);
      zmq_msg_init_data(&m[2 + ch.nsamples + k], (void *)tg, outb, row_frame_done, ht);
    } else {
      zmq_msg_init_data(&m[2 + k], (void *)in, inb, frame_done, ref);
      zmq_msg_init_data(&m[2 + ch.nsamples + k], (void *)tg, outb, frame_done, ref);
    }
  }
  int sent = send_frames(s, c, &h, m, nframes);
  free(m);
  if (sent < 0) {
    /* EHOSTUNREACH: the peer is gone (ROUTER_MANDATORY); EAGAIN: its queue
     * is full. The frames not sent were closed: frame_done released them. */
    c->gone = 1;
    return 0;
  }
  c->credit--;
  c->position += ch.nsamples;
  c->chunk_id++;
  s->st.chunks_sent++;
  s->st.samples_sent += ch.nsamples;
  s->st.bytes_sent += nid + nsum + nin + nout + STREAM_HEADER_SIZE;
  return 1;
}

/* Ask opts.producing (every STREAM_PRODUCING_PROBE_S): log and tell the
 * consumers when what makes the chunks stops and when it is back. 1 when it
 * has been stopped for opts.orphan_exit_s: every consumer was sent an ERROR
 * saying so, and the server is to return. */
static int probe_producing(stream_server *s, double now) {
  if (!s->o.producing || now < s->next_probe) return 0;
  s->next_probe = now + STREAM_PRODUCING_PROBE_S;
  char why[1024] = "";
  int p = s->o.producing(s->ctx, why, sizeof why);
  if (p < 0 && !s->unknown_logged) {
    s->unknown_logged = 1;
    slog(s, "warning: %s (consumers are not told when it stops)", why);
  }
  if (p == 0 && !s->stopped) {
    s->stopped = 1;
    s->stopped_since = now;
    s->st.producer_stops++;
    char wait[160];
    if (s->o.orphan_exit_s > 0)
      snprintf(wait, sizeof wait, "if it is not back in %g s, this server stops and its consumers "
               "get an error", s->o.orphan_exit_s);
    else
      snprintf(wait, sizeof wait, "consumers waiting for what is not made yet wait for it, with "
               "no limit");
    snprintf(s->stop_why, sizeof s->stop_why, "%s; %s", why, wait);
    slog(s, "warning: %s (consumers that understand it are told)", s->stop_why);
    for (int i = 0; i < s->ncons; i++) send_notice(s, &s->cons[i], STREAM_NOTICE_STOPPED, s->stop_why);
  } else if (p == 1 && s->stopped) {
    s->stopped = 0;
    char back[1200];
    snprintf(back, sizeof back, "the stream's producer is back after %.0f s: %s",
             now - s->stopped_since, why);
    slog(s, "%s", back);
    for (int i = 0; i < s->ncons; i++)
      if (s->cons[i].told) send_notice(s, &s->cons[i], STREAM_NOTICE_RESUMED, back);
  }
  if (!s->stopped || s->o.orphan_exit_s <= 0 || now - s->stopped_since < s->o.orphan_exit_s)
    return 0;
  char msg[1200];
  snprintf(msg, sizeof msg, "the producer stopped serving: %s; it waited %g s for it to come back "
           "(its give-up time)", why, s->o.orphan_exit_s);
  slog(s, "stopping: nothing made the stream's data for %g s (its give-up time)", s->o.orphan_exit_s);
  for (int i = 0; i < s->ncons; i++) send_consumer_error(s, &s->cons[i], s->cons[i].c.rank, msg);
  return 1;
}

int stream_server_run(stream_server *s, volatile int *stop) {
  double last_busy = ce_now();
  s->st.end = STREAM_END_STOPPED; /* unless one of the breaks below says otherwise */
  while (!(stop && *stop)) {
    if (probe_producing(s, ce_now())) {
      /* the ERRORs are queued: sent before the socket closes (it lingers
       * for them, a bounded time: a consumer not reading does not hold the
       * exit) */
      int linger = 2000;
      zmq_setsockopt(s->sock, ZMQ_LINGER, &linger, sizeof linger);
      s->st.end = STREAM_END_ORPHANED;
      break;
    }
    if (s->ncons > 0) last_busy = ce_now();
    if (s->o.idle_exit_s > 0 && ce_now() - last_busy > s->o.idle_exit_s) {
      s->st.end = STREAM_END_IDLE;
      break;
    }
    zmq_pollitem_t it = {s->sock, 0, ZMQ_POLLIN, 0};
    int sent = 0;
    for (int i = 0; i < s->ncons && !(stop && *stop); i++) {
      sent += feed(s, i);
    }
    long wait_ms = (long)(s->o.heartbeat_s * 250);
    if (wait_ms > 250) wait_ms = 250;
    int rc = zmq_poll(&it, 1, sent ? 0 : (wait_ms > 1 ? wait_ms : 1));
    if (rc < 0 && errno != EINTR) CE_FAIL("stream server: poll failed: %s", zmq_strerror(errno));
    /* a bounded batch of incoming messages, so sends and signals get their turn */
    for (int k = 0; rc > 0 && k < 1024; k++) {
      handle_incoming(s);
      rc = zmq_poll(&it, 1, 0);
    }
    for (int i = 0; i < s->ncons; i++) /* sends failed: their messages are read by now */
      if (s->cons[i].gone) {
        s->st.consumers_dropped++;
        drop_consumer(s, i--);
      }
    double now = ce_now();
    prune_zombies(s);
    for (int i = 0; i < s->ncons; i++) {
      consumer_state *c = &s->cons[i];
      uint64_t rel = atomic_load(&c->acct->released);
      if (rel != c->released_seen || atomic_load(&c->acct->chunks) == 0) {
        c->released_seen = rel;
        c->last_progress = now;
      }
      if (now - c->last_seen > s->o.timeout_s) {
        s->st.consumers_dropped++;
        drop_consumer(s, i--);
        continue;
      }
      if (now - c->last_progress > s->o.timeout_s) { /* queued chunks not read for timeout_s */
        s->st.consumers_dropped++;
        s->st.stalled++;
        drop_consumer(s, i--);
        continue;
      }
      if (!c->gone && now - c->last_sent > s->o.heartbeat_s &&
          send_simple(s, c, STREAM_HEARTBEAT, 0) < 0)
        c->gone = 1; /* gone, or its queue is full: dropped after the next read */
    }
    /* With a bounded number of epochs: done once every rank of the world
     * has been sent all epochs and has said BYE. */
    if (s->o.max_epochs && s->world && s->ranks_done == s->world) {
      s->st.end = STREAM_END_EPOCHS;
      break;
    }
  }
  return 0;
}
