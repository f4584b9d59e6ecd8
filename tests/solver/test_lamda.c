/* test_lamda.c - every LAMDA file shipped in tests/data parses, with the
 * values of the file; bad files are refused with file:line and the field. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "check.h"
#include "common/fsutil.h"
#include "solver/lamda.h"

static const char *data_dir;
static const char *tmpdir;

static void path_of(char *buf, size_t n, const char *name) {
  snprintf(buf, n, "%s/lamda/%s", data_dir, name);
}

static void test_all_files_parse(void) {
  struct { const char *file; int nlev, nline, npart; double weight; } want[] = {
      {"co.dat", 41, 40, 2, 28.0},      {"13co.dat", 41, 40, 2, 29.0},
      {"c18o.dat", 41, 40, 2, 30.0},    {"sio-h2.dat", 21, 20, 2, 44.1},
      {"hcn.dat", 26, 25, 2, 27.0},     {"so@lique.dat", 91, 301, 1, 48.0},
      {"cs@lique.dat", 31, 30, 1, 44.1}};
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    char p[512];
    path_of(p, sizeof p, want[i].file);
    lamda_molecule m;
    CHECK_OK(lamda_read(p, &m));
    CHECK_MSG(m.nlev == want[i].nlev && m.nline == want[i].nline && m.npart == want[i].npart,
              "%s: %d levels %d lines %d partners", want[i].file, m.nlev, m.nline, m.npart);
    CHECK(m.weight == want[i].weight);
    for (int k = 0; k < m.npart; k++)
      CHECK(m.partners[k].ntrans > 0 && m.partners[k].ntemp > 0 && m.partners[k].temps[0] > 0);
    lamda_free(&m);
  }
}

static void test_co_values(void) {
  char p[512];
  path_of(p, sizeof p, "co.dat");
  lamda_molecule m;
  CHECK_OK(lamda_read(p, &m));
  CHECK(!strcmp(m.name, "CO"));
  CHECK(m.levels[2].index == 3 && m.levels[2].energy_cm == 11.534919938 && m.levels[2].weight == 5);
  CHECK(!strcmp(m.levels[2].qnum, "2"));
  CHECK(m.levels[1].energy_cm == 3.845033413);
  const lamda_line *t = &m.lines[1];
  CHECK(t->index == 2 && t->upper == 3 && t->lower == 2 && t->A == 6.910e-07 &&
        t->freq_ghz == 230.5380000);
  CHECK(m.lines[0].freq_ghz == 115.2712018 && m.lines[0].A == 7.203e-08);
  CHECK(lamda_find_transition(&m, 3, 2) == 2);
  CHECK(lamda_find_transition(&m, 2, 1) == 1);
  CHECK_ERR(lamda_find_transition(&m, 2, 3), "no radiative transition from level 2 to level 3");
  CHECK_ERR(lamda_find_transition(&m, 40, 2), "no radiative transition");
  CHECK_ERR(lamda_check_transition(&m, 41), "transition 41 does not exist, expected 1..40");
  CHECK_ERR(lamda_check_transition(&m, 0), "does not exist");
  /* collision data: 2 = pH2, 820 transitions x 25 temperatures */
  CHECK(m.partners[0].id == 2 && m.partners[1].id == 3);
  CHECK(m.partners[0].ntrans == 820 && m.partners[0].ntemp == 25);
  CHECK(m.partners[0].temps[0] == 2.0 && m.partners[0].temps[24] == 3000.0);
  CHECK(m.partners[0].upper[0] == 2 && m.partners[0].lower[0] == 1);
  lamda_free(&m);
  path_of(p, sizeof p, "so@lique.dat");
  CHECK_OK(lamda_read(p, &m));
  CHECK(!strcmp(m.levels[0].qnum, "1_0") && m.levels[4].weight == 3);
  lamda_free(&m);
}

/* Write co.dat with line `lineno` (1-based) replaced by `text` (NULL: the
 * file cut before that line). */
static void write_variant(const char *out, int lineno, const char *text) {
  char p[512];
  path_of(p, sizeof p, "co.dat");
  char *buf;
  size_t len;
  if (fs_read_all(p, &buf, &len) < 0) return;
  FILE *f = fopen(out, "w");
  int line = 1;
  char *s = buf;
  while (*s) {
    char *nl = strchr(s, '\n');
    size_t n = nl ? (size_t)(nl - s + 1) : strlen(s);
    if (line == lineno) {
      if (!text) break;
      fprintf(f, "%s\n", text);
    } else {
      fwrite(s, 1, n, f);
    }
    s += n;
    line++;
  }
  fclose(f);
  free(buf);
}

static void expect_bad(int lineno, const char *text, const char *msg) {
  char out[512];
  snprintf(out, sizeof out, "%s/bad.dat", tmpdir);
  write_variant(out, lineno, text);
  lamda_molecule m;
  CHECK_ERR(lamda_read(out, &m), msg);
  remove(out);
}

