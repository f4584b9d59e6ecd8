/* checkpoint.c - versioned, checksummed checkpoints (see checkpoint.h). The
 * tensors are backend memory: they are written and read through a bounded
 * host buffer (nn_download_chunks / nn_upload_chunks). */
#include "trainer/checkpoint.h"

#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <zlib.h>

#include "common/error.h"
#include "common/fsutil.h"

#if defined(__BYTE_ORDER__) && __BYTE_ORDER__ != __ORDER_LITTLE_ENDIAN__
#error "checkpoint.c writes tensors as raw little-endian floats"
#endif

static const char MAGIC[8] = {'C', 'O', 'E', 'M', 'U', 'C', 'K', 'P'};

enum { FLAG_TRAINABLE = 1, FLAG_USED = 2, FLAG_ADAM = 4 };

/* ---- the fixed header --------------------------------------------------- */

typedef struct {
  uint32_t arch[9]; /* nfreq grid stem enc0 enc1 enc2 latent dec shortcut */
  uint64_t seed, step;
  uint32_t epoch, adam_kind;
  double lr, beta1, beta2, eps, wd;
  uint64_t adam_t;
  double sched_lr0, sched_gamma;
  int32_t sched_step;
  uint32_t ntensors;
} header;

static const char *ARCH_FIELDS[9] = {"nfreq", "grid", "stem", "enc[0]", "enc[1]",
                                     "enc[2]", "latent", "dec", "shortcut"};

static void put(unsigned char **p, const void *v, size_t n) {
  memcpy(*p, v, n);
  *p += n;
}
static void get(const unsigned char **p, void *v, size_t n) {
  memcpy(v, *p, n);
  *p += n;
}

static void header_pack(const header *h, unsigned char *b) {
  unsigned char *p = b;
  put(&p, h->arch, sizeof h->arch);
  put(&p, &h->seed, 8); put(&p, &h->step, 8); put(&p, &h->epoch, 4);
  put(&p, &h->adam_kind, 4);
  put(&p, &h->lr, 8); put(&p, &h->beta1, 8); put(&p, &h->beta2, 8); put(&p, &h->eps, 8);
  put(&p, &h->wd, 8); put(&p, &h->adam_t, 8);
  put(&p, &h->sched_lr0, 8); put(&p, &h->sched_gamma, 8); put(&p, &h->sched_step, 4);
  put(&p, &h->ntensors, 4);
  if (p - b != CHECKPOINT_HEADER_BYTES) CE_BUG("checkpoint header is %d bytes", (int)(p - b));
}

static void header_unpack(header *h, const unsigned char *b) {
  const unsigned char *p = b;
  get(&p, h->arch, sizeof h->arch);
  get(&p, &h->seed, 8); get(&p, &h->step, 8); get(&p, &h->epoch, 4);
  get(&p, &h->adam_kind, 4);
  get(&p, &h->lr, 8); get(&p, &h->beta1, 8); get(&p, &h->beta2, 8); get(&p, &h->eps, 8);
  get(&p, &h->wd, 8); get(&p, &h->adam_t, 8);
  get(&p, &h->sched_lr0, 8); get(&p, &h->sched_gamma, 8); get(&p, &h->sched_step, 4);
  get(&p, &h->ntensors, 4);
}

static void arch_of(const coemunet_config *c, uint32_t a[9]) {
  a[0] = (uint32_t)c->nfreq; a[1] = (uint32_t)c->grid; a[2] = (uint32_t)c->stem;
  a[3] = (uint32_t)c->enc[0]; a[4] = (uint32_t)c->enc[1]; a[5] = (uint32_t)c->enc[2];
  a[6] = (uint32_t)c->latent; a[7] = (uint32_t)c->dec; a[8] = (uint32_t)c->shortcut;
}

static uint8_t flags_of(const nn_net *net, const adam *o, int i) {
  const nn_param *p = &net->params[i];
  return (uint8_t)((p->trainable ? FLAG_TRAINABLE : 0) | (p->used ? FLAG_USED : 0) |
                   (o && adam_has_state(o, i) ? FLAG_ADAM : 0));
}

