/* fsutil.c - atomic writes and small file-system helpers. */
#define _POSIX_C_SOURCE 200809L
#include "common/fsutil.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#include "common/error.h"

long long fs_file_size(const char *path) {
  struct stat st;
  if (stat(path, &st) != 0) return ce_err("%s: cannot stat: %s", path, strerror(errno));
  return (long long)st.st_size;
}

int fs_same_file(const char *a, const char *b) {
  struct stat sa, sb;
  return stat(a, &sa) == 0 && stat(b, &sb) == 0 && sa.st_dev == sb.st_dev && sa.st_ino == sb.st_ino;
}

void fs_parent_dir(const char *path, char *dir, size_t len) {
  const char *slash = strrchr(path, '/');
  if (!slash) snprintf(dir, len, ".");
  else if (slash == path) snprintf(dir, len, "/");
  else snprintf(dir, len, "%.*s", (int)(slash - path), path);
}

/* fsync the directory holding `path`, so that a rename into it survives a
 * crash of the machine. */
int fs_fsync_dir(const char *path) {
  char dir[4096];
  fs_parent_dir(path, dir, sizeof dir);
  int fd = open(dir, O_RDONLY | O_DIRECTORY);
  if (fd < 0) CE_FAIL("%s: cannot open the directory: %s", dir, strerror(errno));
  int rc = fsync(fd);
  int e = errno;
  close(fd);
  /* some file systems cannot fsync a directory (EINVAL): nothing to make durable there */
  if (rc != 0 && e != EINVAL && e != EROFS) CE_FAIL("%s: directory fsync failed: %s", dir, strerror(e));
  return 0;
}

int fs_copy_file(const char *src, const char *dst) {
  int in = open(src, O_RDONLY);
  if (in < 0) CE_FAIL("%s: cannot open: %s", src, strerror(errno));
  int out = open(dst, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (out < 0) {
    int e = errno;
    close(in);
    CE_FAIL("%s: cannot create: %s", dst, strerror(e));
  }
  char buf[1 << 16];
  int rc = 0;
  for (;;) {
    ssize_t n = read(in, buf, sizeof buf);
    if (n == 0) break;
    if (n < 0) {
      if (errno == EINTR) continue;
      rc = ce_err("%s: read failed: %s", src, strerror(errno));
      break;
    }
    for (ssize_t off = 0; off < n && rc == 0;) {
      ssize_t w = write(out, buf + off, (size_t)(n - off));
      if (w < 0 && errno == EINTR) continue;
      if (w <= 0) rc = ce_err("%s: write failed: %s", dst, strerror(w < 0 ? errno : EIO));
      else off += w;
    }
    if (rc) break;
  }
  close(in);
  if (close(out) != 0 && rc == 0) rc = ce_err("%s: close failed: %s", dst, strerror(errno));
  if (rc) unlink(dst);
  return rc;
}

int fs_open_tmp(const char *path, char *tmp, size_t tmp_len, FILE **f) {
  if ((size_t)snprintf(tmp, tmp_len, "%s.tmp.%ld", path, (long)getpid()) >= tmp_len)
    CE_FAIL("%s: path too long", path);
  *f = fopen(tmp, "wb");
  if (!*f) CE_FAIL("%s: cannot create: %s", tmp, strerror(errno));
  return 0;
}

int fs_commit_tmp(FILE *f, const char *tmp, const char *path, int ok) {
  if (!ok) {
    int e = errno;
    fclose(f);
    unlink(tmp);
    CE_FAIL("%s: write failed: %s", path, strerror(e ? e : EIO));
  }
  if (fflush(f) != 0 || fsync(fileno(f)) != 0) {
    int e = errno;
    fclose(f);
    unlink(tmp);
    CE_FAIL("%s: write failed: %s", path, strerror(e));
  }
  if (fclose(f) != 0) {
    unlink(tmp);
    CE_FAIL("%s: close failed: %s", path, strerror(errno));
  }
  if (rename(tmp, path) != 0) {
    int e = errno;
    unlink(tmp);
    CE_FAIL("%s: cannot rename from %s: %s", path, tmp, strerror(e));
  }
  return fs_fsync_dir(path);
}

int fs_rename_durable(const char *tmp, const char *path) {
  int fd = open(tmp, O_RDONLY);
  if (fd < 0) CE_FAIL("%s: cannot open: %s", tmp, strerror(errno));
  if (fsync(fd) != 0) {
    int e = errno;
    close(fd);
    CE_FAIL("%s: fsync failed: %s", tmp, strerror(e));
  }
  close(fd);
  if (rename(tmp, path) != 0) CE_FAIL("%s: cannot rename from %s: %s", path, tmp, strerror(errno));
  return fs_fsync_dir(path);
}

int fs_mkdir_p(const char *dir) {
  char buf[4096];
  size_t n = strlen(dir);
  if (n == 0 || n >= sizeof buf) CE_FAIL("'%s': bad directory name", dir);
  memcpy(buf, dir, n + 1);
  for (size_t i = 1; i <= n; i++) {
    if (buf[i] == '/' || buf[i] == 0) {
      char c = buf[i];
      buf[i] = 0;
      if (mkdir(buf, 0777) != 0 && errno != EEXIST)
        CE_FAIL("%s: cannot create directory: %s", buf, strerror(errno));
      buf[i] = c;
    }
  }
  struct stat st;
  if (stat(dir, &st) != 0 || !S_ISDIR(st.st_mode)) CE_FAIL("%s: not a directory", dir);
  return 0;
}

int fs_read_all(const char *path, char **buf, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f) CE_FAIL("%s: cannot open: %s", path, strerror(errno));
  size_t cap = 4096, n = 0;
  char *b = malloc(cap);
  if (!b) {
    fclose(f);
    CE_FAIL("%s: out of memory", path);
  }
  size_t r;
  while ((r = fread(b + n, 1, cap - n - 1, f)) > 0) {
    n += r;
    if (n + 1 == cap) {
      if (cap > ((size_t)1 << 30)) {
        free(b);
        fclose(f);
        CE_FAIL("%s: larger than 1 GiB", path);
      }
      char *nb = realloc(b, cap * 2);
      if (!nb) {
        free(b);
        fclose(f);
        CE_FAIL("%s: out of memory", path);
      }
      b = nb;
      cap *= 2;
    }
  }
  int err = ferror(f) ? errno : 0;
  fclose(f);
  if (err) {
    free(b);
    /* a folder opens for reading on Linux and fails at the first read (EISDIR) */
    if (err == EISDIR) CE_FAIL("%s: is a folder, expected a file", path);
    CE_FAIL("%s: read error: %s", path, strerror(err));
  }
  b[n] = 0;
  *buf = b;
  if (len) *len = n;
  return 0;
}

