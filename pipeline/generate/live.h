/* live.h - streaming while generating: a job with a `stream:` section has
 * rank 0 start `coemu serve OUT --live ...` as a detached process before the
 * first shard. It serves each finished shard's samples to the trainer ranks
 * as soon as the shard is renamed into place (pipeline/serve/serve.c, live mode),
 * so training starts before generation ends, and it outlives the job until
 * its consumers have read their epochs. Its output goes to OUT/serve.log,
 * its pid to OUT/serve.pid. */
#ifndef COEMU_LIVE_H
#define COEMU_LIVE_H

#include "pipeline/job/job.h"

int live_serve_spawn(const char *out_dir, const job *j);

#endif
