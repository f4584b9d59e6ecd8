/* stream_security.c - CURVE keys, the ZAP authentication handler. */
#include "pipeline/stream/stream_security.h"

#include <dirent.h>
#include <errno.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <zmq.h>

#include "common/error.h"
#include "common/fsutil.h"

struct stream_security {
  void *zap;      /* REP socket on inproc://zeromq.zap.01 */
  pthread_t thread;
  int running;
  char (*keys)[41];
  int nkeys;
  stream_refused_fn refused;
  void *refused_ctx;
  _Atomic unsigned long long nrefused;
};

static int find_key(const char *text, const char *name, char *out) {
  const char *p = strstr(text, name);
  if (!p) return -1;
  p = strchr(p, '"');
  if (!p) return -1;
  const char *e = strchr(p + 1, '"');
  if (!e || e - p - 1 != 40) return -1;
  memcpy(out, p + 1, 40);
  out[40] = 0;
  uint8_t raw[32];
  return zmq_z85_decode(raw, out) ? 0 : -1;
}

int stream_read_key_file(const char *path, char *pub, char *sec) {
  char *text;
  CE_TRY(fs_read_all(path, &text, NULL));
  int rc = 0;
  if (pub && find_key(text, "public-key", pub) < 0)
    rc = ce_err("%s: no valid public-key = \"<40 Z85 characters>\" line", path);
  if (rc == 0 && sec && find_key(text, "secret-key", sec) < 0)
    rc = ce_err("%s: no valid secret-key = \"<40 Z85 characters>\" line", path);
  free(text);
  return rc;
}

int stream_keygen(const char *name) {
  char pub[41], sec[41], path[4096];
  if (zmq_curve_keypair(pub, sec) != 0)
    CE_FAIL("cannot generate a CURVE key pair: %s (is libzmq built with CURVE?)",
            zmq_strerror(errno));
  FILE *f;
  char tmp[4200];
  snprintf(path, sizeof path, "%s.key_secret", name);
  CE_TRY(fs_open_tmp(path, tmp, sizeof tmp, &f));
  chmod(tmp, 0600);
  int ok = fprintf(f, "# coemu CURVE key pair: keep secret\npublic-key = \"%s\"\nsecret-key = \"%s\"\n",
                   pub, sec) > 0;
  CE_TRY(fs_commit_tmp(f, tmp, path, ok));
  snprintf(path, sizeof path, "%s.key", name);
  CE_TRY(fs_open_tmp(path, tmp, sizeof tmp, &f));
  ok = fprintf(f, "# coemu CURVE public key\npublic-key = \"%s\"\n", pub) > 0;
  return fs_commit_tmp(f, tmp, path, ok);
}

static int load_authorized(stream_security *s, const char *dir) {
  DIR *d = opendir(dir);
  if (!d) CE_FAIL("%s: cannot open the authorised-keys directory: %s", dir, strerror(errno));
  struct dirent *e;
  while ((e = readdir(d))) {
    size_t n = strlen(e->d_name);
    if (n < 5 || strcmp(e->d_name + n - 4, ".key")) continue;
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
    char (*nk)[41] = realloc(s->keys, sizeof *nk * (size_t)(s->nkeys + 1));
    if (!nk) {
      closedir(d);
      CE_FAIL("out of memory");
    }
    s->keys = nk;
    if (stream_read_key_file(path, s->keys[s->nkeys], NULL) < 0) {
      closedir(d);
      return -1;
    }
    s->nkeys++;
  }
  closedir(d);
  if (s->nkeys == 0) CE_FAIL("%s: no *.key public keys: no consumer could connect", dir);
  return 0;
}

/* ZAP (ZeroMQ RFC 27): one request = version, request id, domain, address,
 * identity, mechanism, credentials...; reply = version, request id, status
 * code, status text, user id, metadata. */
