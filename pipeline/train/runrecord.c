/* runrecord.c - OUT/run.json, the training run's record (runrecord.h). */
#include "pipeline/train/runrecord.h"

#include <errno.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "common/error.h"
#include "common/fsutil.h"
#include "pipeline/job/yamltree.h"

static void record_path(const char *out, char *buf, size_t len) {
  snprintf(buf, len, "%s/run.json", out);
}

/* A scalar of the record, or NULL with the message. */
static const char *scalar(const char *path, const yt_node *map, const char *key,
                          const char *where) {
  const yt_node *v = yt_get(map, key);
  if (!v || v->kind != YT_SCALAR) {
    ce_err("%s: %s%s: expected a string (the file is written by coemu train; a run directory "
           "whose record is damaged can be trained on again only after removing %s, which "
           "then no longer guards the run against another dataset)",
           path, where, key, path);
    return NULL;
  }
  return v->text;
}

int run_record_read(const char *out, run_record *r) {
  memset(r, 0, sizeof *r);
  char path[4300], *text;
  size_t len;
  record_path(out, path, sizeof path);
  if (access(path, F_OK) != 0) return 0; /* a run made before the record: empty */
  CE_TRY(fs_read_all(path, &text, &len));
  yt_node *root = yt_parse(path, text, len);
  free(text);
  if (!root) return -1;
  int rc = 0;
  const char *dir = yt_get(root, "job_dir") ? scalar(path, root, "job_dir", "") : "";
  if (!dir) rc = -1;
  else snprintf(r->job_dir, sizeof r->job_dir, "%s", dir);
  const yt_node *ds = yt_get(root, "datasets");
  if (rc == 0 && ds && ds->kind != YT_MAP)
    rc = ce_err("%s:%d:%d: datasets: expected a map of job keys", path, ds->line, ds->col);
  for (size_t i = 0; rc == 0 && ds && i < ds->n; i++) {
    char at[128];
    snprintf(at, sizeof at, "datasets.%s.", ds->keys[i]);
    const char *where = scalar(path, ds->items[i], "path", at);
    const char *id = where ? scalar(path, ds->items[i], "dataset_id", at) : NULL;
    char *end = NULL;
    unsigned long long v = id ? strtoull(id, &end, 16) : 0;
    if (!where || !id) rc = -1;
    else if (!*id || *end || strlen(id) != 16)
      rc = ce_err("%s:%d:%d: %sdataset_id: expected 16 hex digits, got '%s'", path,
                  ds->items[i]->line, ds->items[i]->col, at, id);
    else if (r->n == RUN_RECORD_MAX)
      rc = ce_err("%s: more than %d datasets recorded", path, RUN_RECORD_MAX);
    else {
      run_dataset *d = &r->ds[r->n++];
      snprintf(d->key, sizeof d->key, "%s", ds->keys[i]);
      snprintf(d->where, sizeof d->where, "%s", where);
      d->id = v;
    }
  }
  yt_free(root);
  return rc;
}

/* text as a JSON string body */
static void json_put(FILE *f, const char *text) {
  for (const char *p = text; *p; p++) {
    if (*p == '"' || *p == '\\') fputc('\\', f);
    if ((unsigned char)*p >= 0x20) fputc(*p, f);
  }
}

int run_record_write(const char *out, const run_record *r) {
  char path[4300], tmp[4400];
  FILE *f;
  record_path(out, path, sizeof path);
  CE_TRY(fs_open_tmp(path, tmp, sizeof tmp, &f));
  fputs("{\n  \"job_dir\": \"", f);
  json_put(f, r->job_dir);
  fputs("\",\n  \"datasets\": {", f);
  for (int i = 0; i < r->n; i++) {
    fprintf(f, "%s\n    \"", i ? "," : "");
    json_put(f, r->ds[i].key);
    fputs("\": {\"path\": \"", f);
    json_put(f, r->ds[i].where);
    fprintf(f, "\", \"dataset_id\": \"%016llx\"}", (unsigned long long)r->ds[i].id);
  }
  fputs(r->n ? "\n  }\n}\n" : "}\n}\n", f);
  return fs_commit_tmp(f, tmp, path, !ferror(f));
}

const run_dataset *run_record_get(const run_record *r, const char *key) {
  for (int i = 0; i < r->n; i++)
    if (!strcmp(r->ds[i].key, key)) return &r->ds[i];
  return NULL;
}

int run_record_put(run_record *r, const char *key, const char *where, uint64_t id) {
  run_dataset *d = (run_dataset *)run_record_get(r, key);
  if (d && d->id == id) return 0;
  if (!d) {
    if (r->n == RUN_RECORD_MAX) return 0; /* cannot happen: 2 stages x 2 sources */
    d = &r->ds[r->n++];
  }
  snprintf(d->key, sizeof d->key, "%s", key);
  snprintf(d->where, sizeof d->where, "%s", where);
  d->id = id;
  return 1;
}

void run_record_where(const char *path, char *buf, size_t len) {
  struct stat st;
  char real[PATH_MAX];
  if (stat(path, &st) == 0 && S_ISDIR(st.st_mode) && realpath(path, real))
    snprintf(buf, len, "%s", real);
  else
    snprintf(buf, len, "%s", path);
}

int run_record_check(const run_record *r, const char *out, const char *key, const char *where,
                     uint64_t id) {
  const run_dataset *d = run_record_get(r, key);
  if (!d || d->id == id) return 0;
  const int stream = strstr(key, ".stream.") != NULL;
  CE_FAIL("%s holds a run whose %s was dataset %016llx (read at %s, recorded in %s/run.json); "
          "%s%s is another dataset (id %016llx): a resume or --extend must read the data the "
          "run was made with; train on these data in another output directory (--out), or "
          "restore the recorded dataset", out, key, (unsigned long long)d->id, d->where, out,
          stream ? "the stream at " : "", where, (unsigned long long)id);
}
