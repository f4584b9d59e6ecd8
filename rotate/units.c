/* units.c - sidecar YAML parsing (libyaml events) and unit conversion. */
#include "rotate/units.h"

#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <yaml.h>

#include "common/cli.h"
#include "common/error.h"
#include "common/fsutil.h"

enum { K_NUM, K_BOOL, K_STR, K_SYSTEM, K_INT };

typedef struct {
  const char *key;
  int kind;
  size_t off;
  int required; /* 1 required; 2 one of unit_numberdensity/unit_density */
  size_t seen_off;
} key_def;

#define OFF(f) offsetof(units, f)

static const key_def keys[] = {
    {"version", K_INT, OFF(version), 1, 0},
    {"unit_system", K_SYSTEM, OFF(si), 1, 0},
    {"unit_length", K_NUM, OFF(unit_length), 1, 0},
    {"unit_numberdensity", K_NUM, OFF(unit_numberdensity), 2, 0},
    {"unit_density", K_NUM, OFF(unit_density), 2, 0},
    {"he_abundance", K_NUM, OFF(he_abundance), 0, 0},
    {"unit_velocity", K_NUM, OFF(unit_velocity), 1, 0},
    {"mu", K_NUM, OFF(mu), 1, 0},
    {"co_abundance", K_NUM, OFF(co_abundance), 1, 0},
    {"stretched", K_BOOL, OFF(stretched), 1, 0},
    {"gamma", K_NUM, OFF(gamma), 0, OFF(has_gamma)},
    {"isothermal_constant", K_NUM, OFF(isothermal_constant), 0, OFF(has_isothermal)},
    {"temperature_variable", K_STR, OFF(temperature_variable), 0, 0},
    {NULL, 0, 0, 0, 0}};

static int at(const char *name, yaml_mark_t mk, const char *fmt, const char *a, const char *b) {
  char msg[512];
  snprintf(msg, sizeof msg, fmt, a, b);
  return ce_err("%s:%zu:%zu: %s", name, mk.line + 1, mk.column + 1, msg);
}

static int set_value(const key_def *k, const char *val, yaml_mark_t mk, const char *name,
                     units *u) {
  char *base = (char *)u;
  switch (k->kind) {
  case K_NUM: {
    double v;
    if (cli_parse_double(val, &v) < 0 || !isfinite(v))
      return at(name, mk, "%s: '%s' is not a number", k->key, val);
    int positive = strcmp(k->key, "he_abundance") != 0;
    if (positive ? !(v > 0) : !(v >= 0))
      return at(name, mk, "%s: %s, expected a positive value", k->key, val);
    *(double *)(base + k->off) = v;
    if (k->seen_off) *(int *)(base + k->seen_off) = 1;
    return 0;
  }
  case K_INT: {
    int64_t v;
    if (cli_parse_int(val, &v) < 0) return at(name, mk, "%s: '%s' is not an integer", k->key, val);
    if (v != 1) return at(name, mk, "%s: %s, expected 1", k->key, val);
    *(int *)(base + k->off) = (int)v;
    return 0;
  }
  case K_BOOL:
    if (!strcmp(val, "true") || !strcmp(val, "True") || !strcmp(val, "TRUE"))
      *(int *)(base + k->off) = 1;
    else if (!strcmp(val, "false") || !strcmp(val, "False") || !strcmp(val, "FALSE"))
      *(int *)(base + k->off) = 0;
    else
      return at(name, mk, "%s: '%s', expected true or false", k->key, val);
    return 0;
  case K_SYSTEM:
    if (!strcmp(val, "si")) u->si = 1;
    else if (!strcmp(val, "cgs")) u->si = 0;
    else return at(name, mk, "%s: '%s', expected cgs or si", k->key, val);
    return 0;
  case K_STR:
    if (!*val || strlen(val) >= sizeof u->temperature_variable)
      return at(name, mk, "%s: '%s', expected a variable name of 1..63 characters", k->key, val);
    snprintf(base + k->off, sizeof u->temperature_variable, "%s", val);
    return 0;
  }
  return 0;
}

