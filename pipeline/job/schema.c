/* schema.c - the schema-driven validator, getters, path resolution and the
 * Markdown key table, shared by generate jobs (job.c) and training jobs
 * (trainjob.c). */
#include "pipeline/job/schema.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/fsutil.h"

/* ---- the schema tree ---- */

static const char *sfield(const yt_node *schema, const char *key) {
  const yt_node *v = yt_get(schema, key);
  return v && v->kind == YT_SCALAR ? v->text : NULL;
}

static int sflag(const yt_node *schema, const char *key) {
  const char *t = sfield(schema, key);
  return t && !strcmp(t, "true");
}

static int expand_refs(const char *name, yt_node *n, const yt_node *defs, int depth);

/* The entry `ref` (a map with a `ref` field) as a new node: a copy of its
 * definition, refs expanded, with the entry's own fields laid over it. */
static yt_node *expand_ref(const char *name, const yt_node *ref, const yt_node *defs, int depth) {
  const char *target = sfield(ref, "ref");
  const yt_node *def = yt_get(defs, target);
  if (!def || def->kind != YT_MAP)
    CE_BUG("%s:%d:%d: schema: ref '%s' is not a map in defs", name, ref->line, ref->col, target);
  if (sfield(def, "ref"))
    CE_BUG("%s:%d:%d: schema: defs.%s is itself a ref", name, def->line, def->col, target);
  if (depth > 16) CE_BUG("%s:%d:%d: schema: refs nest too deep (a cycle?)", name, ref->line, ref->col);
  yt_node *out = yt_clone(def);
  if (!out || expand_refs(name, out, defs, depth + 1) < 0) goto oom;
  for (size_t i = 0; i < ref->n; i++) {
    if (!strcmp(ref->keys[i], "ref")) continue;
    yt_node *own = yt_clone(ref->items[i]);
    if (!own || expand_refs(name, own, defs, depth + 1) < 0) {
      yt_free(own);
      goto oom;
    }
    if (!strcmp(ref->keys[i], "keys")) {
      yt_node *keys = yt_get(out, "keys");
      if (!keys) CE_BUG("%s:%d:%d: schema: ref '%s' adds keys to an entry without keys", name,
                        ref->line, ref->col, target);
      for (size_t k = 0; k < own->n; k++) {
        if (yt_get(keys, own->keys[k]))
          CE_BUG("%s:%d:%d: schema: key '%s' is already in '%s'", name, own->key_line[k],
                 own->key_col[k], own->keys[k], target);
        if (yt_map_add(keys, own->keys[k], own->items[k]) < 0) {
          yt_free(own);
          goto oom;
        }
        own->items[k] = NULL; /* owned by keys now */
      }
      yt_free(own);
      continue;
    }
    size_t j = 0;
    while (j < out->n && strcmp(out->keys[j], ref->keys[i])) j++;
    if (j < out->n) {
      yt_free(out->items[j]);
      out->items[j] = own;
    } else if (yt_map_add(out, ref->keys[i], own) < 0) {
      yt_free(own);
      goto oom;
    }
  }
  return out;
oom:
  yt_free(out);
  ce_err("out of memory");
  return NULL;
}

/* Replace every `ref` entry below n (in place). */
static int expand_refs(const char *name, yt_node *n, const yt_node *defs, int depth) {
  for (size_t i = 0; i < n->n; i++) {
    yt_node *c = n->items[i];
    if (!c) continue;
    if (c->kind == YT_MAP && sfield(c, "ref")) {
      yt_node *e = expand_ref(name, c, defs, depth);
      if (!e) return -1;
      yt_free(c);
      n->items[i] = e;
    } else {
      CE_TRY(expand_refs(name, c, defs, depth));
    }
  }
  return 0;
}

