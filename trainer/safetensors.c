/* safetensors.c - COEmuNet weights as safetensors (see safetensors.h): the
 * writer, a small JSON reader for the header, and the checks. */
#include "trainer/safetensors.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "common/error.h"
#include "common/fsutil.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "safetensors.c reads and writes tensors as raw little-endian values"
#endif

#define HEADER_MAX 100000000ull /* the safetensors library's own limit */

/* ---- metadata ------------------------------------------------------------ */

int safetensors_meta_set(safetensors_meta *md, const char *key, const char *fmt, ...) {
  if (strlen(key) >= SAFETENSORS_KEY) CE_FAIL("metadata key '%s' is too long", key);
  int i = 0;
  while (i < md->n && strcmp(md->key[i], key)) i++;
  if (i == SAFETENSORS_META_MAX) CE_FAIL("more than %d metadata entries", SAFETENSORS_META_MAX);
  va_list ap;
  va_start(ap, fmt);
  int len = vsnprintf(md->value[i], SAFETENSORS_VALUE, fmt, ap);
  va_end(ap);
  if (len < 0 || len >= SAFETENSORS_VALUE) CE_FAIL("metadata value of '%s' is too long", key);
  snprintf(md->key[i], SAFETENSORS_KEY, "%s", key);
  if (i == md->n) md->n++;
  return 0;
}

const char *safetensors_meta_get(const safetensors_meta *md, const char *key) {
  for (int i = 0; i < md->n; i++)
    if (!strcmp(md->key[i], key)) return md->value[i];
  return NULL;
}

int safetensors_meta_put_config(safetensors_meta *md, const coemunet_config *c) {
  CE_TRY(safetensors_meta_set(md, "nfreq", "%d", c->nfreq));
  CE_TRY(safetensors_meta_set(md, "grid", "%d", c->grid));
  CE_TRY(safetensors_meta_set(md, "stem", "%d", c->stem));
  CE_TRY(safetensors_meta_set(md, "enc", "%d,%d,%d", c->enc[0], c->enc[1], c->enc[2]));
  CE_TRY(safetensors_meta_set(md, "latent", "%d", c->latent));
  CE_TRY(safetensors_meta_set(md, "dec", "%d", c->dec));
  return safetensors_meta_set(md, "shortcut", "%s",
                              c->shortcut == COEMUNET_SHORTCUT_INPUT ? "input" : "reference");
}

static int meta_int(const safetensors_meta *md, const char *path, const char *key, int *out) {
  const char *v = safetensors_meta_get(md, key);
  if (!v) CE_FAIL("%s: metadata key '%s' (the architecture) is missing; a file made by `coemu "
                  "export` has it, a file saved elsewhere must carry the keys nfreq, grid, stem, "
                  "enc, latent, dec, shortcut", path, key);
  char *end;
  errno = 0;
  long x = strtol(v, &end, 10);
  if (end == v || *end || errno || x < 1 || x > 1 << 24)
    CE_FAIL("%s: metadata '%s' = '%s': expected a positive integer", path, key, v);
  *out = (int)x;
  return 0;
}

int safetensors_meta_config(const safetensors_meta *md, const char *path, coemunet_config *c) {
  memset(c, 0, sizeof *c);
  CE_TRY(meta_int(md, path, "nfreq", &c->nfreq));
  CE_TRY(meta_int(md, path, "grid", &c->grid));
  CE_TRY(meta_int(md, path, "stem", &c->stem));
  CE_TRY(meta_int(md, path, "latent", &c->latent));
  CE_TRY(meta_int(md, path, "dec", &c->dec));
  const char *e = safetensors_meta_get(md, "enc"), *s = safetensors_meta_get(md, "shortcut");
  char tail;
  if (!e) CE_FAIL("%s: metadata key 'enc' (the architecture) is missing", path);
  if (sscanf(e, "%d,%d,%d%c", &c->enc[0], &c->enc[1], &c->enc[2], &tail) != 3 || c->enc[0] < 1 ||
      c->enc[1] < 1 || c->enc[2] < 1)
    CE_FAIL("%s: metadata 'enc' = '%s': expected three positive integers 'A,B,C'", path, e);
  if (!s) CE_FAIL("%s: metadata key 'shortcut' (the architecture) is missing", path);
  if (!strcmp(s, "reference")) c->shortcut = COEMUNET_SHORTCUT_REFERENCE;
  else if (!strcmp(s, "input")) c->shortcut = COEMUNET_SHORTCUT_INPUT;
  else CE_FAIL("%s: metadata 'shortcut' = '%s': expected 'reference' or 'input'", path, s);
  return 0;
}

