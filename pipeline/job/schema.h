/* schema.h - YAML documents checked against a schema that is itself YAML
 * (schemas/job.yaml for `coemu generate` jobs, schemas/train.yaml for
 * `coemu train` jobs), embedded in the binary as text.
 *
 * The schema language. Every entry has a `type` (map | int | float | string |
 * bool | list) and a `doc`, and optionally:
 *   required: true        the key must be given
 *   default: VALUE        filled in when the key is missing
 *   min, max              numbers, inclusive
 *   enum: [a, b]          the allowed strings
 *   keys: {k: ENTRY}      map: the allowed keys (any other key is an error)
 *   items: ENTRY          list: the schema of an item
 *   min_items, max_items  list lengths
 *   ref: NAME             the entry is a copy of defs.NAME (top-level `defs:`
 *                         map of the schema); the entry's own fields replace
 *                         the copy's, its own `keys` are added to the copy's.
 *                         Two maps of one shape are written once this way.
 * A missing map is created and filled with its defaults, unless it has
 * required keys itself (then it is optional as a whole).
 *
 * Messages are "FILE:LINE:COL: key.path: expected ..., got ...".
 */
#ifndef COEMU_SCHEMA_H
#define COEMU_SCHEMA_H

#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#include "pipeline/job/yamltree.h"

/* The schema tree of an embedded schema text, `ref`s expanded. A schema that
 * does not parse or is malformed is a bug (CE_BUG); NULL only when out of
 * memory. `name` is used in those messages. */
yt_node *schema_tree(const char *name, const char *schema_text);

/* Check a document tree against a schema tree, filling in every default
 * (the tree is completed in place). `name` is the file name for messages. */
int schema_validate(const char *name, yt_node *doc, const yt_node *schema);

/* The other kind of document a file given to the wrong command may be (a
 * training job given to `coemu generate`, a generate job to `coemu train`):
 * its schema and what to say about it. */
typedef struct {
  const char *schema_text; /* the other schema (its top-level keys are compared) */
  const char *kind;        /* "a training job" */
  const char *command;     /* "coemu train" */
} schema_other;

/* Parse `len` bytes of YAML named `name` and validate them against the
 * schema text (named schema_name): the complete tree, or NULL with the
 * message. other (NULL: none): when the document fails and its top-level
 * keys are more the other schema's than this one's (keys both allow, such
 * as name and output, do not count), the message goes on "; this looks
 * like KIND (top-level keys ...): run it with COMMAND", so that the first
 * key this schema does not know is not the only clue. */
yt_node *schema_load(const char *name, const char *text, size_t len, const char *schema_name,
                     const char *schema_text, const schema_other *other);

/* Read a document file and hand it to parse(path, text, len, dir, out), dir
 * being the folder its relative paths are resolved against ("." for a bare
 * file name); parse's status is returned. */
typedef int (*schema_parse_fn)(const char *name, const char *text, size_t len, const char *dir,
                               void *out);
int schema_load_file(const char *path, schema_parse_fn parse, void *out);

/* Keep a copy of a document's name, folder ("" for NULL) and text, for the
 * job structures (provenance); on failure nothing is left allocated. */
int schema_keep_source(const char *name, const char *text, size_t len, const char *dir,
                       char **name_out, char **dir_out, char **text_out);

/* A scalar as a value: -1 when it is not one (quoted scalars are strings). */
int schema_as_int(const yt_node *v, int64_t *out);
int schema_as_num(const yt_node *v, double *out); /* finite numbers only */
int schema_as_bool(const yt_node *v, int *out);   /* true | false */

/* The node at a dotted path ("output.directory"), or NULL. */
const yt_node *schema_at(const yt_node *root, const char *dotted);

/* Values of a validated tree by dotted path. The schema guarantees presence
 * and type, so these cannot fail for keys that have a default or are
 * required; anything else is a bug (CE_BUG). */
int64_t schema_int(const yt_node *root, const char *dotted);
double schema_num(const yt_node *root, const char *dotted);
int schema_bool(const yt_node *root, const char *dotted);
const char *schema_str(const yt_node *root, const char *dotted);

/* A path from a document resolved against its folder: absolute paths and an
 * empty folder leave it as it is; leading "./" segments of a relative path
 * are dropped (DIR/./x is DIR/x). Newly allocated, NULL when out of memory. */
char *schema_resolve(const char *dir, const char *path);

/* The Markdown key table of a schema text (one row per key, dotted paths,
 * type, default or "required", range or allowed values, doc). */
int schema_markdown(FILE *out, const char *name, const char *schema_text);

#endif
