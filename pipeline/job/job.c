/* job.c - generate job files: what is specific to them (the fill from the
 * validated tree, cross-key checks, channels, splits); the schema-driven
 * validator is schema.c. */
#include "pipeline/job/job.h"

#include <glob.h>
#include <inttypes.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/rng.h"
#include "pipeline/job/schema.h"
#include "pipeline/stream/stream_security.h"
#include "solver/freqgrid.h"
#include "solver/lte.h"

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
  DUP(j->name, strdup(schema_str(r, "name")));

  const yt_node *in = schema_at(r, "inputs");
  const yt_node *am = yt_get(in, "amrvac"), *sy = yt_get(in, "synth");
  if (!!am == !!sy)
    CE_FAIL("%s:%d:%d: inputs: expected exactly one of 'amrvac' or 'synth'", name, in->line,
            in->col);
  j->skip_bad_models = !strcmp(schema_str(r, "inputs.on_bad_model"), "skip");
  if (am) {
    j->input = JOB_INPUT_AMRVAC;
    DUP(j->amrvac_glob, schema_resolve(j->dir, schema_str(r, "inputs.amrvac.glob")));
    const char *u = schema_str(r, "inputs.amrvac.units");
    DUP(j->amrvac_units, *u ? schema_resolve(j->dir, u) : strdup(""));
    glob_t g;
    int rc = glob(j->amrvac_glob, GLOB_ERR, NULL, &g);
    if (rc != 0) {
      const yt_node *gn = schema_at(r, "inputs.amrvac.glob");
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
    j->synth_count = schema_int(r, "inputs.synth.count");
    j->synth_seed = schema_int(r, "inputs.synth.seed");
    j->synth_levels = (int)schema_int(r, "inputs.synth.levels");
    j->n_models = j->synth_count;
    /* refuse a dataset too large to plan, with the numbers, before the
     * model list is built (10^8 names alone take gigabytes) */
    int64_t dirs = schema_int(r, "sampling.directions");
    if ((double)j->n_models * (double)dirs > (double)JOB_MAX_SAMPLES) {
      const yt_node *cn = schema_at(r, "inputs.synth.count");
      CE_FAIL("%s:%d:%d: inputs.synth.count x sampling.directions = %lld x %lld = %.4g samples, "
              "more than the %lld a dataset may hold", name, cn->line, cn->col,
              (long long)j->n_models, (long long)dirs, (double)j->n_models * (double)dirs,
              (long long)JOB_MAX_SAMPLES);
    }
    j->model_names = ce_calloc_array((size_t)j->n_models, sizeof *j->model_names, "model list");
    if (!j->model_names) return -1;
    for (int64_t i = 0; i < j->n_models; i++)
      if (asprintf(&j->model_names[i], "synth-%" PRId64 "-%06" PRId64, j->synth_seed, i) < 0) {
        j->model_names[i] = NULL;
        CE_FAIL("out of memory");
      }
  }

  j->directions = schema_int(r, "sampling.directions");
  if ((double)j->n_models * (double)j->directions > (double)JOB_MAX_SAMPLES) {
    const yt_node *dn = schema_at(r, "sampling.directions");
    CE_FAIL("%s:%d:%d: %lld models x sampling.directions = %lld is %.4g samples, more than the "
            "%lld a dataset may hold", name, dn->line, dn->col, (long long)j->n_models,
            (long long)j->directions, (double)j->n_models * (double)j->directions,
            (long long)JOB_MAX_SAMPLES);
  }
  snprintf(j->sampler, sizeof j->sampler, "%s", schema_str(r, "sampling.sampler"));
  j->n = (int)schema_int(r, "sampling.n");
  const char *edge = schema_str(r, "sampling.edge");
  if (strcmp(edge, "auto")) {
    const yt_node *en = schema_at(r, "sampling.edge");
    if (cli_parse_double(edge, &j->edge) < 0 || !(j->edge > 0) || !isfinite(j->edge))
      CE_FAIL("%s:%d:%d: sampling.edge: expected 'auto' or a length > 0 in metres, got '%s'",
              name, en->line, en->col, edge);
  }
  j->k = (int)schema_int(r, "sampling.k");
  j->seed = (uint64_t)schema_int(r, "sampling.seed");
  j->coemunet_compat = schema_bool(r, "sampling.coemunet_compat");
  j->fill_background = schema_bool(r, "sampling.fill_background");
  j->background_n = schema_num(r, "sampling.background_n");
  j->background_T = schema_num(r, "sampling.background_T");

  DUP(j->lamda, schema_resolve(j->dir, schema_str(r, "line.lamda")));
  j->transition = (int)schema_int(r, "line.transition");
  const char *mode = schema_str(r, "line.channels.mode");
  const yt_node *ch = schema_at(r, "line.channels");
  if (!strcmp(mode, "coemunet")) {
    j->channel_mode = JOB_CH_COEMUNET;
    j->nf = 7;
  } else if (!strcmp(mode, "grid")) {
    j->channel_mode = JOB_CH_GRID;
    j->nf = (int)schema_int(r, "line.channels.count");
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
    for (int f = 0; f < j->nf; f++) schema_as_num(vl->items[f], &j->velocities[f]);
  } else if (j->channel_mode == JOB_CH_GRID) {
    double a = schema_num(r, "line.channels.vmin"), b = schema_num(r, "line.channels.vmax");
    if (j->nf > 1 && !(b > a))
      CE_FAIL("%s:%d:%d: line.channels: expected vmax > vmin, got %g..%g", name, ch->line,
              ch->col, a, b);
    for (int f = 0; f < j->nf; f++) j->velocities[f] = j->nf > 1 ? a + (b - a) * f / (j->nf - 1) : a;
  } else {
    for (int f = 0; f < 7; f++) j->velocities[f] = 300.0 * (f - 3);
  }

  j->vturb = schema_num(r, "solver.vturb");
  j->background = schema_num(r, "solver.background");
  j->take_abs = schema_bool(r, "solver.abs");
  j->mass = schema_num(r, "solver.mass");
  j->corrected_taylor = schema_bool(r, "solver.corrected_taylor");

  DUP(j->out_dir, strdup(schema_str(r, "output.directory")));
  j->samples_per_shard = schema_int(r, "output.samples_per_shard");
  j->inputs_f64 = !strcmp(schema_str(r, "output.inputs_dtype"), "float64");
  j->targets_f64 = !strcmp(schema_str(r, "output.targets_dtype"), "float64");
  j->gzip = (int)schema_int(r, "output.gzip");
  j->store_inputs = schema_bool(r, "output.store_inputs");

  j->split_fraction[0] = schema_num(r, "splits.train");
  j->split_fraction[1] = schema_num(r, "splits.validation");
  j->split_fraction[2] = schema_num(r, "splits.test");
  double sum = j->split_fraction[0] + j->split_fraction[1] + j->split_fraction[2];
  if (fabs(sum - 1) > 1e-9) {
    const yt_node *sp = schema_at(r, "splits");
    CE_FAIL("%s:%d:%d: splits: expected train + validation + test = 1, got %.17g", name,
            sp->line, sp->col, sum);
  }
  j->split_seed = (uint64_t)schema_int(r, "splits.seed");

  j->stats_compute = schema_bool(r, "statistics.compute");
  j->stats_drop_outliers = schema_bool(r, "statistics.drop_outliers");
  snprintf(j->stats_split, sizeof j->stats_split, "%s", schema_str(r, "statistics.split"));

  if (schema_at(r, "stream")) {
    j->has_stream = 1;
    DUP(j->stream_endpoint, strdup(schema_str(r, "stream.endpoint")));
    j->stream_credits = schema_int(r, "stream.credits");
    j->stream_ranks = schema_int(r, "stream.ranks");
    j->stream_batch = schema_int(r, "stream.batch");
    j->stream_epochs = schema_int(r, "stream.epochs");
    snprintf(j->stream_split, sizeof j->stream_split, "%s", schema_str(r, "stream.split"));
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
  CE_TRY(schema_keep_source(name, text, len, dir, &j->path, &j->dir, &j->text));
  j->text_len = len;
  j->fingerprint = (uint32_t)crc32(0L, (const Bytef *)text, (uInt)len);
  yt_node *doc = schema_load(name, text, len, "schemas/job.yaml", job_schema_text);
  int rc = doc ? fill(name, doc, j) : -1;
  yt_free(doc);
  if (rc < 0) job_free(j);
  return rc;
}

static int parse_any(const char *name, const char *text, size_t len, const char *dir, void *j) {
  return job_parse(name, text, len, dir, j);
}

int job_load(const char *path, job *j) { return schema_load_file(path, parse_any, j); }

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

int job_schema_markdown(FILE *out) {
  return schema_markdown(out, "schemas/job.yaml", job_schema_text);
}

int job_split_parse(const char *name, int *out) {
  static const char *const names[] = {"train", "validation", "test"};
  for (int i = 0; i < 3; i++)
    if (!strcmp(name, names[i])) return *out = i, 0;
  if (!strcmp(name, "all")) return *out = SPLIT_ALL, 0;
  CE_FAIL("split '%s': expected train, validation, test or all", name);
}
