/* stream_server.h - the producer side of the coemu stream (ZeroMQ ROUTER).
 *
 * Consumers (DEALER sockets, see stream_client.h) connect and say HELLO with
 * their rank, the number of ranks, the epoch and position to start from and
 * an initial credit. The server answers WELCOME and then sends CHUNK
 * messages, never more unacknowledged chunks to a consumer than the credit
 * it granted; each consumed chunk returns one credit. Chunks come from a
 * source callback, which decides what sample goes to which rank (e.g. a
 * deterministic per-epoch shuffle of a dataset split). Malformed, oversized
 * or unexpected messages are counted and dropped. Silent consumers are
 * dropped after the heartbeat timeout; ROUTER_MANDATORY makes a send to a
 * vanished peer fail instead of vanishing silently.
 */
#ifndef COEMU_STREAM_SERVER_H
#define COEMU_STREAM_SERVER_H

#include <stddef.h>
#include <stdint.h>

/* What a consumer asked for in its HELLO. */
typedef struct {
  uint16_t rank, world;
  uint32_t flags; /* bit 0: normalised data requested */
} stream_consumer;

/* One chunk handed from the source to the server. The server sends the
 * buffers without copying and calls release(token) once ZeroMQ has
 * finished with them (possibly from ZeroMQ's I/O thread). */
typedef struct {
  uint32_t nsamples;
  const uint64_t *ids;
  /* the row checksums (stream_proto.h: 2 x nsamples, XXH64 of each inputs
   * and targets row) when the source holds them verified, sent as they
   * are (released with the rest); NULL: the server computes them */
  const uint64_t *sums;
  const void *inputs, *targets;
  /* optional, instead of inputs / targets: every row where it lies (e.g.
   * each in its own mapped shard file): in_rows[k] / tg_rows[k] are sample
   * k's inputs and targets rows, each sent as its own frame. With
   * row_release, row_release(row_tokens[2k]) runs when ZeroMQ frees the
   * frame of in_rows[k] and row_release(row_tokens[2k + 1]) when it frees
   * that of tg_rows[k] (any thread), each before release(token) */
  const void *const *in_rows, *const *tg_rows;
  void (*row_release)(void *row_token);
  void *const *row_tokens;
  uint32_t in_shape[4], out_shape[3];
  uint32_t flags;
  void (*release)(void *token);
  void *token;
} stream_chunk;

/* Fill *out with the chunk that starts at `position` of `epoch` for this
 * consumer. Returns 1 (chunk filled), 0 (the epoch has no samples left at
 * this position), STREAM_SOURCE_WAIT (the chunk is not made yet: ask again
 * later; the server keeps serving others and heartbeats meanwhile) or -1
 * (error, message set: sent to the consumer as ERROR). */
#define STREAM_SOURCE_WAIT 2
typedef int (*stream_source_fn)(void *ctx, const stream_consumer *c, uint32_t epoch,
                                uint64_t position, stream_chunk *out);

typedef struct {
  const char *endpoint;        /* e.g. "tcp://127.0.0.1:5555", "ipc:///tmp/coemu.sock" */
  uint64_t dataset_id;
  uint64_t samples_per_epoch;  /* per consumer, announced in WELCOME (0 = unknown) */
  uint32_t max_epochs;         /* stop sending after this many epochs (0 = unbounded) */
  uint32_t max_credit;         /* cap on a consumer's credit (default 8) */
  double heartbeat_s;          /* send a heartbeat after this much silence (default 1) */
  double timeout_s;            /* drop a consumer silent for this long (default 10) */
  double idle_exit_s;          /* > 0: return when no consumer has been connected for this long */
  uint32_t world;              /* ranks served (> 0: a HELLO with another world is refused with
                                  an ERROR, and max_epochs ends the run once every one of these
                                  ranks is done); 0: any world, and max_epochs never ends it */
  uint32_t max_consumers;      /* connections served at once, counting dropped ones whose chunks
                                  ZeroMQ still holds (default 2 x world + 8, or 64) */
  void (*leave)(void *ctx, const stream_consumer *c); /* optional: the last consumer of a rank
                                  left (BYE, dropped): the source may forget what it read ahead */
  void (*repeat)(void *ctx, const stream_consumer *c, uint32_t epoch);
                               /* optional (with world > 0): a HELLO asks, from its start, for an
                                  epoch that a session of that rank read to its end (this server
                                  sent it the EPOCH_END, and a later message of the consumer
                                  carried the next epoch): the same samples in the same order
                                  again (a torch DataLoader's workers without set_epoch; or a
                                  new trainer). An epoch sent to a session that ended before it
                                  read it does not count. Called for the first such HELLO only;
                                  stream_server_stats.repeated counts all */
  void (*log)(void *ctx, const char *line);
                               /* optional: what the server's operator should read (one line,
                                  no newline): each distinct ERROR sent to a consumer, with its
                                  rank; the changes of `producing` below */
  int (*producing)(void *ctx, char *why, size_t len);
                               /* optional: whether what makes the source's chunks still runs
                                  (1 yes, or nothing is left to make; 0 no: chunks not made yet
                                  will not come until it is back; -1 cannot tell), asked every
                                  STREAM_PRODUCING_PROBE_S with ctx; `why` one sentence saying
                                  so. When it stops and when it is back, the server logs it and
                                  sends every consumer that understands it a NOTICE
                                  (docs/stream-protocol.md, "Notices"); a consumer that says
                                  HELLO meanwhile is told too */
  double orphan_exit_s;        /* with producing: > 0: once it has said 0 for this long, every
                                  consumer gets an ERROR saying so and the server returns
                                  (STREAM_END_ORPHANED); 0: the consumers wait for its return */
  const char *info;            /* optional: the text of the INFO reply (UTF-8 JSON, at most
                                  STREAM_INFO_MAX bytes, docs/stream-protocol.md "INFO"); any
                                  peer may ask for it, before or without a HELLO */
  const char *curve_secret_key_file; /* CURVE server key (NULL: no authentication) */
  const char *curve_authorized_dir;  /* client public keys allowed (with CURVE) */
  void (*curve_refused)(void *ctx, const char *address, const char *public_key);
                               /* optional: called from the authentication thread for each
                                  CURVE handshake refused (stream_security.h) */
  void *curve_refused_ctx;
  size_t shm_chunk_bytes;      /* > 0: a consumer that asks (HELLO flag STREAM_FLAG_SHM) gets its
                                  rows through a shared-memory segment: per unit of credit granted,
                                  one slot of this many bytes (the most rows bytes of a chunk; a larger
                                  chunk goes as frames): docs/stream-protocol.md, "Shared
                                  memory"; 0: never offered */
} stream_server_opts;

