/* test_amrvac.c - the AMRVAC reader on real snapshots (geometry, values,
 * ghost layers, the analytic t=0 wind) and on hostile variants of them
 * (truncated at many lengths, wrong versions, bad offsets and counts); the
 * units sidecar parser.
 *
 * Tolerances: values read from files are compared exactly or against
 * closed forms in double (1e-15..1e-12: a few roundings of unit products,
 * 1e-10: the 11 digits the README gives); no BLAS or thread-order sums. */
#include <math.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "rotate/amrvac.h"
#include "check.h"
#include "rotate/units.h"

static const char *data_dir;

static void path_of(char *out, size_t n, const char *name) {
  snprintf(out, n, "%s/amrvac/%s", data_dir, name);
}

static unsigned char *slurp(const char *name, size_t *len) {
  char p[1024];
  path_of(p, sizeof p, name);
  FILE *f = fopen(p, "rb");
  if (!f) return NULL;
  fseek(f, 0, SEEK_END);
  *len = (size_t)ftell(f);
  fseek(f, 0, SEEK_SET);
  unsigned char *b = malloc(*len);
  if (fread(b, 1, *len, f) != *len) {
    free(b);
    b = NULL;
  }
  fclose(f);
  return b;
}

/* Open bytes as a snapshot through fmemopen. */
static int open_bytes(const unsigned char *b, size_t len, amrvac_snapshot *s, int read_blocks) {
  static unsigned char empty[1];
  FILE *f = fmemopen(len ? (void *)b : empty, len ? len : 1, "rb");
  if (!f) return ce_err("fmemopen failed");
  if (!len) { /* fmemopen cannot hold 0 bytes: read one byte off first */
    fclose(f);
    return ce_err("byte 0: version: the file ends (0 bytes)");
  }
  int rc = amrvac_open_stream(f, "mem.dat", s);
  if (rc == 0 && read_blocks) rc = amrvac_read_blocks(s);
  fclose(f);
  s->stream = NULL;
  return rc;
}

static void levels_count(const amrvac_snapshot *s, int *count) {
  for (int L = 0; L <= 8; L++) count[L] = 0;
  for (int i = 0; i < s->h.nleafs; i++)
    if (s->leaves[i].id.level <= 8) count[s->leaves[i].id.level]++;
}

static void test_headers(void) {
  char p[1024];
  amrvac_snapshot s;
  int c[9];
  path_of(p, sizeof p, "agbwind3d_0000.dat");
  CHECK_OK(amrvac_open(p, &s));
  CHECK(s.h.version == 5 && s.h.ndim == 3 && s.h.ndir == 3 && s.h.nw == 5);
  CHECK(s.h.nleafs == 120 && s.h.nparents == 8 && s.h.levmax == 2 && s.h.offset_tree == 288);
  CHECK(!strcmp(s.h.w_names[0], "rho") && !strcmp(s.h.w_names[4], "e"));
  CHECK(amrvac_var_index(&s.h, "m3") == 3 && amrvac_var_index(&s.h, "m4") == -1);
  CHECK(!strcmp(s.h.physics_type, "hd") && s.h.n_params == 1);
  CHECK_CLOSE(s.h.params[0], 5.0 / 3.0, 1e-14, 0);
  CHECK(s.h.xmin[0] == -16 && s.h.xmax[2] == 16 && s.h.domain_nx[1] == 32 && s.h.block_nx[2] == 8);
  levels_count(&s, c);
  CHECK(c[1] == 56 && c[2] == 64);
  amrvac_free(&s);

  path_of(p, sizeof p, "bw3d_amr_0000.dat");
  CHECK_OK(amrvac_open(p, &s));
  CHECK(s.h.nleafs == 40 && s.h.nparents == 4 && s.h.domain_nx[0] == 24);
  levels_count(&s, c);
  CHECK(c[1] == 8 && c[2] == 32);
  double lo[3], hi[3], vol = 0;
  for (int i = 0; i < s.h.nleafs; i++) {
    amrvac_leaf_bounds(&s.h, &s.leaves[i].id, lo, hi);
    vol += (hi[0] - lo[0]) * (hi[1] - lo[1]) * (hi[2] - lo[2]);
    CHECK(lo[0] >= 0 && hi[0] <= 3 && lo[1] >= 0 && hi[1] <= 2 && lo[2] >= 0 && hi[2] <= 2);
  }
  CHECK_CLOSE(vol, 12.0, 1e-14, 0);
  amrvac_free(&s);

  path_of(p, sizeof p, "bw3d_amr_ghost_0000.dat");
  CHECK_OK(amrvac_open(p, &s));
  int with_ghost = 0;
  for (int i = 0; i < s.h.nleafs; i++) {
    int g = 0;
    for (int d = 0; d < 3; d++) g += s.leaves[i].ghost_lo[d] + s.leaves[i].ghost_hi[d];
    with_ghost += g > 0;
    /* ghosts only on the faces of the domain */
    amrvac_leaf_bounds(&s.h, &s.leaves[i].id, lo, hi);
    for (int d = 0; d < 3; d++) {
      CHECK(s.leaves[i].ghost_lo[d] == (lo[d] == s.h.xmin[d] ? 2 : 0));
      CHECK(s.leaves[i].ghost_hi[d] == (hi[d] == s.h.xmax[d] ? 2 : 0));
    }
  }
  CHECK(with_ghost == 32);
  amrvac_free(&s);

  path_of(p, sizeof p, "thirdparty_WR_2D_0004.dat");
  CHECK_OK(amrvac_open(p, &s));
  CHECK(s.h.ndim == 2 && s.h.nw == 23 && s.h.levmax == 4 && s.h.periodic[1] == 1);
  CHECK(!strncmp(s.h.geometry, "Cartesian", 9) && !strcmp(s.h.physics_type, "rhd"));
  levels_count(&s, c);
  CHECK(c[1] == 5 && c[2] == 4 && c[3] == 23 && c[4] == 36);
  CHECK_OK(amrvac_read_blocks(&s));
  CHECK(s.w != NULL && amrvac_var_index(&s.h, "Trad") >= 0);
  amrvac_free(&s);
}