yt_node *schema_tree(const char *name, const char *schema_text) {
  yt_node *s = yt_parse(name, schema_text, strlen(schema_text));
  if (!s) CE_BUG("embedded schema does not parse: %s", ce_err_msg());
  const yt_node *defs = yt_get(s, "defs");
  if (defs) {
    /* refs in defs are expanded from the untouched definitions, so work on a
     * copy of them */
    yt_node *copy = yt_clone(defs);
    int rc = copy ? expand_refs(name, s, copy, 0) : ce_err("out of memory");
    yt_free(copy);
    if (rc < 0) {
      yt_free(s);
      return NULL;
    }
  }
  return s;
}

/* ---- the validator, driven by the schema tree ---- */

typedef struct {
  const char *name; /* file name for messages */
} vctx;

int schema_as_bool(const yt_node *v, int *out) {
  if (v->kind != YT_SCALAR || v->quoted) return -1;
  if (!strcmp(v->text, "true")) *out = 1;
  else if (!strcmp(v->text, "false")) *out = 0;
  else return -1;
  return 0;
}

int schema_as_int(const yt_node *v, int64_t *out) {
  if (v->kind != YT_SCALAR || v->quoted) return -1;
  return cli_parse_int(v->text, out);
}

int schema_as_num(const yt_node *v, double *out) {
  if (v->kind != YT_SCALAR || v->quoted) return -1;
  if (cli_parse_double(v->text, out) < 0 || !isfinite(*out)) return -1;
  return 0;
}

static const char *kind_name(const yt_node *v) {
  if (v->kind == YT_MAP) return "a mapping";
  if (v->kind == YT_SEQ) return "a list";
  return NULL;
}

/* "got 'x'" or "got a mapping" for messages. */
static void got(const yt_node *v, char *buf, size_t len) {
  const char *k = kind_name(v);
  if (k) snprintf(buf, len, "got %s", k);
  else snprintf(buf, len, "got '%.40s'", v->text);
}

/* A default filled in: no position (line 0), so that a key the job did not
 * give is told from one it did (its clone kept the schema's position, which
 * would read as a place in the job file). */
static void unplace(yt_node *n) {
  n->line = n->col = 0;
  for (size_t i = 0; i < n->n; i++) {
    if (n->kind == YT_MAP) n->key_line[i] = n->key_col[i] = 0;
    unplace(n->items[i]);
  }
}

static int validate(const vctx *c, yt_node *v, const yt_node *schema, const char *path);

static int validate_scalar(const vctx *c, const yt_node *v, const yt_node *schema,
                           const char *type, const char *path) {
  char g[64];
  got(v, g, sizeof g);
  const char *min = sfield(schema, "min"), *max = sfield(schema, "max");
  if (!strcmp(type, "bool")) {
    int b;
    if (schema_as_bool(v, &b) < 0)
      CE_FAIL("%s:%d:%d: %s: expected true or false, %s", c->name, v->line, v->col, path, g);
    return 0;
  }
  if (!strcmp(type, "int") || !strcmp(type, "float")) {
    int is_int = !strcmp(type, "int");
    double x;
    int64_t i = 0;
    int bad = is_int ? schema_as_int(v, &i) : schema_as_num(v, &x);
    if (is_int) x = (double)i;
    char range[96] = "";
    if (min && max) snprintf(range, sizeof range, " in %s..%s", min, max);
    else if (min) snprintf(range, sizeof range, " >= %s", min);
    else if (max) snprintf(range, sizeof range, " <= %s", max);
    if (bad < 0)
      CE_FAIL("%s:%d:%d: %s: expected %s%s, %s", c->name, v->line, v->col, path,
              is_int ? "an integer" : "a number", range, g);
    double lo, hi;
    if ((min && cli_parse_double(min, &lo) == 0 && x < lo) ||
        (max && cli_parse_double(max, &hi) == 0 && x > hi))
      CE_FAIL("%s:%d:%d: %s: expected %s%s, %s", c->name, v->line, v->col, path,
              is_int ? "an integer" : "a number", range, g);
    return 0;
  }
  if (!strcmp(type, "string")) {
    if (v->kind != YT_SCALAR)
      CE_FAIL("%s:%d:%d: %s: expected a string, %s", c->name, v->line, v->col, path, g);
    const yt_node *en = yt_get(schema, "enum");
    if (en && en->kind == YT_SEQ) {
      char list[256] = "";
      for (size_t i = 0; i < en->n; i++) {
        if (!strcmp(en->items[i]->text, v->text)) return 0;
        size_t l = strlen(list);
        snprintf(list + l, sizeof list - l, "%s%s", i ? ", " : "", en->items[i]->text);
      }
      CE_FAIL("%s:%d:%d: %s: expected one of %s, %s", c->name, v->line, v->col, path, list, g);
    }
    return 0;
  }
  CE_BUG("schema: unknown type '%s' at %s", type, path);
}

