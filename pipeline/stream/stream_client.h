/* stream_client.h - the consumer side of the coemu stream (ZeroMQ DEALER).
 *
 * A trainer rank opens a client with its rank, the number of ranks and the
 * (epoch, position) to start from, and calls stream_client_next() for each
 * chunk. The client grants credit as it consumes: at most `credit` chunks
 * are ever in flight or queued for it, which bounds its memory. Each chunk
 * is checked (header checksum, shapes, frame sizes, the XXH64 of the ids and
 * row checksums, every row against its row checksum (protocol 2), that its
 * position is the one expected) before it is returned; anything else is
 * counted and dropped. If the producer is silent for longer than the
 * timeout, next() fails with STREAM_E_SILENT; stream_client_reconnect() then
 * resumes from the last (epoch, position) consumed, so no sample is lost or
 * repeated.
 */
#ifndef COEMU_STREAM_CLIENT_H
#define COEMU_STREAM_CLIENT_H

#include <stddef.h>
#include <stdint.h>

#include "pipeline/stream/stream_proto.h"

#define STREAM_E_SILENT (-2) /* producer silent past the timeout */
#define STREAM_E_REMOTE (-3) /* producer sent an ERROR message */
#define STREAM_E_REFUSED (-4) /* the producer refused this consumer's CURVE key (it sends
                                 nothing to such a consumer; ZeroMQ's socket monitor says so) */

typedef struct {
  const char *endpoint;
  uint16_t rank, world;
  uint32_t epoch;          /* where to start (resume) */
  uint64_t position;
  uint32_t credit;         /* chunks in flight (default 4) */
  uint32_t flags;          /* bit 0: ask for normalised data */
  uint64_t dataset_id;     /* 0 = any */
  double heartbeat_s, timeout_s; /* defaults 1 and 10 */
  const char *curve_server_key;  /* producer's public key file (NULL: no CURVE) */
  const char *curve_client_key;  /* this consumer's key pair file */
  int shm;                 /* 0: rows as frames; 1: ask for them through the producer's
                              shared-memory segment (docs/stream-protocol.md, "Shared memory"),
                              frames when none is offered or it cannot be mapped; 2: the same,
                              but an error instead of frames */
} stream_client_opts;

typedef struct {
  stream_header h;         /* epoch, position, nsamples, shapes, flags */
  const uint64_t *ids;     /* nsamples sample ids */
  const float *inputs;     /* nsamples x in_shape */
  const float *targets;    /* nsamples x out_shape */
} stream_chunk_view;

typedef struct {
  uint64_t chunks, samples, bytes, malformed, dropped_out_of_order, heartbeats;
  uint64_t realigned; /* frames copied because ZeroMQ delivered them misaligned */
  uint64_t shm_mapped, shm_chunks; /* sessions that mapped a segment; chunks read from one */
  uint64_t resets; /* HELLOs said again on the producer's RESET (it restarted, or dropped us) */
  uint64_t notices; /* NOTICEs received (each printed on stderr; stream_client_notice) */
} stream_client_stats;

typedef struct stream_client stream_client;

int stream_client_open(const stream_client_opts *o, stream_client **out);

/* Next chunk: returns 1 and fills *v (valid until the next call: a
 * one-sample chunk's arrays are its received frames, a larger chunk's rows,
 * each received as a frame of its own (protocol 3), are gathered into
 * batch buffers the client keeps and reuses), 0 at the
 * end of an epoch (the client moves to the next one; *v->h says which ended),
 * or a negative status (-1 error, STREAM_E_SILENT, STREAM_E_REMOTE,
 * STREAM_E_REFUSED). */
int stream_client_next(stream_client *c, stream_chunk_view *v);

/* Reconnect (new socket, HELLO from the last consumed position). */
int stream_client_reconnect(stream_client *c);

/* The resume state: the epoch and the number of its samples consumed. */
void stream_client_state(const stream_client *c, uint32_t *epoch, uint64_t *position);
void stream_client_get_stats(const stream_client *c, stream_client_stats *st);
/* Dataset id and samples per epoch announced by the producer (after the first next()). */
uint64_t stream_client_dataset_id(const stream_client *c);
uint64_t stream_client_samples_per_epoch(const stream_client *c);

/* The producer's last NOTICE ("" if none): e.g. a live stream's job
 * stopped, so the chunks not made yet wait for its rerun
 * (docs/stream-protocol.md, "Notices"). Each is also printed on stderr. */
const char *stream_client_notice(const stream_client *c);

/* Why the last session takes frames although shm was asked for ("" if it
 * did not, or mapped its segment). */
const char *stream_client_shm_error(const stream_client *c);

/* Say BYE and close. */
void stream_client_close(stream_client *c);

#endif