/* rho = 1, v = 0, p = 100 inside r < 0.2 of (1.5, 1, 1), else 1; e = p/(gamma-1).
 * The ghost variant holds the same interior values. */
static void test_blast_values(void) {
  char p[1024], pg[1024];
  path_of(p, sizeof p, "bw3d_amr_0000.dat");
  path_of(pg, sizeof pg, "bw3d_amr_ghost_0000.dat");
  amrvac_snapshot s, g;
  CHECK_OK(amrvac_open(p, &s));
  CHECK_OK(amrvac_read_blocks(&s));
  CHECK_OK(amrvac_open(pg, &g));
  CHECK_OK(amrvac_read_blocks(&g));
  if (!s.w || !g.w) return;
  int64_t nc = amrvac_block_cells(&s.h);
  int bad = 0, inside = 0, differ = 0;
  for (int l = 0; l < s.h.nleafs; l++) {
    double lo[3], hi[3], dx[3];
    amrvac_leaf_bounds(&s.h, &s.leaves[l].id, lo, hi);
    amrvac_cell_size(&s.h, s.leaves[l].id.level, dx);
    for (int64_t c = 0; c < nc; c++) {
      int i = c % 8, j = (c / 8) % 8, k = c / 64;
      double x = lo[0] + (i + 0.5) * dx[0] - 1.5, y = lo[1] + (j + 0.5) * dx[1] - 1,
             z = lo[2] + (k + 0.5) * dx[2] - 1;
      double pr = sqrt(x * x + y * y + z * z) < 0.2 ? 100 : 1;
      inside += pr == 100;
      const double *w = s.w + (size_t)l * 5 * nc + c;
      double e = w[4 * nc], rho = w[0];
      double pres = (2.0 / 3.0) * (e - 0.5 * (w[nc] * w[nc] + w[2 * nc] * w[2 * nc] + w[3 * nc] * w[3 * nc]) / rho);
      if (rho != 1 || w[nc] != 0 || w[2 * nc] != 0 || w[3 * nc] != 0 ||
          fabs(pres - pr) > 1e-12 * pr)
        bad++;
      for (int v = 0; v < 5; v++) differ += w[v * nc] != g.w[(size_t)l * 5 * nc + v * nc + c];
    }
  }
  CHECK_MSG(bad == 0, "%d cells differ from the blast-wave initial state", bad);
  CHECK(inside > 0);
  CHECK_MSG(differ == 0, "%d values differ between the ghost and no-ghost files", differ);
  amrvac_free(&s);
  amrvac_free(&g);
}

