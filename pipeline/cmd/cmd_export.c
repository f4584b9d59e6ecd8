/* cmd_export.c - `coemu export SOURCE --format F`: a checkpoint's weights as
 * safetensors for PyTorch (and a safetensors file back into a checkpoint),
 * and a dataset sample as a FITS cube with its WCS (docs/export.md). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/fsutil.h"
#include "pipeline/cmd/commands.h"
#include "pipeline/dataset/export_fits.h"
#include "stats/statsfile.h"
#include "trainer/checkpoint.h"
#include "trainer/safetensors.h"

/* SOURCE with its extension replaced by ext (into buf). */
static const char *swap_ext(const char *src, const char *ext, char *buf, size_t cap) {
  const char *slash = strrchr(src, '/'), *dot = strrchr(src, '.');
  size_t keep = dot && (!slash || dot > slash) ? (size_t)(dot - src) : strlen(src);
  snprintf(buf, cap, "%.*s%s", (int)keep, src, ext);
  return buf;
}

/* checkpoint -> safetensors, with the architecture, the training counters
 * and (from a dataset's /stats) the normalisation in the metadata. */
static int to_safetensors(const char *ckpt, const char *out, const char *dataset) {
  coemunet_config cfg;
  train_state st;
  coemunet m;
  CE_TRY(checkpoint_read_config(ckpt, &cfg, &st));
  CE_TRY(coemunet_build(&m, &cfg, 0));
  safetensors_meta md = {0};
  int rc = checkpoint_load(ckpt, &m, NULL, NULL);
  const char *slash = strrchr(ckpt, '/');
  if (rc == 0)
    rc = safetensors_meta_set(&md, "format", "coemu COEmuNet weights (PyTorch state_dict names)") |
         safetensors_meta_set(&md, "coemu_version", "%s", COEMU_VERSION) |
         safetensors_meta_set(&md, "source", "%s", slash ? slash + 1 : ckpt) |
         safetensors_meta_set(&md, "seed", "%llu", (unsigned long long)st.seed) |
         safetensors_meta_set(&md, "step", "%llu", (unsigned long long)st.step) |
         safetensors_meta_set(&md, "epoch", "%u", st.epoch) |
         safetensors_meta_set(&md, "input", "(N, 3, %d, %d, %d): normalised v_z, T, n_CO",
                              cfg.grid, cfg.grid, cfg.grid) |
         safetensors_meta_set(&md, "output", "(N, 1, %d, %d, %d): normalised intensity, axes "
                              "(channel, x, y)%s", cfg.nfreq, cfg.grid, cfg.grid,
                              cfg.nfreq == 1 ? "; the 2-D decoder's module gives (N, 1, G, G)" : "");
  if (rc == 0 && dataset) {
    char h5[4200];
    stats_norm n;
    snprintf(h5, sizeof h5, "%s/dataset.h5", dataset);
    rc = stats_file_read_norm(h5, &n);
    if (rc == 0)
      rc = safetensors_meta_set(&md, "norm.source", "%s /stats", h5) |
           safetensors_meta_set(&md, "norm.vz_mean", "%.17g", n.vz_mean) |
           safetensors_meta_set(&md, "norm.vz_std", "%.17g", n.vz_std) |
           safetensors_meta_set(&md, "norm.lnT_min", "%.17g", n.lnT_min) |
           safetensors_meta_set(&md, "norm.lnT_scale", "%.17g", n.lnT_scale) |
           safetensors_meta_set(&md, "norm.lnn_min", "%.17g", n.lnn_min) |
           safetensors_meta_set(&md, "norm.lnn_scale", "%.17g", n.lnn_scale) |
           safetensors_meta_set(&md, "norm.i_mode", "%s", n.i_mode == STATS_I_MEDIAN ? "median" : "minmax") |
           safetensors_meta_set(&md, "norm.lnI_clip", "%.17g", n.lnI_clip) |
           safetensors_meta_set(&md, "norm.lnI_min", "%.17g", n.lnI_min) |
           safetensors_meta_set(&md, "norm.lnI_scale", "%.17g", n.lnI_scale);
  }
  if (rc == 0) rc = safetensors_save(out, &m, &md, (int64_t)st.step);
  coemunet_free(&m);
  return rc;
}

static int meta_u64(const safetensors_meta *md, const char *key, uint64_t *v) {
  const char *s = safetensors_meta_get(md, key);
  char *end;
  if (!s) return 0;
  unsigned long long x = strtoull(s, &end, 10);
  if (end == s || *end) return ce_err("metadata '%s' = '%s': expected a non-negative integer", key, s);
  *v = x;
  return 0;
}

/* safetensors -> checkpoint: the weights and buffers; the counters from the
 * metadata where present, a fresh optimiser (its moments zero). */
static int to_checkpoint(const char *src, const char *out) {
  safetensors_meta md;
  coemunet_config cfg;
  coemunet m;
  CE_TRY(safetensors_read_meta(src, &md));
  CE_TRY(safetensors_meta_config(&md, src, &cfg));
  CE_TRY(coemunet_build(&m, &cfg, 0));
  uint64_t seed = 0, step = 0, epoch = 0;
  int rc = safetensors_load(src, &m);
  if (rc == 0 && (meta_u64(&md, "seed", &seed) < 0 || meta_u64(&md, "step", &step) < 0 ||
                  meta_u64(&md, "epoch", &epoch) < 0))
    rc = ce_err_prefix("%s: ", src);
  adam o;
  adam_config ac = adam_default();
  if (rc == 0 && (rc = adam_init(&o, &m.net, &ac)) == 0) {
    train_state st = {seed, step, (uint32_t)epoch, {ac.lr, 1.0, 1}};
    rc = checkpoint_save(out, &m, &o, &st);
    adam_free(&o);
  }
  coemunet_free(&m);
  return rc;
}

