/* lamda.c - LAMDA molecular data files, parsed by position (see lamda.h). */
#include "solver/lamda.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/error.h"
#include "common/fsutil.h"

/* A cursor over the data lines of the file (titles and blank lines skipped). */
typedef struct {
  const char *path;
  char *buf;    /* whole file, modified in place: lines are NUL-terminated */
  size_t len, pos;
  int lineno;   /* line number of the line last returned */
  char title[96]; /* the last title line ('!') passed, trimmed */
} cursor;

static int is_blank(const char *s) {
  for (; *s; s++)
    if (!isspace((unsigned char)*s)) return 0;
  return 1;
}

/* Next data line, or NULL at the end of the file. */
static char *next_line(cursor *c) {
  while (c->pos < c->len) {
    char *line = c->buf + c->pos;
    char *nl = memchr(line, '\n', c->len - c->pos);
    size_t n = nl ? (size_t)(nl - line) : c->len - c->pos;
    line[n] = '\0';
    if (n > 0 && line[n - 1] == '\r') line[n - 1] = '\0';
    c->pos += n + 1;
    c->lineno++;
    const char *p = line;
    while (isspace((unsigned char)*p)) p++;
    if (*p == '!') {
      size_t k = strlen(p);
      while (k > 0 && isspace((unsigned char)p[k - 1])) k--;
      if (k >= sizeof c->title) k = sizeof c->title - 1;
      memcpy(c->title, p, k);
      c->title[k] = '\0';
    }
    if (*p == '!' || is_blank(p)) continue;
    return line;
  }
  return NULL;
}

/* Data line that must exist. */
static int need_line(cursor *c, const char *what, char **line) {
  *line = next_line(c);
  if (!*line)
    return ce_err("%s:%d: unexpected end of file, expected %s", c->path, c->lineno + 1, what);
  return 0;
}

/* First token of s (for messages). */
static const char *token_text(const char *s, char *tmp, size_t n) {
  while (isspace((unsigned char)*s)) s++;
  size_t k = 0;
  while (s[k] && !isspace((unsigned char)s[k]) && k + 1 < n) k++;
  memcpy(tmp, s, k);
  tmp[k] = '\0';
  return k ? tmp : "(nothing)";
}

/* Parse one number token at *p, advancing *p. `what` names the field. */
static int take_double(cursor *c, char **p, const char *what, double *out) {
  char tmp[40];
  char *end;
  errno = 0;
  double v = strtod(*p, &end);
  if (end == *p || (*end && !isspace((unsigned char)*end)) || !isfinite(v))
    return ce_err("%s:%d: %s: expected a finite number, found '%s'", c->path, c->lineno, what,
                  token_text(*p, tmp, sizeof tmp));
  *p = end;
  *out = v;
  return 0;
}

static int take_int(cursor *c, char **p, const char *what, int lo, int hi, int *out) {
  char tmp[40];
  char *end;
  errno = 0;
  long v = strtol(*p, &end, 10);
  if (end == *p || (*end && !isspace((unsigned char)*end)) || errno)
    return ce_err("%s:%d: %s: expected an integer, found '%s'", c->path, c->lineno, what,
                  token_text(*p, tmp, sizeof tmp));
  if (v < lo || v > hi)
    return ce_err("%s:%d: %s = %ld, expected %d..%d", c->path, c->lineno, what, v, lo, hi);
  *p = end;
  *out = (int)v;
  return 0;
}

/* Nothing but blanks may follow the last field of a count line. */
static int end_of_line(cursor *c, char *p, const char *what) {
  char tmp[40];
  if (!is_blank(p))
    return ce_err("%s:%d: %s: unexpected '%s' after the value", c->path, c->lineno, what,
                  token_text(p, tmp, sizeof tmp));
  return 0;
}

static void copy_trimmed(char *dst, size_t n, const char *s) {
  while (isspace((unsigned char)*s)) s++;
  size_t k = strlen(s);
  while (k > 0 && isspace((unsigned char)s[k - 1])) k--;
  if (k >= n) k = n - 1;
  memcpy(dst, s, k);
  dst[k] = '\0';
}

static int read_count(cursor *c, const char *what, int lo, int hi, int *out) {
  char *line;
  CE_TRY(need_line(c, what, &line));
  CE_TRY(take_int(c, &line, what, lo, hi, out));
  return end_of_line(c, line, what);
}

/* Limits well above any real file; they keep hostile counts from asking for
 * absurd allocations. */
enum { MAX_LEVELS = 100000, MAX_LINES = 10000000, MAX_PARTNERS = 64, MAX_TEMPS = 10000 };

/* The quantum numbers' name in the levels' title, "!LEVEL + ENERGIES(cm^-1)
 * + WEIGHT + J (or other quantum numbers)": the first word after "WEIGHT +"
 * if it is a name (letters, digits, '_'), else "". */