/* ---- writing ------------------------------------------------------------ */

typedef struct {
  FILE *f;
  uLong crc;
  int ok;
  int backend_failed; /* a download failed (its message is set), not the disk */
  int err;            /* the errno of the write that failed (ENOSPC, EDQUOT, EIO, ...) */
} writer;

static void wr(writer *w, const void *data, size_t n) {
  if (!w->ok) return;
  const unsigned char *p = data;
  while (n > 0) { /* zlib's crc32 takes a uInt length */
    size_t chunk = n > (1u << 30) ? (1u << 30) : n;
    w->crc = crc32(w->crc, p, (uInt)chunk);
    if (fwrite(p, 1, chunk, w->f) != chunk) {
      w->ok = 0, w->err = errno;
      return;
    }
    p += chunk;
    n -= chunk;
  }
}

/* A tensor of backend memory into the file, piece by piece through the host. */
static int wr_chunk(void *ctx, float *chunk, size_t off, size_t n) {
  (void)off;
  wr(ctx, chunk, sizeof(float) * n);
  return 0;
}

static void wr_tensor(writer *w, const nn_net *net, const float *t, int64_t n) {
  if (w->ok && nn_download_chunks(net, t, (size_t)n, wr_chunk, w) < 0) {
    w->ok = 0;
    w->backend_failed = 1;
  }
}

int checkpoint_save(const char *path, const coemunet *m, const adam *o, const train_state *st) {
  const nn_net *net = &m->net;
  header h;
  memset(&h, 0, sizeof h);
  arch_of(&m->cfg, h.arch);
  h.seed = st->seed; h.step = st->step; h.epoch = st->epoch;
  h.adam_kind = (uint32_t)o->cfg.kind;
  h.lr = o->cfg.lr; h.beta1 = o->cfg.beta1; h.beta2 = o->cfg.beta2; h.eps = o->cfg.eps;
  h.wd = o->cfg.weight_decay; h.adam_t = (uint64_t)o->t;
  h.sched_lr0 = st->sched.lr0; h.sched_gamma = st->sched.gamma; h.sched_step = st->sched.step_size;
  h.ntensors = (uint32_t)net->nparams;
  unsigned char hb[CHECKPOINT_HEADER_BYTES];
  header_pack(&h, hb);

  char tmp[4096];
  FILE *f;
  if (fs_open_tmp(path, tmp, sizeof tmp, &f) < 0) return -1;
  writer w = {.f = f, .crc = crc32(0L, Z_NULL, 0), .ok = 1};
  uint32_t version = CHECKPOINT_VERSION, hbytes = CHECKPOINT_HEADER_BYTES;
  wr(&w, MAGIC, 8);
  wr(&w, &version, 4);
  wr(&w, &hbytes, 4);
  wr(&w, hb, sizeof hb);
  for (int i = 0; i < net->nparams; i++) {
    const nn_param *p = &net->params[i];
    uint16_t len = (uint16_t)strlen(p->name);
    uint8_t nd = (uint8_t)p->ndim, fl = flags_of(net, o, i);
    wr(&w, &len, 2);
    wr(&w, p->name, len);
    wr(&w, &nd, 1);
    wr(&w, &fl, 1);
    for (int d = 0; d < p->ndim; d++) {
      uint64_t s = (uint64_t)p->shape[d];
      wr(&w, &s, 8);
    }
  }
  for (int i = 0; i < net->nparams; i++) {
    const nn_param *p = &net->params[i];
    wr_tensor(&w, net, p->w, p->n);
    if (adam_has_state(o, i)) {
      wr_tensor(&w, net, o->m[i], p->n);
      wr_tensor(&w, net, o->v[i], p->n);
    }
  }
  uint32_t crc = (uint32_t)w.crc;
  if (w.ok && fwrite(&crc, 4, 1, f) != 1) w.ok = 0, w.err = errno;
  if (!w.ok) {
    if (w.backend_failed) { /* keep the backend's message past the cleanup */
      char msg[1024];
      snprintf(msg, sizeof msg, "%s", ce_err_msg());
      fs_commit_tmp(f, tmp, path, 0);
      return ce_err("%s: %s", path, msg);
    }
    fs_commit_tmp(f, tmp, path, 0);
    return ce_err("%s: write failed: %s", path, w.err ? strerror(w.err) : "unknown error");
  }
  return fs_commit_tmp(f, tmp, path, 1);
}