int cmd_export(int argc, char **argv) {
  const char *format = NULL, *out = NULL, *dataset = NULL;
  int64_t sample = -1;
  double distance = 0, edge = 0;
  int inputs = 0, quiet = 0;
  cli_opt opts[] = {
      {"format", CLI_STR, &format, "F",
       "safetensors (SOURCE a checkpoint), ckpt (SOURCE a .safetensors file) or fits (SOURCE a "
       "dataset folder)", 1, 0},
      {"out", CLI_STR, &out, "FILE",
       "output file, replaced if it exists (default: SOURCE with the extension .safetensors / "
       ".ckpt; fits: sample-NNNNNN.fits in the current folder, N in six digits; a default name "
       "that exists is refused)", 0, 0},
      {"dataset", CLI_STR, &dataset, "DIR",
       "safetensors: add the normalisation of DIR/dataset.h5's /stats to the metadata", 0, 0},
      {"sample", CLI_INT, &sample, "N", "fits, and required there: the sample (0-based index into dataset.h5)", 0, 0},
      {"distance", CLI_DOUBLE, &distance, "PC",
       "fits: distance in parsec: sky axes RA---SIN/DEC--SIN in degrees (offsets from 0, 0) "
       "instead of linear au offsets", 0, 0},
      {"edge", CLI_DOUBLE, &edge, "M",
       "fits: cube edge in metres (default: the dataset's, /geometry edge; needed for compat datasets, and old ones without /geometry whose edge was auto)", 0, 0},
      {"inputs", CLI_FLAG, &inputs, NULL, "fits: also write the input cubes (VZ, T, NCO extensions)", 0, 0},
      {"quiet", CLI_FLAG, &quiet, NULL, "print nothing on success", 0, 0},
      {0}};
  const cli_command spec = {
      "export", "SOURCE --format safetensors|ckpt|fits [options]",
      "Convert for other tools. safetensors: a checkpoint's weights and BatchNorm buffers under "
      "the reference COEmuNet's PyTorch state_dict names, with the architecture (and, with "
      "--dataset, the normalisation) in the metadata: load with "
      "model.load_state_dict(safetensors.torch.load_file(FILE)). ckpt: the reverse, a "
      "safetensors file (names, shapes and dtypes checked) into a checkpoint for coemu eval "
      "or train. fits: a dataset sample's target cube (I_nu, axes x, y, radio velocity) as "
      "FITS with its WCS (and with --inputs its input cubes), float32 values as stored.",
      opts, 1, 1};
  int npos = 0;
  char **pos = NULL;
  cli_status r = cli_run_parse(&spec, argc, argv, &npos, &pos);
  if (r != CLI_OK) return cli_exit(r);
  const char *src = pos[0];
  int fmt = !strcmp(format, "safetensors") ? 0 : !strcmp(format, "ckpt") ? 1 : !strcmp(format, "fits") ? 2 : -1;
  const char *bad = NULL;
  if (fmt < 0) bad = "--format must be safetensors, ckpt or fits";
  else if (fmt != 2 && (sample >= 0 || distance != 0 || edge != 0 || inputs))
    bad = "--sample, --distance, --edge and --inputs go with --format fits";
  else if (fmt != 0 && dataset) bad = "--dataset goes with --format safetensors";
  else if (fmt == 2 && sample < 0) bad = "--format fits needs --sample N (N >= 0)";
  else if (fmt == 2 && (distance < 0 || edge < 0)) bad = "--distance and --edge must be positive";
  if (bad) {
    free(pos);
    return cli_usage_fail("export", "%s", bad);
  }
  char outbuf[4200];
  int default_out = !out;
  if (!out && fmt == 0) out = swap_ext(src, ".safetensors", outbuf, sizeof outbuf);
  if (!out && fmt == 1) out = swap_ext(src, ".ckpt", outbuf, sizeof outbuf);
  if (!out && fmt == 2) {
    snprintf(outbuf, sizeof outbuf, "sample-%06lld.fits", (long long)sample);
    out = outbuf;
  }
  if (!strcmp(out, src) || fs_same_file(out, src) == 1) { /* ./a.ckpt, a link, a hard link */
    free(pos);
    return cli_usage_fail("export", "--out %s would overwrite SOURCE", out);
  }
  /* A name export made up itself never replaces a file: the default of
   * `--format ckpt` is the checkpoint the safetensors file was exported
   * from, whose optimiser state an import (Adam's moments zero) would lose.
   * Naming it with --out is the user's own choice. */
  struct stat sb;
  if (default_out && stat(out, &sb) == 0) {
    free(pos);
    return cli_usage_fail("export", "%s exists (the default --out for --format %s): give --out "
                          "FILE, or --out %s to replace it", out, format, out);
  }
  int rc = 0;
  if (fmt != 2) rc = nn_backend_init(&nn_backend_cpu, 0); /* the net lives in backend memory */
  if (rc == 0 && fmt == 0) rc = to_safetensors(src, out, dataset);
  else if (rc == 0 && fmt == 1) rc = to_checkpoint(src, out);
  else if (rc == 0) {
    export_fits_opts fo = {.sample = sample, .distance_pc = distance, .edge_m = edge, .inputs = inputs};
    rc = export_fits_sample(src, &fo, out);
  }
  if (fmt != 2) nn_backend_finish(&nn_backend_cpu);
  if (rc == 0 && !quiet) printf("wrote %s\n", out);
  free(pos);
  return rc < 0 ? cli_fail("export") : 0;
}
