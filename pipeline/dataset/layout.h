/* layout.h - where a dataset's samples live: the one place that knows how
 * samples are cut into shards and what the shard files are called.
 *
 * Samples have a fixed global order (pipeline/job/job.h); with S samples per
 * shard, shard s holds samples [s*S, min((s+1)*S, N)) in the file
 * DIR/shards/shard-NNNNNN.h5 (s, zero-padded to six digits: the names sort
 * in shard order up to a million shards). generate, serve, the manifest and
 * dataset.h5's virtual datasets all take shard names and ranges from here.
 */
#ifndef COEMU_DATASET_LAYOUT_H
#define COEMU_DATASET_LAYOUT_H

#include <stddef.h>
#include <stdint.h>

/* Number of shards for `samples` samples, `per_shard` each. */
int64_t dataset_shards(int64_t samples, int64_t per_shard);

/* The sample range [first, first + count) of shard s. */
void dataset_shard_range(int64_t s, int64_t samples, int64_t per_shard, int64_t *first,
                         int64_t *count);

/* "shards/shard-NNNNNN.h5", the shard's name relative to the dataset
 * directory (as the manifest and the virtual datasets record it). */
int dataset_shard_name(int64_t shard, char *buf, size_t len);

/* "DIR/shards/shard-NNNNNN.h5" into buf; -1 with a message if it does not fit. */
int dataset_shard_path(const char *dir, int64_t shard, char *buf, size_t len);

#endif