/* ---- reading ------------------------------------------------------------ */

typedef struct {
  FILE *f;
  const char *path;
  long long pos, size;
} reader;

static int rd(reader *r, void *dst, size_t n, const char *field) {
  if (r->pos + (long long)n > r->size)
    return ce_err("%s: byte %lld: %s: file truncated (%lld bytes, %zu more needed)", r->path,
                  r->pos, field, r->size, (size_t)(r->pos + (long long)n - r->size));
  if (fread(dst, 1, n, r->f) != n) return ce_err("%s: byte %lld: %s: read error", r->path, r->pos, field);
  r->pos += (long long)n;
  return 0;
}

typedef struct {
  char name[NN_NAME];
  int ndim;
  uint64_t shape[5];
  uint8_t flags;
  long long offset; /* of the entry, for messages */
} table_entry;

static int verify_crc(reader *r) {
  if (fseek(r->f, 0, SEEK_SET) != 0) return ce_err("%s: cannot seek", r->path);
  uLong crc = crc32(0L, Z_NULL, 0);
  long long left = r->size - 4;
  const size_t chunk = 1 << 20;
  unsigned char *buf = ce_malloc_array(chunk, 1, "checksum buffer");
  if (!buf) return -1;
  while (left > 0) {
    size_t n = left > (long long)chunk ? chunk : (size_t)left;
    if (fread(buf, 1, n, r->f) != n) {
      free(buf);
      return ce_err("%s: read error while checksumming", r->path);
    }
    crc = crc32(crc, buf, (uInt)n);
    left -= (long long)n;
  }
  free(buf);
  uint32_t stored;
  if (fread(&stored, 4, 1, r->f) != 1) return ce_err("%s: read error at the checksum", r->path);
  if (stored != (uint32_t)crc)
    return ce_err("%s: byte %lld: checksum: stored CRC-32 0x%08x, computed 0x%08x: the file is "
                  "corrupted", r->path, r->size - 4, stored, (unsigned)crc);
  return 0;
}

/* The magic, version, header size and fixed header of an open checkpoint. */
static int read_header(reader *r, header *h) {
  char magic[8];
  uint32_t version, hbytes;
  unsigned char hb[CHECKPOINT_HEADER_BYTES];
  CE_TRY(rd(r, magic, 8, "magic"));
  if (memcmp(magic, MAGIC, 8) != 0)
    return ce_err("%s: byte 0: magic: not a coemu checkpoint (expected \"COEMUCKP\")", r->path);
  CE_TRY(rd(r, &version, 4, "version"));
  if (version != CHECKPOINT_VERSION)
    return ce_err("%s: byte 8: version: %u, this build reads version %d", r->path, version,
                  CHECKPOINT_VERSION);
  CE_TRY(rd(r, &hbytes, 4, "header size"));
  if (hbytes != CHECKPOINT_HEADER_BYTES)
    return ce_err("%s: byte 12: header size: %u, expected %d for version %d", r->path, hbytes,
                  CHECKPOINT_HEADER_BYTES, CHECKPOINT_VERSION);
  CE_TRY(rd(r, hb, sizeof hb, "header"));
  header_unpack(h, hb);
  if (h->ntensors > 1000000)
    return ce_err("%s: byte %d: header: tensor count %u, expected at most 1000000", r->path,
                  16 + 128, h->ntensors);
  return 0;
}