static void test_bad_files(void) {
  /* truncated inside the level table, the line table and a rate table */
  expect_bad(30, NULL, "bad.dat:30: unexpected end of file, expected energy level 23 of 41");
  expect_bad(70, NULL, "unexpected end of file, expected radiative transition 19 of 40");
  expect_bad(500, NULL, "unexpected end of file, expected collision partner 1: rate row 398");
  /* inconsistent counts: one level too many, one line too few */
  expect_bad(6, "42", "bad.dat:50: level 42: index = 40, expected 42..42");
  expect_bad(50, "39", "bad.dat:91: number of collision partners: unexpected '41' after the value");
  /* bad values */
  expect_bad(53, "    2     3     2  nan            230.5380000     16.60",
             "bad.dat:53: transition 2: Einstein A (s^-1): expected a finite number, found 'nan'");
  expect_bad(53, "    2     3     2  -6.910e-07     230.5380000     16.60",
             "bad.dat:53: transition 2: Einstein A (s^-1) = -6.91e-07, expected > 0");
  expect_bad(53, "    2     3     2  6.910e-07", "bad.dat:53: transition 2: frequency (GHz)");
  expect_bad(53, "    2     3    99  6.910e-07     230.5380000     16.60",
             "transition 2: lower level = 99, expected 1..41");
  expect_bad(53, "    2     2     3  6.910e-07     230.5380000     16.60",
             "transition 2: upper level 2 (E = 3.84503 cm^-1) is not above lower level 3");
  expect_bad(10, "    3    11.534919938	    0.0	    2", "level 3: weight = 0, expected > 0");
  expect_bad(4, "28.0x", "bad.dat:4: molecular weight: expected a finite number, found '28.0x'");
  expect_bad(101, "2.0 5.0", "collision partner 1: temperature 3 of 25");
  expect_bad(101, "2.0 5.0 10.0 30.0 20.0 40.0 50.0 60.0 70.0 80.0 90.0 100.0 150.0 200.0 300.0 "
             "400.0 500.0 600.0 700.0 750.0 800.0 900.0 1000.0 2000.0 3000.0",
             "bad.dat:101: collision partner 1: temperature 5 of 25 = 20, expected above "
             "temperature 4 (30): the temperatures must increase");
  expect_bad(101, "2.0 5.0 5.0 20.0 30.0 40.0 50.0 60.0 70.0 80.0 90.0 100.0 150.0 200.0 300.0 "
             "400.0 500.0 600.0 700.0 750.0 800.0 900.0 1000.0 2000.0 3000.0",
             "temperature 3 of 25 = 5, expected above temperature 2 (5)");
  expect_bad(103, "    1     2     1  1e-11", "collision partner 1: rate row 1: rate 2 of 25");
  /* counts the file cannot hold are refused, with the numbers, before any allocation */
  expect_bad(97, "9999999", "collision partner 1: 9999999 transitions x 25 temperatures");
  lamda_molecule m;
  CHECK_ERR(lamda_read("/nonexistent/co.dat", &m), "/nonexistent/co.dat: cannot open");
  CHECK_ERR(lamda_read("/dev/zero", &m), "/dev/zero: not a regular file");
}

/* Transition names from the files' quantum numbers (coemu solve prints
 * them): the levels' title names them (J, N_J); HCN's and SiO's are quoted
 * or zero-padded ("\" 01 \"", "01"). */
static void test_labels(void) {
  struct { const char *file; int t; const char *label; } want[] = {
      {"co.dat", 2, "J=2-1"},   {"co.dat", 1, "J=1-0"},     {"13co.dat", 3, "J=3-2"},
      {"hcn.dat", 1, "J=1-0"},  {"sio-h2.dat", 2, "J=2-1"}, {"cs@lique.dat", 7, "J=7-6"},
      {"so@lique.dat", 1, "N_J=0_1-1_0"}};
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
    char p[512], buf[96];
    path_of(p, sizeof p, want[i].file);
    lamda_molecule m;
    CHECK_OK(lamda_read(p, &m));
    lamda_transition_label(&m, want[i].t, buf, sizeof buf);
    CHECK_MSG(!strcmp(buf, want[i].label), "%s transition %d: '%s', expected '%s'", want[i].file,
              want[i].t, buf, want[i].label);
    lamda_free(&m);
  }
  /* no quantum-number column: the level numbers */
  char p[512];
  snprintf(p, sizeof p, "%s/noq.dat", tmpdir);
  FILE *f = fopen(p, "w");
  CHECK(f != NULL);
  if (!f) return;
  fputs("!MOLECULE\nX\n!MOLECULAR WEIGHT\n28.0\n!NUMBER OF ENERGY LEVELS\n2\n"
        "!LEVEL + ENERGIES(cm^-1) + WEIGHT\n1 0.0 1.0\n2 3.8 3.0\n"
        "!NUMBER OF RADIATIVE TRANSITIONS\n1\n!TRANS\n1 2 1 7.2e-08 115.27 5.53\n"
        "!NUMBER OF COLL PARTNERS\n0\n", f);
  fclose(f);
  lamda_molecule m;
  CHECK_OK(lamda_read(p, &m));
  char buf[96];
  CHECK_MSG(!strcmp(lamda_transition_label(&m, 1, buf, sizeof buf), "levels 2-1"), "'%s'", buf);
  lamda_free(&m);
  unlink(p);
}

int main(void) {
  data_dir = getenv("COEMU_TEST_DATA");
  if (!data_dir) data_dir = "tests/data";
  tmpdir = check_scratch("test_lamda");
  RUN(test_all_files_parse);
  RUN(test_co_values);
  RUN(test_bad_files);
  RUN(test_labels);
  check_scratch_remove(); /* rmdir alone left bad.dat behind */
  return check_report();
}
