/* job.h - job files: what `coemu generate` makes, read from YAML and checked
 * against the schema schemas/job.yaml.
 *
 * The schema is data: it is embedded in the binary at build time
 * (job_schema_text) and drives the validator, so the installed binary needs no
 * source tree. Validation rejects unknown keys, wrong types and out-of-range
 * values with "FILE:LINE:COL: key.path: expected ..., got ..." and fills in
 * every default, so the rest of coemu reads a complete job.
 *
 * A job defines a fixed global order of samples: sample i is model i / D,
 * direction i % D (D directions per model). Everything random about a sample
 * is a function of (job seed, model, direction), see rng.h.
 */
#ifndef COEMU_JOB_H
#define COEMU_JOB_H

#include <stdint.h>
#include <stdio.h>

#include "solver/lamda.h"

typedef enum { JOB_INPUT_AMRVAC, JOB_INPUT_SYNTH } job_input_kind;
typedef enum { JOB_CH_COEMUNET, JOB_CH_GRID, JOB_CH_LIST } job_channel_mode;
typedef enum { SPLIT_TRAIN = 0, SPLIT_VALIDATION = 1, SPLIT_TEST = 2 } job_split;
#define SPLIT_ALL (-1)

/* A split by name: "train", "validation", "test" (job_split values) or "all"
 * (SPLIT_ALL) into *out; -1 with a message otherwise. */
int job_split_parse(const char *name, int *out);

typedef enum { JOB_LINE_LTE = 0, JOB_LINE_LVG = 1 } job_line_mode;

/* line.lvg: the per-cell LVG solve (solver/nlte_lvg.h's options). */
typedef struct {
  int directions;        /* 3 or 2 m^2 */
  char escape[16];       /* sobolev | radex */
  double t_bg, tol;      /* K; relative */
  int max_iter;
  double vturb;          /* m/s */
} job_lvg;

/* "lte" / "lvg" */
const char *job_line_mode_name(int mode);

/* The line mode and its parameters as one line of text (the dataset's
 * provenance): "lte" or "lvg directions=18 escape=sobolev ...". */
void job_line_describe(const job_lvg *l, int mode, double abundance, char *buf, size_t len);

typedef struct {
  char *path;      /* job file as given ("<embedded>" etc. for text jobs) */
  char *dir;       /* folder relative paths in the job are resolved against */
  char *text;      /* the job text, verbatim (stored in the provenance) */
  size_t text_len;
  uint32_t fingerprint; /* CRC-32 of the text (continued over a tag when the
                           reconstruction resolves to linear): a dataset belongs to one job */
  char *name;

  /* inputs */
  job_input_kind input;
  char *amrvac_glob, *amrvac_units; /* resolved against dir */
  int64_t synth_count, synth_seed;
  int synth_levels;
  int skip_bad_models;   /* inputs.on_bad_model == skip */
  int64_t n_models;
  char **model_names;    /* AMRVAC: the sorted glob matches; synth: "synth-<seed>-<index>" */

  /* sampling */
  int64_t directions;
  char sampler[16];      /* haar | faceon | lowdisc | coemunet */
  int n;
  double edge;           /* metres; 0 = auto (the ball radius) */
  int k;
  uint64_t seed;
  int coemunet_compat, fill_background;
  int reconstruction;    /* sampler_recon (rotate/sampler.h); constant with coemunet_compat
                            and line.mode lvg */
  double background_n, background_T;

  /* line */
  char *lamda;           /* resolved against dir, or "builtin:co.dat" */
  /* where the input keys are in the job file (line 0: filled in by default),
   * for messages about the files they name */
  int lamda_line, lamda_col, glob_line, glob_col, units_line, units_col;
  int transition_line, transition_col;
  int mass_line, mass_col; /* solver.mass's position (0: not given) */
  int transition;
  job_channel_mode channel_mode;
  int nf;                /* number of channels */
  double *velocities;    /* [nf] channel velocities [m/s], nu = nu0 (1 - v/c): coemunet
                            +900..-900 (frequency rising, the paper's order), grid vmin..vmax
                            (frequency falling), list as given */
  int line_mode;         /* JOB_LINE_LTE | JOB_LINE_LVG (line.mode) */
  double abundance;      /* X_mol = n_mol/n_H2; 0: the sidecar's co_abundance (CO) */
  job_lvg lvg;           /* line.lvg (used when line_mode is JOB_LINE_LVG) */

  /* solver */
  double vturb, background, mass;
  int take_abs, corrected_taylor;
  int solver_device;     /* solver.device: an lte_backend (LTE_BACKEND_CPU, LTE_BACKEND_CUDA) */
  int solver_precision;  /* solver.precision: an lte_precision (LTE_PRECISION_F64, _F32) */

  /* output */
  char *out_dir;
  int64_t samples_per_shard;
  int inputs_f64, targets_f64, gzip, store_inputs;

  /* splits */
  double split_fraction[3];
  uint64_t split_seed;

  /* statistics */
  int stats_compute, stats_drop_outliers;
  char stats_split[16];  /* train | validation | test | all */
  double stats_lnI_clip; /* statistics.ln_intensity_clip */

  /* stream (optional) */
  int has_stream;
  char *stream_endpoint;
  int64_t stream_credits, stream_ranks, stream_batch, stream_epochs;
  char stream_split[16];
  int stream_generate;     /* stream.mode generate: coemu serve --generate streams this job */
  int stream_fresh_views;  /* stream.fresh_views */
  int64_t stream_model_cache_mb;
  /* stream.stats.pilot (mode generate): samples of the pilot pass (0: none)
   * and the file its /stats are written to ("": none) */
  int64_t stream_pilot_samples;
  char *stream_pilot_out;
  /* CURVE of the live server (stream.curve_secret, stream.curve_authorized,
   * resolved against the job's folder; "" = no CURVE) and where they are in
   * the job file (line 0: not given) */
  char *stream_curve_secret, *stream_curve_authorized;
  int curve_secret_line, curve_secret_col, curve_auth_line, curve_auth_col;
} job;

