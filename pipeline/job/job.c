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
#include "common/progress.h"
#include "common/rng.h"
#include "pipeline/job/schema.h"
#include "pipeline/job/trainjob.h"
#include "pipeline/stream/stream_security.h"
#include "solver/freqgrid.h"
#include "solver/lte.h"
#include "rotate/amrvac.h"
#include "rotate/compat.h"
#include "rotate/model.h"
#include "rotate/model_lvg.h"
#include "rotate/sampler.h"
#include "rotate/units.h"
#include "solver/nlte.h"
#include "solver/nlte_lvg.h"

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
  free(j->stream_curve_secret);
  free(j->stream_curve_authorized);
  free(j->stream_pilot_out);
  memset(j, 0, sizeof *j);
}

const char *job_line_mode_name(int mode) { return mode == JOB_LINE_LVG ? "lvg" : "lte"; }

void job_line_describe(const job_lvg *l, int mode, double abundance, char *buf, size_t len) {
  int k = snprintf(buf, len, "%s abundance=%.15g", job_line_mode_name(mode), abundance);
  if (mode == JOB_LINE_LVG && k >= 0 && (size_t)k < len)
    snprintf(buf + k, len - (size_t)k,
             " directions=%d escape=%s t_bg=%.15g tol=%.15g max_iter=%d vturb=%.15g", l->directions,
             l->escape, l->t_bg, l->tol, l->max_iter, l->vturb);
}

static void key_at(const job *j, int line, int col, const char *key, char *out, size_t len);

int job_check_line_mode(const job *j, const lamda_molecule *mol) {
  char at[1200];
  key_at(j, j->lamda_line, j->lamda_col, "line.lamda", at, sizeof at);
  /* line.abundance 0 means "the molecule is CO" (its density is the models'
   * n_CO): any other molecule needs its own abundance in both modes, or LTE
   * would image it at the CO density (schemas/job.yaml, docs/jobs.md). */
  if (j->abundance == 0 && strcmp(mol->name, "CO"))
    CE_FAIL("%s: %s is %s, not CO: line.mode %s needs its abundance (line.abundance, n_mol/n_H2)",
            at, j->lamda, mol->name, job_line_mode_name(j->line_mode));
  /* A mass copied from a CO job (the shipped ones give 28.0) onto another
   * molecule would give every line the wrong thermal width, silently; in
   * lvg mode the populations (the file's weight) and the image would also
   * disagree. A mass within 1 % of the file's weight is taken as meant. */
  if (j->mass != 0 && fabs(j->mass - mol->weight) > 0.01 * mol->weight) {
    char mat[1200];
    key_at(j, j->mass_line, j->mass_col, "solver.mass", mat, sizeof mat);
    CE_FAIL("%s: %g u, but %s gives a molecular weight of %g u: remove solver.mass (0 takes "
            "the file's weight) or set it to %g", mat, j->mass, j->lamda, mol->weight, mol->weight);
  }
  if (j->line_mode != JOB_LINE_LVG) return 0;
  char list[256] = "";
  int h2 = 0;
  for (int i = 0; i < mol->npart; i++) {
    int id = mol->partners[i].id;
    h2 |= id == NLTE_H2 || id == NLTE_PH2 || id == NLTE_OH2;
    size_t l = strlen(list);
    snprintf(list + l, sizeof list - l, "%s%s", i ? ", " : "", nlte_partner_name(id));
  }
  if (!h2)
    CE_FAIL("%s: %s has no collision rates with H2 (H2, pH2 or oH2), which line.mode lvg needs "
            "(the file's partners: %s)", at, j->lamda, *list ? list : "none");
  return 0;
}

