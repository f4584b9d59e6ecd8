/* checksum.h - XXH64 (xxHash, 64-bit variant) for data integrity.
 *
 * Used for shard checksums in dataset manifests and for stream messages.
 * Fast (several GB/s per core), with a streaming form so that large arrays
 * can be hashed piecewise: ce_xxh64 over one buffer equals init/update/
 * digest over any split of it. Known-answer tests in tests/common.
 */
#ifndef COEMU_CHECKSUM_H
#define COEMU_CHECKSUM_H

#include <stddef.h>
#include <stdint.h>

typedef struct {
  uint64_t v[4];
  uint64_t total;
  uint8_t buf[32];
  size_t nbuf;
  uint64_t seed;
} ce_xxh64_state;

void ce_xxh64_init(ce_xxh64_state *s, uint64_t seed);
void ce_xxh64_update(ce_xxh64_state *s, const void *data, size_t len);
uint64_t ce_xxh64_digest(const ce_xxh64_state *s);

/* One-shot hash of a buffer. */
uint64_t ce_xxh64(const void *data, size_t len, uint64_t seed);

#endif
