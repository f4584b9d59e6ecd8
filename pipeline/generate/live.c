/* live.c - start the live stream server for a generate job. */
#include "pipeline/generate/live.h"

#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <unistd.h>

#include "common/error.h"
#include "common/fsutil.h"

extern char **environ;

int live_serve_spawn(const char *out_dir, const job *j) {
  char exe[4096];
  ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
  if (n <= 0) CE_FAIL("live stream: cannot find the coemu executable: %s", strerror(errno));
  exe[n] = 0;
  char ranks[32], batch[32], epochs[32], seed[32], credit[32], log[4200], pidf[4200];
  snprintf(ranks, sizeof ranks, "%lld", (long long)j->stream_ranks);
  snprintf(batch, sizeof batch, "%lld", (long long)j->stream_batch);
  snprintf(epochs, sizeof epochs, "%lld", (long long)j->stream_epochs);
  snprintf(seed, sizeof seed, "%llu", (unsigned long long)j->seed);
  snprintf(credit, sizeof credit, "%lld", (long long)j->stream_credits);
  snprintf(log, sizeof log, "%s/serve.log", out_dir);
  snprintf(pidf, sizeof pidf, "%s/serve.pid", out_dir);
  char *argv[] = {exe, "serve", (char *)out_dir, "--live", "--endpoint", j->stream_endpoint,
                  "--ranks", ranks, "--batch", batch, "--epochs", epochs, "--seed", seed,
                  "--split", (char *)j->stream_split, "--max-credit", credit,
                  /* never orphaned for ever: gone an hour after its last consumer */
                  "--idle-exit", "3600", NULL};
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t at;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  posix_spawnattr_init(&at);
  /* its own session: it is not killed with the job's process group and
   * outlives the job until its consumers are done */
  posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSID);
  /* not an MPI process: drop the launcher's variables */
  char **env = NULL;
  size_t ne = 0, cap = 0;
  for (char **e = environ; *e; e++) {
    if (!strncmp(*e, "OMPI_", 5) || !strncmp(*e, "PMIX_", 5) || !strncmp(*e, "PMI_", 4)) continue;
    if (ne + 2 > cap) {
      cap = cap ? 2 * cap : 64;
      char **ne2 = realloc(env, cap * sizeof *env);
      if (!ne2) {
        free(env);
        CE_FAIL("out of memory");
      }
      env = ne2;
    }
    env[ne++] = *e;
  }
  if (env) env[ne] = NULL;
  pid_t pid;
  int rc = posix_spawn(&pid, exe, &fa, &at, argv, env ? env : (char *[]){NULL});
  free(env);
  posix_spawn_file_actions_destroy(&fa);
  posix_spawnattr_destroy(&at);
  if (rc != 0) CE_FAIL("live stream: cannot start %s serve: %s", exe, strerror(rc));
  /* the pid file is how a user stops it: without one, stop it now and say so */
  char tmp[4400];
  FILE *f;
  if (fs_open_tmp(pidf, tmp, sizeof tmp, &f) < 0 ||
      fs_commit_tmp(f, tmp, pidf, fprintf(f, "%d\n", (int)pid) > 0) < 0) {
    kill(pid, SIGTERM);
    return ce_err_prefix("live stream: cannot record the pid of coemu serve (stopped it)");
  }
  fprintf(stderr, "coemu generate: live stream on %s (coemu serve pid %d, log %s)\n",
          j->stream_endpoint, (int)pid, log);
  return 0;
}
