/* live.c - start the live stream server for a generate job. */
#include "pipeline/generate/live.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <spawn.h>
#include <stdio.h>
#include <stdlib.h>
#include <signal.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/fsutil.h"
#include "common/progress.h"

extern char **environ;

static int close_inherited(posix_spawn_file_actions_t *fa) {
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
  int rc = posix_spawn_file_actions_addclosefrom_np(fa, 3);
  if (rc != 0) CE_FAIL("live stream: cannot prepare the server's descriptors: %s", strerror(rc));
  return 0;
#else
  DIR *d = opendir("/proc/self/fd");
  if (!d) CE_FAIL("live stream: cannot list /proc/self/fd: %s", strerror(errno));
  struct dirent *e;
  while ((e = readdir(d))) {
    int fd = atoi(e->d_name);
    int rc = fd > 2 && fd != dirfd(d) ? posix_spawn_file_actions_addclose(fa, fd) : 0;
    if (rc != 0) {
      closedir(d);
      CE_FAIL("live stream: cannot prepare the server's descriptors: %s", strerror(rc));
    }
  }
  closedir(d);
  return 0;
#endif
}

/* The last non-empty line of a log, for an error message. */
static void last_line(const char *text, char *out, size_t len) {
  const char *e = text + strlen(text);
  while (e > text && (e[-1] == '\n' || e[-1] == ' ')) e--;
  const char *b = e;
  while (b > text && b[-1] != '\n') b--;
  snprintf(out, len, "%.*s", (int)(e - b), b);
}

/* The server has bound its endpoint once its log says "listening on" (the
 * start line of cmd_serve.c). A server that exits first (a key it cannot
 * read, an address this node does not have, a port in use) fails the job's
 * start with its own message, instead of a job that makes shards nobody can
 * read; one that neither listens nor exits in LIVE_START_S is stopped. */
#define LIVE_START_S 60.0
static int wait_listening(pid_t pid, const char *log) {
  double t0 = ce_now();
  for (;;) {
    int st, gone = waitpid(pid, &st, WNOHANG) == pid;
    char *text = NULL;
    if (fs_read_all(log, &text, NULL) == 0 && strstr(text, "listening on ")) {
      free(text);
      return 0;
    }
    if (gone) {
      char line[1024] = "";
      if (text) last_line(text, line, sizeof line);
      free(text);
      CE_FAIL("live stream: coemu serve exited at its start (%s %d): %s (log %s)",
              WIFEXITED(st) ? "status" : "signal", WIFEXITED(st) ? WEXITSTATUS(st) : WTERMSIG(st),
              *line ? line : "no message", log);
    }
    free(text);
    if (ce_now() - t0 > LIVE_START_S) {
      kill(pid, SIGTERM);
      CE_FAIL("live stream: coemu serve did not start listening in %.0f s (stopped it; log %s)",
              LIVE_START_S, log);
    }
    nanosleep(&(struct timespec){0, 20 * 1000 * 1000}, NULL);
  }
}

/* The live server an earlier run of this job started, if it still runs (a
 * job stopped and resumed: the server is in its own session and outlives
 * it, and keeps serving the job's shards as they come): its pid, else 0.
 * The pid file's process must still run with "serve OUT --live" as
 * consecutive arguments (not a reused pid): anywhere in its command line,
 * since an interpreter registered with binfmt_misc (qemu-user running an
 * aarch64 coemu, box64, FEX) puts its own path and the executable's before
 * them. */
static pid_t earlier_server(const char *pidf, const char *out_dir) {
  char *text;
  if (fs_read_all(pidf, &text, NULL) < 0) return 0;
  long pid = strtol(text, NULL, 10);
  free(text);
  if (pid <= 0 || kill((pid_t)pid, 0) != 0) return 0;
  char path[64], argv[8192];
  snprintf(path, sizeof path, "/proc/%ld/cmdline", pid);
  FILE *f = fopen(path, "rb");
  if (!f) return 0;
  size_t n = fread(argv, 1, sizeof argv - 1, f);
  fclose(f);
  argv[n] = 0;
  /* argv: [interpreter exe] exe serve OUT --live ... (NUL-separated) */
  const char *end = argv + n;
  for (const char *a = argv; a < end; a += strlen(a) + 1) {
    const char *a2 = a + strlen(a) + 1, *a3 = a2 < end ? a2 + strlen(a2) + 1 : end;
    if (!strcmp(a, "serve") && a2 < end && !strcmp(a2, out_dir) && a3 < end &&
        !strcmp(a3, "--live"))
      return (pid_t)pid;
  }
  return 0;
}

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
  pid_t old = earlier_server(pidf, out_dir);
  if (old > 0) {
    fprintf(stderr, "coemu generate: live stream on %s: the server an earlier run started "
                    "still serves (coemu serve pid %d, log %s)\n", j->stream_endpoint, (int)old, log);
    return 0;
  }
  int curve = j->stream_curve_secret && *j->stream_curve_secret;
  char *argv[] = {exe, "serve", (char *)out_dir, "--live", "--endpoint", j->stream_endpoint,
                  "--ranks", ranks, "--batch", batch, "--epochs", epochs, "--seed", seed,
                  "--split", (char *)j->stream_split, "--max-credit", credit,
                  /* never orphaned for ever: gone an hour after its last consumer */
                  "--idle-exit", "3600",
                  /* off this machine: CURVE, checked by coemu serve as for any serve */
                  curve ? "--curve-secret" : NULL, j->stream_curve_secret,
                  "--curve-authorized", j->stream_curve_authorized, NULL};
  posix_spawn_file_actions_t fa;
  posix_spawnattr_t at;
  posix_spawn_file_actions_init(&fa);
  posix_spawn_file_actions_addopen(&fa, 1, log, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  posix_spawn_file_actions_adddup2(&fa, 1, 2);
  posix_spawn_file_actions_addopen(&fa, 0, "/dev/null", O_RDONLY, 0);
  /* nothing else of the job's: an inherited descriptor (the launcher's
   * copies of the job's stdout/stderr pipes) would hold `coemu generate |
   * tee`, or a script waiting for the job's output, open until the server
   * exits, an hour after its last consumer */
  if (close_inherited(&fa) < 0) {
    posix_spawn_file_actions_destroy(&fa);
    return -1;
  }
  posix_spawnattr_init(&at);
  /* its own session: it is not killed with the job's process group and
   * outlives the job until its consumers are done */
  posix_spawnattr_setflags(&at, POSIX_SPAWN_SETSID);
  /* not an MPI process: drop the launcher's variables */
  char **env = NULL;
  size_t ne = 0, cap = 0;
  for (char **e = environ; *e; e++) {
    if (cli_launcher_entry(*e)) continue;
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
  CE_TRY(wait_listening(pid, log));
  fprintf(stderr, "coemu generate: live stream on %s%s (coemu serve pid %d, log %s)\n",
          j->stream_endpoint, curve ? " (CURVE)" : "", (int)pid, log);
  return 0;
}
