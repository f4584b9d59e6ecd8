/* yamltree.h - a YAML document as a tree of nodes that remember where they
 * were written (line and column), for error messages that point into the
 * file.
 *
 * Parsed with libyaml. Scalars keep their text; the consumer (the schema
 * validator, pipeline/job/schema.c) decides what type a scalar is. Anchors and aliases are
 * refused: job files and schemas do not need them, and refusing them rules out
 * "billion laughs" expansion.
 */
#ifndef COEMU_YAMLTREE_H
#define COEMU_YAMLTREE_H

#include <stddef.h>

typedef enum { YT_SCALAR, YT_MAP, YT_SEQ } yt_kind;

typedef struct yt_node {
  yt_kind kind;
  int line, col;          /* 1-based position of the node's first character */
  int quoted;             /* scalar written in quotes (then never a number/bool) */
  char *text;             /* scalar text (YT_SCALAR) */
  size_t n;               /* children (YT_MAP: key/value pairs; YT_SEQ: items) */
  char **keys;            /* YT_MAP: key texts */
  int *key_line, *key_col;
  struct yt_node **items; /* YT_MAP: values; YT_SEQ: items */
} yt_node;

/* Parse `len` bytes of YAML (one document). `name` is used in messages
 * ("job.yaml:3:5: ..."). Returns the root, or NULL with an error message. An
 * empty document gives an empty map. */
yt_node *yt_parse(const char *name, const char *text, size_t len);

/* The value of `key` in a map, or NULL (also when node is not a map). */
yt_node *yt_get(const yt_node *map, const char *key);

/* Add a key/value pair to a map (the node is owned by the map afterwards). */
int yt_map_add(yt_node *map, const char *key, yt_node *value);

/* A new scalar (line/col 0: "not in the file"). */
yt_node *yt_scalar(const char *text);

/* A deep copy, or NULL (out of memory). */
yt_node *yt_clone(const yt_node *node);

void yt_free(yt_node *node);

#endif