typedef struct {
  uint64_t chunks_sent, samples_sent, bytes_sent;
  uint64_t malformed, unexpected, consumers_dropped, hellos;
  uint64_t resets;       /* RESETs sent: CREDITs and HEARTBEATs of peers without a session */
  uint64_t refused;      /* HELLOs refused: wrong world, or too many consumers */
  uint64_t stalled;      /* consumers dropped because they stopped reading */
  uint64_t superseded;   /* sessions that gave their place to a HELLO (see place_for) */
  uint64_t connections_shut; /* dropped peers' TCP connections shut down by the server, so that
                                ZeroMQ releases the chunks it held for them */
  uint64_t queued_bytes; /* chunk bytes ZeroMQ holds now (not yet written to a socket) */
  uint64_t curve_refused; /* CURVE handshakes refused: a key not among the authorised ones */
  uint64_t shm_chunks;    /* chunks whose rows went through a shared segment */
  uint64_t shm_consumers; /* sessions that mapped their segment (answered with its nonce) */
  uint64_t shm_refused;   /* sessions that asked for one and then took frames (could not map
                             it, wrong nonce, or the segment could not be made) */
  int end;                /* why stream_server_run returned (STREAM_END_*) */
  uint32_t ranks_done;    /* ranks of the world sent every epoch and gone (with max_epochs) */
  uint64_t repeated;      /* HELLOs asking again, from its start, for an epoch already read
                             whole by that rank (see stream_server_opts.repeat) */
  uint64_t errors_sent;   /* ERRORs sent to consumers (each distinct one logged: opts.log) */
  uint64_t notices;       /* NOTICEs sent */
  uint32_t producer_stops; /* times `producing` went from running to stopped */
} stream_server_stats;

enum {
  STREAM_END_RUNNING = 0, /* not ended (yet) */
  STREAM_END_STOPPED,     /* the stop flag (a signal) */
  STREAM_END_IDLE,        /* idle_exit_s without a consumer */
  STREAM_END_EPOCHS,      /* every rank of the world was sent max_epochs epochs and said BYE */
  STREAM_END_ORPHANED     /* `producing` said 0 for orphan_exit_s */
};

#define STREAM_PRODUCING_PROBE_S 1.0 /* how often opts.producing is asked */

#define STREAM_INFO_MAX 4096 /* bytes of an INFO reply's text */

typedef struct stream_server stream_server;

/* Whether the server could bind `endpoint` now (bound and released at
 * once; an ipc:// path another process listens on counts as taken): 0, or
 * -1 with stream_server_create's message. For work that comes before the
 * server (serve --generate's pilot pass), so a busy endpoint is found
 * before that work, not after. */
int stream_endpoint_probe(const char *endpoint);

int stream_server_create(const stream_server_opts *o, stream_source_fn source, void *ctx,
                         stream_server **out);
/* Serve until *stop becomes non-zero (checked at least every quarter
 * heartbeat; the loop never blocks on a peer: every send is non-blocking),
 * or, with max_epochs and world, until every rank of the server's world has
 * been sent its last epoch and has said BYE after it. A peer never decides
 * the rank set or the end. Bounds against hostile or broken peers
 * (docs/stream-protocol.md): at most max_credit chunks queued in ZeroMQ per
 * connection whatever credit it grants; a connection whose queue does not
 * drain for timeout_s is dropped; at most max_consumers connections, so
 * the server holds at most max_consumers x max_credit chunks. Returns 0 or
 * -1. */
int stream_server_run(stream_server *s, volatile int *stop);
void stream_server_get_stats(const stream_server *s, stream_server_stats *st);
void stream_server_destroy(stream_server *s);

#endif
