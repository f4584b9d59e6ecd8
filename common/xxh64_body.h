/* xxh64_body.h - XXH64 (xxHash's 64-bit hash, seed s) as host-and-device
 * functions: plain C99 on the host (common/checksum.c's ce_xxh64 and its
 * streaming form are built on these), __host__ __device__ under nvcc (the
 * device pipeline's per-row hash of the input cubes, /checksums' value,
 * pipeline/generate/devpipe_cuda.cu). Written from the XXH64 specification
 * (Yann Collet, "xxHash fast digest algorithm", XXH64).
 *
 * XXH64 over len bytes: four 64-bit lanes, lane l consuming the l-th 8-byte
 * word of every 32-byte stripe in order (xxh64_lane), then one digest of
 * the four lanes, the len % 32 trailing bytes and len (xxh64_finish). Each
 * lane is one sequential chain (a round mixes add, rotate and multiply: no
 * associative form to split it), so a row is hashed by at most four
 * cooperating threads, one per lane, each running its chain over every
 * stripe, then combined: the same value as one thread running all four
 * (the host's ce_xxh64_update, whose four chains are independent and
 * overlap in the pipeline, or in one vector register where the compiler
 * finds 64-bit vector multiplies). On the device the four read the row
 * from tiles staged in shared memory by their whole block (xxh64_tiles),
 * so that no round waits on a load from device memory. docs/sampling.md,
 * "What crosses the bus".
 *
 * Words are little-endian (x86-64, aarch64 hosts; NVIDIA devices). On the
 * host a word is read with memcpy (any alignment); on the device with two
 * 4-byte loads, so device rows must be 4-byte aligned (float rows are).
 */
#ifndef COEMU_XXH64_BODY_H
#define COEMU_XXH64_BODY_H

#include <stddef.h>
#include <stdint.h>
#include <string.h>

#ifdef __CUDACC__
#define XXH64_HD static inline __host__ __device__
#else
#define XXH64_HD static inline
#endif

#define XXH64_P1 0x9E3779B185EBCA87ULL
#define XXH64_P2 0xC2B2AE3D27D4EB4FULL
#define XXH64_P3 0x165667B19E3779F9ULL
#define XXH64_P4 0x85EBCA77C2B2AE63ULL
#define XXH64_P5 0x27D4EB2F165667C5ULL

XXH64_HD uint64_t xxh64_rotl(uint64_t x, int r) { return (x << r) | (x >> (64 - r)); }

XXH64_HD uint32_t xxh64_rd32(const unsigned char *p) {
#ifdef __CUDA_ARCH__
  return *(const uint32_t *)p; /* 4-byte aligned on the device (the header's note) */
#else
  uint32_t v;
  memcpy(&v, p, 4);
  return v;
#endif
}

/* on the device two 4-byte halves, low first (rows are only 4-byte
 * aligned); on the host one 8-byte load, which GCC's vectorizer turns into
 * vector loads (it does not see through the halves) */
XXH64_HD uint64_t xxh64_rd64(const unsigned char *p) {
#ifdef __CUDA_ARCH__
  return (uint64_t)xxh64_rd32(p) | (uint64_t)xxh64_rd32(p + 4) << 32;
#else
  uint64_t v;
  memcpy(&v, p, 8);
  return v;
#endif
}

XXH64_HD uint64_t xxh64_round(uint64_t acc, uint64_t in) {
  acc += in * XXH64_P2;
  acc = xxh64_rotl(acc, 31);
  return acc * XXH64_P1;
}

/* lane l's accumulator before the first stripe */
XXH64_HD uint64_t xxh64_lane_init(uint64_t seed, int lane) {
  return lane == 0   ? seed + XXH64_P1 + XXH64_P2
         : lane == 1 ? seed + XXH64_P2
         : lane == 2 ? seed
                     : seed - XXH64_P1;
}

