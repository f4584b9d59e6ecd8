/* stream_proto.h - the coemu stream wire format (version 3).
 *
 * Every message is a ZeroMQ multi-part message whose first frame is a fixed
 * 96-byte little-endian header; CHUNK messages carry 2 + 2 x nsamples more
 * frames: sample ids (uint64 x nsamples), row checksums (uint64 x 2 x
 * nsamples: the XXH64, seed 0, of each sample's inputs row and of its
 * targets row, as float32 bytes: the values a dataset's /checksums stores),
 * then each sample's inputs row, one frame per sample, then each sample's
 * targets row, one frame per sample (raw float32). The header carries its own checksum and the XXH64
 * of the ids and row-checksum frames; each sample's rows are checked
 * against their row checksums. So a corrupted, truncated or foreign message
 * is recognised, counted and dropped, never trusted, and a producer that
 * already holds verified row checksums (a dataset's) forwards them instead
 * of hashing every byte again. Version 3 (2026-12) sends rows as frames of
 * their own: a frame above glibc's largest mmap threshold (32 MiB; a batch
 * of 16 samples of 3.26 MB is 52 MB) was a fresh mmap in every receiver,
 * faulted in and zeroed by the kernel page by page (docs/stream-protocol.md,
 * "Versions"); version 2 sent all inputs in one frame and all targets in
 * another. Version 1 carried one XXH64
 * over all payload frames and no row checksums; a peer of another version
 * gets an ERROR naming both (stream_header_decode returns
 * STREAM_E_VERSION). docs/stream-protocol.md is the full description.
 *
 *  off size field
 *    0    4 magic            "CEMS"
 *    4    2 version          3
 *    6    2 type             stream_msg_type
 *    8    4 flags            bit 0: payload normalised
 *   12    4 value            type-specific: credits (HELLO, CREDIT), world (INFO reply)...
 *   16    8 dataset_id       XXH64 of the dataset's manifest (0 = any)
 *   24    4 epoch
 *   28    4 nsamples         samples in this chunk / per epoch for this rank (WELCOME)
 *   32    8 chunk_id         sequence number within the epoch (CHUNK)
 *   40    8 position         index of the first sample in the consumer's epoch order
 *   48    2 dtype            1 = float32
 *   50    2 rank             consumer rank (HELLO), 0 otherwise
 *   52   16 in_shape[4]      per-sample input shape  (uint32; e.g. 3, 64, 64, 64)
 *   68   12 out_shape[3]     per-sample target shape (uint32; e.g. 7, 64, 64)
 *   80    8 payload_xxh64    XXH64 (seed 0) over the payload frames, in order; for
 *                            CHUNK over the ids and row-checksum frames only
 *   88    8 header_xxh64     XXH64 (seed 0) over bytes 0..87
 */
#ifndef COEMU_STREAM_PROTO_H
#define COEMU_STREAM_PROTO_H

#include <stddef.h>
#include <stdint.h>

#define STREAM_MAGIC 0x534d4543u /* "CEMS" little-endian */
#define STREAM_VERSION 3
/* frames of a CHUNK message: header, ids, row checksums, inputs rows, targets rows */
#define STREAM_CHUNK_FRAMES(n) (3 + 2 * (size_t)(n))
#define STREAM_MAX_FRAMES STREAM_CHUNK_FRAMES(65536)
#define STREAM_HEADER_SIZE 96
#define STREAM_DTYPE_F32 1

/* Same-host shared memory (docs/stream-protocol.md, "Shared memory"):
 * HELLO flag: the consumer asks for rows in a shared segment; WELCOME flag:
 * granted (+ one frame: the segment's name); CHUNK flag: its rows lie in the
 * segment (frames: ids, row checksums, descriptors of 2n x (offset, length)
 * uint64, inputs rows then targets rows); CREDIT flag: the consumer's answer
 * to a granting WELCOME (chunk_id: the nonce read from the segment, 0: it
 * cannot map it and takes rows as frames). */
#define STREAM_FLAG_SHM 8u
#define STREAM_FLAG_SHM_ANSWER 16u
/* Flag of a consumer's every message: it understands RESET (added within
 * version 3). A producer answers only such peers with RESET: a consumer
 * older than it would count each RESET as malformed and, never silent, not
 * reach its timeout and reconnect. */
#define STREAM_FLAG_RESETS 32u
/* Flag of a consumer's every message: it understands NOTICE (added within
 * version 3, as RESET). A producer sends NOTICEs only to such peers: an
 * older consumer would count each as malformed. */
#define STREAM_FLAG_NOTICES 64u
#define STREAM_SHM_MAGIC 0x314d4853534d4543ull /* "CEMSSHM1" little-endian */
#define STREAM_SHM_HEAD 4096 /* the segment's header page: magic, nonce, size, slot bytes, slots */