static void qnum_name_of(const char *title, char *out, size_t n) {
  out[0] = '\0';
  const char *p = strstr(title, "WEIGHT");
  if (!p) return;
  p += 6;
  while (isspace((unsigned char)*p) || *p == '+') p++;
  size_t k = 0;
  while (isalnum((unsigned char)p[k]) || p[k] == '_') k++;
  if (k == 0 || k >= n || !isalpha((unsigned char)p[0])) return;
  if (p[k] && !isspace((unsigned char)p[k])) return; /* "J(...)" or "J,K": not a plain name */
  memcpy(out, p, k);
  out[k] = '\0';
}

static int parse(cursor *c, lamda_molecule *m) {
  char *line;
  char what[96];
  CE_TRY(need_line(c, "the molecule's name", &line));
  copy_trimmed(m->name, sizeof m->name, line);

  CE_TRY(need_line(c, "the molecular weight", &line));
  CE_TRY(take_double(c, &line, "molecular weight", &m->weight));
  if (!(m->weight > 0))
    return ce_err("%s:%d: molecular weight = %g, expected > 0", c->path, c->lineno, m->weight);
  CE_TRY(end_of_line(c, line, "molecular weight"));

  CE_TRY(read_count(c, "number of energy levels", 1, MAX_LEVELS, &m->nlev));
  m->levels = ce_calloc_array((size_t)m->nlev, sizeof *m->levels, "LAMDA levels");
  if (!m->levels) return -1;
  for (int i = 0; i < m->nlev; i++) {
    lamda_level *L = &m->levels[i];
    snprintf(what, sizeof what, "energy level %d of %d", i + 1, m->nlev);
    CE_TRY(need_line(c, what, &line));
    snprintf(what, sizeof what, "level %d: index", i + 1);
    CE_TRY(take_int(c, &line, what, i + 1, i + 1, &L->index));
    snprintf(what, sizeof what, "level %d: energy (cm^-1)", i + 1);
    CE_TRY(take_double(c, &line, what, &L->energy_cm));
    snprintf(what, sizeof what, "level %d: weight", i + 1);
    CE_TRY(take_double(c, &line, what, &L->weight));
    if (!(L->weight > 0))
      return ce_err("%s:%d: %s = %g, expected > 0", c->path, c->lineno, what, L->weight);
    copy_trimmed(L->qnum, sizeof L->qnum, line);
    if (i == 0) qnum_name_of(c->title, m->qnum_name, sizeof m->qnum_name);
  }

  CE_TRY(read_count(c, "number of radiative transitions", 1, MAX_LINES, &m->nline));
  m->lines = ce_calloc_array((size_t)m->nline, sizeof *m->lines, "LAMDA radiative transitions");
  if (!m->lines) return -1;
  for (int i = 0; i < m->nline; i++) {
    lamda_line *R = &m->lines[i];
    int t = i + 1;
    snprintf(what, sizeof what, "radiative transition %d of %d", t, m->nline);
    CE_TRY(need_line(c, what, &line));
    snprintf(what, sizeof what, "transition %d: index", t);
    CE_TRY(take_int(c, &line, what, t, t, &R->index));
    snprintf(what, sizeof what, "transition %d: upper level", t);
    CE_TRY(take_int(c, &line, what, 1, m->nlev, &R->upper));
    snprintf(what, sizeof what, "transition %d: lower level", t);
    CE_TRY(take_int(c, &line, what, 1, m->nlev, &R->lower));
    if (R->upper == R->lower)
      return ce_err("%s:%d: transition %d: upper level = lower level = %d", c->path, c->lineno,
                    t, R->upper);
    snprintf(what, sizeof what, "transition %d: Einstein A (s^-1)", t);
    CE_TRY(take_double(c, &line, what, &R->A));
    if (!(R->A > 0))
      return ce_err("%s:%d: %s = %g, expected > 0", c->path, c->lineno, what, R->A);
    snprintf(what, sizeof what, "transition %d: frequency (GHz)", t);
    CE_TRY(take_double(c, &line, what, &R->freq_ghz));
    if (!(R->freq_ghz > 0))
      return ce_err("%s:%d: %s = %g, expected > 0", c->path, c->lineno, what, R->freq_ghz);
    snprintf(what, sizeof what, "transition %d: E_u (K)", t);
    CE_TRY(take_double(c, &line, what, &R->eu_k));
    if (!(m->levels[R->upper - 1].energy_cm > m->levels[R->lower - 1].energy_cm))
      return ce_err("%s:%d: transition %d: upper level %d (E = %g cm^-1) is not above lower "
                    "level %d (E = %g cm^-1)",
                    c->path, c->lineno, t, R->upper, m->levels[R->upper - 1].energy_cm,
                    R->lower, m->levels[R->lower - 1].energy_cm);
  }

  CE_TRY(read_count(c, "number of collision partners", 0, MAX_PARTNERS, &m->npart));
  if (m->npart > 0) {
    m->partners = ce_calloc_array((size_t)m->npart, sizeof *m->partners, "LAMDA partners");
    if (!m->partners) return -1;
  }
  for (int k = 0; k < m->npart; k++) {
    lamda_partner *P = &m->partners[k];
    snprintf(what, sizeof what, "collision partner %d: id line", k + 1);
    CE_TRY(need_line(c, what, &line));
    CE_TRY(take_int(c, &line, what, 1, 7, &P->id));
    copy_trimmed(P->description, sizeof P->description, line);
    snprintf(what, sizeof what, "collision partner %d: number of collisional transitions", k + 1);
    CE_TRY(read_count(c, what, 1, MAX_LINES, &P->ntrans));
    snprintf(what, sizeof what, "collision partner %d: number of temperatures", k + 1);
    CE_TRY(read_count(c, what, 1, MAX_TEMPS, &P->ntemp));
    /* every rate takes at least 2 bytes of the file ("1 "): refuse counts the
     * file cannot hold before allocating for them */
    if ((double)P->ntrans * P->ntemp > (double)(c->len - c->pos) / 2)
      return ce_err("%s:%d: collision partner %d: %d transitions x %d temperatures = %.0f rates, "
                    "but only %zu bytes of the file are left (at least 2 per rate)", c->path,
                    c->lineno, k + 1, P->ntrans, P->ntemp, (double)P->ntrans * P->ntemp,
                    c->len - c->pos);
    P->temps = ce_malloc_array((size_t)P->ntemp, sizeof *P->temps, "LAMDA temperatures");
    P->upper = ce_malloc_array((size_t)P->ntrans, sizeof *P->upper, "LAMDA collision levels");
    P->lower = ce_malloc_array((size_t)P->ntrans, sizeof *P->lower, "LAMDA collision levels");
    size_t nr;
    if (ce_mul_size((size_t)P->ntrans, (size_t)P->ntemp, &nr) < 0)
      return ce_err("%s:%d: collision partner %d: too many rates", c->path, c->lineno, k + 1);
    P->rates = ce_malloc_array(nr, sizeof *P->rates, "LAMDA collision rates");
    if (!P->temps || !P->upper || !P->lower || !P->rates) return -1;
    snprintf(what, sizeof what, "collision partner %d: temperature row", k + 1);
    CE_TRY(need_line(c, what, &line));
    for (int j = 0; j < P->ntemp; j++) {
      snprintf(what, sizeof what, "collision partner %d: temperature %d of %d", k + 1, j + 1,
               P->ntemp);
      CE_TRY(take_double(c, &line, what, &P->temps[j]));
      if (!(P->temps[j] > 0))
        return ce_err("%s:%d: %s = %g, expected > 0", c->path, c->lineno, what, P->temps[j]);
      /* the rates are interpolated in T between neighbouring columns
       * (nlte.c): a row out of order would pick the wrong ones silently */
      if (j > 0 && !(P->temps[j] > P->temps[j - 1]))
        return ce_err("%s:%d: %s = %g, expected above temperature %d (%g): the temperatures "
                      "must increase", c->path, c->lineno, what, P->temps[j], j, P->temps[j - 1]);
    }
    CE_TRY(end_of_line(c, line, "temperature row (more values than the count)"));
    for (int i = 0; i < P->ntrans; i++) {
      int t = i + 1, idx;
      snprintf(what, sizeof what, "collision partner %d: rate row %d of %d", k + 1, t, P->ntrans);
      CE_TRY(need_line(c, what, &line));
      snprintf(what, sizeof what, "collision partner %d: rate row %d: index", k + 1, t);
      CE_TRY(take_int(c, &line, what, t, t, &idx));
      snprintf(what, sizeof what, "collision partner %d: rate row %d: upper level", k + 1, t);
      CE_TRY(take_int(c, &line, what, 1, m->nlev, &P->upper[i]));
      snprintf(what, sizeof what, "collision partner %d: rate row %d: lower level", k + 1, t);
      CE_TRY(take_int(c, &line, what, 1, m->nlev, &P->lower[i]));
      for (int j = 0; j < P->ntemp; j++) {
        double *r = &P->rates[(size_t)i * P->ntemp + j];
        snprintf(what, sizeof what, "collision partner %d: rate row %d: rate %d of %d", k + 1, t,
                 j + 1, P->ntemp);
        CE_TRY(take_double(c, &line, what, r));
        if (!(*r >= 0))
          return ce_err("%s:%d: %s = %g, expected >= 0", c->path, c->lineno, what, *r);
      }
      CE_TRY(end_of_line(c, line, "rate row (more values than the number of temperatures)"));
    }
  }
  return 0;
}