static int validate_map(const vctx *c, yt_node *v, const yt_node *schema, const char *path) {
  char g[64], sub[256];
  got(v, g, sizeof g);
  if (v->kind != YT_MAP)
    CE_FAIL("%s:%d:%d: %s: expected a mapping, %s", c->name, v->line, v->col,
            *path ? path : "(top level)", g);
  const yt_node *keys = yt_get(schema, "keys");
  for (size_t i = 0; i < v->n; i++) {
    const yt_node *ks = yt_get(keys, v->keys[i]);
    snprintf(sub, sizeof sub, "%s%s%s", path, *path ? "." : "", v->keys[i]);
    if (!ks) {
      char list[512] = "";
      for (size_t j = 0; keys && j < keys->n; j++) {
        size_t l = strlen(list);
        snprintf(list + l, sizeof list - l, "%s%s", j ? ", " : "", keys->keys[j]);
      }
      CE_FAIL("%s:%d:%d: unknown key '%s' (allowed here: %s)", c->name, v->key_line[i],
              v->key_col[i], sub, list);
    }
    CE_TRY(validate(c, v->items[i], ks, sub));
  }
  /* Missing keys: required ones are errors; defaults are filled in; a missing
   * sub-map is created (and filled) unless it has required keys itself. */
  for (size_t j = 0; keys && j < keys->n; j++) {
    if (yt_get(v, keys->keys[j])) continue;
    const yt_node *ks = keys->items[j];
    snprintf(sub, sizeof sub, "%s%s%s", path, *path ? "." : "", keys->keys[j]);
    if (sflag(ks, "required"))
      CE_FAIL("%s:%d:%d: %s: missing required key '%s'", c->name, v->line, v->col,
              *path ? path : "(top level)", keys->keys[j]);
    const yt_node *def = yt_get(ks, "default");
    yt_node *add = NULL;
    if (def) {
      add = yt_clone(def);
      if (add) unplace(add);
    } else if (!strcmp(sfield(ks, "type"), "map")) {
      int has_required = 0;
      const yt_node *kk = yt_get(ks, "keys");
      for (size_t m = 0; kk && m < kk->n; m++) has_required |= sflag(kk->items[m], "required");
      if (has_required) continue;
      add = yt_parse("", "{}", 2);
      if (add) {
        add->line = v->line;
        add->col = v->col;
      }
    } else {
      continue;
    }
    if (!add || yt_map_add(v, keys->keys[j], add) < 0) {
      yt_free(add);
      CE_FAIL("out of memory");
    }
    if (!def) CE_TRY(validate(c, add, ks, sub));
  }
  return 0;
}

