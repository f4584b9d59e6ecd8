/* devpipe_hash.h - the device pipeline's input-row checksums on the device
 * (devpipe_hash_cuda.cu, built with COEMU_HAVE_CUDA): the XXH64 (seed 0)
 * of each of k rows already in device memory, by common/xxh64_body.h, so
 * that images-only datasets bring back 8 bytes per input row instead of
 * the row. The kernel: a block per row; four of its threads, one per XXH64
 * lane, run their lanes' sequential chains over the row's 32-byte stripes
 * while the whole block stages the next 8 KiB of the row into shared
 * memory (so no round waits on device memory), then thread 0 combines the
 * four accumulators (warp shuffles) with the row's tail. Its launch is
 * queued on its own stream (start) and waited for (finish), so it runs
 * beside the LTE kernel that reads the same cubes.
 */
#ifndef COEMU_DEVPIPE_HASH_H
#define COEMU_DEVPIPE_HASH_H

#include <stddef.h>
#include <stdint.h>

typedef struct devpipe_hash devpipe_hash;

/* room for cap rows' checksums on the current device; -1 with a message */
int devpipe_hash_open(int cap, devpipe_hash **out);
/* queue the checksums of k <= cap rows of row_floats floats each, row r
 * at dev + r * row_floats (4-byte aligned, valid until finish returns) */
int devpipe_hash_start(devpipe_hash *h, const float *dev, size_t row_floats, int k);
/* wait for them: out[0..k) */
int devpipe_hash_finish(devpipe_hash *h, uint64_t *out, int k);
void devpipe_hash_close(devpipe_hash *h);

#endif
