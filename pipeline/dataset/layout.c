/* layout.c - see layout.h. */
#include "pipeline/dataset/layout.h"

#include <inttypes.h>
#include <stdio.h>

#include "common/error.h"

int64_t dataset_shards(int64_t samples, int64_t per_shard) {
  return (samples + per_shard - 1) / per_shard;
}

void dataset_shard_range(int64_t s, int64_t samples, int64_t per_shard, int64_t *first,
                         int64_t *count) {
  *first = s * per_shard;
  int64_t end = *first + per_shard;
  *count = (end < samples ? end : samples) - *first;
}

int dataset_shard_name(int64_t shard, char *buf, size_t len) {
  if ((size_t)snprintf(buf, len, "shards/shard-%06" PRId64 ".h5", shard) >= len)
    CE_FAIL("shard %" PRId64 ": name too long", shard);
  return 0;
}

int dataset_shard_path(const char *dir, int64_t shard, char *buf, size_t len) {
  char name[64];
  CE_TRY(dataset_shard_name(shard, name, sizeof name));
  if ((size_t)snprintf(buf, len, "%s/%s", dir, name) >= len) CE_FAIL("%s: path too long", dir);
  return 0;
}
