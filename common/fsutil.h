/* fsutil.h - file-system helpers: atomic file creation, sizes, directories.
 *
 * Every output file coemu writes goes through fs_open_tmp()/fs_commit_tmp():
 * the data are written to "PATH.tmp.<pid>", flushed to disk and renamed over
 * PATH only when complete, so an interrupted run never leaves a file that
 * looks finished.
 */
#ifndef COEMU_FSUTIL_H
#define COEMU_FSUTIL_H

#include <stdio.h>

/* Size of a file in bytes, or -1 (with an error message). */
long long fs_file_size(const char *path);

/* Whether a and b name the same existing file, by device and inode: two
 * spellings (a/../b, a symlink, a hard link, relative and absolute) of one
 * file are the same; a name that does not exist is no file's. For an
 * output that must not replace an input. */
int fs_same_file(const char *a, const char *b);

/* Open a temporary sibling of `path` for writing; its name goes to tmp. */
int fs_open_tmp(const char *path, char *tmp, size_t tmp_len, FILE **f);

/* Finish a temporary file: if ok, flush, fsync, close and rename it over
 * path, then fsync the directory; otherwise (or if any of that fails) close and remove it. Returns 0
 * on success, -1 with an error message otherwise. */
int fs_commit_tmp(FILE *f, const char *tmp, const char *path, int ok);

/* Rename with fsync of the file first (for files written by other
 * libraries, e.g. HDF5, to a temporary name). */
int fs_rename_durable(const char *tmp, const char *path);

/* The directory that holds `path` into dir: "." for a bare name, "/" for
 * a name at the root. */
void fs_parent_dir(const char *path, char *dir, size_t len);

/* fsync the directory that holds `path` (after a rename into it);
 * fs_commit_tmp() and fs_rename_durable() do it themselves. */
int fs_fsync_dir(const char *path);

/* Copy a file's bytes to dst (created or truncated); dst is removed on
 * failure. No fsync (fs_rename_durable() does it). */
int fs_copy_file(const char *src, const char *dst);

/* An exclusive lock on DIR for one run of a command that writes there
 * (`what`: "generate", "stats", "train"): flock on DIR/.lock, which records
 * "pid N: coemu WHAT" for others. Fails at once, naming the holder, when
 * another process holds it; a nested lock of the same directory by this
 * process only counts. The lock goes with the process (kill included) or
 * with fs_unlock_dir(). DIR must exist. */
int fs_lock_dir(const char *dir, const char *what);
void fs_unlock_dir(const char *dir);

/* Whether a process holds DIR's lock (fs_lock_dir) now, without waiting and
 * without taking it from anyone: 1 (who: its "pid N on HOST: coemu WHAT"
 * line), 0 (free, or no lock file), -1 (cannot tell: the message says why,
 * e.g. a file system without flock). For a process that follows another's
 * work on DIR (serve --live follows coemu generate): it holds a shared lock
 * for an instant, which fs_lock_dir waits out (it retries for
 * FS_LOCK_RETRY_MS before it says DIR is in use). */
int fs_dir_locked(const char *dir, char *who, size_t len);
#define FS_LOCK_RETRY_MS 200

/* Remove the "*.tmp.*" files of DIR (left by a killed run); call it holding
 * DIR's lock. */
int fs_remove_tmp(const char *dir);

/* mkdir -p. */
int fs_mkdir_p(const char *dir);

/* Read a whole (small) file into a NUL-terminated malloc'd buffer. */
int fs_read_all(const char *path, char **buf, size_t *len);

#endif