/* line.mode, line.abundance and line.lvg (docs/nlte.md, "Jobs"). */
static int fill_line_mode(const char *name, const yt_node *r, job *j) {
  j->line_mode = !strcmp(schema_str(r, "line.mode"), "lvg") ? JOB_LINE_LVG : JOB_LINE_LTE;
  j->abundance = schema_num(r, "line.abundance");
  job_lvg *l = &j->lvg;
  l->directions = (int)schema_int(r, "line.lvg.directions");
  snprintf(l->escape, sizeof l->escape, "%s", schema_str(r, "line.lvg.escape"));
  l->t_bg = schema_num(r, "line.lvg.t_bg");
  l->tol = schema_num(r, "line.lvg.tol");
  l->max_iter = (int)schema_int(r, "line.lvg.max_iter");
  l->vturb = schema_num(r, "line.lvg.vturb");
  double dirs[3 * NLTE_LVG_MAX_DIR], q[NLTE_LVG_MAX_DIR];
  if (nlte_lvg_directions(l->directions, dirs, q) < 0) {
    const yt_node *dn = schema_at(r, "line.lvg.directions");
    CE_FAIL("%s:%d:%d: line.lvg.directions: expected 3 or 2 m^2 (8, 18, 32, ...), got %d", name,
            dn->line, dn->col, l->directions);
  }
  if (j->line_mode == JOB_LINE_LVG && j->coemunet_compat) {
    const yt_node *mn = schema_at(r, "line.mode");
    CE_FAIL("%s:%d:%d: line.mode: lvg needs the sampler's cubes, not sampling.coemunet_compat's "
            "gridding", name, mn->line, mn->col);
  }
  return 0;
}

/* sampling.reconstruction: auto is linear, except where the samples are
 * built from cell values: the coemunet_compat gridding (the paper's binning)
 * and line.mode lvg (per-cell level populations, sampled as cell values);
 * there an explicit linear is refused. */
