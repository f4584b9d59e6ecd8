/* workplan.c - dynamic shard distribution: rank 0 answers requests. */
#include "pipeline/generate/workplan.h"

enum { TAG_REQUEST = 7301, TAG_SHARD = 7302 };

void workplan_init(workplan *w, MPI_Comm comm, int64_t nshards, ce_progress *progress) {
  w->comm = comm;
  MPI_Comm_rank(comm, &w->rank);
  MPI_Comm_size(comm, &w->size);
  w->nshards = nshards;
  w->next = 0;
  w->finished = 0;
  w->done = 0;
  w->kept = 0;
  w->stop = 0;
  w->progress = progress;
}

static int64_t take(workplan *w) { return !w->stop && w->next < w->nshards ? w->next++ : -1; }

/* Count a finished shard's samples (kept: from an earlier run). */
static void count(workplan *w, int64_t n, int64_t kept) {
  w->done += n;
  if (kept) w->kept += n;
  if (w->progress) w->progress->kept = w->kept;
}

/* Answer one request from `src`, whose report is msg = {count, failed, kept}. */
static void answer(workplan *w, int src, const int64_t msg[3]) {
  count(w, msg[0], msg[2]);
  if (msg[1]) w->stop = 1; /* a rank failed: hand out no more shards */
  int64_t s = take(w);
  if (s < 0) w->finished++;
  MPI_Send(&s, 1, MPI_INT64_T, src, TAG_SHARD, w->comm);
}

void workplan_serve(workplan *w, int64_t own_done) {
  if (w->rank != 0) return;
  for (;;) {
    int flag = 0;
    MPI_Status st;
    MPI_Iprobe(MPI_ANY_SOURCE, TAG_REQUEST, w->comm, &flag, &st);
    if (!flag) break;
    int64_t msg[3];
    MPI_Recv(msg, 3, MPI_INT64_T, st.MPI_SOURCE, TAG_REQUEST, w->comm, MPI_STATUS_IGNORE);
    answer(w, st.MPI_SOURCE, msg);
  }
  if (w->progress) ce_progress_update(w->progress, w->done + own_done);
}

int64_t workplan_next(workplan *w, int64_t last_count, int last_kept, int failed) {
  if (w->rank == 0) {
    count(w, last_count, last_kept != 0);
    if (failed) w->stop = 1;
    workplan_serve(w, 0);
    return take(w);
  }
  int64_t s, msg[3] = {last_count, failed != 0, last_kept != 0};
  MPI_Send(msg, 3, MPI_INT64_T, 0, TAG_REQUEST, w->comm);
  MPI_Recv(&s, 1, MPI_INT64_T, 0, TAG_SHARD, w->comm, MPI_STATUS_IGNORE);
  return s;
}

void workplan_drain(workplan *w) {
  if (w->rank != 0) return;
  while (w->finished < w->size - 1) {
    MPI_Status st;
    int64_t msg[3];
    MPI_Recv(msg, 3, MPI_INT64_T, MPI_ANY_SOURCE, TAG_REQUEST, w->comm, &st);
    answer(w, st.MPI_SOURCE, msg);
    if (w->progress) ce_progress_update(w->progress, w->done);
  }
}
