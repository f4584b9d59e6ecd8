/* images_only_batches.c - the trainer's reader (pipeline/train/train_data)
 * over a dataset directory or a stream (the C consumer), for
 * test_images_only.py: prints one line per batch of epoch 0 with the XXH64
 * of its normalised inputs and targets, so two runs compare byte for byte.
 *   images_only_batches dataset DIR BATCH
 *   images_only_batches stream ENDPOINT BATCH */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/checksum.h"
#include "common/error.h"
#include "pipeline/train/train_data.h"

int main(int argc, char **argv) {
  if (argc != 4) {
    fprintf(stderr, "usage: %s dataset DIR BATCH | stream ENDPOINT BATCH\n", argv[0]);
    return 2;
  }
  train_stage st;
  memset(&st, 0, sizeof st);
  st.enabled = 1;
  int stream = !strcmp(argv[1], "stream");
  st.source = stream ? TRAIN_SRC_STREAM : TRAIN_SRC_DATASET;
  st.dataset = stream ? "" : argv[2];
  st.endpoint = stream ? argv[2] : "";
  snprintf(st.split, sizeof st.split, "all");
  st.order = -1;
  st.credit = 4;
  st.timeout_s = 30;
  st.server_key = st.client_key = st.stream_stats = "";
  st.epochs = 1;
  st.batch = atoi(argv[3]);
  train_data_opts o = {.stage = &st, .seed = 7, .rank = 0, .world = 1, .batch = (int)st.batch};
  train_data *d;
  if (train_data_open(&o, &d) < 0) {
    fprintf(stderr, "error: %s\n", ce_err_msg());
    return 1;
  }
  uint32_t is[4], os[3];
  int rc = train_data_shapes(d, is, os);
  size_t nin = (size_t)is[0] * is[1] * is[2] * is[3], nout = (size_t)os[0] * os[1] * os[2];
  int k = 0;
  while (rc == 0) {
    const float *in, *tg;
    int r = train_data_next(d, 0, &in, &tg);
    if (r < 0) rc = -1;
    if (r <= 0) break;
    printf("batch %d: inputs %016llx targets %016llx\n", k++,
           (unsigned long long)ce_xxh64(in, nin * st.batch * sizeof *in, 0),
           (unsigned long long)ce_xxh64(tg, nout * st.batch * sizeof *tg, 0));
  }
  if (rc < 0) fprintf(stderr, "error: %s\n", ce_err_msg());
  train_data_close(d);
  return rc < 0 ? 1 : 0;
}
