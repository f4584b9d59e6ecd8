/* cmd_nlte.c - `coemu nlte`: one-zone non-LTE line intensities (RADEX's
 * problem, solver/nlte.h, docs/nlte.md): one model printed as RADEX prints
 * it, or a grid of models (--grid FILE, OpenMP over models) written to CSV. */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/fsutil.h"
#include "pipeline/cmd/commands.h"
#include "pipeline/job/job.h"
#include "solver/lamda.h"
#include "solver/nlte.h"

#define CMD "nlte"

/* Grid columns, the conditions of one model: a partner's density (its id,
 * 1..NLTE_NPARTNER-1, column n_NAME), then the others. */
enum { G_TKIN = NLTE_NPARTNER, G_COLUMN, G_FWHM, G_GEOM, G_TBG, G_NCOL };

/* Per condition (grid column), the option of the command line that gave it
 * ("--t-kin", "--n H2"), "" for none: a condition has one source, so that a
 * value given twice is refused instead of one silently winning. */
#define GIVEN_LEN 32
typedef char given_by[G_NCOL][GIVEN_LEN];

/* "H2=1e4" or "H2=1e4,e=10" into dens[id]; -1 with a message. */
static int parse_n(const char *spec, double *dens, given_by given) {
  char buf[512];
  snprintf(buf, sizeof buf, "%s", spec);
  for (char *save = NULL, *tok = strtok_r(buf, ",", &save); tok; tok = strtok_r(NULL, ",", &save)) {
    char *eq = strchr(tok, '=');
    if (!eq) CE_FAIL("--n '%s': expected PARTNER=DENSITY (e.g. H2=1e4)", tok);
    *eq = 0;
    int id = nlte_partner_id(tok);
    if (id < 0) CE_FAIL("--n: unknown partner '%s' (H2, pH2, oH2, e, H, He, H+)", tok);
    if (given[id][0])
      CE_FAIL("--n %s=%s: the %s density is also given by %s: give it once", tok, eq + 1, tok, given[id]);
    double v;
    if (cli_parse_double(eq + 1, &v) < 0 || !(v >= 0))
      CE_FAIL("--n %s=%s: expected a density >= 0 [cm^-3]", tok, eq + 1);
    dens[id] = v;
    snprintf(given[id], GIVEN_LEN, "--n %s", tok);
  }
  return 0;
}

static int grid_column(const char *name) {
  if (!strcmp(name, "t_kin")) return G_TKIN;
  if (!strcmp(name, "column")) return G_COLUMN;
  if (!strcmp(name, "fwhm")) return G_FWHM;
  if (!strcmp(name, "geometry")) return G_GEOM;
  if (!strcmp(name, "t_bg")) return G_TBG;
  if (!strncmp(name, "n_", 2)) return nlte_partner_id(name + 2);
  return -1;
}

static void trim(char *s) {
  size_t n = strlen(s);
  while (n && (s[n - 1] == '\n' || s[n - 1] == '\r' || s[n - 1] == ' ')) s[--n] = 0;
  size_t k = 0;
  while (s[k] == ' ') k++;
  if (k) memmove(s, s + k, n - k + 1);
}

/* Read a grid CSV: a header of column names, then one model per row;
 * conditions not in the file are those of base. -1 with a message for a bad
 * file; -2 (a usage error) for a column that an option also gives. */