static void *zap_loop(void *arg) {
  stream_security *s = arg;
  while (1) {
    zmq_msg_t f[8];
    int n = 0, more = 1;
    while (more) {
      zmq_msg_t m;
      zmq_msg_init(&m);
      if (zmq_msg_recv(&m, s->zap, 0) < 0) {
        zmq_msg_close(&m);
        for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
        if (errno == EINTR) { /* a signal: start the request over */
          n = 0;
          more = 1;
          continue;
        }
        zmq_close(s->zap); /* context terminated: let zmq_ctx_term finish */
        return NULL;
      }
      more = zmq_msg_more(&m);
      if (n < 8)
        f[n++] = m;
      else
        zmq_msg_close(&m);
    }
    int ok = 0;
    if (n >= 7 && zmq_msg_size(&f[5]) == 5 && !memcmp(zmq_msg_data(&f[5]), "CURVE", 5) &&
        zmq_msg_size(&f[6]) == 32) {
      char z85[41];
      zmq_z85_encode(z85, zmq_msg_data(&f[6]), 32);
      for (int i = 0; i < s->nkeys; i++)
        if (!strcmp(z85, s->keys[i])) ok = 1;
    }
    if (!ok) {
      atomic_fetch_add(&s->nrefused, 1);
      if (s->refused) {
        char addr[64] = "?", key[41] = "(not CURVE)";
        if (n >= 4 && zmq_msg_size(&f[3]) > 0) {
          size_t k = zmq_msg_size(&f[3]) < sizeof addr - 1 ? zmq_msg_size(&f[3]) : sizeof addr - 1;
          memcpy(addr, zmq_msg_data(&f[3]), k);
          addr[k] = 0;
        }
        if (n >= 7 && zmq_msg_size(&f[6]) == 32) zmq_z85_encode(key, zmq_msg_data(&f[6]), 32);
        s->refused(s->refused_ctx, addr, key);
      }
    }
    const char *code = ok ? "200" : "400";
    zmq_send(s->zap, "1.0", 3, ZMQ_SNDMORE);
    if (n >= 2)
      zmq_send(s->zap, zmq_msg_data(&f[1]), zmq_msg_size(&f[1]), ZMQ_SNDMORE);
    else
      zmq_send(s->zap, "", 0, ZMQ_SNDMORE);
    zmq_send(s->zap, code, 3, ZMQ_SNDMORE);
    zmq_send(s->zap, ok ? "OK" : "unknown client key", ok ? 2 : 18, ZMQ_SNDMORE);
    zmq_send(s->zap, "", 0, ZMQ_SNDMORE);
    zmq_send(s->zap, "", 0, 0);
    for (int i = 0; i < n; i++) zmq_msg_close(&f[i]);
  }
}

int stream_security_server(void *zctx, void *sock, const char *secret_key_file,
                           const char *authorized_dir, stream_refused_fn refused,
                           void *refused_ctx, stream_security **out) {
  *out = NULL;
  if (!secret_key_file) return 0;
  if (!authorized_dir)
    CE_FAIL("CURVE: a secret key was given but no directory of authorised consumer keys");
  char pub[41], sec[41];
  CE_TRY(stream_read_key_file(secret_key_file, pub, sec));
  stream_security *s = calloc(1, sizeof *s);
  if (!s) CE_FAIL("out of memory");
  s->refused = refused;
  s->refused_ctx = refused_ctx;
  atomic_init(&s->nrefused, 0);
  if (load_authorized(s, authorized_dir) < 0) {
    stream_security_free(s);
    return -1;
  }
  s->zap = zmq_socket(zctx, ZMQ_REP);
  if (!s->zap || zmq_bind(s->zap, "inproc://zeromq.zap.01") != 0 ||
      pthread_create(&s->thread, NULL, zap_loop, s) != 0) {
    int e = errno;
    if (s->zap) zmq_close(s->zap);
    s->zap = NULL;
    stream_security_free(s);
    CE_FAIL("CURVE: cannot start the authentication handler: %s", zmq_strerror(e));
  }
  s->running = 1;
  int one = 1;
  if (zmq_setsockopt(sock, ZMQ_CURVE_SERVER, &one, sizeof one) != 0 ||
      zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, sec, 40) != 0) {
    *out = s;
    CE_FAIL("CURVE: cannot configure the server socket: %s", zmq_strerror(errno));
  }
  *out = s;
  return 0;
}