int units_parse(const char *text, size_t len, const char *name, units *u) {
  memset(u, 0, sizeof *u);
  snprintf(u->path, sizeof u->path, "%s", name);
  u->he_abundance = 0.1;
  yaml_parser_t p;
  if (!yaml_parser_initialize(&p)) CE_FAIL("%s: cannot initialise the YAML parser", name);
  yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
  int seen[32] = {0};
  int depth = 0, rc = 0, done = 0, expect_key = 1, nmaps = 0;
  const key_def *cur = NULL;
  yaml_mark_t cur_mark = {0};
  while (!done && rc == 0) {
    yaml_event_t ev;
    if (!yaml_parser_parse(&p, &ev)) {
      rc = ce_err("%s:%zu:%zu: YAML syntax: %s", name, p.problem_mark.line + 1,
                  p.problem_mark.column + 1, p.problem ? p.problem : "error");
      break;
    }
    yaml_mark_t mk = ev.start_mark;
    switch (ev.type) {
    case YAML_STREAM_END_EVENT: done = 1; break;
    case YAML_MAPPING_START_EVENT:
      if (depth > 0 || nmaps > 0)
        rc = at(name, mk, "%s%s: expected a plain value, found a mapping", cur ? cur->key : "",
                "");
      depth++;
      nmaps++;
      break;
    case YAML_MAPPING_END_EVENT: depth--; break;
    case YAML_SEQUENCE_START_EVENT:
      rc = at(name, mk, "%s%s: expected a plain value, found a list", cur ? cur->key : "document",
              "");
      break;
    case YAML_ALIAS_EVENT: rc = at(name, mk, "aliases are not allowed%s%s", "", ""); break;
    case YAML_SCALAR_EVENT: {
      const char *val = (const char *)ev.data.scalar.value;
      if (depth != 1) {
        rc = at(name, mk, "expected a mapping of keys to values, found '%s'%s", val, "");
      } else if (expect_key) {
        cur = NULL;
        int i;
        for (i = 0; keys[i].key; i++)
          if (!strcmp(keys[i].key, val)) break;
        if (!keys[i].key) {
          rc = at(name, mk, "unknown key '%s'%s (see docs/sidecar.md)", val, "");
        } else if (seen[i]) {
          rc = at(name, mk, "key '%s' given twice%s", val, "");
        } else {
          seen[i] = 1;
          cur = &keys[i];
          cur_mark = mk;
          expect_key = 0;
        }
      } else {
        if (ev.data.scalar.style != YAML_PLAIN_SCALAR_STYLE && cur->kind != K_STR &&
            cur->kind != K_SYSTEM)
          rc = at(name, mk, "%s: '%s' is quoted, expected a plain value", cur->key, val);
        else
          rc = set_value(cur, val, mk, name, u);
        expect_key = 1;
      }
      break;
    }
    default: break;
    }
    yaml_event_delete(&ev);
  }
  yaml_parser_delete(&p);
  (void)cur_mark;
  if (rc < 0) return -1;
  if (nmaps == 0) CE_FAIL("%s: expected a mapping of keys to values (docs/sidecar.md)", name);
  int have_density = 0;
  for (int i = 0; keys[i].key; i++) {
    if (keys[i].required == 1 && !seen[i])
      CE_FAIL("%s: the required key '%s' is missing (docs/sidecar.md)", name, keys[i].key);
    if (keys[i].required == 2 && seen[i]) have_density = 1;
  }
  if (!have_density)
    CE_FAIL("%s: give unit_numberdensity or unit_density (docs/sidecar.md)", name);
  if (u->unit_numberdensity > 0 && u->unit_density > 0) {
    /* one implies the other (as in AMRVAC): both given must agree, or the
     * density scale would be unit_density's while the user meant the other */
    double implied = (1 + 4 * u->he_abundance) * UNITS_M_H * u->unit_numberdensity *
                     (u->si ? 1.0 : 1e3); /* kg m^-3 or g cm^-3 */
    if (!(fabs(u->unit_density - implied) <= 1e-6 * implied))
      CE_FAIL("%s: unit_numberdensity %g and unit_density %g disagree ((1 + 4 he_abundance) m_H "
              "unit_numberdensity = %g): give one of them (docs/sidecar.md)",
              name, u->unit_numberdensity, u->unit_density, implied);
  }
  if (!(u->co_abundance > 0 && u->co_abundance <= 1))
    CE_FAIL("%s: co_abundance = %g, expected 0 < n_CO/n_H2 <= 1", name, u->co_abundance);
  if (u->has_gamma && !(u->gamma > 1))
    CE_FAIL("%s: gamma = %g, expected > 1", name, u->gamma);
  return 0;
}

int units_read(const char *path, units *u) {
  char *buf;
  size_t len;
  if (fs_read_all(path, &buf, &len) < 0) return ce_err_prefix("units sidecar");
  int rc = units_parse(buf, len, path, u);
  free(buf);
  return rc;
}