static int read_grid(const char *path, const nlte_conditions *base, given_by given, nlte_conditions **out,
                     int *nout) {
  FILE *f = fopen(path, "r");
  if (!f) CE_FAIL("%s: cannot open the grid file", path);
  char line[4096];
  int cols[64], ncol = 0, lineno = 0, cap = 0, n = 0;
  nlte_conditions *g = NULL;
  while (fgets(line, sizeof line, f)) {
    lineno++;
    trim(line);
    if (!line[0] || line[0] == '#') continue;
    if (ncol == 0) {
      for (char *save = NULL, *t = strtok_r(line, ",", &save); t; t = strtok_r(NULL, ",", &save)) {
        trim(t);
        int c = grid_column(t);
        if (c < 0 || ncol == 64) {
          fclose(f);
          free(g);
          CE_FAIL("%s:%d: unknown grid column '%s' (t_kin, n_H2, n_pH2, n_oH2, n_e, n_H, n_He, n_H+, "
                  "column, fwhm, geometry, t_bg)", path, lineno, t);
        }
        for (int j = 0; j < ncol; j++)
          if (cols[j] == c) {
            fclose(f);
            free(g);
            CE_FAIL("%s:%d: column '%s' appears twice (field %d and %d)", path, lineno, t, j + 1, ncol + 1);
          }
        if (given[c][0]) {
          fclose(f);
          free(g);
          ce_err("%s and %s's column %s both give %s: give one of them (options give what the grid's "
                 "columns do not)", given[c], path, t, c == G_TKIN ? "T_kin" : c == G_COLUMN ? "the column"
                 : c == G_FWHM ? "the line width" : c == G_GEOM ? "the geometry" : c == G_TBG ? "T_bg"
                 : "a density");
          return -2;
        }
        cols[ncol++] = c;
      }
      continue;
    }
    if (n == cap) {
      cap = cap ? 2 * cap : 256;
      nlte_conditions *ng = realloc(g, sizeof *g * (size_t)cap);
      if (!ng) {
        fclose(f);
        free(g);
        CE_FAIL("%s: out of memory at row %d", path, lineno);
      }
      g = ng;
    }
    nlte_conditions c = *base;
    int k = 0;
    for (char *save = NULL, *t = strtok_r(line, ",", &save); t; t = strtok_r(NULL, ",", &save), k++) {
      trim(t);
      double v = 0;
      int bad = k >= ncol;
      if (!bad && cols[k] == G_GEOM) {
        int gm = nlte_geometry_parse(t);
        bad = gm < 0;
        c.geometry = (nlte_geometry)gm;
      } else if (!bad) {
        bad = cli_parse_double(t, &v) < 0;
        if (cols[k] == G_TKIN) c.t_kin = v;
        else if (cols[k] == G_COLUMN) c.column = v;
        else if (cols[k] == G_FWHM) c.fwhm_kms = v;
        else if (cols[k] == G_TBG) c.t_bg = v;
        else c.density[cols[k]] = v;
      }
      if (bad) {
        fclose(f);
        free(g);
        CE_FAIL("%s:%d: field %d '%s': expected a number (geometry: sphere, lvg, slab)", path, lineno,
                k + 1, t);
      }
    }
    if (k != ncol) {
      fclose(f);
      free(g);
      CE_FAIL("%s:%d: %d fields, expected %d as in the header", path, lineno, k, ncol);
    }
    g[n++] = c;
  }
  fclose(f);
  if (ncol == 0 || n == 0) {
    free(g);
    CE_FAIL("%s: no header or no rows", path);
  }
  *out = g;
  *nout = n;
  return 0;
}

static void print_model(const lamda_molecule *mol, const nlte_conditions *c, const nlte_result *r) {
  printf("* Molecule          : %s\n", mol->name);
  printf("* T_kin [K]         : %.6g\n", c->t_kin);
  for (int id = 1; id < NLTE_NPARTNER; id++)
    if (r->density_used[id] > 0)
      printf("* Density of %-6s : %.6g cm^-3\n", nlte_partner_name(id), r->density_used[id]);
  printf("* T_bg [K]          : %.6g\n", c->t_bg);
  printf("* Column [cm^-2]    : %.6g\n", c->column);
  printf("* Line width [km/s] : %.6g (FWHM)\n", c->fwhm_kms);
  printf("* Geometry          : %s\n", nlte_geometry_name(c->geometry));
  printf("* Iterations        : %d (largest relative change of the last Newton step %.2g)\n", r->iterations,
         r->max_rel_change);
  printf("%-11s %9s %14s %12s %10s %11s %11s %11s %11s %12s %12s\n", "LINE", "E_UP(K)", "FREQ(GHz)",
         "WAVEL(um)", "T_EX(K)", "TAU", "T_R(K)", "POP_UP", "POP_LOW", "FLUX(Kkm/s)", "FLUX(erg/cm2/s)");
  for (int l = 0; l < mol->nline; l++) {
    const lamda_line *ln = &mol->lines[l];
    char name[128];
    snprintf(name, sizeof name, "%s -- %s", mol->levels[ln->upper - 1].qnum, mol->levels[ln->lower - 1].qnum);
    printf("%-11s %9.1f %14.7f %12.4f %10.3f %11.4e %11.4e %11.4e %11.4e %12.4e %12.4e\n", name,
           ln->eu_k, ln->freq_ghz, 299792.458 / ln->freq_ghz, r->tex[l], r->tau[l], r->t_r[l],
           r->pop[ln->upper - 1], r->pop[ln->lower - 1], r->flux_kkms[l], r->flux_erg[l]);
  }
}