/* agbwind3d_0000.dat: every stored rho, m equals the analytic wind. */
void agb_wind(const double x[3], double *rho, double m[3]);
void agb_wind(const double x[3], double *rho, double m[3]) {
  const double mdot = 1202.3709349768806, vw = 15, rin = 1.5;
  double r = sqrt(x[0] * x[0] + x[1] * x[1] + x[2] * x[2]), re = r > rin ? r : rin;
  *rho = mdot / (4 * M_PI * re * re * vw);
  for (int d = 0; d < 3; d++) m[d] = *rho * vw * x[d] / re;
}

static void test_agbwind_analytic(void) {
  char p[1024];
  path_of(p, sizeof p, "agbwind3d_0000.dat");
  amrvac_snapshot s;
  CHECK_OK(amrvac_open(p, &s));
  CHECK_OK(amrvac_read_blocks(&s));
  if (!s.w) return;
  int64_t nc = amrvac_block_cells(&s.h);
  double worst = 0;
  int64_t cells = 0;
  for (int l = 0; l < s.h.nleafs; l++) {
    double dx[3];
    amrvac_cell_size(&s.h, s.leaves[l].id.level, dx);
    for (int64_t c = 0; c < nc; c++) {
      int ii[3] = {c % 8, (c / 8) % 8, c / 64};
      double x[3], rho, m[3];
      for (int d = 0; d < 3; d++)
        x[d] = s.h.xmin[d] + ((s.leaves[l].id.ig[d] - 1) * 8 + ii[d] + 0.5) * dx[d];
      agb_wind(x, &rho, m);
      const double *w = s.w + (size_t)l * 5 * nc + c;
      worst = fmax(worst, fabs(w[0] - rho) / rho);
      for (int d = 0; d < 3; d++) worst = fmax(worst, fabs(w[(d + 1) * nc] - m[d]) / rho);
      cells++;
    }
  }
  CHECK(cells == 56 * 512 + 64 * 512);
  CHECK_MSG(worst < 1e-14, "largest relative difference %g", worst);
  amrvac_free(&s);
}

static void put_i32(unsigned char *b, size_t at, int32_t v) { memcpy(b + at, &v, 4); }
static void put_i64(unsigned char *b, size_t at, int64_t v) { memcpy(b + at, &v, 8); }