static int fill_reconstruction(const char *name, const yt_node *r, job *j) {
  const char *rec = schema_str(r, "sampling.reconstruction");
  const yt_node *rn = schema_at(r, "sampling.reconstruction");
  int automatic = !strcmp(rec, "auto");
  j->reconstruction = automatic ? SAMPLER_LINEAR : sampler_recon_parse(rec);
  const char *why = j->coemunet_compat ? "sampling.coemunet_compat, which bins cell values as "
                                         "the paper did"
                    : j->line_mode == JOB_LINE_LVG ? "line.mode: lvg, whose level populations "
                                                     "are cell values"
                                                   : NULL;
  if (why) {
    if (!automatic && j->reconstruction != SAMPLER_CONSTANT)
      CE_FAIL("%s:%d:%d: sampling.reconstruction: %s does not apply with %s (use constant)", name,
              rn->line, rn->col, rec, why);
    j->reconstruction = SAMPLER_CONSTANT;
  }
  return 0;
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
    const yt_node *gpos = schema_at(r, "inputs.amrvac.glob"), *upos = schema_at(r, "inputs.amrvac.units");
    j->glob_line = gpos->line, j->glob_col = gpos->col;
    j->units_line = upos->line, j->units_col = upos->col;
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
  /* faceon is the identity for every direction index, and nothing else of a
   * sample depends on the index: directions > 1 would store each model's
   * sample that many times over (same /direction, same targets), a dataset
   * of copies that --check would size as if they were views */
  if (!strcmp(j->sampler, "faceon") && j->directions != 1) {
    /* a directions filled in by default has no position: name the sampler's */
    const yt_node *dn = schema_at(r, "sampling.directions");
    const yt_node *at = dn->line > 0 ? dn : schema_at(r, "sampling.sampler");
    CE_FAIL("%s:%d:%d: sampling.directions: expected 1 with sampling.sampler faceon, got %lld%s "
            "(faceon is the identity rotation for every direction: each model's sample would be "
            "stored %lld times, identical; set directions: 1, or use another sampler for several "
            "views)", name, at->line, at->col, (long long)j->directions,
            dn->line > 0 ? "" : " (the default)", (long long)j->directions);
  }
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
  if (j->coemunet_compat && j->n != COMPAT_OUT) {
    const yt_node *nn = schema_at(r, "sampling.n");
    CE_FAIL("%s:%d:%d: sampling.n: sampling.coemunet_compat grids %d^3 cubes as the paper did, "
            "but sampling.n = %d", name, nn->line, nn->col, COMPAT_OUT, j->n);
  }
  j->fill_background = schema_bool(r, "sampling.fill_background");
  j->background_n = schema_num(r, "sampling.background_n");
  j->background_T = schema_num(r, "sampling.background_T");

  const char *lam = schema_str(r, "line.lamda");
  const yt_node *lpos = schema_at(r, "line.lamda");
  j->lamda_line = lpos->line, j->lamda_col = lpos->col;
  if (!strncmp(lam, JOB_LAMDA_BUILTIN_PREFIX, strlen(JOB_LAMDA_BUILTIN_PREFIX))) {
    if (strcmp(lam + strlen(JOB_LAMDA_BUILTIN_PREFIX), "co.dat"))
      CE_FAIL("%s:%d:%d: line.lamda: no built-in LAMDA file '%s' (built in: builtin:co.dat)",
              name, lpos->line, lpos->col, lam);
    DUP(j->lamda, strdup(lam));
  } else {
    DUP(j->lamda, schema_resolve(j->dir, lam));
  }
  j->transition = (int)schema_int(r, "line.transition");
  const yt_node *tpos = schema_at(r, "line.transition");
  j->transition_line = tpos->line, j->transition_col = tpos->col;
  const char *mode = schema_str(r, "line.channels.mode");
  const yt_node *ch = schema_at(r, "line.channels");
  { /* a key of another mode would be ignored without a word: an error (the
     * defaults the schema fills in have no position) */
    static const char *keys[] = {"count", "vmin", "vmax", "velocities"};
    static const char *mode_of[] = {"grid", "grid", "grid", "list"};
    for (int k = 0; k < 4; k++) {
      const yt_node *v = yt_get(ch, keys[k]);
      if (v && v->line > 0 && strcmp(mode, mode_of[k]))
        CE_FAIL("%s:%d:%d: line.channels.%s: goes with mode %s, and the mode is %s%s (it would "
                "be ignored)", name, v->line, v->col, keys[k], mode_of[k], mode,
                !strcmp(mode, "coemunet") ? " (the paper's 7 channels, -900..900 m/s)" : "");
    }
  }
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
    int g, f, rep = freqgrid_find_repeat(j->velocities, j->nf, &g, &f);
    if (rep < 0) return -1;
    if (rep)
      CE_FAIL("%s:%d:%d: line.channels.velocities: entries %d and %d are both %g m/s (two "
              "channels of the same image)", name, vl->items[f]->line, vl->items[f]->col, g, f,
              j->velocities[f]);
  } else if (j->channel_mode == JOB_CH_GRID) {
    double a = schema_num(r, "line.channels.vmin"), b = schema_num(r, "line.channels.vmax");
    if (j->nf > 1 && !(b > a))
      CE_FAIL("%s:%d:%d: line.channels: expected vmax > vmin, got %g..%g", name, ch->line,
              ch->col, a, b);
    for (int f = 0; f < j->nf; f++) j->velocities[f] = j->nf > 1 ? a + (b - a) * f / (j->nf - 1) : a;
  } else {
    /* the paper's channels in its order: frequency rising from nu0 (1 - 900/c),
     * so under nu = nu0 (1 - v/c) the velocity falls from +900 to -900 m/s
     * (job_frequencies gives the grid itself, bit for bit the paper's) */
    for (int f = 0; f < 7; f++) j->velocities[f] = 300.0 * (3 - f);
  }

  CE_TRY(fill_line_mode(name, r, j));
  CE_TRY(fill_reconstruction(name, r, j));

  j->vturb = schema_num(r, "solver.vturb");
  j->background = schema_num(r, "solver.background");
  j->take_abs = schema_bool(r, "solver.abs");
  j->mass = schema_num(r, "solver.mass");
  const yt_node *mpos = schema_at(r, "solver.mass");
  if (mpos) j->mass_line = mpos->line, j->mass_col = mpos->col;
  if (j->mass != 0 && j->mass < 0.5)
    CE_FAIL("%s:%d:%d: solver.mass: %g u; expected 0 (the LAMDA file's molecular weight) or "
            "0.5..1000", name, j->mass_line, j->mass_col, j->mass);
  j->corrected_taylor = schema_bool(r, "solver.corrected_taylor");
  j->solver_device = !strcmp(schema_str(r, "solver.device"), "cuda") ? LTE_BACKEND_CUDA : LTE_BACKEND_CPU;
  j->solver_precision =
      !strcmp(schema_str(r, "solver.precision"), "float32") ? LTE_PRECISION_F32 : LTE_PRECISION_F64;

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
    CE_FAIL("%s:%d:%d: splits: expected train + validation + test = 1, got %.15g", name,
            sp->line, sp->col, sum);
  }
  j->split_seed = (uint64_t)schema_int(r, "splits.seed");

  j->stats_compute = schema_bool(r, "statistics.compute");
  /* /stats keeps a field per channel (pipeline/dataset/dataset_stats.c): a
   * job with more channels would fail only after its last shard */
  if (j->stats_compute && j->nf > JOB_STATS_MAX_CHANNELS)
    CE_FAIL("%s:%d:%d: line.channels: %d channels, but statistics.compute (on by default) "
            "takes at most %d; set statistics: {compute: false} (no /stats: serve and train "
            "then need another normalisation) or use at most %d channels",
            name, ch->line, ch->col, j->nf, JOB_STATS_MAX_CHANNELS, JOB_STATS_MAX_CHANNELS);
  j->stats_drop_outliers = schema_bool(r, "statistics.drop_outliers");
  snprintf(j->stats_split, sizeof j->stats_split, "%s", schema_str(r, "statistics.split"));
  j->stats_lnI_clip = schema_num(r, "statistics.ln_intensity_clip");
  /* images-only (store_inputs false): statistics.drop_outliers reads v_z from
   * the rebuilt input cubes, as every reader does (docs/dataset-format.md) */

  if (schema_at(r, "stream")) {
    j->has_stream = 1;
    DUP(j->stream_endpoint, strdup(schema_str(r, "stream.endpoint")));
    j->stream_credits = schema_int(r, "stream.credits");
    j->stream_ranks = schema_int(r, "stream.ranks");
    j->stream_batch = schema_int(r, "stream.batch");
    j->stream_epochs = schema_int(r, "stream.epochs");
    snprintf(j->stream_split, sizeof j->stream_split, "%s", schema_str(r, "stream.split"));
    j->stream_generate = strcmp(schema_str(r, "stream.mode"), "generate") == 0;
    j->stream_fresh_views = schema_bool(r, "stream.fresh_views");
    j->stream_model_cache_mb = schema_int(r, "stream.model_cache_mb");
    /* the rules of coemu serve: CURVE keys together, and required off this machine */
    const char *cs = schema_str(r, "stream.curve_secret"), *ca = schema_str(r, "stream.curve_authorized");
    const yt_node *csn = schema_at(r, "stream.curve_secret"), *can = schema_at(r, "stream.curve_authorized");
    if (csn) j->curve_secret_line = csn->line, j->curve_secret_col = csn->col;
    if (can) j->curve_auth_line = can->line, j->curve_auth_col = can->col;
    if (!*cs != !*ca) {
      const yt_node *given = *cs ? csn : can;
      CE_FAIL("%s:%d:%d: stream: expected both curve_secret and curve_authorized (CURVE) or "
              "neither, got only %s", name, given->line, given->col,
              *cs ? "curve_secret" : "curve_authorized");
    }
    if (stream_endpoint_check(j->stream_endpoint) < 0) {
      const yt_node *ep = schema_at(r, "stream.endpoint");
      return ce_err_prefix("%s:%d:%d: stream.endpoint", name, ep ? ep->line : 0, ep ? ep->col : 0);
    }
    if (!*cs && !stream_endpoint_is_local(j->stream_endpoint)) {
      const yt_node *ep = schema_at(r, "stream.endpoint");
      CE_FAIL("%s:%d:%d: stream.endpoint %s is reachable from other machines: give "
              "stream.curve_secret and stream.curve_authorized (coemu keygen), or use "
              "tcp://127.0.0.1:PORT or ipc://", name, ep->line, ep->col, j->stream_endpoint);
    }
    DUP(j->stream_curve_secret, *cs ? schema_resolve(j->dir, cs) : strdup(""));
    DUP(j->stream_curve_authorized, *ca ? schema_resolve(j->dir, ca) : strdup(""));
    const yt_node *pilot = schema_at(r, "stream.stats.pilot");
    if (pilot) {
      if (!j->stream_generate)
        CE_FAIL("%s:%d:%d: stream.stats.pilot: a pilot pass is run by coemu serve --generate, so it "
                "goes with stream.mode generate, got mode %s", name, pilot->line, pilot->col,
                schema_str(r, "stream.mode"));
      j->stream_pilot_samples = schema_int(r, "stream.stats.pilot.samples");
      int64_t train = job_train_samples(j);
      if (train < 0) return -1;
      if (j->stream_pilot_samples > train) {
        const yt_node *sn = schema_at(r, "stream.stats.pilot.samples");
        CE_FAIL("%s:%d:%d: stream.stats.pilot.samples: expected at most the %lld samples of the "
                "training split (%lld training models x %lld directions), got %lld", name, sn->line,
                sn->col, (long long)train, (long long)(train / j->directions),
                (long long)j->directions, (long long)j->stream_pilot_samples);
      }
      DUP(j->stream_pilot_out, strdup(schema_str(r, "stream.stats.pilot.out")));
    }
  }