typedef enum {
  STREAM_HELLO = 1,     /* consumer -> producer: rank, world (value), epoch, position, credit */
  STREAM_WELCOME = 2,   /* producer -> consumer: dataset id, samples per epoch, shapes */
  STREAM_CREDIT = 3,    /* consumer -> producer: value = extra chunks it can take */
  STREAM_CHUNK = 4,     /* producer -> consumer: + ids, row checksums, rows (one frame each) */
  STREAM_EPOCH_END = 5, /* producer -> consumer: epoch finished (position = samples sent) */
  STREAM_HEARTBEAT = 6, /* both ways, when otherwise silent */
  STREAM_ERROR = 7,     /* producer -> consumer: + one frame of UTF-8 text */
  STREAM_BYE = 8,       /* consumer -> producer: leaving */
  STREAM_INFO = 9,      /* any peer -> producer, before (or without) a HELLO: what do you serve?
                           producer -> peer: value = ranks served (world), nsamples = samples
                           per epoch per rank, epoch = epochs served (0: unbounded), position
                           = silence timeout [ms], chunk_id = heartbeat [ms], + one
                           frame of UTF-8 JSON (docs/stream-protocol.md, "INFO") */
  STREAM_RESET = 10,    /* producer -> consumer: the answer to a CREDIT or HEARTBEAT from a
                           peer it has no session for (a restarted producer, or one that
                           dropped the consumer): say HELLO again (epoch, position and
                           chunk_id: those of the message answered; a consumer's CREDIT and
                           HEARTBEAT carry in chunk_id how many HELLOs it has said) */
  STREAM_NOTICE = 11,   /* producer -> consumer whose messages set STREAM_FLAG_NOTICES: the
                           state of what makes the chunks changed (value: STREAM_NOTICE_*),
                           + one frame of UTF-8 text saying so, for the consumer's log; the
                           stream goes on (docs/stream-protocol.md, "Notices") */
} stream_msg_type;

enum {
  STREAM_NOTICE_STOPPED = 1, /* nothing makes the chunks not made yet (a live stream's job is
                                gone): the consumer waiting for one waits for its return */
  STREAM_NOTICE_RESUMED = 2  /* it is back: the chunks come as they are made */
};

typedef struct {
  uint16_t version, type;
  uint32_t flags, value;
  uint64_t dataset_id;
  uint32_t epoch, nsamples;
  uint64_t chunk_id, position;
  uint16_t dtype, rank;
  uint32_t in_shape[4], out_shape[3];
  uint64_t payload_xxh64;
} stream_header;

/* Serialise (computes the header checksum). The version written is
 * h->version when set (to answer a peer of another version in its own
 * version: the header layout is the same), else STREAM_VERSION. */
void stream_header_encode(const stream_header *h, uint8_t out[STREAM_HEADER_SIZE]);

/* Parse and validate a received header frame: size, magic, version, type,
 * header checksum, and for CHUNK: dtype, shapes and nsamples in range.
 * Returns 0, or -1 with a message saying what was wrong, or
 * STREAM_E_VERSION when the header is sound (magic, checksum) but of
 * another protocol version: h->version and h->type are then set. */
#define STREAM_E_VERSION (-5)
int stream_header_decode(const void *buf, size_t len, stream_header *h);

/* The row checksums of nsamples samples (sums[2k]: inputs row k, sums[2k+1]:
 * targets row k; in_bytes / out_bytes per row). */
void stream_row_sums(const void *inputs, size_t in_bytes, const void *targets, size_t out_bytes,
                     uint32_t nsamples, uint64_t *sums);
/* Check each row against sums (read with memcpy: any alignment). Returns
 * -1 when all match, else the first sample whose rows do not. */
int64_t stream_rows_check(const void *inputs, size_t in_bytes, const void *targets,
                          size_t out_bytes, uint32_t nsamples, const void *sums);

/* Bytes per sample of inputs and targets for the shapes in h (0 if absurd). */
size_t stream_input_bytes(const stream_header *h);
size_t stream_target_bytes(const stream_header *h);

const char *stream_type_name(int type);

/* Large frames without page faults: a chunk's frames are megabytes, and
 * glibc's default policy returns such blocks to the kernel when freed (by
 * munmap or by trimming the heap) so every new one is faulted in and
 * zeroed by the kernel again: measured as a third of the CPU time of a
 * stream (docs/benchmarks.md, "Serve at 3.26 MB samples"). So the first
 * stream client or server of a process keeps blocks below 32 MiB on the
 * heap and at most 256 MiB of free heap unreturned (mallopt, once per
 * process; glibc only), unless the user set MALLOC_MMAP_THRESHOLD_ or
 * MALLOC_TRIM_THRESHOLD_ (their choice is kept). */
void stream_tune_malloc(void);

#endif