static void test_hostile(void) {
  size_t len;
  unsigned char *orig = slurp("agbwind3d_0000.dat", &len);
  CHECK(orig != NULL);
  if (!orig) return;
  amrvac_snapshot s;
  CHECK_OK(open_bytes(orig, len, &s, 1));
  amrvac_free(&s);
  /* truncations: every byte of the header and tree, then spread over the blocks */
  int64_t tree_end = 288 + 4 * 128 + 4 * 120 + 12 * 120 + 8 * 120;
  int fails = 0, tried = 0;
  for (size_t cut = 0; cut < len; cut = cut < (size_t)tree_end + 64 ? cut + 1 : cut + 4093) {
    tried++;
    ce_err_clear();
    if (open_bytes(orig, cut, &s, 0) == 0) {
      amrvac_free(&s);
      fprintf(stderr, "truncation at %zu bytes was accepted\n", cut);
    } else if (strlen(ce_err_msg()) > 10) {
      fails++;
    }
  }
  CHECK_MSG(fails == tried, "%d of %d truncated files were refused", fails, tried);
  CHECK_ERR(open_bytes(orig, len - 1, &s, 0), "file");
  unsigned char *b = malloc(len);
#define MUTATE(stmt, substr)                                                   \
  do {                                                                         \
    memcpy(b, orig, len);                                                      \
    stmt;                                                                      \
    CHECK_ERR(open_bytes(b, len, &s, 0), substr);                              \
  } while (0)
  MUTATE(put_i32(b, 0, 2), "version = 2");
  MUTATE(put_i32(b, 0, 6), "version = 6");
  MUTATE(put_i32(b, 0, 0x05000000), "big-endian");
  MUTATE(put_i32(b, 4, 0x7ffffff0), "offset_tree");
  MUTATE(put_i32(b, 4, 100), "offset_tree");
  MUTATE(put_i32(b, 8, 12345), "offset_blocks");
  MUTATE(put_i32(b, 12, 0x7fffffff), "nw");
  MUTATE(put_i32(b, 12, -1), "nw");
  MUTATE(put_i32(b, 12, 6), "");
  MUTATE(put_i32(b, 20, 4), "ndim");
  MUTATE(put_i32(b, 24, 0), "levmax");
  MUTATE(put_i32(b, 24, 3), "levmax");
  MUTATE(put_i32(b, 28, 0x7fffffff), "nleafs");
  MUTATE(put_i32(b, 28, 121), "");
  MUTATE(put_i32(b, 32, 0x7fffffff), "nparents");
  MUTATE(put_i32(b, 32, 9), "");
  MUTATE(put_i32(b, 96, 0), "domain_nx");                  /* domain_nx1 */
  MUTATE(put_i32(b, 108, 0), "block_nx");                   /* block_nx1 */
  MUTATE(put_i32(b, 108, 3), "domain_nx");
  /* 2^30 level-1 blocks per dimension: the root count (2^90) must not overflow */
  MUTATE((put_i32(b, 24, 1), put_i32(b, 96, 1 << 30), put_i32(b, 100, 1 << 30),
          put_i32(b, 104, 1 << 30), put_i32(b, 108, 1), put_i32(b, 112, 1), put_i32(b, 116, 1)),
         "level-1 blocks");
  MUTATE(put_i32(b, 76, 0x7ff00000), "finite");            /* xprobmax1 = inf */
  MUTATE(put_i32(b, 288 + 4 * 128, 3), "level");          /* level[1] */
  MUTATE(put_i32(b, 288 + 4 * 128, 2), "forest walk");
  MUTATE(put_i32(b, 288 + 4 * 128 + 4 * 120, 99), "ig1");
  MUTATE(put_i32(b, 288 + 4 * 128 + 4 * 120, 2), "forest walk");
  MUTATE(put_i32(b, 288, 0), "tree");                       /* a leaf bit flipped */
  MUTATE(put_i64(b, 288 + 4 * 128 + 16 * 120 + 8, (int64_t)1 << 40), "block 2");
  MUTATE(put_i64(b, 288 + 4 * 128 + 16 * 120 + 8, tree_end + 12), "block 2");
  MUTATE(put_i32(b, tree_end, 1), "");                        /* a ghost layer that is not there */
  MUTATE(put_i32(b, tree_end, 0x7fffffff), "ghost");
  MUTATE(put_i32(b, tree_end + 4, -5), "ghost");
#undef MUTATE
  free(b);
  free(orig);
}

static const char sidecar_ok[] =
    "# sidecar\nversion: 1\nunit_system: cgs\nunit_length: 1.495978707e13\n"
    "unit_numberdensity: 1.0e9\nhe_abundance: 0.1\nunit_velocity: 1.0e5\nmu: 2.3\n"
    "co_abundance: 1.0e-4\nstretched: false\n";

static int parse_with(const char *extra, const char *drop, units *u) {
  char buf[2048] = "";
  const char *line = sidecar_ok;
  while (*line) {
    const char *nl = strchr(line, '\n');
    if (!drop || strncmp(line, drop, strlen(drop)) != 0) strncat(buf, line, (size_t)(nl - line + 1));
    line = nl + 1;
  }
  strcat(buf, extra);
  return units_parse(buf, strlen(buf), "s.yaml", u);
}

