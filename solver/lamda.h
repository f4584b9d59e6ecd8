/* lamda.h - molecular line data in the LAMDA text format.
 *
 * A LAMDA file (Schoeier et al. 2005) lists, in this order: the molecule's
 * name, its molecular weight, the energy levels, the radiative transitions
 * and the collision partners with their rate tables. Section titles are
 * lines that begin with '!' and their wording differs between files, so the
 * parser goes by position: every line that is neither blank nor a title is
 * the next datum. Decimal numbers are converted with strtod, so values are
 * bit-identical to any other correctly rounding reader (Python, astropy).
 * Anything after the last partner's rate rows (notes) is ignored.
 *
 * Levels and transitions are numbered from 1 as in the file. Collision data
 * are kept for later non-LTE work; the LTE solver needs levels and lines.
 *
 *   lamda_molecule m;
 *   if (lamda_read("co.dat", &m) < 0) ... ce_err_msg() says file:line, field
 *   int t = lamda_find_transition(&m, 3, 2);   // CO J=2-1 -> 2
 *   lamda_free(&m);
 */
#ifndef COEMU_LAMDA_H
#define COEMU_LAMDA_H

#include <stddef.h>

typedef struct {
  int index;         /* 1-based, as in the file */
  double energy_cm;  /* E [cm^-1] */
  double weight;     /* statistical weight g */
  char qnum[48];     /* quantum-number columns as written ("2", "1_0", ...) */
} lamda_level;

typedef struct {
  int index;         /* 1-based LAMDA transition number */
  int upper, lower;  /* 1-based level numbers */
  double A;          /* Einstein A [s^-1] */
  double freq_ghz;   /* rest frequency [GHz] */
  double eu_k;       /* upper-level energy E_u/k [K] as written */
} lamda_line;

typedef struct {
  int id;             /* 1=H2 2=pH2 3=oH2 4=e 5=H 6=He 7=H+ */
  char description[160];
  int ntrans, ntemp;
  double *temps;      /* [ntemp] K */
  int *upper, *lower; /* [ntrans] 1-based levels */
  double *rates;      /* [ntrans*ntemp] cm^3 s^-1, row-major by transition */
} lamda_partner;

typedef struct {
  char name[128];     /* first data line, trimmed */
  double weight;      /* molecular weight [u] */
  int nlev, nline, npart;
  lamda_level *levels;
  lamda_line *lines;
  lamda_partner *partners;
  char qnum_name[32]; /* the quantum numbers' name from the levels' title line
                         ("!LEVEL + ENERGIES(cm^-1) + WEIGHT + J" -> "J", "N_J"); "" if none */
} lamda_molecule;

/* Read a LAMDA file. On failure: -1, nothing to free, and a message
 * "PATH:LINE: FIELD: expected ..., found '...'". */
int lamda_read(const char *path, lamda_molecule *m);
/* The same from `len` bytes of text (e.g. a file embedded in the binary);
 * `name` labels the messages. */
int lamda_parse(const char *name, const char *text, size_t len, lamda_molecule *m);
/* Release what lamda_read allocated (safe on a zeroed struct). */
void lamda_free(lamda_molecule *m);
/* The 1-based LAMDA number of the radiative transition upper -> lower, or
 * -1 with an error message if the file has none. */
int lamda_find_transition(const lamda_molecule *m, int upper, int lower);
/* The co.dat used when the user names no LAMDA file (coemu solve
 * --example): $COEMU_LAMDA_CO if set, else the path compiled in by the
 * build (the source tree's tests/data/lamda/co.dat, COEMU_DEFAULT_LAMDA_CO). */
const char *lamda_default_co_path(void);
/* The transition's name as astronomers write it, from the file's quantum
 * numbers: "J=2-1" for CO's transition 2, "N_J=2_3-1_2"; the level numbers
 * ("levels 3-2") when the file gives no quantum numbers. Returns buf. */
const char *lamda_transition_label(const lamda_molecule *m, int transition, char *buf, size_t len);
/* Check a 1-based transition number: 0, or -1 with a message. */
int lamda_check_transition(const lamda_molecule *m, int transition);

#endif