#undef DUP
  return 0;
}

int job_parse(const char *name, const char *text, size_t len, const char *dir, job *j) {
  memset(j, 0, sizeof *j);
  CE_TRY(schema_keep_source(name, text, len, dir, &j->path, &j->dir, &j->text));
  j->text_len = len;
  j->fingerprint = (uint32_t)crc32(0L, (const Bytef *)text, (uInt)len);
  /* a training job given to coemu generate is told so (schema.h) */
  static const schema_other train = {train_schema_text, "a training job", "coemu train"};
  yt_node *doc = schema_load(name, text, len, "schemas/job.yaml", job_schema_text, &train);
  int rc = doc ? fill(name, doc, j) : -1;
  yt_free(doc);
  if (rc < 0) job_free(j);
  /* the reconstruction that sampling.reconstruction: auto (or an absent key)
   * resolves to belongs to the job: a dataset that coemu made with cell
   * values before `linear` existed is not resumed with it, nor one made by
   * an earlier version of linear's arithmetic (sampler_recon_version:
   * version 1 keeps the tag of before, so those datasets resume as they did) */
  if (rc == 0 && j->reconstruction == SAMPLER_LINEAR) {
    char tag[96];
    int v = sampler_recon_version(SAMPLER_LINEAR);
    int n = v == 1 ? snprintf(tag, sizeof tag, "\n# sampling.reconstruction resolved: linear\n")
                   : snprintf(tag, sizeof tag,
                              "\n# sampling.reconstruction resolved: linear, sampler version %d\n", v);
    j->fingerprint = (uint32_t)crc32(j->fingerprint, (const Bytef *)tag, (uInt)n);
  }
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

int64_t job_train_samples(const job *j) {
  uint8_t *m = ce_malloc_array((size_t)(j->n_models ? j->n_models : 1), 1, "model splits");
  if (!m) return -1;
  int64_t t = 0;
  if (job_model_splits(j, m) < 0) t = -1;
  for (int64_t i = 0; t >= 0 && i < j->n_models; i++) t += m[i] == SPLIT_TRAIN;
  free(m);
  return t < 0 ? -1 : t * j->directions;
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

static int stats_settings_of(const char *name, const char *text, size_t len, const char *dir,
                             void *vout) {
  (void)dir;
  job_stats_settings *out = vout;
  yt_node *doc = schema_load(name, text, len, "schemas/job.yaml", job_schema_text, NULL);
  if (!doc) return -1;
  snprintf(out->split, sizeof out->split, "%s", schema_str(doc, "statistics.split"));
  out->lnI_clip = schema_num(doc, "statistics.ln_intensity_clip");
  yt_free(doc);
  return 0;
}

int job_stats_settings_read(const char *path, job_stats_settings *out) {
  return schema_load_file(path, stats_settings_of, out);
}

/* "JOB:LINE:COL: KEY" (or "JOB: KEY (default)" for a key filled in). */
static void key_at(const job *j, int line, int col, const char *key, char *out, size_t len) {
  if (line > 0) snprintf(out, len, "%s:%d:%d: %s", j->path, line, col, key);
  else snprintf(out, len, "%s: %s (default)", j->path, key);
}

int job_lamda_read_file(const char *file, lamda_molecule *m) {
  if (!strcmp(file, JOB_LAMDA_BUILTIN_PREFIX "co.dat"))
    return lamda_parse(file, job_lamda_co_text, strlen(job_lamda_co_text), m);
  return lamda_read(file, m);
}

int job_lamda_read(const job *j, lamda_molecule *m) {
  int rc = job_lamda_read_file(j->lamda, m);
  if (rc < 0) {
    char at[1200];
    key_at(j, j->lamda_line, j->lamda_col, "line.lamda", at, sizeof at);
    return ce_err_prefix("%s", at);
  }
  return 0;
}

/* line.mode lvg: model i read in full and its cells put through the LVG
 * solve's input checks (job_check_inputs_part). 0 when every cell is good;
 * 1 when one is not, with the message in why (and ce_err's); -1 when the
 * model cannot be read (the message in ce_err's and why too). */
static int lvg_scan_model(const job *j, int64_t i, const units *u, const char *gat,
                          job_lvg_report *r, char *why, size_t why_len) {
  const char *path = j->model_names[i];
  char where[2600];
  snprintf(where, sizeof where, "%s: model %lld of %lld, %s: line.mode lvg", gat, (long long)i,
           (long long)j->n_models, path);
  ce_model *m = NULL;
  model_lvg_inputs in = {0};
  int rc = -1;
  if (model_load(path, j->amrvac_units && j->amrvac_units[0] ? j->amrvac_units : NULL, &m) < 0 ||
      model_lvg_inputs_make(m, u->co_abundance, j->abundance > 0 ? j->abundance : u->co_abundance,
                            &in) < 0) {
    ce_err_prefix("%s", where);
  } else {
    nlte_lvg_cells C = {in.ncell, in.t_kin, in.n_h2, in.n_mol, in.grad_v, in.length, in.order, in.chunk};
    nlte_lvg_scan scan;
    int64_t bad;
    rc = nlte_lvg_cells_check(&C, &bad, &scan) < 0;
    if (r) {
      r->models++, r->cells += rc ? 0 : in.ncell;
      if (scan.t_min < r->t_min) r->t_min = scan.t_min;
      if (scan.t_max > r->t_max) r->t_max = scan.t_max;
    }
    if (rc) {
      char cell[256], msg[256]; /* the solve's words for the cell, kept past ce_err */
      model_cell_name(m, bad, cell, sizeof cell);
      snprintf(msg, sizeof msg, "%s", ce_err_msg());
      ce_err("%s: %s: %s; %lld of %lld cells are outside what the LVG solve takes (T_kin %g .. "
             "%g K in this model)", where, cell, msg, (long long)scan.bad, (long long)in.ncell,
             scan.t_min, scan.t_max);
    }
  }
  if (rc) snprintf(why, why_len, "%s", ce_err_msg());
  model_lvg_inputs_free(&in);
  model_free(m);
  return rc;
}

int job_check_inputs(const job *j) { return job_check_inputs_part(j, 0, 1, NULL); }

int job_check_inputs_part(const job *j, int part, int parts, job_lvg_report *lvg) {
  if (lvg) memset(lvg, 0, sizeof *lvg), lvg->t_min = INFINITY, lvg->t_max = -INFINITY;
  if (part == 0 && j->has_stream && *j->stream_curve_secret) { /* the live server's keys */
    char at[1200];
    key_at(j, j->curve_secret_line, j->curve_secret_col,
           "stream.curve_secret, stream.curve_authorized", at, sizeof at);
    if (stream_security_check(j->stream_curve_secret, j->stream_curve_authorized) < 0)
      return ce_err_prefix("%s", at);
  }
  lamda_molecule mol;
  CE_TRY(job_lamda_read(j, &mol));
  lte_line line;
  int rc = lte_line_init(&line, &mol, j->transition, j->mass);
  int nlines = mol.nline;
  if (rc == 0 && job_check_line_mode(j, &mol) < 0) {
    lte_line_free(&line);
    lamda_free(&mol);
    return -1;
  }
  lamda_free(&mol);
  if (rc < 0) {
    char at[1200];
    key_at(j, j->transition_line, j->transition_col, "line.transition", at, sizeof at);
    return ce_err_prefix("%s: %d, but %s has %d transitions", at, j->transition, j->lamda,
                         nlines);
  }
  lte_line_free(&line);
  if (j->input != JOB_INPUT_AMRVAC) return 0;
  char gat[1200], uat[1200];
  key_at(j, j->glob_line, j->glob_col, "inputs.amrvac.glob", gat, sizeof gat);
  key_at(j, j->units_line, j->units_col, "inputs.amrvac.units", uat, sizeof uat);
  units shared;
  int have_shared = j->amrvac_units && j->amrvac_units[0];
  /* line.mode lvg: every model read in full, unless the run skips bad ones */
  int scan = j->line_mode == JOB_LINE_LVG && (lvg || !j->skip_bad_models);
  ce_progress progress;
  ce_progress_init(&progress, "line.mode lvg: reading the models", "models",
                   (j->n_models - part + parts - 1) / parts, !scan);
  if (have_shared && units_read(j->amrvac_units, &shared) < 0) return ce_err_prefix("%s", uat);
  for (int64_t i = part; i < j->n_models; i += parts) {
    amrvac_snapshot snap;
    if (amrvac_open(j->model_names[i], &snap) < 0)
      return ce_err_prefix("%s: model %lld of %lld", gat, (long long)i, (long long)j->n_models);
    char side[4096];
    units u;
    if (have_shared) {
      u = shared;
    } else {
      if (units_find(j->model_names[i], side, sizeof side) != 1) {
        amrvac_free(&snap);
        return ce_err("%s: model %lld, %s: no units sidecar (MODEL.units.yaml or units.yaml "
                      "beside it, or inputs.amrvac.units in the job for all files)",
                      gat, (long long)i, j->model_names[i]);
      }
      if (units_read(side, &u) < 0) {
        amrvac_free(&snap);
        return ce_err_prefix("%s: model %lld, units sidecar", gat, (long long)i);
      }
    }
    /* what sampling refuses (a 2-D or non-Cartesian snapshot, staggered
     * fields, a stretched grid) is refused here too: --check must not say
     * "ok", and the run must fail before it creates its folder */
    int usable = model_check_usable(&snap.h, &u, j->model_names[i]);
    amrvac_free(&snap);
    if (usable < 0)
      return ce_err_prefix("%s: model %lld of %lld", gat, (long long)i, (long long)j->n_models);
    if (scan) {
      char why[sizeof lvg->first_skipped];
      int bad = lvg_scan_model(j, i, &u, gat, lvg, why, sizeof why);
      if (bad && !j->skip_bad_models)
        return ce_err("%s: this model stops the run (inputs.on_bad_model: stop): leave it out of the job, or set "
                      "inputs.on_bad_model: skip to store its samples as invalid",
                      why);
      if (bad && lvg && lvg->models_skipped++ == 0)
        snprintf(lvg->first_skipped, sizeof lvg->first_skipped, "%s", why);
      ce_progress_update(&progress, (i - part) / parts + 1);
    }
  }
  if (scan && progress.printed >= 0) ce_progress_done(&progress, (j->n_models - part + parts - 1) / parts);
  return 0;
}

void job_estimate_of(const job *j, job_estimate *e) {
  memset(e, 0, sizeof *e);
  double n = j->n, n3 = n * n * n, n2 = n * n;
  e->samples = job_samples(j);
  e->shards = (e->samples + j->samples_per_shard - 1) / j->samples_per_shard;
  /* per sample: inputs, targets, and the small arrays (model id, direction
   * index: int64; quaternion: 4 float64; split, valid: uint8; checksums:
   * 2 uint64) */
  e->sample_bytes = (j->store_inputs ? 3 * n3 * (j->inputs_f64 ? 8 : 4) : 0) +
                    (double)j->nf * n2 * (j->targets_f64 ? 8 : 4) + 8 + 8 + 32 + 1 + 1 + 16;
  e->dataset_bytes = e->sample_bytes * (double)e->samples;
  if (j->input == JOB_INPUT_SYNTH) {
    /* bytes of one synthetic model .dat by inputs.synth.levels, measured
     * with `coemu synth --n 2 --seed 1 --levels L` (the refinement follows
     * the model's density, so other seeds differ by some 10%) */
    static const double per_model[7] = {0, 1.31e6, 1.02e7, 1.14e7, 6.79e7, 0, 0};
    e->models_bytes = (double)j->n_models * per_model[j->synth_levels];
  }
  e->core_seconds = (double)e->samples * n3 *
                    (JOB_COST_NS_VOXEL + JOB_COST_NS_VOXEL_CHANNEL * j->nf +
                     (j->reconstruction != SAMPLER_CONSTANT && !j->coemunet_compat
                          ? JOB_COST_NS_SUBSAMPLE_LINEAR * j->k * j->k * j->k : 0)) * 1e-9;
}

int job_split_parse(const char *name, int *out) {
  static const char *const names[] = {"train", "validation", "test"};
  for (int i = 0; i < 3; i++)
    if (!strcmp(name, names[i])) return *out = i, 0;
  if (!strcmp(name, "all")) return *out = SPLIT_ALL, 0;
  CE_FAIL("split '%s': expected train, validation, test or all", name);
}