/* The schema text (schemas/job.yaml), embedded at build time. */
extern const char job_schema_text[];

/* Read, validate and resolve a job file (the AMRVAC glob is expanded here;
 * no match is an error). On failure *j is left empty and an error message is
 * set. */
int job_load(const char *path, job *j);

/* The same from text; `name` is used in messages, `dir` resolves relative
 * paths. */
int job_parse(const char *name, const char *text, size_t len, const char *dir, job *j);

void job_free(job *j);

/* Samples in the job: n_models * directions. */
int64_t job_samples(const job *j);

/* The most samples (models x directions) a job may ask for: 2^32, checked
 * when the job is read, before anything is allocated for it. */
#define JOB_MAX_SAMPLES ((int64_t)1 << 32)

/* The observed frequencies [Hz] of the channels for a line of rest frequency
 * nu0 [Hz], into out[nf]. coemunet mode reproduces the reference grid bit for
 * bit (docs/physics.md, "Frequency grids"; its values are nu0 (1 - v/c) of
 * j->velocities to rounding); grid and list use nu = nu0 * (1 - v/c), v > 0
 * away from the observer (redshift). */
void job_frequencies(const job *j, double nu0, double *out);

/* The split of every model (job_split values) into out[n_models]: a seeded
 * permutation of the models, the first round(train*M) to training, the next
 * round(validation*M) to validation, the rest to test. */
int job_model_splits(const job *j, uint8_t *out);

/* Samples of the training split: training models x directions; -1 with a
 * message when out of memory. */
int64_t job_train_samples(const job *j);

/* The job file's statistics.split (the normalisation split: its statistics
 * are a dataset's /stats) and statistics.ln_intensity_clip, without
 * resolving the job's inputs (a dataset's DIR/job.yaml names paths relative
 * to where it was run). */
typedef struct {
  char split[16];
  double lnI_clip;
} job_stats_settings;
int job_stats_settings_read(const char *path, job_stats_settings *out);

/* The LAMDA file `line.lamda: builtin:co.dat` names: LAMDA's CO file
 * (tests/data/lamda/co.dat, origin in tests/data/lamda/README.md), embedded
 * at build time so the default job runs from any folder. */
#define JOB_LAMDA_BUILTIN_PREFIX "builtin:"
extern const char job_lamda_co_text[];

/* Read the job's LAMDA file (or the built-in one) into m. A failure names
 * the job file, the line and column of line.lamda, and the LAMDA problem. */
int job_lamda_read(const job *j, lamda_molecule *m);

/* A LAMDA file by name, `builtin:co.dat` included (what line.lamda
 * accepts; coemu solve --lamda and coemu nlte take the same names). */
int job_lamda_read_file(const char *file, lamda_molecule *m);