/* Directory locks held by this process: a nested lock of the same directory
 * (coemu generate computing /stats) only counts. */
static struct {
  dev_t dev;
  ino_t ino;
  pid_t pid; /* a forked child does not hold its parent's locks */
  int fd, refs;
} held[8];

int fs_lock_dir(const char *dir, const char *what) {
  char p[4200];
  if ((size_t)snprintf(p, sizeof p, "%s/.lock", dir) >= sizeof p) CE_FAIL("%s: path too long", dir);
  int fd = open(p, O_RDWR | O_CREAT | O_CLOEXEC, 0644);
  if (fd < 0) CE_FAIL("%s: cannot create the lock file: %s", p, strerror(errno));
  struct stat st;
  if (fstat(fd, &st) != 0) {
    int e = errno;
    close(fd);
    CE_FAIL("%s: cannot stat: %s", p, strerror(e));
  }
  int free_slot = -1;
  for (int i = 0; i < 8; i++) {
    if (held[i].refs > 0 && held[i].pid != getpid()) held[i].refs = 0; /* fork */
    if (held[i].refs > 0 && held[i].dev == st.st_dev && held[i].ino == st.st_ino) {
      close(fd);
      held[i].refs++;
      return 0;
    }
    if (held[i].refs == 0 && free_slot < 0) free_slot = i;
  }
  if (free_slot < 0) {
    close(fd);
    CE_FAIL("%s: too many directory locks in one process", dir);
  }
  /* a process that only looks whether DIR is locked (fs_dir_locked) holds
   * a shared lock for an instant: waited out, so that a job rerun at that
   * moment is not refused in its name */
  int locked = flock(fd, LOCK_EX | LOCK_NB);
  for (int t = 0; locked != 0 && errno == EWOULDBLOCK && t < FS_LOCK_RETRY_MS / 20; t++) {
    nanosleep(&(struct timespec){0, 20 * 1000 * 1000}, NULL);
    locked = flock(fd, LOCK_EX | LOCK_NB);
  }
  if (locked != 0) {
    int e = errno;
    char who[256] = "";
    ssize_t n = pread(fd, who, sizeof who - 1, 0);
    close(fd);
    if (n > 0) {
      who[n] = 0;
      who[strcspn(who, "\n")] = 0;
    }
    if (e == EWOULDBLOCK)
      CE_FAIL("%s is in use by another coemu (%s); wait for it to finish or stop it, then rerun",
              dir, n > 0 && who[0] ? who : "unknown pid");
    if (e == ENOSYS || e == EOPNOTSUPP || e == ENOLCK)
      CE_FAIL("%s: cannot lock: %s (this file system does not take flock locks; on Lustre "
              "mount with -o flock, docs/scaling.md)", p, strerror(e));
    CE_FAIL("%s: cannot lock: %s", p, strerror(e));
  }
  /* the host too: on a file system shared by the nodes of a cluster, a pid
   * alone does not say which process holds the lock */
  char host[128] = "";
  if (gethostname(host, sizeof host - 1) != 0 || !host[0]) snprintf(host, sizeof host, "?");
  host[sizeof host - 1] = 0;
  char line[256];
  int len = snprintf(line, sizeof line, "pid %ld on %s: coemu %s\n", (long)getpid(), host, what);
  if (len >= (int)sizeof line) len = (int)sizeof line - 1;
  if (ftruncate(fd, 0) != 0 || pwrite(fd, line, (size_t)len, 0) != len) {
    /* the lock holds anyway; only the holder's name for others is lost */
  }
  held[free_slot].dev = st.st_dev;
  held[free_slot].ino = st.st_ino;
  held[free_slot].fd = fd;
  held[free_slot].pid = getpid();
  held[free_slot].refs = 1;
  return 0;
}