static int validate(const vctx *c, yt_node *v, const yt_node *schema, const char *path) {
  const char *type = sfield(schema, "type");
  if (!type) CE_BUG("schema: no type at %s", path);
  if (!strcmp(type, "map")) return validate_map(c, v, schema, path);
  if (!strcmp(type, "list")) {
    char g[64], sub[256];
    got(v, g, sizeof g);
    if (v->kind != YT_SEQ)
      CE_FAIL("%s:%d:%d: %s: expected a list, %s", c->name, v->line, v->col, path, g);
    const char *mn = sfield(schema, "min_items"), *mx = sfield(schema, "max_items");
    if ((mn && (long long)v->n < atoll(mn)) || (mx && (long long)v->n > atoll(mx)))
      CE_FAIL("%s:%d:%d: %s: expected %s..%s items, got %zu", c->name, v->line, v->col, path,
              mn ? mn : "0", mx ? mx : "any", v->n);
    const yt_node *items = yt_get(schema, "items");
    for (size_t i = 0; i < v->n; i++) {
      snprintf(sub, sizeof sub, "%s[%zu]", path, i);
      CE_TRY(validate(c, v->items[i], items, sub));
    }
    return 0;
  }
  return validate_scalar(c, v, schema, type, path);
}

int schema_validate(const char *name, yt_node *doc, const yt_node *schema) {
  vctx c = {name};
  return validate(&c, doc, schema, "");
}

/* After doc failed against `schema`: the hint of schema_load (schema.h)
 * appended to the message when doc's top-level keys say it is the other
 * kind. Keys are compared by name only: the first unknown key is where
 * validation stopped, not necessarily the telling one. */
static void hint_other_kind(const yt_node *doc, const yt_node *schema, const schema_other *other) {
  if (!other || doc->kind != YT_MAP) return;
  yt_node *os = schema_tree("the other schema", other->schema_text);
  if (!os) return;
  const yt_node *mine = yt_get(schema, "keys"), *theirs = yt_get(os, "keys");
  size_t only_mine = 0, only_theirs = 0;
  char list[256] = "";
  for (size_t i = 0; i < doc->n; i++) {
    int a = yt_get(mine, doc->keys[i]) != NULL, b = yt_get(theirs, doc->keys[i]) != NULL;
    if (a && !b) only_mine++;
    if (b && !a) {
      size_t l = strlen(list);
      if (only_theirs < 4) snprintf(list + l, sizeof list - l, "%s%s", l ? ", " : "", doc->keys[i]);
      only_theirs++;
    }
  }
  yt_free(os);
  if (only_theirs == 0 || only_theirs <= only_mine) return;
  char msg[2048];
  snprintf(msg, sizeof msg, "%s", ce_err_msg());
  ce_err("%s; this looks like %s (top-level keys %s%s): run it with %s", msg, other->kind, list,
         only_theirs > 4 ? ", ..." : "", other->command);
}

yt_node *schema_load(const char *name, const char *text, size_t len, const char *schema_name,
                     const char *schema_text, const schema_other *other) {
  yt_node *doc = yt_parse(name, text, len);
  if (!doc) return NULL;
  yt_node *schema = schema_tree(schema_name, schema_text);
  int rc = schema ? schema_validate(name, doc, schema) : -1;
  if (rc < 0 && schema) hint_other_kind(doc, schema, other);
  yt_free(schema);
  if (rc < 0) {
    yt_free(doc);
    return NULL;
  }
  return doc;
}

int schema_load_file(const char *path, schema_parse_fn parse, void *out) {
  char *text;
  size_t len;
  CE_TRY(fs_read_all(path, &text, &len));
  char *dir = strdup(path);
  if (!dir) {
    free(text);
    CE_FAIL("out of memory");
  }
  char *slash = strrchr(dir, '/');
  if (slash) *slash = 0;
  else strcpy(dir, ".");
  int rc = parse(path, text, len, dir, out);
  free(dir);
  free(text);
  return rc;
}

int schema_keep_source(const char *name, const char *text, size_t len, const char *dir,
                       char **name_out, char **dir_out, char **text_out) {
  *name_out = strdup(name);
  *dir_out = strdup(dir ? dir : "");
  *text_out = malloc(len + 1);
  if (!*name_out || !*dir_out || !*text_out) {
    free(*name_out);
    free(*dir_out);
    free(*text_out);
    *name_out = *dir_out = *text_out = NULL;
    CE_FAIL("out of memory");
  }
  memcpy(*text_out, text, len);
  (*text_out)[len] = 0;
  return 0;
}