static void test_sidecar(void) {
  units u;
  CHECK_OK(parse_with("", NULL, &u));
  units_si si;
  units_scales(&u, &si);
  CHECK_CLOSE(si.length, 1.495978707e11, 1e-15, 0);
  CHECK_CLOSE(si.velocity, 1e3, 1e-15, 0);
  CHECK_CLOSE(si.density, 2.3416704878e-12, 1e-10, 0); /* README: 2.3416704878e-15 g/cm^3 */
  CHECK_CLOSE(si.n_h_per_rho, 1e15, 1e-14, 0);
  CHECK(u.stretched == 0 && u.si == 0 && !u.has_gamma && u.temperature_variable[0] == 0);
  CHECK_OK(parse_with("gamma: 1.4\nisothermal_constant: 2\ntemperature_variable: Tgas\n", NULL, &u));
  CHECK(u.has_gamma && u.gamma == 1.4 && u.has_isothermal && !strcmp(u.temperature_variable, "Tgas"));
  CHECK_ERR(parse_with("colour: red\n", NULL, &u), "s.yaml:11:1: unknown key 'colour'");
  CHECK_ERR(parse_with("gamma: fast\n", NULL, &u), "s.yaml:11:8: gamma: 'fast' is not a number");
  CHECK_ERR(parse_with("gamma: [1, 2]\n", NULL, &u), "s.yaml:11:8");
  CHECK_ERR(parse_with("mu: 2\n", NULL, &u), "given twice");
  CHECK_ERR(parse_with("", "mu:", &u), "'mu' is missing");
  CHECK_ERR(parse_with("", "stretched", &u), "'stretched' is missing");
  CHECK_ERR(parse_with("", "unit_numberdensity", &u), "unit_numberdensity or unit_density");
  CHECK_OK(parse_with("unit_density: 2.3e-15\n", "unit_numberdensity", &u));
  /* both density units: accepted when they agree, else refused (not one silently winning) */
  CHECK_OK(parse_with("unit_density: 2.3416704878e-15\n", NULL, &u));
  CHECK_ERR(parse_with("unit_density: 1.0\n", NULL, &u),
            "unit_numberdensity 1e+09 and unit_density 1 disagree");
  CHECK_ERR(parse_with("co_abundance: 2\n", "co_abundance", &u),
            "co_abundance = 2, expected 0 < n_CO/n_H2 <= 1");
  CHECK_ERR(parse_with("gamma: -1\n", NULL, &u), "positive");
  CHECK_ERR(parse_with("a: : :\n", NULL, &u), "s.yaml:11");
  CHECK_ERR(units_parse("- 1\n- 2\n", 8, "s.yaml", &u), "s.yaml:1:1");
  CHECK_ERR(units_parse("", 0, "s.yaml", &u), "mapping");
  CHECK_ERR(parse_with("", "unit_system", &u), "'unit_system' is missing");
  CHECK_ERR(parse_with("stretched: maybe\n", "stretched", &u), "true or false");
  CHECK_ERR(units_read("/nonexistent/x.yaml", &u), "cannot open");
  /* lookup beside the snapshot */
  char p[1024], found[2048];
  path_of(p, sizeof p, "agbwind3d_0000.dat");
  CHECK(units_find(p, found, sizeof found) == 1 && strstr(found, "agbwind3d_0000.units.yaml"));
  path_of(p, sizeof p, "bw3d_amr_0000.dat");
  CHECK(units_find(p, found, sizeof found) == 0);
}

/* Physical fields of one cell: energy, isothermal and temperature-variable
 * paths, against hand-computed values. */
static void test_cell_physics(void) {
  char names[6][AMRVAC_NAME_LEN + 1] = {"rho", "m1", "m2", "m3", "e", "Tgas"};
  char pn[1][AMRVAC_NAME_LEN + 1] = {"gamma"};
  double gamma = 1.4;
  amrvac_header h = {.ndim = 3, .ndir = 3, .nw = 6, .w_names = names, .n_params = 1,
                     .params = &gamma, .param_names = pn};
  units u;
  CHECK_OK(parse_with("", NULL, &u));
  units_map m;
  CHECK_OK(units_map_make(&u, &h, &m));
  CHECK(!m.isothermal && m.gamma == 1.4 && m.itemp < 0);
  /* rho = 2, m = (2, 4, 6) -> v = (1, 2, 3) km/s; e = 20 -> p = 0.4 (20 - 56/4) = 2.4 (code) */
  double w[6] = {2, 2, 4, 6, 20, 123}, n, T, v[3];
  units_cell(&m, w, 1, &n, &T, v);
  CHECK_CLOSE(v[0], 1e3, 1e-14, 0);
  CHECK_CLOSE(v[2], 3e3, 1e-14, 0);
  CHECK_CLOSE(n, 1e-4 * 0.5 * 2 * 1e15, 1e-14, 0);
  /* T = mu m_H p / (rho k_B), SI: p = 2.4 rho_u v_u^2, rho = 2 rho_u */
  double Texp = 2.3 * UNITS_M_H * (2.4 * 1e6) / (2 * UNITS_K_B);
  CHECK_CLOSE(T, Texp, 1e-13, 0);
  /* without e: isothermal_constant needed */
  h.nw = 4;
  CHECK_ERR(units_map_make(&u, &h, &m), "isothermal_constant");
  CHECK_OK(parse_with("isothermal_constant: 0.5\ngamma: 1.0001\n", NULL, &u));
  CHECK_OK(units_map_make(&u, &h, &m));
  units_cell(&m, w, 1, &n, &T, v);
  CHECK_CLOSE(T, 2.3 * UNITS_M_H * 0.5 * pow(2, 1.0001) * 1e6 / (2 * UNITS_K_B), 1e-13, 0);
  /* temperature read from a variable */
  h.nw = 6;
  CHECK_OK(parse_with("temperature_variable: Tgas\n", NULL, &u));
  CHECK_OK(units_map_make(&u, &h, &m));
  units_cell(&m, w, 1, &n, &T, v);
  CHECK(T == 123);
  CHECK_OK(parse_with("temperature_variable: Tdust\n", NULL, &u));
  CHECK_ERR(units_map_make(&u, &h, &m), "'Tdust' is not a variable");
  h.n_params = 0;
  CHECK_OK(parse_with("", NULL, &u));
  CHECK_ERR(units_map_make(&u, &h, &m), "no gamma");
  names[0][0] = 'R';
  CHECK_ERR(units_map_make(&u, &h, &m), "no variable 'rho'");
}

