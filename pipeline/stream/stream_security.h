/* stream_security.h - CURVE authentication for coemu streams.
 *
 * Streams bind to loopback or ipc by default. For tcp beyond loopback the
 * producer requires CURVE (ZeroMQ's elliptic-curve encryption and
 * authentication): it holds a secret key, and only consumers whose public
 * keys lie in an authorised directory get through (a ZAP handler checks
 * every handshake; unknown keys are refused with ZAP status 400).
 *
 * Key files are text, written by `coemu keygen NAME`:
 *   NAME.key         public-key = "<40 Z85 chars>"
 *   NAME.key_secret  public-key = "..."  and  secret-key = "..."  (mode 0600)
 */
#ifndef COEMU_STREAM_SECURITY_H
#define COEMU_STREAM_SECURITY_H

typedef struct stream_security stream_security;

/* Called from the ZAP handler thread for each CURVE handshake it refuses:
 * the peer's address as ZeroMQ gives it (an IP address for tcp) and the
 * public key it offered (Z85, 40 characters). A peer that does not speak
 * CURVE at all fails before ZAP and is not reported. */
typedef void (*stream_refused_fn)(void *ctx, const char *address, const char *public_key);

/* Configure a server socket (before bind). With secret_key_file NULL: no
 * security, and *sec = NULL. Otherwise CURVE server + a ZAP handler thread
 * allowing the public keys in authorized_dir (*.key files); refused (may be
 * NULL) hears of every handshake refused. */
int stream_security_server(void *zctx, void *sock, const char *secret_key_file,
                           const char *authorized_dir, stream_refused_fn refused,
                           void *refused_ctx, stream_security **sec);
/* Handshakes refused so far (0 for NULL). */
unsigned long long stream_security_refused(const stream_security *sec);
/* Check what stream_security_server would read, without starting anything:
 * the key pair file and at least one valid *.key in authorized_dir. */
int stream_security_check(const char *secret_key_file, const char *authorized_dir);
/* Release, after zmq_ctx_term() of the context given above (joins the
 * handler thread). */
void stream_security_free(stream_security *sec);

/* Configure a client socket (before connect): server_public_key_file is the
 * producer's NAME.key, client_secret_key_file the consumer's NAME.key_secret.
 * Both NULL: no security. */
int stream_security_client(void *sock, const char *server_public_key_file,
                           const char *client_secret_key_file);

/* Write a new key pair as NAME.key and NAME.key_secret. */
int stream_keygen(const char *name);

/* Read "public-key"/"secret-key" (Z85, 40 chars) from a key file; either
 * output may be NULL. Buffers hold 41 bytes. */
int stream_read_key_file(const char *path, char *public_z85, char *secret_z85);

/* 0 when `endpoint` is one coemu can bind or connect: tcp://HOST:PORT with
 * PORT 1..65535 (or *), ipc://PATH, inproc://NAME; else -1 and a message
 * naming it and the form expected (ZeroMQ itself would take port 99999 as
 * 34463, and "localhost:5555" as nothing). */
int stream_endpoint_check(const char *endpoint);

/* Is this endpoint reachable only from this machine (ipc://, inproc://,
 * tcp://127.x.x.x, tcp://localhost, tcp://[::1])? */
int stream_endpoint_is_local(const char *endpoint);

#endif