/* lane l's accumulator acc after nstripes 32-byte stripes from p: the
 * rounds of xxh64_round, each round's word read and multiplied by P2 one
 * round ahead (acc + in P2 is the same sum either way, mod 2^64). The
 * device kernel runs this chain serially, 98,304 rounds a 64^3 row. With
 * the rounds written one after the other, nvcc (sm_90, CUDA 13) issued a
 * round's shared-memory load only after the previous round's multiply (the
 * load reused its registers), so a round's dependent path was the load
 * (~30 cycles) and 8 integer instructions after it (the P2 multiply with
 * the add, the rotate, the P1 multiply). Read ahead, the load and the P2
 * multiply run beside the previous round, and nvcc folds the next round's
 * add into the P1 multiply (IMAD.WIDE with an addend): 4 dependent
 * instructions a round, the load off the path. docs/sampling.md, "What
 * crosses the bus". */
XXH64_HD uint64_t xxh64_lane_run(uint64_t acc, const unsigned char *p, size_t nstripes, int lane) {
  if (nstripes == 0) return acc;
  p += 8 * lane;
  uint64_t m = xxh64_rd64(p) * XXH64_P2;
  for (size_t s = 1; s < nstripes; s++) {
    const uint64_t next = xxh64_rd64(p + 32 * s) * XXH64_P2;
    acc = xxh64_rotl(acc + m, 31) * XXH64_P1;
    m = next;
  }
  return xxh64_rotl(acc + m, 31) * XXH64_P1;
}

/* Tiles: the device kernel (pipeline/generate/devpipe_hash_cuda.cu) stages
 * a row through shared memory XXH64_TILE_STRIPES stripes (8 KiB) at a time
 * and runs each lane over one tile after the other; a lane's run over a
 * row is the same fold over its tiles' stripes (xxh64_lane_run over tile
 * t, copied anywhere, continues where tile t - 1 left it). A row of nst
 * stripes has xxh64_tiles(nst) tiles; tile t holds xxh64_tile_stripes(nst,
 * t) stripes, the last one possibly fewer. */
#define XXH64_TILE_STRIPES 256
XXH64_HD size_t xxh64_tiles(size_t nst) {
  return (nst + XXH64_TILE_STRIPES - 1) / XXH64_TILE_STRIPES;
}
XXH64_HD size_t xxh64_tile_stripes(size_t nst, size_t t) {
  const size_t s0 = t * XXH64_TILE_STRIPES;
  return nst - s0 < XXH64_TILE_STRIPES ? nst - s0 : XXH64_TILE_STRIPES;
}

/* The digest of len bytes: acc, the four lanes after the len / 32 whole
 * stripes (read only when len >= 32), tail the len % 32 bytes after them. */
XXH64_HD uint64_t xxh64_finish(const uint64_t acc[4], const unsigned char *tail, uint64_t len,
                               uint64_t seed) {
  uint64_t h;
  if (len >= 32) {
    h = xxh64_rotl(acc[0], 1) + xxh64_rotl(acc[1], 7) + xxh64_rotl(acc[2], 12) +
        xxh64_rotl(acc[3], 18);
    for (int l = 0; l < 4; l++) h = (h ^ xxh64_round(0, acc[l])) * XXH64_P1 + XXH64_P4;
  } else {
    h = seed + XXH64_P5;
  }
  h += len;
  size_t n = (size_t)(len & 31);
  for (; n >= 8; n -= 8, tail += 8)
    h = xxh64_rotl(h ^ xxh64_round(0, xxh64_rd64(tail)), 27) * XXH64_P1 + XXH64_P4;
  if (n >= 4) {
    h = xxh64_rotl(h ^ (uint64_t)xxh64_rd32(tail) * XXH64_P1, 23) * XXH64_P2 + XXH64_P3;
    n -= 4, tail += 4;
  }
  for (; n > 0; n--, tail++) h = xxh64_rotl(h ^ (uint64_t)*tail * XXH64_P5, 11) * XXH64_P1;
  h ^= h >> 33;
  h *= XXH64_P2;
  h ^= h >> 29;
  h *= XXH64_P3;
  h ^= h >> 32;
  return h;
}

#endif