int checkpoint_read_config(const char *path, coemunet_config *cfg, train_state *st) {
  reader r = {NULL, path, 0, fs_file_size(path)};
  if (r.size < 0) return -1;
  r.f = fopen(path, "rb");
  if (!r.f) return ce_err("%s: cannot open", path);
  header h;
  int rc = read_header(&r, &h);
  fclose(r.f);
  CE_TRY(rc);
  coemunet_config c = {(int)h.arch[0], (int)h.arch[1], (int)h.arch[2],
                       {(int)h.arch[3], (int)h.arch[4], (int)h.arch[5]},
                       (int)h.arch[6], (int)h.arch[7], (int)h.arch[8]};
  if (coemunet_check_config(&c) < 0)
    return ce_err_prefix("%s: bytes 16-51: architecture", path);
  *cfg = c;
  if (st) {
    st->seed = h.seed; st->step = h.step; st->epoch = h.epoch;
    st->sched.lr0 = h.sched_lr0; st->sched.gamma = h.sched_gamma; st->sched.step_size = h.sched_step;
  }
  return 0;
}

/* A tensor from the file into backend memory, piece by piece through the host. */
typedef struct {
  reader *r;
  const char *name;
} rd_ctx;

static int rd_chunk(void *ctx, float *chunk, size_t off, size_t n) {
  (void)off;
  rd_ctx *c = ctx;
  return rd(c->r, chunk, sizeof(float) * n, c->name);
}

static int rd_tensor(reader *r, const nn_net *net, float *t, int64_t n, const char *name) {
  rd_ctx c = {r, name};
  return nn_upload_chunks(net, t, (size_t)n, rd_chunk, &c);
}

