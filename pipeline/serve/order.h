/* order.h - the order in which a split's samples are handed out in an epoch.
 *
 * `coemu serve` (and the trainer reading a dataset through it) puts the
 * split's M samples in one order per epoch e, a pure function of
 * (seed, e, the split, the shard of every sample, the options below); rank r
 * of W then takes positions r, r+W, r+2W, ... of it (serve.h). Two modes:
 *
 * exact (default): a uniform permutation of the split: Fisher-Yates over
 *   the split's samples (ascending dataset indices) with unbiased bounded
 *   draws from Philox keyed by seed, counter (e, 0, 7). Every sample is a
 *   random read: with 1-sample reads a reader opens ~M shards per epoch.
 *
 * shards: shard-aware, as WebDataset and MosaicML streaming shuffle, for
 *   storage where random small reads are expensive (parallel file systems).
 *   1. The split's samples are grouped by shard (a group: the split's
 *      samples of one shard, in row order); the G groups are shuffled
 *      (Fisher-Yates, Philox counter (e, 1, 7)).
 *   2. Interleave: K lanes each hold one group; in rounds, every lane in
 *      turn emits its group's next sample; a lane whose group is done takes
 *      the next group of the shuffled list (a lane with none left drops
 *      out). This is the stream T[0..M).
 *   3. Buffer: T is cut into blocks of B consecutive samples and each block
 *      is shuffled on its own (Fisher-Yates, Philox counter (e, 2 + block, 7)).
 *   Defaults: K = 8, B = 4 x samples per shard.
 *   Locality (proved in docs/stream-protocol.md, "Order", and checked by
 *   tests/serve/test_order.c), with n_min the fewest split samples a shard
 *   holds:
 *   - the samples of a shard with m of them lie in at most
 *     ceil((m - 1) K / B) + 1 consecutive blocks, and with B >= K it has a
 *     sample in each of them;
 *   - with B >= K, any two consecutive blocks hold samples of at most
 *     D = 2K + floor(2B / n_min) shards, so a reader that keeps an LRU of
 *     H >= D open shards opens every shard exactly once per epoch (G opens).
 *
 * Both modes cost O(M) per epoch in memory and time and read nothing: a
 * resumed consumer gets the rest of the epoch from (seed, e, position)
 * alone. Errors follow common/error.h.
 */
#ifndef COEMU_SERVE_ORDER_H
#define COEMU_SERVE_ORDER_H

#include <stdint.h>

typedef enum { ORDER_EXACT = 0, ORDER_SHARDS = 1 } order_mode;

#define ORDER_DEFAULT_SHARDS 8       /* K */
#define ORDER_DEFAULT_BUFFER_SHARDS 4 /* B = 4 x samples per shard */
#define ORDER_MAX_SHARDS 65536       /* K at most */

typedef struct {
  int mode;       /* order_mode; 0 (exact) when zeroed */
  int64_t shards; /* K: shards interleaved (0: ORDER_DEFAULT_SHARDS) */
  int64_t buffer; /* B: samples shuffled together (0: ORDER_DEFAULT_BUFFER_SHARDS x per_shard) */
} order_opts;

/* "exact" -> ORDER_EXACT, "shards" -> ORDER_SHARDS; -1 with a message
 * naming the text and the choices otherwise. */
int order_mode_parse(const char *text, int *mode);
/* "exact" or "shards" ("?" for anything else). */
const char *order_mode_name(int mode);

typedef struct {
  int mode;
  int64_t shards, buffer;   /* K and B as used (defaults filled in) */
  int64_t n;                /* samples of the split */
  const int64_t *split;     /* the split's dataset indices, ascending (borrowed) */
  int64_t ngroups;          /* shards with samples of the split (shards mode) */
  int64_t *group_first;     /* [ngroups + 1]: group g is split[group_first[g] .. group_first[g+1]) */
  int64_t min_group, max_group; /* fewest and most split samples in one shard */
} order_plan;

/* The plan for a split: split[0..n) its dataset indices, ascending, which
 * must outlive the plan; shard[0..n) the shard holding each of them (needed
 * in shards mode only: NULL is fine for exact), non-decreasing (shards hold
 * contiguous sample ranges, pipeline/dataset/layout.h); per_shard the
 * dataset's samples per shard (for the default buffer; <= 0: the most split
 * samples of one shard). Checks the options (K in 1..ORDER_MAX_SHARDS,
 * B >= 1) and the shard ids; -1 with a message naming what is wrong. */
int order_plan_init(order_plan *p, const order_opts *o, const int64_t *split, const int64_t *shard,
                    int64_t n, int64_t per_shard);
void order_plan_free(order_plan *p);

/* The order of `epoch`: perm[0..n) = dataset indices. 0, or -1 with a
 * message (out of memory for the shard list). */
int order_epoch(const order_plan *p, uint64_t seed, uint32_t epoch, int64_t *perm);

/* A model of the reads an order costs: a reader that keeps the `handles`
 * most recently used shards open and reads the samples in sequence, given
 * the shard of each sample read (shards[0..n), ids >= 0). Returns the
 * number of shard opens (>= the number of distinct shards), or -1 with a
 * message (out of memory, a negative id, handles < 1). */
int64_t order_lru_opens(const int64_t *shards, int64_t n, int64_t handles);

#endif