int fs_dir_locked(const char *dir, char *who, size_t len) {
  char p[4200];
  if (len) who[0] = 0;
  if ((size_t)snprintf(p, sizeof p, "%s/.lock", dir) >= sizeof p) CE_FAIL("%s: path too long", dir);
  int fd = open(p, O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    if (errno == ENOENT) return 0; /* never locked */
    CE_FAIL("%s: cannot open: %s", p, strerror(errno));
  }
  int rc = 0;
  if (flock(fd, LOCK_SH | LOCK_NB) == 0) {
    flock(fd, LOCK_UN);
  } else if (errno == EWOULDBLOCK) {
    rc = 1;
    ssize_t n = len > 1 ? pread(fd, who, len - 1, 0) : 0;
    if (n > 0) {
      who[n] = 0;
      who[strcspn(who, "\n")] = 0;
    }
  } else {
    rc = ce_err("%s: cannot lock: %s", p, strerror(errno));
  }
  close(fd);
  return rc;
}

void fs_unlock_dir(const char *dir) {
  char p[4200];
  struct stat st;
  snprintf(p, sizeof p, "%s/.lock", dir);
  if (stat(p, &st) != 0) return;
  for (int i = 0; i < 8; i++)
    if (held[i].refs > 0 && held[i].pid == getpid() && held[i].dev == st.st_dev &&
        held[i].ino == st.st_ino) {
      if (--held[i].refs == 0) close(held[i].fd); /* the lock file stays: removing it races */
      return;
    }
}

int fs_remove_tmp(const char *dir) {
  DIR *d = opendir(dir);
  if (!d) CE_FAIL("%s: cannot list: %s", dir, strerror(errno));
  struct dirent *e;
  int rc = 0;
  while ((e = readdir(d))) {
    if (!strstr(e->d_name, ".tmp.")) continue;
    char p[4400];
    snprintf(p, sizeof p, "%s/%s", dir, e->d_name);
    if (unlink(p) < 0 && errno != ENOENT) rc = ce_err("%s: cannot remove: %s", p, strerror(errno));
  }
  closedir(d);
  return rc;
}