/* The largest LAMDA file is a few MB: refuse anything else before reading it
 * (a device such as /dev/zero, a wrong path to a huge file). */
#define LAMDA_MAX_BYTES (64LL << 20)

int lamda_read(const char *path, lamda_molecule *m) {
  memset(m, 0, sizeof *m);
  cursor c = {.path = path};
  struct stat st;
  if (stat(path, &st) == 0 && !S_ISREG(st.st_mode))
    CE_FAIL("%s: not a regular file (a LAMDA molecule file is expected)", path);
  if (stat(path, &st) == 0 && (long long)st.st_size > LAMDA_MAX_BYTES)
    CE_FAIL("%s: %lld bytes, larger than any LAMDA file (at most %lld)", path,
            (long long)st.st_size, LAMDA_MAX_BYTES);
  if (fs_read_all(path, &c.buf, &c.len) < 0) return -1;
  int rc = parse(&c, m);
  free(c.buf);
  if (rc < 0) lamda_free(m);
  return rc;
}

int lamda_parse(const char *name, const char *text, size_t len, lamda_molecule *m) {
  memset(m, 0, sizeof *m);
  if ((long long)len > LAMDA_MAX_BYTES)
    CE_FAIL("%s: %lld bytes, larger than any LAMDA file (at most %lld)", name, (long long)len,
            LAMDA_MAX_BYTES);
  cursor c = {.path = name, .len = len};
  c.buf = malloc(len + 1);
  if (!c.buf) CE_FAIL("%s: out of memory", name);
  memcpy(c.buf, text, len);
  c.buf[len] = 0;
  int rc = parse(&c, m);
  free(c.buf);
  if (rc < 0) lamda_free(m);
  return rc;
}