int checkpoint_load(const char *path, coemunet *m, adam *o, train_state *st) {
  nn_net *net = &m->net;
  reader r = {NULL, path, 0, fs_file_size(path)};
  if (r.size < 0) return -1;
  r.f = fopen(path, "rb");
  if (!r.f) return ce_err("%s: cannot open", path);
  table_entry *tab = NULL;
  int rc = -1;
  header h;
  if (read_header(&r, &h) < 0) goto out;
  /* tensor table, and the file size it implies */
  tab = calloc(h.ntensors ? h.ntensors : 1, sizeof *tab);
  if (!tab) {
    ce_err("%s: out of memory for the tensor table", path);
    goto out;
  }
  long long data = 0;
  for (uint32_t i = 0; i < h.ntensors; i++) {
    table_entry *e = &tab[i];
    e->offset = r.pos;
    uint16_t len;
    uint8_t nd;
    if (rd(&r, &len, 2, "tensor table: name length") < 0) goto out;
    if (len == 0 || len >= NN_NAME) {
      ce_err("%s: byte %lld: tensor %u: name length %u, expected 1..%d", path, e->offset, i, len, NN_NAME - 1);
      goto out;
    }
    if (rd(&r, e->name, len, "tensor table: name") < 0) goto out;
    e->name[len] = 0;
    if (rd(&r, &nd, 1, "tensor table: ndim") < 0 || rd(&r, &e->flags, 1, "tensor table: flags") < 0)
      goto out;
    if (nd < 1 || nd > 5) {
      ce_err("%s: byte %lld: tensor %u '%s': %u dimensions, expected 1..5", path, e->offset, i,
             e->name, nd);
      goto out;
    }
    e->ndim = nd;
    uint64_t n = 1;
    for (int d = 0; d < nd; d++) {
      if (rd(&r, &e->shape[d], 8, "tensor table: shape") < 0) goto out;
      if (e->shape[d] < 1 || e->shape[d] > (1ull << 32) || n > (1ull << 40) / e->shape[d]) {
        ce_err("%s: byte %lld: tensor %u '%s': shape[%d] = %llu out of range", path, e->offset, i,
               e->name, d, (unsigned long long)e->shape[d]);
        goto out;
      }
      n *= e->shape[d];
    }
    data += (long long)(n * 4 * ((e->flags & FLAG_ADAM) ? 3 : 1));
  }
  long long expect = r.pos + data + 4;
  if (r.size != expect) {
    ce_err("%s: size %lld bytes, but its tensor table describes %lld: the file is %s", path, r.size,
           expect, r.size < expect ? "truncated" : "followed by extra bytes");
    goto out;
  }
  long long data_pos = r.pos;
  if (verify_crc(&r) < 0) goto out;

  /* everything against the network it goes into */
  uint32_t arch[9];
  arch_of(&m->cfg, arch);
  for (int i = 0; i < 9; i++)
    if (arch[i] != h.arch[i]) {
      ce_err("%s: byte %d: architecture field %s = %u, the network has %u", path, 16 + 4 * i,
             ARCH_FIELDS[i], h.arch[i], arch[i]);
      goto out;
    }
  if (h.ntensors != (uint32_t)net->nparams) {
    ce_err("%s: header: %u tensors, the network has %d", path, h.ntensors, net->nparams);
    goto out;
  }
  if (h.adam_kind > ADAMW) {
    ce_err("%s: byte 72: optimiser kind %u, expected 0..2", path, h.adam_kind);
    goto out;
  }
  for (uint32_t i = 0; i < h.ntensors; i++) {
    const table_entry *e = &tab[i];
    const nn_param *p = &net->params[i];
    if (strcmp(e->name, p->name) != 0) {
      ce_err("%s: byte %lld: tensor %u is '%s', the network's is '%s'", path, e->offset, i, e->name, p->name);
      goto out;
    }
    int same = e->ndim == p->ndim;
    for (int d = 0; same && d < e->ndim; d++) same = e->shape[d] == (uint64_t)p->shape[d];
    if (!same) {
      char a[128] = "", b[128] = "";
      for (int d = 0; d < e->ndim; d++)
        snprintf(a + strlen(a), sizeof a - strlen(a), "%s%llu", d ? ", " : "", (unsigned long long)e->shape[d]);
      for (int d = 0; d < p->ndim; d++)
        snprintf(b + strlen(b), sizeof b - strlen(b), "%s%lld", d ? ", " : "", (long long)p->shape[d]);
      ce_err("%s: byte %lld: tensor '%s': shape (%s), the network has (%s)", path, e->offset, e->name, a, b);
      goto out;
    }
    uint8_t want = flags_of(net, o, i), got = o ? e->flags : (uint8_t)(e->flags & ~FLAG_ADAM);
    if (got != want) {
      ce_err("%s: byte %lld: tensor '%s': flags 0x%x, the network%s expect%s 0x%x", path,
             e->offset, e->name, e->flags, o ? " and optimiser" : "", o ? "" : "s", want);
      goto out;
    }
  }
  /* all checks passed: load */
  if (fseek(r.f, data_pos, SEEK_SET) != 0) {
    ce_err("%s: cannot seek to the tensor data", path);
    goto out;
  }
  r.pos = data_pos;
  for (int i = 0; i < net->nparams; i++) {
    nn_param *p = &net->params[i];
    if (rd_tensor(&r, net, p->w, p->n, p->name) < 0) goto out;
    if (!o && (tab[i].flags & FLAG_ADAM)) { /* weights only: skip the moments */
      long long skip = 2 * (long long)sizeof(float) * p->n;
      if (fseek(r.f, skip, SEEK_CUR) != 0) {
        ce_err("%s: cannot seek past the optimiser state of '%s'", path, p->name);
        goto out;
      }
      r.pos += skip;
      continue;
    }
    if (o && adam_has_state(o, i) && (rd_tensor(&r, net, o->m[i], p->n, p->name) < 0 ||
                                      rd_tensor(&r, net, o->v[i], p->n, p->name) < 0))
      goto out;
  }
  if (o) {
    o->cfg.kind = (adam_kind)h.adam_kind;
    o->cfg.lr = h.lr; o->cfg.beta1 = h.beta1; o->cfg.beta2 = h.beta2; o->cfg.eps = h.eps;
    o->cfg.weight_decay = h.wd;
    o->t = (int64_t)h.adam_t;
  }
  if (st) {
    st->seed = h.seed; st->step = h.step; st->epoch = h.epoch;
    st->sched.lr0 = h.sched_lr0; st->sched.gamma = h.sched_gamma; st->sched.step_size = h.sched_step;
  }
  rc = 0;
out:
  free(tab);
  fclose(r.f);
  return rc;
}