int units_find(const char *dat_path, char *out, size_t out_len) {
  char cand[2][2048];
  size_t n = strlen(dat_path);
  if (n > 4 && !strcmp(dat_path + n - 4, ".dat"))
    snprintf(cand[0], sizeof cand[0], "%.*s.units.yaml", (int)(n - 4), dat_path);
  else
    snprintf(cand[0], sizeof cand[0], "%s.units.yaml", dat_path);
  const char *slash = strrchr(dat_path, '/');
  if (slash)
    snprintf(cand[1], sizeof cand[1], "%.*s/units.yaml", (int)(slash - dat_path), dat_path);
  else
    snprintf(cand[1], sizeof cand[1], "units.yaml");
  for (int i = 0; i < 2; i++) {
    struct stat st;
    if (stat(cand[i], &st) == 0 && S_ISREG(st.st_mode)) {
      snprintf(out, out_len, "%s", cand[i]);
      return 1;
    }
  }
  return 0;
}

void units_scales(const units *u, units_si *s) {
  double lf = u->si ? 1.0 : 1e-2, nf = u->si ? 1.0 : 1e6, df = u->si ? 1.0 : 1e3;
  s->length = u->unit_length * lf;
  s->velocity = u->unit_velocity * lf;
  double mh = UNITS_M_H; /* kg */
  if (u->unit_density > 0)
    s->density = u->unit_density * df;
  else
    s->density = (1 + 4 * u->he_abundance) * mh * u->unit_numberdensity * nf;
  s->pressure = s->density * s->velocity * s->velocity;
  s->n_h_per_rho = s->density / ((1 + 4 * u->he_abundance) * mh);
}

int units_map_make(const units *u, const amrvac_header *h, units_map *m) {
  memset(m, 0, sizeof *m);
  units_scales(u, &m->si);
  m->co_abundance = u->co_abundance;
  m->mu = u->mu;
  m->he_abundance = u->he_abundance;
  m->ndir = h->ndir;
  m->irho = amrvac_var_index(h, "rho");
  if (m->irho < 0) CE_FAIL("%s: no variable 'rho' in the snapshot", u->path);
  for (int d = 0; d < 3; d++) {
    char nm[8];
    snprintf(nm, sizeof nm, "m%d", d + 1);
    m->im[d] = amrvac_var_index(h, nm);
    if (d < h->ndir && m->im[d] < 0) CE_FAIL("%s: no momentum variable '%s' in the snapshot",
                                             u->path, nm);
  }
  m->ie = amrvac_var_index(h, "e");
  m->itemp = -1;
  if (u->temperature_variable[0]) {
    m->itemp = amrvac_var_index(h, u->temperature_variable);
    if (m->itemp < 0)
      CE_FAIL("%s: temperature_variable '%s' is not a variable of the snapshot", u->path,
              u->temperature_variable);
    return 0;
  }
  if (u->has_gamma) m->gamma = u->gamma;
  else {
    int ig = -1;
    for (int i = 0; i < h->n_params; i++)
      if (!strcmp(h->param_names[i], "gamma")) ig = i;
    if (ig < 0) CE_FAIL("%s: no gamma in the snapshot's params and none in the sidecar", u->path);
    m->gamma = h->params[ig];
    if (!(m->gamma > 1)) CE_FAIL("%s: params gamma = %g, expected > 1", u->path, m->gamma);
  }
  if (m->ie < 0) {
    if (!u->has_isothermal)
      CE_FAIL("%s: the snapshot has no energy variable 'e': give isothermal_constant or "
              "temperature_variable in the sidecar",
              u->path);
    m->isothermal = 1;
    m->isothermal_constant = u->isothermal_constant;
  }
  return 0;
}

void units_cell(const units_map *m, const double *w, size_t stride, double *n_co, double *T,
                double v[3]) {
  double rho = w[(size_t)m->irho * stride];
  double mom[3] = {0, 0, 0}, m2 = 0;
  for (int d = 0; d < 3; d++)
    if (m->im[d] >= 0) {
      mom[d] = w[(size_t)m->im[d] * stride];
      m2 += mom[d] * mom[d];
    }
  for (int d = 0; d < 3; d++) v[d] = rho > 0 ? mom[d] / rho * m->si.velocity : 0;
  *n_co = m->co_abundance * 0.5 * rho * m->si.n_h_per_rho;
  if (m->itemp >= 0) {
    *T = w[(size_t)m->itemp * stride];
    return;
  }
  double p;
  if (m->isothermal)
    p = m->isothermal_constant * pow(rho, m->gamma);
  else
    p = (m->gamma - 1) * (w[(size_t)m->ie * stride] - 0.5 * (rho > 0 ? m2 / rho : 0));
  double rho_si = rho * m->si.density, p_si = p * m->si.pressure;
  *T = rho_si > 0 ? m->mu * UNITS_M_H * p_si / (rho_si * UNITS_K_B) : 0;
}
