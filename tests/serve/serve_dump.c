/* serve_dump.c - the C stream consumer (pipeline/stream/stream_client) for
 * test_zerocopy.py: reads EPOCHS epochs of rank 0 of 1 (raw samples) and
 * prints one line per sample, "EPOCH POSITION ID XXH64(inputs) XXH64(targets)",
 * the hashes computed here over the bytes received, so two runs (and the
 * Python client's bytes) compare exactly. An error is printed as
 * "error: MESSAGE" on stderr, exit status 1.
 * TRANSPORT: socket (default), auto or shm (stream_client_opts.shm; with
 * auto and shm, the shared-memory counts on stderr: "shm: mapped M chunks C
 * malformed K").
 *   serve_dump ENDPOINT EPOCHS [TRANSPORT] */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/checksum.h"
#include "common/error.h"
#include "pipeline/stream/stream_client.h"

int main(int argc, char **argv) {
  int shm = argc == 4 ? (!strcmp(argv[3], "auto") ? 1 : !strcmp(argv[3], "shm") ? 2 : -1) : 0;
  if ((argc != 3 && argc != 4) || (argc == 4 && shm < 0 && strcmp(argv[3], "socket"))) {
    fprintf(stderr, "usage: %s ENDPOINT EPOCHS [socket|auto|shm]\n", argv[0]);
    return 2;
  }
  if (shm < 0) shm = 0;
  int epochs = atoi(argv[2]);
  stream_client_opts o = {.endpoint = argv[1], .rank = 0, .world = 1, .credit = 4,
                          .heartbeat_s = 0.2, .timeout_s = 30, .shm = shm};
  stream_client *c;
  if (stream_client_open(&o, &c) < 0) {
    fprintf(stderr, "error: %s\n", ce_err_msg());
    return 1;
  }
  stream_chunk_view v;
  int r = 0, ends = 0;
  while (ends < epochs && (r = stream_client_next(c, &v)) >= 0) {
    if (r == 0) {
      ends++;
      continue;
    }
    size_t inb = stream_input_bytes(&v.h), outb = stream_target_bytes(&v.h);
    for (uint32_t k = 0; k < v.h.nsamples; k++)
      printf("%u %llu %llu %016llx %016llx\n", v.h.epoch,
             (unsigned long long)(v.h.position + k), (unsigned long long)v.ids[k],
             (unsigned long long)ce_xxh64((const char *)v.inputs + k * inb, inb, 0),
             (unsigned long long)ce_xxh64((const char *)v.targets + k * outb, outb, 0));
  }
  if (r < 0) fprintf(stderr, "error: %s\n", ce_err_msg());
  if (shm) {
    stream_client_stats st;
    stream_client_get_stats(c, &st);
    fprintf(stderr, "shm: mapped %llu chunks %llu malformed %llu%s%s\n",
            (unsigned long long)st.shm_mapped, (unsigned long long)st.shm_chunks,
            (unsigned long long)st.malformed, *stream_client_shm_error(c) ? " why: " : "",
            stream_client_shm_error(c));
  }
  stream_client_close(c);
  return r < 0 ? 1 : 0;
}