void lamda_free(lamda_molecule *m) {
  if (!m) return;
  free(m->levels);
  free(m->lines);
  for (int k = 0; m->partners && k < m->npart; k++) {
    free(m->partners[k].temps);
    free(m->partners[k].upper);
    free(m->partners[k].lower);
    free(m->partners[k].rates);
  }
  free(m->partners);
  memset(m, 0, sizeof *m);
}

int lamda_find_transition(const lamda_molecule *m, int upper, int lower) {
  for (int i = 0; i < m->nline; i++)
    if (m->lines[i].upper == upper && m->lines[i].lower == lower) return m->lines[i].index;
  return ce_err("%s: no radiative transition from level %d to level %d (%d levels, %d lines)",
                m->name, upper, lower, m->nlev, m->nline);
}

int lamda_check_transition(const lamda_molecule *m, int transition) {
  if (transition < 1 || transition > m->nline)
    return ce_err("%s: transition %d does not exist, expected 1..%d", m->name, transition,
                  m->nline);
  return 0;
}

#ifndef COEMU_DEFAULT_LAMDA_CO
#define COEMU_DEFAULT_LAMDA_CO "tests/data/lamda/co.dat"
#endif

const char *lamda_default_co_path(void) {
  const char *env = getenv("COEMU_LAMDA_CO");
  return env && *env ? env : COEMU_DEFAULT_LAMDA_CO;
}

/* A level's quantum numbers without quotes and blanks, and without leading
 * zeros in a plain number ("01" -> "1"). */
static void qnum_clean(const char *q, char *out, size_t n) {
  size_t k = 0;
  for (; *q && k + 1 < n; q++)
    if (*q != '"' && *q != '\'' && !isspace((unsigned char)*q)) out[k++] = *q;
  out[k] = '\0';
  size_t digits = strspn(out, "0123456789");
  if (k > 1 && digits == k) {
    size_t z = 0;
    while (z + 1 < k && out[z] == '0') z++;
    memmove(out, out + z, k - z + 1);
  }
}

const char *lamda_transition_label(const lamda_molecule *m, int t, char *buf, size_t len) {
  if (t < 1 || t > m->nline) {
    snprintf(buf, len, "transition %d", t);
    return buf;
  }
  const lamda_line *R = &m->lines[t - 1];
  char u[48], l[48];
  qnum_clean(m->levels[R->upper - 1].qnum, u, sizeof u);
  qnum_clean(m->levels[R->lower - 1].qnum, l, sizeof l);
  if (!*u || !*l)
    snprintf(buf, len, "levels %d-%d", R->upper, R->lower);
  else if (*m->qnum_name)
    snprintf(buf, len, "%s=%s-%s", m->qnum_name, u, l);
  else
    snprintf(buf, len, "%s-%s", u, l);
  return buf;
}