/* ---- shapes and names ---------------------------------------------------- */

/* The reference module's shape of parameter p: the 2-D decoder's
 * convolutions lose their unit depth axis. */
static int torch_shape(const coemunet *m, const nn_param *p, uint64_t shape[5]) {
  int nd = p->ndim, drop = m->cfg.nfreq == 1 && !strncmp(p->name, "decoder.layers.", 15) &&
                              p->ndim == 5 && p->shape[2] == 1;
  for (int d = 0, k = 0; d < p->ndim; d++)
    if (!(drop && d == 2)) shape[k++] = (uint64_t)p->shape[d];
  return drop ? nd - 1 : nd;
}

/* 1 if name is "X.running_var" of a BatchNorm X (one that has X.running_mean):
 * X.num_batches_tracked follows it. prefix gets X. */
static int bn_last(const nn_net *net, const char *name, char *prefix, size_t cap) {
  size_t n = strlen(name), k = strlen(".running_var");
  if (n <= k || strcmp(name + n - k, ".running_var") || n - k + 1 > cap) return 0;
  snprintf(prefix, cap, "%.*s", (int)(n - k), name);
  char mean[NN_NAME + 16];
  snprintf(mean, sizeof mean, "%s.running_mean", prefix);
  for (int i = 0; i < net->nparams; i++)
    if (!strcmp(net->params[i].name, mean)) return 1;
  return 0;
}

/* ---- writing ------------------------------------------------------------- */

typedef struct {
  char *b;
  size_t n, cap;
  int oom;
} sbuf;