/* Every file of the fuzz seed corpus: read without a crash (run under the
 * sanitizers in CI), whether accepted or refused. */
static void test_fuzz_corpus(void) {
  const char *names[] = {"agbwind3d_0000.dat", "bw3d_amr_0000.dat", "bw3d_amr_ghost_0000.dat",
                         "thirdparty_WR_2D_0004.dat"};
  for (int i = 0; i < 4; i++) {
    size_t len;
    unsigned char *b = slurp(names[i], &len);
    CHECK(b != NULL);
    if (!b) continue;
    amrvac_snapshot s;
    CHECK_OK(open_bytes(b, len, &s, 1));
    amrvac_free(&s);
    /* cheap mutations: every 97th byte set to 0xff, one at a time, in the header and tree */
    for (size_t at = 0; at < len && at < 4096; at += 97) {
      unsigned char keep = b[at];
      b[at] = 0xff;
      if (open_bytes(b, len, &s, 1) == 0) amrvac_free(&s);
      b[at] = keep;
    }
    free(b);
  }
}

/* The small v3, v4, v5 seeds of tests/rotate/fuzz_corpus (make_seeds.py):
 * the version-dependent header fields. */
static void test_versions(void) {
  const char *root = getenv("COEMU_SOURCE_ROOT");
  char p[1024];
  for (int v = 3; v <= 5; v++) {
    snprintf(p, sizeof p, "%s/tests/rotate/fuzz_corpus/tiny_v%d.dat", root ? root : ".", v);
    amrvac_snapshot s;
    CHECK_OK(amrvac_open(p, &s));
    CHECK(s.h.version == v && s.h.nleafs == 15 && s.h.nparents == 1 && s.h.nw == 2);
    CHECK(!strcmp(s.h.w_names[1], "e") && !strcmp(s.h.param_names[0], "gamma"));
    CHECK(v == 5 ? !strcmp(s.h.geometry, "Cartesian_3D") : s.h.geometry[0] == 0);
    CHECK_OK(amrvac_read_blocks(&s));
    if (s.w) CHECK(s.w[0] == 1.0 && s.w[8] == 1.08); /* block 1: rho then e, x fastest */
    amrvac_free(&s);
  }
  snprintf(p, sizeof p, "%s/tests/rotate/fuzz_corpus/tiny_ghost_v5.dat", root ? root : ".");
  amrvac_snapshot s;
  CHECK_OK(amrvac_open(p, &s));
  CHECK_OK(amrvac_read_blocks(&s));
  amrvac_free(&s);
}

int main(void) {
  data_dir = getenv("COEMU_TEST_DATA");
  if (!data_dir) data_dir = "tests/data";
  RUN(test_headers);
  RUN(test_versions);
  RUN(test_blast_values);
  RUN(test_agbwind_analytic);
  RUN(test_hostile);
  RUN(test_sidecar);
  RUN(test_cell_physics);
  RUN(test_fuzz_corpus);
  return check_report();
}