unsigned long long stream_security_refused(const stream_security *s) {
  return s ? atomic_load(&((stream_security *)s)->nrefused) : 0;
}

int stream_security_check(const char *secret_key_file, const char *authorized_dir) {
  if (!secret_key_file || !authorized_dir)
    CE_FAIL("CURVE: expected both a key pair file and a directory of authorised consumer keys");
  char pub[41], sec[41];
  CE_TRY(stream_read_key_file(secret_key_file, pub, sec));
  stream_security s = {0};
  int rc = load_authorized(&s, authorized_dir);
  free(s.keys);
  return rc;
}

/* Call after zmq_ctx_term() of the socket's context: termination makes the
 * handler's recv fail with ETERM, the handler closes its socket (which lets
 * the termination complete) and returns; here we wait for it. */
void stream_security_free(stream_security *s) {
  if (!s) return;
  if (s->running) pthread_join(s->thread, NULL);
  free(s->keys);
  free(s);
}

int stream_security_client(void *sock, const char *server_pub_file, const char *client_sec_file) {
  if (!server_pub_file && !client_sec_file) return 0;
  if (!server_pub_file || !client_sec_file)
    CE_FAIL("CURVE: a client needs both the server's public key and its own key pair");
  char spub[41], cpub[41], csec[41];
  CE_TRY(stream_read_key_file(server_pub_file, spub, NULL));
  CE_TRY(stream_read_key_file(client_sec_file, cpub, csec));
  if (zmq_setsockopt(sock, ZMQ_CURVE_SERVERKEY, spub, 40) != 0 ||
      zmq_setsockopt(sock, ZMQ_CURVE_PUBLICKEY, cpub, 40) != 0 ||
      zmq_setsockopt(sock, ZMQ_CURVE_SECRETKEY, csec, 40) != 0)
    CE_FAIL("CURVE: cannot configure the client socket: %s", zmq_strerror(errno));
  return 0;
}

int stream_endpoint_check(const char *ep) {
  static const char *want = "expected tcp://HOST:PORT (PORT 1..65535, or * for any when "
                            "binding) or ipc://PATH";
  if (!strncmp(ep, "ipc://", 6) || !strncmp(ep, "inproc://", 9)) {
    if (!ep[strncmp(ep, "ipc://", 6) ? 9 : 6]) CE_FAIL("endpoint '%s': no path: %s", ep, want);
    return 0;
  }
  if (strncmp(ep, "tcp://", 6) != 0) CE_FAIL("endpoint '%s': %s", ep, want);
  const char *host = ep + 6, *colon = strrchr(host, ':');
  if (!colon || colon == host || (host[0] == '[' && colon[-1] != ']'))
    CE_FAIL("endpoint '%s': no HOST:PORT: %s", ep, want);
  const char *port = colon + 1;
  if (!strcmp(port, "*")) return 0;
  long v = 0;
  for (const char *c = port; *c; c++) {
    if (*c < '0' || *c > '9' || v > 65535) CE_FAIL("endpoint '%s': port '%s': %s", ep, port, want);
    v = v * 10 + (*c - '0');
  }
  /* ZeroMQ takes any number and keeps its low 16 bits: 99999 would listen on 34463 */
  if (!*port || v < 1 || v > 65535) CE_FAIL("endpoint '%s': port '%s': %s", ep, port, want);
  return 0;
}

int stream_endpoint_is_local(const char *ep) {
  if (!strncmp(ep, "ipc://", 6) || !strncmp(ep, "inproc://", 9)) return 1;
  if (!strncmp(ep, "tcp://127.", 10) || !strncmp(ep, "tcp://localhost:", 16) ||
      !strncmp(ep, "tcp://[::1]:", 12))
    return 1;
  return 0;
}