static void sb_add(sbuf *s, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static void sb_add(sbuf *s, const char *fmt, ...) {
  if (s->oom) return;
  for (;;) {
    va_list ap;
    va_start(ap, fmt);
    int len = vsnprintf(s->b ? s->b + s->n : NULL, s->b ? s->cap - s->n : 0, fmt, ap);
    va_end(ap);
    if (len < 0) {
      s->oom = 1;
      return;
    }
    if (s->b && s->n + (size_t)len < s->cap) {
      s->n += (size_t)len;
      return;
    }
    size_t cap = s->cap ? s->cap : 4096;
    while (cap <= s->n + (size_t)len) cap *= 2;
    char *nb = realloc(s->b, cap);
    if (!nb) {
      s->oom = 1;
      return;
    }
    s->b = nb;
    s->cap = cap;
  }
}

/* A JSON string literal. */
static void sb_str(sbuf *s, const char *v) {
  sb_add(s, "\"");
  for (const unsigned char *p = (const unsigned char *)v; *p; p++) {
    if (*p == '"' || *p == '\\') sb_add(s, "\\%c", *p);
    else if (*p < 0x20) sb_add(s, "\\u%04x", *p);
    else sb_add(s, "%c", *p);
  }
  sb_add(s, "\"");
}

static void sb_entry(sbuf *s, const char *name, const char *dtype, const uint64_t *shape, int nd,
                     uint64_t *off, uint64_t bytes) {
  sb_add(s, s->n > 1 ? "," : "");
  sb_str(s, name);
  sb_add(s, ":{\"dtype\":\"%s\",\"shape\":[", dtype);
  for (int d = 0; d < nd; d++) sb_add(s, "%s%llu", d ? "," : "", (unsigned long long)shape[d]);
  sb_add(s, "],\"data_offsets\":[%llu,%llu]}", (unsigned long long)*off,
         (unsigned long long)(*off + bytes));
  *off += bytes;
}

typedef struct {
  FILE *f;
  int ok, backend_failed;
  int err; /* the errno of the write that failed */
} wctx;

static int wr_chunk(void *ctx, float *chunk, size_t off, size_t n) {
  (void)off;
  wctx *w = ctx;
  if (w->ok && fwrite(chunk, sizeof(float), n, w->f) != n) w->ok = 0, w->err = errno;
  return 0;
}

int safetensors_save(const char *path, const coemunet *m, const safetensors_meta *md, int64_t nbt) {
  const nn_net *net = &m->net;
  safetensors_meta meta = {0};
  if (md) meta = *md;
  CE_TRY(safetensors_meta_put_config(&meta, &m->cfg));
  sbuf s = {0};
  sb_add(&s, "{");
  uint64_t off = 0;
  char prefix[NN_NAME], name[NN_NAME + 32];
  for (int i = 0; i < net->nparams; i++) {
    const nn_param *p = &net->params[i];
    uint64_t shape[5];
    int nd = torch_shape(m, p, shape);
    sb_entry(&s, p->name, "F32", shape, nd, &off, 4 * (uint64_t)p->n);
    if (bn_last(net, p->name, prefix, sizeof prefix)) {
      snprintf(name, sizeof name, "%s.num_batches_tracked", prefix);
      sb_entry(&s, name, "I64", NULL, 0, &off, 8);
    }
  }
  sb_add(&s, ",\"__metadata__\":{");
  for (int i = 0; i < meta.n; i++) {
    sb_add(&s, i ? "," : "");
    sb_str(&s, meta.key[i]);
    sb_add(&s, ":");
    sb_str(&s, meta.value[i]);
  }
  sb_add(&s, "}}");
  while (!s.oom && s.n % 8) sb_add(&s, " "); /* the data starts 8-byte aligned */
  if (s.oom) {
    free(s.b);
    CE_FAIL("%s: out of memory for the safetensors header", path);
  }
  char tmp[4096];
  FILE *f;
  if (fs_open_tmp(path, tmp, sizeof tmp, &f) < 0) {
    free(s.b);
    return -1;
  }
  uint64_t hl = s.n;
  wctx w = {f, fwrite(&hl, 8, 1, f) == 1 && fwrite(s.b, 1, s.n, f) == s.n, 0, 0};
  if (!w.ok) w.err = errno;
  free(s.b);
  for (int i = 0; i < net->nparams && w.ok; i++) {
    const nn_param *p = &net->params[i];
    if (nn_download_chunks(net, p->w, (size_t)p->n, wr_chunk, &w) < 0) w.ok = 0, w.backend_failed = 1;
    if (w.ok && bn_last(net, p->name, prefix, sizeof prefix) && fwrite(&nbt, 8, 1, f) != 1)
      w.ok = 0, w.err = errno;
  }
  if (!w.ok) {
    char msg[1024];
    if (w.backend_failed) snprintf(msg, sizeof msg, "%s", ce_err_msg());
    else snprintf(msg, sizeof msg, "write failed: %s", w.err ? strerror(w.err) : "unknown error");
    fs_commit_tmp(f, tmp, path, 0);
    return ce_err("%s: %s", path, msg);
  }
  return fs_commit_tmp(f, tmp, path, 1);
}

/* ---- reading: the header ------------------------------------------------- */

typedef struct {
  char name[NN_NAME];
  char dtype[8];
  int ndim;
  uint64_t shape[8];
  uint64_t begin, end;
  int used; /* matched to a parameter */
} entry;

typedef struct {
  entry *e;
  int n, cap;
  safetensors_meta md;
  uint64_t hlen, dlen; /* header bytes, data bytes */
} header;

typedef struct {
  const char *s, *path;
  size_t n, i;
} jp;

static int jerr(const jp *p, const char *what) {
  return ce_err("%s: safetensors header, byte %zu of the file: %s", p->path, p->i + 8, what);
}

static void ws(jp *p) {
  while (p->i < p->n && p->s[p->i] && strchr(" \t\r\n", p->s[p->i])) p->i++; /* NUL: no space */
}

static int peek(jp *p) {
  ws(p);
  return p->i < p->n ? (unsigned char)p->s[p->i] : -1;
}

static int expect(jp *p, char c) {
  if (peek(p) != c) {
    char m[64];
    snprintf(m, sizeof m, "expected '%c'", c);
    return jerr(p, m);
  }
  p->i++;
  return 0;
}

static int hexval(int c) {
  return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10
                                        : c >= 'A' && c <= 'F' ? c - 'A' + 10 : -1;
}

/* A JSON string into out (cap bytes), UTF-8 (\u escapes encoded). */
static int jstring(jp *p, char *out, size_t cap, const char *what) {
  if (peek(p) != '"') {
    char m[96];
    snprintf(m, sizeof m, "expected a string (%s)", what);
    return jerr(p, m);
  }
  p->i++;
  size_t k = 0;
  for (;;) {
    if (p->i >= p->n) return jerr(p, "unterminated string");
    unsigned c = (unsigned char)p->s[p->i++];
    if (c == '"') break;
    if (c < 0x20) return jerr(p, "control character in a string");
    unsigned cp = c;
    if (c == '\\') {
      if (p->i >= p->n) return jerr(p, "unterminated string");
      char e = p->s[p->i++];
      /* strchr finds a string's own terminator: a NUL after the backslash is
       * no escape, not an empty character that would cut the name short */
      const char *esc = e ? strchr("\"\\/bfnrt", e) : NULL;
      if (esc) cp = (unsigned char)"\"\\/\b\f\n\r\t"[esc - "\"\\/bfnrt"];
      else if (e == 'u') {
        cp = 0;
        for (int d = 0; d < 4; d++) {
          int h = p->i < p->n ? hexval(p->s[p->i]) : -1;
          if (h < 0) return jerr(p, "bad \\u escape");
          cp = cp * 16 + (unsigned)h;
          p->i++;
        }
        if (cp == 0 || (cp >= 0xd800 && cp < 0xe000))
          return jerr(p, "\\u0000 and surrogate escapes are not supported");
      } else
        return jerr(p, "bad escape");
    }
    unsigned char u[4];
    int nu;
    if (c != '\\' || cp < 0x80) u[0] = (unsigned char)cp, nu = 1;
    else if (cp < 0x800) u[0] = (unsigned char)(0xc0 | cp >> 6), u[1] = (unsigned char)(0x80 | (cp & 63)), nu = 2;
    else
      u[0] = (unsigned char)(0xe0 | cp >> 12), u[1] = (unsigned char)(0x80 | ((cp >> 6) & 63)),
      u[2] = (unsigned char)(0x80 | (cp & 63)), nu = 3;
    if (k + (size_t)nu >= cap) {
      char m[96];
      snprintf(m, sizeof m, "string too long (%s: at most %zu bytes)", what, cap - 1);
      return jerr(p, m);
    }
    memcpy(out + k, u, (size_t)nu);
    k += (size_t)nu;
  }
  out[k] = 0;
  return 0;
}

static int juint(jp *p, uint64_t *v, const char *what) {
  ws(p);
  size_t start = p->i;
  uint64_t x = 0;
  while (p->i < p->n && p->s[p->i] >= '0' && p->s[p->i] <= '9') {
    unsigned d = (unsigned)(p->s[p->i] - '0');
    if (x > (UINT64_MAX - d) / 10) return jerr(p, "integer too large");
    x = x * 10 + d;
    p->i++;
  }
  if (p->i == start) {
    char m[96];
    snprintf(m, sizeof m, "expected a non-negative integer (%s)", what);
    return jerr(p, m);
  }
  *v = x;
  return 0;
}

/* [u, u, ...] into v (at most cap), count to *n. */
static int juints(jp *p, uint64_t *v, int cap, int *n, const char *what) {
  CE_TRY(expect(p, '['));
  *n = 0;
  if (peek(p) == ']') {
    p->i++;
    return 0;
  }
  for (;;) {
    if (*n == cap) {
      char m[96];
      snprintf(m, sizeof m, "%s: more than %d values", what, cap);
      return jerr(p, m);
    }
    CE_TRY(juint(p, &v[(*n)++], what));
    int c = peek(p);
    p->i++;
    if (c == ']') return 0;
    if (c != ',') return p->i--, jerr(p, "expected ',' or ']'");
  }
}

static int dtype_size(const char *d) {
  static const struct { const char *name; int size; } t[] = {
      {"F64", 8}, {"F32", 4}, {"F16", 2}, {"BF16", 2}, {"I64", 8}, {"I32", 4}, {"I16", 2},
      {"I8", 1},  {"U64", 8}, {"U32", 4}, {"U16", 2},  {"U8", 1},  {"BOOL", 1}, {"F8_E4M3", 1},
      {"F8_E5M2", 1}};
  for (size_t i = 0; i < sizeof t / sizeof *t; i++)
    if (!strcmp(d, t[i].name)) return t[i].size;
  return 0;
}

static int parse_entry(jp *p, entry *e) {
  CE_TRY(expect(p, '{'));
  int have = 0; /* 1 dtype, 2 shape, 4 data_offsets */
  if (peek(p) == '}') return jerr(p, "empty tensor entry");
  for (;;) {
    char key[32];
    CE_TRY(jstring(p, key, sizeof key, "a tensor entry's key"));
    CE_TRY(expect(p, ':'));
    if (!strcmp(key, "dtype") && !(have & 1)) {
      CE_TRY(jstring(p, e->dtype, sizeof e->dtype, "dtype"));
      have |= 1;
    } else if (!strcmp(key, "shape") && !(have & 2)) {
      CE_TRY(juints(p, e->shape, 8, &e->ndim, "shape"));
      have |= 2;
    } else if (!strcmp(key, "data_offsets") && !(have & 4)) {
      uint64_t o[2];
      int n;
      CE_TRY(juints(p, o, 2, &n, "data_offsets"));
      if (n != 2) return jerr(p, "data_offsets: expected [begin, end]");
      e->begin = o[0];
      e->end = o[1];
      have |= 4;
    } else {
      char m[NN_NAME + 96];
      snprintf(m, sizeof m, "tensor '%s': unexpected or repeated key '%s'", e->name, key);
      return jerr(p, m);
    }
    int c = peek(p);
    p->i++;
    if (c == '}') break;
    if (c != ',') return p->i--, jerr(p, "expected ',' or '}'");
  }
  if (have != 7) {
    char m[NN_NAME + 64];
    snprintf(m, sizeof m, "tensor '%s': missing %s", e->name,
             !(have & 1) ? "dtype" : !(have & 2) ? "shape" : "data_offsets");
    return jerr(p, m);
  }
  return 0;
}

static int parse_meta(jp *p, safetensors_meta *md) {
  CE_TRY(expect(p, '{'));
  if (peek(p) == '}') return p->i++, 0;
  for (;;) {
    char k[SAFETENSORS_KEY], v[SAFETENSORS_VALUE];
    CE_TRY(jstring(p, k, sizeof k, "a metadata key"));
    CE_TRY(expect(p, ':'));
    CE_TRY(jstring(p, v, sizeof v, "a metadata value (safetensors metadata are strings)"));
    if (safetensors_meta_get(md, k)) return jerr(p, "repeated metadata key");
    if (safetensors_meta_set(md, k, "%s", v) < 0) return jerr(p, ce_err_msg());
    int c = peek(p);
    p->i++;
    if (c == '}') return 0;
    if (c != ',') return p->i--, jerr(p, "expected ',' or '}'");
  }
}

static int by_begin(const void *a, const void *b) {
  const entry *x = *(entry *const *)a, *y = *(entry *const *)b;
  return x->begin < y->begin ? -1 : x->begin > y->begin ? 1 : (x->end > y->end) - (x->end < y->end);
}

static void header_free(header *h) {
  free(h->e);
  memset(h, 0, sizeof *h);
}

/* Read and check the whole header of an open file. */
static int header_read(const char *path, FILE *f, header *h) {
  memset(h, 0, sizeof *h);
  struct stat sb;
  if (fstat(fileno(f), &sb) < 0) CE_FAIL("%s: cannot stat", path);
  uint64_t size = (uint64_t)sb.st_size, hl;
  if (size < 8 || fread(&hl, 8, 1, f) != 1)
    CE_FAIL("%s: %llu bytes: too short for a safetensors file (an 8-byte header length first)",
            path, (unsigned long long)size);
  if (hl < 2 || hl > HEADER_MAX || hl > size - 8)
    CE_FAIL("%s: header length %llu (bytes 0-7) does not fit: the file has %llu bytes after it "
            "(at most %llu allowed); not a safetensors file?",
            path, (unsigned long long)hl, (unsigned long long)(size - 8), HEADER_MAX);
  h->hlen = hl;
  h->dlen = size - 8 - hl;
  char *text = malloc(hl);
  if (!text) CE_FAIL("%s: out of memory for a %llu-byte header", path, (unsigned long long)hl);
  if (fread(text, 1, hl, f) != hl) {
    free(text);
    CE_FAIL("%s: read error in the header", path);
  }
  jp p = {text, path, hl, 0};
  int rc = expect(&p, '{');
  if (rc == 0 && peek(&p) == '}') p.i++;
  else
    while (rc == 0) {
      char name[256];
      if ((rc = jstring(&p, name, sizeof name, "a tensor name")) < 0) break;
      if ((rc = expect(&p, ':')) < 0) break;
      if (!strcmp(name, "__metadata__")) {
        if (h->md.n) {
          rc = jerr(&p, "repeated __metadata__");
          break;
        }
        rc = parse_meta(&p, &h->md);
      } else {
        if (strlen(name) >= NN_NAME) {
          rc = jerr(&p, "tensor name too long for a COEmuNet parameter");
          break;
        }
        for (int i = 0; i < h->n; i++)
          if (!strcmp(h->e[i].name, name)) {
            rc = ce_err("%s: tensor '%s' appears twice in the header", path, name);
            break;
          }
        if (rc < 0) break;
        if (h->n == h->cap) {
          int cap = h->cap ? 2 * h->cap : 256;
          entry *ne = realloc(h->e, sizeof *ne * (size_t)cap);
          if (!ne) {
            rc = ce_err("%s: out of memory", path);
            break;
          }
          h->e = ne;
          h->cap = cap;
        }
        entry *e = &h->e[h->n++];
        memset(e, 0, sizeof *e);
        snprintf(e->name, sizeof e->name, "%s", name);
        rc = parse_entry(&p, e);
      }
      if (rc < 0) break;
      int c = peek(&p);
      p.i++;
      if (c == '}') break;
      if (c != ',') rc = (p.i--, jerr(&p, "expected ',' or '}'"));
    }
  if (rc == 0 && peek(&p) != -1) rc = jerr(&p, "extra bytes after the header's JSON object");
  free(text);
  if (rc < 0) return header_free(h), -1;
  /* each entry's size, then the tiling of the data buffer */
  entry **ord = malloc(sizeof *ord * (size_t)(h->n ? h->n : 1));
  if (!ord) return header_free(h), ce_err("%s: out of memory", path);
  for (int i = 0; i < h->n && rc == 0; i++) {
    entry *e = &h->e[i];
    ord[i] = e;
    int ds = dtype_size(e->dtype);
    if (!ds) {
      rc = ce_err("%s: tensor '%s': unknown dtype '%s'", path, e->name, e->dtype);
      break;
    }
    uint64_t bytes = (uint64_t)ds;
    for (int d = 0; d < e->ndim && rc == 0; d++)
      if (e->shape[d] && bytes > UINT64_MAX / e->shape[d])
        rc = ce_err("%s: tensor '%s': shape too large", path, e->name);
      else
        bytes *= e->shape[d];
    if (rc == 0 && (e->end < e->begin || e->end - e->begin != bytes))
      rc = ce_err("%s: tensor '%s': data_offsets [%llu, %llu] span %lld bytes, its dtype %s and "
                  "shape need %llu", path, e->name, (unsigned long long)e->begin,
                  (unsigned long long)e->end, (long long)(e->end - e->begin), e->dtype,
                  (unsigned long long)bytes);
  }
  if (rc == 0) {
    qsort(ord, (size_t)h->n, sizeof *ord, by_begin);
    uint64_t at = 0;
    for (int i = 0; i < h->n && rc == 0; i++) {
      if (ord[i]->begin != at)
        rc = ce_err("%s: tensor '%s' starts at data byte %llu, expected %llu: the tensors must "
                    "tile the data without holes or overlaps", path, ord[i]->name,
                    (unsigned long long)ord[i]->begin, (unsigned long long)at);
      at = ord[i]->end;
    }
    if (rc == 0 && at != h->dlen)
      rc = ce_err("%s: the tensors cover %llu data bytes, the file has %llu after its header (%s)",
                  path, (unsigned long long)at, (unsigned long long)h->dlen,
                  at > h->dlen ? "truncated" : "extra bytes");
  }
  free(ord);
  if (rc < 0) header_free(h);
  return rc;
}

int safetensors_read_meta(const char *path, safetensors_meta *md) {
  FILE *f = fopen(path, "rb");
  if (!f) CE_FAIL("%s: cannot open: %s", path, strerror(errno));
  header h;
  int rc = header_read(path, f, &h);
  fclose(f);
  if (rc < 0) return -1;
  *md = h.md;
  header_free(&h);
  return 0;
}

/* ---- reading: the tensors ------------------------------------------------ */

static void shape_str(const uint64_t *s, int nd, char *buf, size_t cap) {
  size_t k = (size_t)snprintf(buf, cap, "[");
  for (int d = 0; d < nd && k < cap; d++)
    k += (size_t)snprintf(buf + k, cap - k, "%s%llu", d ? ", " : "", (unsigned long long)s[d]);
  if (k < cap) snprintf(buf + k, cap - k, "]");
}

static entry *find(header *h, const char *name) {
  for (int i = 0; i < h->n; i++)
    if (!strcmp(h->e[i].name, name)) return &h->e[i];
  return NULL;
}

int safetensors_load(const char *path, coemunet *m) {
  nn_net *net = &m->net;
  FILE *f = fopen(path, "rb");
  if (!f) CE_FAIL("%s: cannot open: %s", path, strerror(errno));
  header h;
  if (header_read(path, f, &h) < 0) {
    fclose(f);
    return -1;
  }
  int rc = 0;
  char prefix[NN_NAME], name[NN_NAME + 32], a[160], b[160], c5[160];
  for (int i = 0; i < net->nparams && rc == 0; i++) {
    const nn_param *p = &net->params[i];
    entry *e = find(&h, p->name);
    uint64_t ts[5], cs[5];
    int tn = torch_shape(m, p, ts);
    for (int d = 0; d < p->ndim; d++) cs[d] = (uint64_t)p->shape[d];
    if (!e) {
      rc = ce_err("%s: tensor '%s' is missing (COEmuNet nfreq %d, grid %d has it, shape %s)", path,
                  p->name, m->cfg.nfreq, m->cfg.grid, (shape_str(ts, tn, a, sizeof a), a));
      break;
    }
    e->used = 1;
    if (strcmp(e->dtype, "F32"))
      rc = ce_err("%s: tensor '%s' has dtype %s, expected F32 (save the model in float32: "
                  "model.float())", path, p->name, e->dtype);
    int same_t = e->ndim == tn && !memcmp(e->shape, ts, sizeof *ts * (size_t)tn);
    int same_c = e->ndim == p->ndim && !memcmp(e->shape, cs, sizeof *cs * (size_t)p->ndim);
    if (rc == 0 && !same_t && !same_c) {
      shape_str(e->shape, e->ndim, a, sizeof a);
      shape_str(ts, tn, b, sizeof b);
      shape_str(cs, p->ndim, c5, sizeof c5);
      rc = ce_err("%s: tensor '%s' has shape %s, expected %s%s%s (COEmuNet nfreq %d, grid %d, "
                  "stem %d, enc %d,%d,%d, latent %d, dec %d)", path, p->name, a, b,
                  tn != p->ndim ? " or " : "", tn != p->ndim ? c5 : "", m->cfg.nfreq, m->cfg.grid,
                  m->cfg.stem, m->cfg.enc[0], m->cfg.enc[1], m->cfg.enc[2], m->cfg.latent,
                  m->cfg.dec);
    }
    if (rc == 0 && bn_last(net, p->name, prefix, sizeof prefix)) {
      snprintf(name, sizeof name, "%s.num_batches_tracked", prefix);
      entry *t = find(&h, name);
      if (t) { /* optional: a file saved without it is fine */
        t->used = 1;
        if (strcmp(t->dtype, "I64") || t->ndim != 0)
          rc = ce_err("%s: tensor '%s' has dtype %s and %d dimensions, expected I64, shape []",
                      path, name, t->dtype, t->ndim);
      }
    }
  }
  for (int i = 0; i < h.n && rc == 0; i++)
    if (!h.e[i].used)
      rc = ce_err("%s: unexpected tensor '%s': not a parameter or buffer of COEmuNet nfreq %d, "
                  "grid %d, shortcut %s", path, h.e[i].name, m->cfg.nfreq, m->cfg.grid,
                  m->cfg.shortcut == COEMUNET_SHORTCUT_INPUT ? "input" : "reference");
  /* everything matched: the values */
  float *buf = NULL;
  size_t cap = 0;
  for (int i = 0; i < net->nparams && rc == 0; i++) {
    const nn_param *p = &net->params[i];
    entry *e = find(&h, p->name);
    if ((size_t)p->n > cap) {
      free(buf);
      cap = (size_t)p->n;
      if (!(buf = ce_malloc_array(cap, sizeof *buf, path))) {
        rc = -1;
        break;
      }
    }
    if (fseeko(f, (off_t)(8 + h.hlen + e->begin), SEEK_SET) != 0 ||
        fread(buf, sizeof *buf, (size_t)p->n, f) != (size_t)p->n)
      rc = ce_err("%s: tensor '%s': read error at byte %llu", path, p->name,
                  (unsigned long long)(8 + h.hlen + e->begin));
    else if (nn_param_upload(net, i, buf) < 0)
      rc = ce_err("%s: tensor '%s': %s", path, p->name, ce_err_msg());
  }
  free(buf);
  fclose(f);
  header_free(&h);
  return rc;
}
