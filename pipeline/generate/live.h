/* live.h - streaming while generating: a job with a `stream:` section has
 * rank 0 start `coemu serve OUT --live ...` as a detached process before the
 * first shard. It serves each finished shard's samples to the trainer ranks
 * as soon as the shard is renamed into place (pipeline/serve/serve.c, live mode),
 * so training starts before generation ends, and it outlives the job until
 * its consumers have read their epochs. Its output goes to OUT/serve.log,
 * its pid to OUT/serve.pid; it inherits no other descriptor of the job's.
 *
 * The rules of `coemu serve` hold (checked when the job is read): an
 * endpoint other machines reach needs stream.curve_secret and
 * stream.curve_authorized, passed as --curve-secret/--curve-authorized.
 * Returns once the server listens; a server that exits first (a key it
 * cannot read, an address this node does not have, a port in use) is an
 * error with its own message. A server that an earlier run of this job
 * started and that still runs is kept (a resume). */
#ifndef COEMU_LIVE_H
#define COEMU_LIVE_H

#include "pipeline/job/job.h"

int live_serve_spawn(const char *out_dir, const job *j);

#endif
