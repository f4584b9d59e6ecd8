/* job.c - job files: schema-driven validation, defaults, resolution. */
#include "job.h"

#include <errno.h>
#include <glob.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "cli.h"
#include "error.h"
#include "freqgrid.h"
#include "fsutil.h"
#include "lte.h"
#include "rng.h"
#include "stream_security.h"
#include "yamltree.h"

/* ---- the validator, driven by the schema tree ---- */

typedef struct {
  const char *name; /* file name for messages */
} vctx;

static const char *sfield(const yt_node *schema, const char *key) {
  const yt_node *v = yt_get(schema, key);
  return v && v->kind == YT_SCALAR ? v->text : NULL;
}

static int sflag(const yt_node *schema, const char *key) {
  const char *t = sfield(schema, key);
  return t && !strcmp(t, "true");
}

static int parse_bool(const yt_node *v, int *out) {
  if (v->kind != YT_SCALAR || v->quoted) return -1;
  if (!strcmp(v->text, "true")) *out = 1;
  else if (!strcmp(v->text, "false")) *out = 0;
  else return -1;
  return 0;
}

static int parse_int(const yt_node *v, int64_t *out) {
  if (v->kind != YT_SCALAR || v->quoted) return -1;
  return cli_parse_int(v->text, out);
}

static int parse_num(const yt_node *v, double *out) {
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

static int validate(const vctx *c, yt_node *v, const yt_node *schema, const char *path);

static int validate_scalar(const vctx *c, const yt_node *v, const yt_node *schema,
                           const char *type, const char *path) {
  char g[64];
  got(v, g, sizeof g);
  const char *min = sfield(schema, "min"), *max = sfield(schema, "max");
  if (!strcmp(type, "bool")) {
    int b;
    if (parse_bool(v, &b) < 0)
      CE_FAIL("%s:%d:%d: %s: expected true or false, %s", c->name, v->line, v->col, path, g);
    return 0;
  }
  if (!strcmp(type, "int") || !strcmp(type, "float")) {
    int is_int = !strcmp(type, "int");
    double x;
    int64_t i = 0;
    int bad = is_int ? parse_int(v, &i) : parse_num(v, &x);
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

/* ---- reading the validated (complete) tree ---- */

static const yt_node *at(const yt_node *root, const char *dotted) {
  char buf[128];
  snprintf(buf, sizeof buf, "%s", dotted);
  const yt_node *v = root;
  for (char *save = NULL, *tok = strtok_r(buf, ".", &save); tok && v;
       tok = strtok_r(NULL, ".", &save))
    v = yt_get(v, tok);
  return v;
}

/* After validation these cannot fail: the schema guarantees presence and type. */
static int64_t get_int(const yt_node *root, const char *p) {
  int64_t x;
  const yt_node *v = at(root, p);
  if (!v || parse_int(v, &x) < 0) CE_BUG("job: %s not validated", p);
  return x;
}
static double get_num(const yt_node *root, const char *p) {
  double x;
  const yt_node *v = at(root, p);
  if (!v || parse_num(v, &x) < 0) CE_BUG("job: %s not validated", p);
  return x;
}
static int get_bool(const yt_node *root, const char *p) {
  int x;
  const yt_node *v = at(root, p);
  if (!v || parse_bool(v, &x) < 0) CE_BUG("job: %s not validated", p);
  return x;
}
static const char *get_str(const yt_node *root, const char *p) {
  const yt_node *v = at(root, p);
  if (!v || v->kind != YT_SCALAR) CE_BUG("job: %s not validated", p);
  return v->text;
}

static char *resolve(const char *dir, const char *p) {
  char *out = NULL;
  if (p[0] == '/' || !dir || !*dir) out = strdup(p);
  else if (asprintf(&out, "%s/%s", dir, p) < 0) out = NULL;
  return out;
}

static yt_node *schema_tree(void) {
  yt_node *s = yt_parse("schemas/job.yaml", job_schema_text, strlen(job_schema_text));
  if (!s) CE_BUG("embedded schema does not parse: %s", ce_err_msg());
  return s;
}

void job_free(job *j) {
  free(j->path);
  free(j->dir);
  free(j->text);
  free(j->name);
  free(j->amrvac_glob);
  free(j->amrvac_units);
  for (int64_t i = 0; j->model_names && i < j->n_models; i++) free(j->model_names[i]);
  free(j->model_names);
  free(j->lamda);
  free(j->velocities);
  free(j->out_dir);
  free(j->stream_endpoint);
  memset(j, 0, sizeof *j);
}

static int fill(const char *name, const yt_node *r, job *j) {
#define DUP(dst, src)                                                          \
  do {                                                                         \
    if (!((dst) = (src))) CE_FAIL("out of memory");                            \
  } while (0)
  DUP(j->name, strdup(get_str(r, "name")));

  const yt_node *in = at(r, "inputs");
  const yt_node *am = yt_get(in, "amrvac"), *sy = yt_get(in, "synth");
  if (!!am == !!sy)
    CE_FAIL("%s:%d:%d: inputs: expected exactly one of 'amrvac' or 'synth'", name, in->line,
            in->col);
  j->skip_bad_models = !strcmp(get_str(r, "inputs.on_bad_model"), "skip");
  if (am) {
    j->input = JOB_INPUT_AMRVAC;
    DUP(j->amrvac_glob, resolve(j->dir, get_str(r, "inputs.amrvac.glob")));
    const char *u = get_str(r, "inputs.amrvac.units");
    DUP(j->amrvac_units, *u ? resolve(j->dir, u) : strdup(""));
    glob_t g;
    int rc = glob(j->amrvac_glob, GLOB_ERR, NULL, &g);
    if (rc != 0) {
      const yt_node *gn = at(r, "inputs.amrvac.glob");
      if (rc != GLOB_NOMATCH) globfree(&g);
      CE_FAIL("%s:%d:%d: inputs.amrvac.glob: no file matches '%s'%s", name, gn->line, gn->col,
              j->amrvac_glob, rc == GLOB_NOMATCH ? "" : " (a folder cannot be read)");
    }
    j->n_models = (int64_t)g.gl_pathc;
    j->model_names = ce_calloc_array(g.gl_pathc, sizeof *j->model_names, "model list");
    if (!j->model_names) {
      globfree(&g);
      return -1;
    }
    for (size_t i = 0; i < g.gl_pathc; i++)
      if (!(j->model_names[i] = strdup(g.gl_pathv[i]))) {
        globfree(&g);
        CE_FAIL("out of memory");
      }
    globfree(&g);
  } else {
    j->input = JOB_INPUT_SYNTH;
    j->synth_count = get_int(r, "inputs.synth.count");
    j->synth_seed = get_int(r, "inputs.synth.seed");
    j->synth_levels = (int)get_int(r, "inputs.synth.levels");
    j->n_models = j->synth_count;
    j->model_names = ce_calloc_array((size_t)j->n_models, sizeof *j->model_names, "model list");
    if (!j->model_names) return -1;
    for (int64_t i = 0; i < j->n_models; i++)
      if (asprintf(&j->model_names[i], "synth-%" PRId64 "-%06" PRId64, j->synth_seed, i) < 0) {
        j->model_names[i] = NULL;
        CE_FAIL("out of memory");
      }
  }

  j->directions = get_int(r, "sampling.directions");
  snprintf(j->sampler, sizeof j->sampler, "%s", get_str(r, "sampling.sampler"));
  j->n = (int)get_int(r, "sampling.n");
  const char *edge = get_str(r, "sampling.edge");
  if (strcmp(edge, "auto")) {
    const yt_node *en = at(r, "sampling.edge");
    if (cli_parse_double(edge, &j->edge) < 0 || !(j->edge > 0) || !isfinite(j->edge))
      CE_FAIL("%s:%d:%d: sampling.edge: expected 'auto' or a length > 0 in metres, got '%s'",
              name, en->line, en->col, edge);
  }
  j->k = (int)get_int(r, "sampling.k");
  j->seed = (uint64_t)get_int(r, "sampling.seed");
  j->coemunet_compat = get_bool(r, "sampling.coemunet_compat");
  j->fill_background = get_bool(r, "sampling.fill_background");
  j->background_n = get_num(r, "sampling.background_n");
  j->background_T = get_num(r, "sampling.background_T");

  DUP(j->lamda, resolve(j->dir, get_str(r, "line.lamda")));
  j->transition = (int)get_int(r, "line.transition");
  const char *mode = get_str(r, "line.channels.mode");
  const yt_node *ch = at(r, "line.channels");
  if (!strcmp(mode, "coemunet")) {
    j->channel_mode = JOB_CH_COEMUNET;
    j->nf = 7;
  } else if (!strcmp(mode, "grid")) {
    j->channel_mode = JOB_CH_GRID;
    j->nf = (int)get_int(r, "line.channels.count");
  } else {
    j->channel_mode = JOB_CH_LIST;
    const yt_node *vl = yt_get(ch, "velocities");
    if (!vl)
      CE_FAIL("%s:%d:%d: line.channels: mode 'list' needs 'velocities'", name, ch->line, ch->col);
    j->nf = (int)vl->n;
  }
  j->velocities = ce_calloc_array((size_t)j->nf, sizeof *j->velocities, "channels");
  if (!j->velocities) return -1;
  if (j->channel_mode == JOB_CH_LIST) {
    const yt_node *vl = yt_get(ch, "velocities");
    for (int f = 0; f < j->nf; f++) parse_num(vl->items[f], &j->velocities[f]);
  } else if (j->channel_mode == JOB_CH_GRID) {
    double a = get_num(r, "line.channels.vmin"), b = get_num(r, "line.channels.vmax");
    if (j->nf > 1 && !(b > a))
      CE_FAIL("%s:%d:%d: line.channels: expected vmax > vmin, got %g..%g", name, ch->line,
              ch->col, a, b);
    for (int f = 0; f < j->nf; f++) j->velocities[f] = j->nf > 1 ? a + (b - a) * f / (j->nf - 1) : a;
  } else {
    for (int f = 0; f < 7; f++) j->velocities[f] = 300.0 * (f - 3);
  }

  j->vturb = get_num(r, "solver.vturb");
  j->background = get_num(r, "solver.background");
  j->take_abs = get_bool(r, "solver.abs");
  j->mass = get_num(r, "solver.mass");
  j->corrected_taylor = get_bool(r, "solver.corrected_taylor");

  DUP(j->out_dir, strdup(get_str(r, "output.directory")));
  j->samples_per_shard = get_int(r, "output.samples_per_shard");
  j->inputs_f64 = !strcmp(get_str(r, "output.inputs_dtype"), "float64");
  j->targets_f64 = !strcmp(get_str(r, "output.targets_dtype"), "float64");
  j->gzip = (int)get_int(r, "output.gzip");
  j->store_inputs = get_bool(r, "output.store_inputs");

  j->split_fraction[0] = get_num(r, "splits.train");
  j->split_fraction[1] = get_num(r, "splits.validation");
  j->split_fraction[2] = get_num(r, "splits.test");
  double sum = j->split_fraction[0] + j->split_fraction[1] + j->split_fraction[2];
  if (fabs(sum - 1) > 1e-9) {
    const yt_node *sp = at(r, "splits");
    CE_FAIL("%s:%d:%d: splits: expected train + validation + test = 1, got %.17g", name,
            sp->line, sp->col, sum);
  }
  j->split_seed = (uint64_t)get_int(r, "splits.seed");

  j->stats_compute = get_bool(r, "statistics.compute");
  j->stats_drop_outliers = get_bool(r, "statistics.drop_outliers");
  snprintf(j->stats_split, sizeof j->stats_split, "%s", get_str(r, "statistics.split"));

  if (at(r, "stream")) {
    j->has_stream = 1;
    DUP(j->stream_endpoint, strdup(get_str(r, "stream.endpoint")));
    j->stream_credits = get_int(r, "stream.credits");
    j->stream_ranks = get_int(r, "stream.ranks");
    j->stream_batch = get_int(r, "stream.batch");
    j->stream_epochs = get_int(r, "stream.epochs");
    snprintf(j->stream_split, sizeof j->stream_split, "%s", get_str(r, "stream.split"));
    if (!stream_endpoint_is_local(j->stream_endpoint))
      CE_FAIL("%s: stream.endpoint %s is reachable from other machines: live streams bind to "
              "loopback or ipc only (serve a finished dataset with CURVE keys instead)",
              j->path, j->stream_endpoint);
  }
#undef DUP
  return 0;
}

int job_parse(const char *name, const char *text, size_t len, const char *dir, job *j) {
  memset(j, 0, sizeof *j);
  if (!(j->path = strdup(name)) || !(j->dir = strdup(dir ? dir : "")) ||
      !(j->text = malloc(len + 1))) {
    job_free(j);
    CE_FAIL("out of memory");
  }
  memcpy(j->text, text, len);
  j->text[len] = 0;
  j->text_len = len;
  j->fingerprint = (uint32_t)crc32(0L, (const Bytef *)text, (uInt)len);
  yt_node *doc = yt_parse(name, text, len);
  if (!doc) {
    job_free(j);
    return -1;
  }
  yt_node *schema = schema_tree();
  vctx c = {name};
  int rc = validate(&c, doc, schema, "");
  if (rc == 0) rc = fill(name, doc, j);
  yt_free(schema);
  yt_free(doc);
  if (rc < 0) job_free(j);
  return rc;
}

int job_load(const char *path, job *j) {
  char *text;
  size_t len;
  if (fs_read_all(path, &text, &len) < 0) return -1;
  char *dir = strdup(path);
  if (!dir) {
    free(text);
    CE_FAIL("out of memory");
  }
  char *slash = strrchr(dir, '/');
  if (slash) *slash = 0;
  else strcpy(dir, ".");
  int rc = job_parse(path, text, len, dir, j);
  free(dir);
  free(text);
  return rc;
}

int64_t job_samples(const job *j) { return j->n_models * j->directions; }

void job_frequencies(const job *j, double nu0, double *out) {
  if (j->channel_mode == JOB_CH_COEMUNET) {
    freqgrid_coemunet(nu0, out); /* the reference grid, bit for bit (solver/freqgrid.h) */
    return;
  }
  for (int f = 0; f < j->nf; f++) out[f] = nu0 * (1 - j->velocities[f] / LTE_C);
}

int job_model_splits(const job *j, uint8_t *out) {
  int64_t m = j->n_models;
  int64_t *perm = ce_malloc_array((size_t)m, sizeof *perm, "split permutation");
  if (!perm) return -1;
  for (int64_t i = 0; i < m; i++) perm[i] = i;
  ce_rng r = ce_rng_make(j->split_seed, 0, 0, 2);
  for (int64_t i = m - 1; i > 0; i--) {
    int64_t k = (int64_t)(ce_rng_uniform(&r) * (double)(i + 1));
    int64_t t = perm[i];
    perm[i] = perm[k];
    perm[k] = t;
  }
  int64_t ntrain = (int64_t)llround(j->split_fraction[0] * (double)m);
  int64_t nval = (int64_t)llround(j->split_fraction[1] * (double)m);
  if (ntrain + nval > m) nval = m - ntrain;
  for (int64_t i = 0; i < m; i++)
    out[perm[i]] = i < ntrain ? SPLIT_TRAIN : i < ntrain + nval ? SPLIT_VALIDATION : SPLIT_TEST;
  free(perm);
  return 0;
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

int job_schema_markdown(FILE *out) {
  yt_node *s = schema_tree();
  fputs("| key | type | default | range | meaning |\n|---|---|---|---|---|\n", out);
  md_rows(out, s, "");
  yt_free(s);
  if (ferror(out)) CE_FAIL("cannot write the schema table");
  return 0;
}

int job_split_parse(const char *name, int *out) {
  static const char *const names[] = {"train", "validation", "test"};
  for (int i = 0; i < 3; i++)
    if (!strcmp(name, names[i])) return *out = i, 0;
  if (!strcmp(name, "all")) return *out = SPLIT_ALL, 0;
  CE_FAIL("split '%s': expected train, validation, test or all", name);
}