int cmd_nlte(int argc, char **argv) {
  double t_kin = 0, column = 0, fwhm = 1.0, t_bg = NLTE_T_CMB, tol = 1e-10;
  double nd[NLTE_NPARTNER] = {0};
  const char *nspec = NULL, *geom = "sphere", *grid = NULL, *out = NULL;
  int64_t max_iter = 1000;
  int keep_going = 0;
  cli_opt opts[] = {
      {"t-kin", CLI_DOUBLE, &t_kin, "K", "kinetic temperature, 0.1..1e4 K", 0, 0},
      {"n", CLI_STR, &nspec, "P=N[,P=N]", "partner densities [cm^-3]: H2, pH2, oH2, e, H, He, H+", 0, 0},
      {"n-h2", CLI_DOUBLE, &nd[NLTE_H2], "N", "H2 density [cm^-3] (o/p split thermally if the file has o/p-H2)", 0, 0},
      {"n-ph2", CLI_DOUBLE, &nd[NLTE_PH2], "N", "para-H2 density", 0, 0},
      {"n-oh2", CLI_DOUBLE, &nd[NLTE_OH2], "N", "ortho-H2 density", 0, 0},
      {"n-e", CLI_DOUBLE, &nd[NLTE_E], "N", "electron density", 0, 0},
      {"n-h", CLI_DOUBLE, &nd[NLTE_H], "N", "atomic H density", 0, 0},
      {"n-he", CLI_DOUBLE, &nd[NLTE_HE], "N", "He density", 0, 0},
      {"n-hp", CLI_DOUBLE, &nd[NLTE_HP], "N", "H+ density", 0, 0},
      {"column", CLI_DOUBLE, &column, "N", "column density of the molecule [cm^-2]", 0, 0},
      {"fwhm", CLI_DOUBLE, &fwhm, "KMS", "line width, FWHM [km/s] (default 1)", 0, 0},
      {"geometry", CLI_STR, &geom, "G", "sphere (default), lvg (expanding sphere) or slab", 0, 0},
      {"t-bg", CLI_DOUBLE, &t_bg, "K", "background black body [K] (default 2.725, 0: none)", 0, 0},
      {"tol", CLI_DOUBLE, &tol, "R", "relative tolerance on the populations (default 1e-10)", 0, 0},
      {"max-iter", CLI_INT, &max_iter, "N", "iterations before giving up (default 1000)", 0, 0},
      {"grid", CLI_STR, &grid, "FILE", "CSV of models: header t_kin,n_H2,...,column,fwhm,geometry,t_bg "
       "(any subset; the rest from the options; an option and a column giving the same value: an error)", 0, 0},
      {"keep-going", CLI_FLAG, &keep_going, NULL, "with --grid: a model that fails is reported on stderr "
       "and written with converged = 0 and NaN values, instead of failing the command", 0, 0},
      {"out", CLI_STR, &out, "FILE", "with --grid: the CSV to write (one row per model and line, with all the model's inputs; "
       "not the grid or molecule file)", 0, 0},
      {0}};
  const cli_command spec = {
      CMD, "MOLECULE.dat [options]",
      "One-zone non-LTE statistical equilibrium with escape probabilities (RADEX's\n"
      "problem; docs/nlte.md). Prints, per line, what RADEX prints; with --grid\n"
      "solves many models (OpenMP threads) and writes them to --out as CSV.\n"
      "MOLECULE.dat: a LAMDA file, or builtin:co.dat (LAMDA's CO file, built in).",
      opts, 1, 1};
  int npos;
  char **pos;
  cli_status st = cli_run_parse(&spec, argc, argv, &npos, &pos);
  if (st != CLI_OK) return cli_exit(st);
  const char *molfile = pos[0];
  free(pos);
  nlte_conditions base;
  nlte_conditions_default(&base);
  base.t_kin = t_kin;
  base.column = column;
  base.fwhm_kms = fwhm;
  base.t_bg = t_bg;
  int gm = nlte_geometry_parse(geom);
  if (gm < 0) return cli_usage_fail(CMD, "--geometry %s: expected sphere, lvg or slab", geom);
  base.geometry = (nlte_geometry)gm;
  given_by given = {{0}};
  for (const cli_opt *op = opts; op->name; op++) {
    if (!op->seen) continue;
    int c = op->dest == &t_kin ? G_TKIN : op->dest == &column ? G_COLUMN : op->dest == &fwhm ? G_FWHM
            : op->dest == (void *)&geom ? G_GEOM : op->dest == &t_bg ? G_TBG : -1;
    for (int id = 1; id < NLTE_NPARTNER; id++)
      if (op->dest == &nd[id]) c = id;
    if (c >= 0) snprintf(given[c], GIVEN_LEN, "--%s", op->name);
  }
  /* A negative density is named as typed, before the check for no density
   * at all (which it would otherwise trip, naming neither). */
  for (int id = 1; id < NLTE_NPARTNER; id++)
    if (given[id][0] && !(nd[id] >= 0))
      return cli_usage_fail(CMD, "%s %.10g: expected a density >= 0 [cm^-3]", given[id], nd[id]);
  for (int id = 1; id < NLTE_NPARTNER; id++) base.density[id] = nd[id];
  if (nspec && parse_n(nspec, base.density, given) < 0) return cli_usage_fail(CMD, "%s", ce_err_msg());
  if (!(tol > 0 && tol < 1)) return cli_usage_fail(CMD, "--tol %g: expected 0 < tol < 1", tol);
  if (max_iter < 1 || max_iter > 100000)
    return cli_usage_fail(CMD, "--max-iter %lld: expected 1..100000", (long long)max_iter);
  if (grid && !out) return cli_usage_fail(CMD, "--grid needs --out FILE");
  if (!grid && out) return cli_usage_fail(CMD, "--out goes with --grid");
  /* By what the names point to, not how they are spelt: the CSV replaces
   * --out only when complete, but then an input would be gone. */
  int out_is_grid = grid && fs_same_file(out, grid);
  if (out_is_grid || (grid && fs_same_file(out, molfile)))
    return cli_usage_fail(CMD, "--out %s is the %s %s: writing would replace it; give another file", out,
                          out_is_grid ? "grid file" : "molecule file", out_is_grid ? grid : molfile);
  if (!grid && !(given[G_TKIN][0] && given[G_COLUMN][0]))
    return cli_usage_fail(CMD, "expected --t-kin and --column (or --grid FILE)");
  int any_density = 0;
  for (int id = 1; id < NLTE_NPARTNER; id++) any_density |= base.density[id] > 0;
  if (!grid && !any_density) /* (a grid's rows may give them) */
    return cli_usage_fail(CMD, "expected a collision-partner density: --n-h2 N, --n-ph2 N, ... "
                               "or --n P=N[,P=N] [cm^-3]");
  nlte_options o = {tol, (int)max_iter};

  lamda_molecule mol;
  if (job_lamda_read_file(molfile, &mol) < 0) return cli_fail(CMD);
  nlte_model M;
  if (nlte_model_init(&M, &mol) < 0) {
    lamda_free(&mol);
    return cli_fail(CMD);
  }
  int rc = 0;
  if (!grid) {
    nlte_result r;
    if (nlte_result_init(&r, &M) < 0 || nlte_solve(&M, &base, &o, &r) < 0) rc = cli_fail(CMD);
    else print_model(&mol, &base, &r);
    nlte_result_free(&r);
  } else {
    nlte_conditions *g = NULL;
    int ng = 0;
    int rg = read_grid(grid, &base, given, &g, &ng);
    if (rg < 0) {
      rc = rg == -2 ? cli_usage_fail(CMD, "%s", ce_err_msg()) : cli_fail(CMD);
    } else {
      size_t L = (size_t)mol.nline, nl = (size_t)mol.nlev;
      /* per model: pops, then tex, tau, t_r, fkkms, ferg per line, then iterations */
      size_t stride = nl + 5 * L + 1;
      double *res = ce_malloc_array((size_t)ng, stride * sizeof(double), "nlte grid results");
      int failed = -1;
      char errmsg[1024] = "";
      if (!res) rc = cli_fail(CMD);
#pragma omp parallel if (res)
      {
        nlte_result r;
        int ok = nlte_result_init(&r, &M) == 0;
#pragma omp for schedule(dynamic, 4)
        for (int i = 0; i < ng; i++) {
          if (!ok || !res) continue;
          double *q = res + (size_t)i * stride;
          if (nlte_solve(&M, &g[i], &o, &r) < 0) {
            if (keep_going) {
#pragma omp critical(nlte_grid_err)
              fprintf(stderr, "coemu nlte: model %d (row %d of the grid) failed: %s\n", i, i + 1,
                      ce_err_msg());
              for (size_t k = 0; k < stride - 1; k++) q[k] = NAN;
              q[stride - 1] = -1;
              continue;
            }
#pragma omp critical(nlte_grid_err)
            if (failed < 0 || i < failed) {
              failed = i;
              snprintf(errmsg, sizeof errmsg, "%s", ce_err_msg());
            }
            continue;
          }
          memcpy(q, r.pop, nl * sizeof(double));
          memcpy(q + nl, r.tex, L * sizeof(double));
          memcpy(q + nl + L, r.tau, L * sizeof(double));
          memcpy(q + nl + 2 * L, r.t_r, L * sizeof(double));
          memcpy(q + nl + 3 * L, r.flux_kkms, L * sizeof(double));
          memcpy(q + nl + 4 * L, r.flux_erg, L * sizeof(double));
          q[stride - 1] = r.iterations;
        }
        if (!ok) {
#pragma omp critical(nlte_grid_err)
          if (failed < 0) {
            failed = 0;
            snprintf(errmsg, sizeof errmsg, "%s", ce_err_msg());
          }
        }
        nlte_result_free(&r);
      }
      if (res && failed >= 0) {
        ce_err("%s: model %d (row %d of the grid): %s", grid, failed, failed + 1, errmsg);
        rc = cli_fail(CMD);
      } else if (res) {
        char tmp[2048];
        FILE *f;
        if (fs_open_tmp(out, tmp, sizeof tmp, &f) < 0) {
          rc = cli_fail(CMD);
        } else {
          /* Every row echoes all of its model's inputs (the grid's columns
           * and the options' values alike, densities as given, before any
           * o/p-H2 split), named as the grid's columns, so that a row says
           * which model it is without the grid file. */
          int okw = fputs("model,line,upper,lower,t_kin,column,geometry,fwhm,t_bg", f) >= 0;
          for (int id = 1; okw && id < NLTE_NPARTNER; id++)
            okw = fprintf(f, ",n_%s", nlte_partner_name(id)) > 0;
          okw = okw && fputs(",E_up,freq_GHz,T_ex,tau,T_R,pop_up,pop_low,flux_Kkms,flux_erg,iterations,"
                             "converged\n", f) >= 0;
          for (int i = 0; okw && i < ng; i++) {
            const double *q = res + (size_t)i * stride;
            char inputs[512];
            int k = snprintf(inputs, sizeof inputs, "%.10g,%.10g,%s,%.10g,%.10g", g[i].t_kin, g[i].column,
                             nlte_geometry_name(g[i].geometry), g[i].fwhm_kms, g[i].t_bg);
            for (int id = 1; id < NLTE_NPARTNER; id++)
              k += snprintf(inputs + k, sizeof inputs - (size_t)k, ",%.10g", g[i].density[id]);
            for (size_t l = 0; okw && l < L; l++) {
              const lamda_line *ln = &mol.lines[l];
              okw = fprintf(f, "%d,%d,%d,%d,%s,%.10g,%.10g,%.12g,%.12g,%.12g,%.12g,%.12g,"
                               "%.12g,%.12g,%d,%d\n",
                            i, ln->index, ln->upper, ln->lower, inputs, ln->eu_k, ln->freq_ghz, q[nl + l],
                            q[nl + L + l], q[nl + 2 * L + l], q[ln->upper - 1], q[ln->lower - 1],
                            q[nl + 3 * L + l], q[nl + 4 * L + l], (int)q[stride - 1],
                            q[stride - 1] >= 0) > 0;
            }
          }
          if (fs_commit_tmp(f, tmp, out, okw) < 0) rc = cli_fail(CMD);
          else fprintf(stderr, "nlte: %d models, %d lines each -> %s\n", ng, mol.nline, out);
        }
      }
      free(res);
      free(g);
    }
  }
  nlte_model_free(&M);
  lamda_free(&mol);
  return rc;
}