/* line.mode lvg's needs of the LAMDA file: collision rates with H2 (H2, pH2
 * or oH2), and line.abundance for a molecule other than CO; -1 with a
 * message at line.lamda's FILE:LINE:COL otherwise (0 for line.mode lte).
 * The producer and --check (job_check_inputs) call it. */
int job_check_line_mode(const job *j, const lamda_molecule *mol);

/* What --check (and generate, before it creates anything) checks of the
 * files a job names: the LAMDA file parses and has line.transition; every
 * AMRVAC file's header and tree read, and its units sidecar (inputs.amrvac.
 * units, or the lookup beside it) parses. Messages name the job file and the
 * key's line:column. Synthetic inputs have no files to check. */
int job_check_inputs(const job *j);

/* What the checks learn of a line.mode lvg job's models: the cells whose
 * populations the run solves, the range of their T_kin, and the models the
 * run would skip (inputs.on_bad_model: skip) because the LVG solve refuses
 * one of their cells (nlte_lvg_cells_check: T_kin outside 0.1 .. 1e4 K,
 * n_H2 <= 0, ...) or the model cannot be read. */
typedef struct {
  int64_t models, cells;   /* models read, the cells of those not skipped */
  double t_min, t_max;     /* T_kin over those cells [K] */
  int64_t models_skipped;
  char first_skipped[1600]; /* why the first skipped model is */
} job_lvg_report;

/* The same with the AMRVAC files shared out: part p of `parts` checks models
 * p, p + parts, ... (the LAMDA file and a common sidecar in every part).
 * With line.mode lvg every model is also read in full and its cells put
 * through the LVG solve's input checks: with inputs.on_bad_model stop, a
 * refused cell is an error naming the model, the cell, its value and how
 * many cells are refused, so the run stops before it makes anything rather
 * than at that model; with skip the run does not read them here (lvg ==
 * NULL) and --check counts the models it will skip in *lvg. Reading every
 * model costs what the run's own reads do (docs/nlte.md, "Jobs"); a
 * progress line goes to stderr when it takes seconds. */
int job_check_inputs_part(const job *j, int part, int parts, job_lvg_report *lvg);

/* A job's size before it runs: samples, shards, bytes on disk (dataset.h5
 * and the shards; synthetic models add models_bytes), and the time on one
 * rank, from the measured cost model below. */
typedef struct {
  int64_t samples, shards;
  double sample_bytes, dataset_bytes, models_bytes;
  double core_seconds;   /* time on one rank, all samples (cost model below) */
} job_estimate;
void job_estimate_of(const job *j, job_estimate *e);

/* The cost of one sample on one rank (sampling, solving, writing) as a
 * function of the cube side n and the channel count nf:
 * (JOB_COST_NS_VOXEL + nf JOB_COST_NS_VOXEL_CHANNEL) n^3 ns. From the demo
 * job on one rank on a quiet machine, docs/benchmarks.md "End to end: coemu
 * generate": 40.7 samples/s = 24.6 ms at n = 64, nf = 7, of which solving
 * ~13 ms (proportional to nf: 7.1 ns per voxel and channel) and sampling,
 * writing and overhead ~11.5 ms (44 ns per voxel); 7 against 21 channels
 * (docs/benchmarks.md, "generate --check: the cost model") confirm the
 * channel term. Deeper AMR trees and larger k cost more. */
#define JOB_COST_NS_VOXEL 44.0
#define JOB_COST_NS_VOXEL_CHANNEL 7.1
/* The most channels the dataset statistics (/stats, coemu stats) take: one
 * field per channel besides v_z, ln T, ln n and ln I (dataset_stats.c). */
#define JOB_STATS_MAX_CHANNELS 64
/* sampling.reconstruction linear on top, per sub-sample (k^3 per voxel):
 * `coemu bench sample` and `bench isotropy`, linear minus constant, ~19 ms
 * per 64^3 cube at k = 2 (docs/benchmarks.md, "Reconstructions") */
#define JOB_COST_NS_SUBSAMPLE_LINEAR 9.0
/* line.mode lvg: the populations of one model cell, once per model on each
 * rank that samples the model: `coemu bench lvg --max-threads 1`, 39-43 us
 * of CPU a cell (docs/benchmarks.md, "3-D LVG populations") */
#define JOB_COST_NS_LVG_CELL 41000.0

/* docs/jobs.md's key table, generated from the schema. */
int job_schema_markdown(FILE *out);

#endif
