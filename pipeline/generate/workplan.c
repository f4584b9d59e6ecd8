/* workplan.c - dynamic shard distribution: rank 0 answers requests. */
#include "pipeline/generate/workplan.h"

enum { TAG_REQUEST = 7301, TAG_SHARD = 7302 };

void workplan_init(workplan *w, MPI_Comm comm, int64_t nshards, const uint8_t *need,
                   int64_t kept_samples, ce_progress *progress) {
  w->comm = comm;
  MPI_Comm_rank(comm, &w->rank);
  MPI_Comm_size(comm, &w->size);
  w->nshards = nshards;
  w->need = need;
  w->next = 0;
  w->finished = 0;
  w->done = kept_samples;
  w->stop = 0;
  w->progress = progress;
  if (progress) progress->kept = kept_samples;
}

static int64_t take(workplan *w) {
  while (w->next < w->nshards && !w->need[w->next]) w->next++;
  return !w->stop && w->next < w->nshards ? w->next++ : -1;
}

/* Answer one request from `src`, whose report is msg = {count, failed}. */
static void answer(workplan *w, int src, const int64_t msg[2]) {
  w->done += msg[0];
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
    int64_t msg[2];
    MPI_Recv(msg, 2, MPI_INT64_T, st.MPI_SOURCE, TAG_REQUEST, w->comm, MPI_STATUS_IGNORE);
    answer(w, st.MPI_SOURCE, msg);
  }
  if (w->progress) ce_progress_update(w->progress, w->done + own_done);
}

int64_t workplan_next(workplan *w, int64_t last_count, int failed) {
  if (w->rank == 0) {
    w->done += last_count;
    if (failed) w->stop = 1;
    workplan_serve(w, 0);
    return take(w);
  }
  int64_t s, msg[2] = {last_count, failed != 0};
  MPI_Send(msg, 2, MPI_INT64_T, 0, TAG_REQUEST, w->comm);
  MPI_Recv(&s, 1, MPI_INT64_T, 0, TAG_SHARD, w->comm, MPI_STATUS_IGNORE);
  return s;
}

void workplan_drain(workplan *w) {
  if (w->rank != 0) return;
  while (w->finished < w->size - 1) {
    MPI_Status st;
    int64_t msg[2];
    MPI_Recv(msg, 2, MPI_INT64_T, MPI_ANY_SOURCE, TAG_REQUEST, w->comm, &st);
    answer(w, st.MPI_SOURCE, msg);
    if (w->progress) ce_progress_update(w->progress, w->done);
  }
}