/* ---- reading the validated (complete) tree ---- */

const yt_node *schema_at(const yt_node *root, const char *dotted) {
  char buf[128];
  snprintf(buf, sizeof buf, "%s", dotted);
  const yt_node *v = root;
  for (char *save = NULL, *tok = strtok_r(buf, ".", &save); tok && v;
       tok = strtok_r(NULL, ".", &save))
    v = yt_get(v, tok);
  return v;
}

/* After validation these cannot fail: the schema guarantees presence and type. */
int64_t schema_int(const yt_node *root, const char *p) {
  int64_t x;
  const yt_node *v = schema_at(root, p);
  if (!v || schema_as_int(v, &x) < 0) CE_BUG("job: %s not validated", p);
  return x;
}

double schema_num(const yt_node *root, const char *p) {
  double x;
  const yt_node *v = schema_at(root, p);
  if (!v || schema_as_num(v, &x) < 0) CE_BUG("job: %s not validated", p);
  return x;
}

int schema_bool(const yt_node *root, const char *p) {
  int x;
  const yt_node *v = schema_at(root, p);
  if (!v || schema_as_bool(v, &x) < 0) CE_BUG("job: %s not validated", p);
  return x;
}

const char *schema_str(const yt_node *root, const char *p) {
  const yt_node *v = schema_at(root, p);
  if (!v || v->kind != YT_SCALAR) CE_BUG("job: %s not validated", p);
  return v->text;
}

char *schema_resolve(const char *dir, const char *p) {
  char *out = NULL;
  if (p[0] == '/' || !dir || !*dir) return strdup(p);
  while (p[0] == '.' && p[1] == '/') /* DIR/./x is DIR/x: messages name ./ds, not ././ds */
    p += 2;
  if (asprintf(&out, "%s/%s", dir, p) < 0) out = NULL;
  return out;
}

/* ---- documentation ---- */

static void md_value(FILE *out, const yt_node *v) {
  if (!v) return;
  if (v->kind == YT_SCALAR) {
    fprintf(out, "`%s`", *v->text ? v->text : "\"\"");
    return;
  }
  fputs("`[", out);
  for (size_t i = 0; i < v->n; i++) fprintf(out, "%s%s", i ? ", " : "", v->items[i]->text);
  fputs("]`", out);
}

static void md_rows(FILE *out, const yt_node *schema, const char *path) {
  const yt_node *keys = yt_get(schema, "keys");
  for (size_t i = 0; keys && i < keys->n; i++) {
    const yt_node *ks = keys->items[i];
    char sub[256];
    snprintf(sub, sizeof sub, "%s%s%s", path, *path ? "." : "", keys->keys[i]);
    const char *type = sfield(ks, "type");
    const yt_node *items = yt_get(ks, "items");
    fprintf(out, "| `%s` | %s%s%s | ", sub, type, items ? " of " : "",
            items ? sfield(items, "type") : "");
    if (sflag(ks, "required")) fputs("required", out);
    else md_value(out, yt_get(ks, "default"));
    fputs(" | ", out);
    const yt_node *lim = items ? items : ks;
    const char *mn = sfield(lim, "min"), *mx = sfield(lim, "max");
    if (mn || mx) fprintf(out, "%s..%s ", mn ? mn : "", mx ? mx : "");
    if (yt_get(lim, "enum")) md_value(out, yt_get(lim, "enum"));
    fprintf(out, " | %s |\n", sfield(ks, "doc") ? sfield(ks, "doc") : "");
    if (!strcmp(type, "map")) md_rows(out, ks, sub);
  }
}

int schema_markdown(FILE *out, const char *name, const char *schema_text) {
  yt_node *s = schema_tree(name, schema_text);
  if (!s) return -1;
  fputs("| key | type | default | range | meaning |\n|---|---|---|---|---|\n", out);
  md_rows(out, s, "");
  yt_free(s);
  if (ferror(out)) CE_FAIL("cannot write the schema table");
  return 0;
}
