/* workplan.h - which rank makes which shard.
 *
 * Shards (pipeline/dataset/layout.h) are handed out dynamically: rank 0 keeps
 * the next-shard counter and answers requests from the other ranks, which
 * ask for a new shard when they finish one (reporting how many samples it
 * held, for the progress line). Rank 0 works too and answers requests between
 * its own samples (workplan_serve), so a request waits at most one sample.
 * Dynamic assignment keeps every rank busy when models differ in cost (AMR
 * depth, cube size), which a static interleave cannot; the shard is the unit
 * because it is also the unit of writing and of resume. Which rank makes a
 * shard never changes its bytes. A resume hands out only the shards still to
 * make: the ones an earlier run finished were checked before, each rank a
 * fixed share (generate.c, resume_pass), as asking rank 0 for each of tens
 * of thousands of kept shards cost more than checking them.
 */
#ifndef COEMU_WORKPLAN_H
#define COEMU_WORKPLAN_H

#include <mpi.h>
#include <stdint.h>

#include "common/progress.h"

typedef struct {
  MPI_Comm comm;
  int rank, size;
  int64_t nshards;
  const uint8_t *need;   /* rank 0: need[s] != 0: shard s is to be made */
  int64_t next;          /* rank 0: next shard to hand out */
  int finished;          /* rank 0: ranks told there is no more work */
  int stop;              /* rank 0: a rank failed, no more shards are handed out */
  int64_t done;          /* rank 0: samples reported done, all ranks */
  ce_progress *progress; /* rank 0: updated as reports come in (may be NULL) */
} workplan;

/* Hand out the shards s < nshards with need[s] != 0 (rank 0 reads need; it
 * must outlive w); kept_samples: the samples of the shards not needed, kept
 * from an earlier run (in the progress line's count, not in its rate). */
void workplan_init(workplan *w, MPI_Comm comm, int64_t nshards, const uint8_t *need,
                   int64_t kept_samples, ce_progress *progress);

/* The next shard for this rank, or -1 when there is none. `last_count` is
 * the number of samples in the shard this rank just made (0 at first).
 * failed != 0: this rank failed and stops; rank 0 then hands out no more
 * shards, so every rank stops after the shard it is making (finished shards
 * are kept for the resume) and the ranks meet again in workplan_drain and
 * the collective after it: a failure never leaves a peer waiting. */
int64_t workplan_next(workplan *w, int64_t last_count, int failed);

/* Rank 0: answer pending requests without blocking (other ranks: no-op).
 * `own_done` is rank 0's count of samples done in its current shard (for the
 * progress line). */
void workplan_serve(workplan *w, int64_t own_done);

/* Rank 0: after its own last shard, answer until every rank has been told
 * there is no more work. */
void workplan_drain(workplan *w);

#endif
