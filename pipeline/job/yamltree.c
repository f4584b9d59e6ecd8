/* yamltree.c - libyaml events to a tree of positioned nodes. */
#include "pipeline/job/yamltree.h"

#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "common/error.h"

static yt_node *node_new(yt_kind kind, const yaml_mark_t *m) {
  yt_node *n = calloc(1, sizeof *n);
  if (!n) return NULL;
  n->kind = kind;
  if (m) {
    n->line = (int)m->line + 1;
    n->col = (int)m->column + 1;
  }
  return n;
}

yt_node *yt_scalar(const char *text) {
  yt_node *n = node_new(YT_SCALAR, NULL);
  if (!n) return NULL;
  n->text = strdup(text);
  if (!n->text) {
    free(n);
    return NULL;
  }
  return n;
}

void yt_free(yt_node *node) {
  if (!node) return;
  for (size_t i = 0; i < node->n; i++) {
    yt_free(node->items[i]);
    if (node->keys) free(node->keys[i]);
  }
  free(node->items);
  free(node->keys);
  free(node->key_line);
  free(node->key_col);
  free(node->text);
  free(node);
}

static int push_child(yt_node *parent, yt_node *child, const char *key, int kl, int kc) {
  size_t n = parent->n + 1;
  yt_node **items = realloc(parent->items, n * sizeof *items);
  if (!items) return ce_err("out of memory");
  parent->items = items;
  if (parent->kind == YT_MAP) {
    char **keys = realloc(parent->keys, n * sizeof *keys);
    if (!keys) return ce_err("out of memory");
    parent->keys = keys;
    int *l = realloc(parent->key_line, n * sizeof *l);
    if (!l) return ce_err("out of memory");
    parent->key_line = l;
    int *c = realloc(parent->key_col, n * sizeof *c);
    if (!c) return ce_err("out of memory");
    parent->key_col = c;
    keys[n - 1] = strdup(key);
    if (!keys[n - 1]) return ce_err("out of memory");
    l[n - 1] = kl;
    c[n - 1] = kc;
  }
  items[n - 1] = child;
  parent->n = n;
  return 0;
}

yt_node *yt_clone(const yt_node *src) {
  yt_node *n = calloc(1, sizeof *n);
  if (!n) return NULL;
  n->kind = src->kind;
  n->line = src->line;
  n->col = src->col;
  n->quoted = src->quoted;
  if (src->text && !(n->text = strdup(src->text))) goto fail;
  for (size_t i = 0; i < src->n; i++) {
    yt_node *c = yt_clone(src->items[i]);
    if (!c) goto fail;
    if (push_child(n, c, src->keys ? src->keys[i] : NULL, src->keys ? src->key_line[i] : 0,
                   src->keys ? src->key_col[i] : 0) < 0) {
      yt_free(c);
      goto fail;
    }
  }
  return n;
fail:
  yt_free(n);
  return NULL;
}

int yt_map_add(yt_node *map, const char *key, yt_node *value) {
  if (map->kind != YT_MAP) CE_BUG("yt_map_add on a non-map");
  return push_child(map, value, key, 0, 0);
}

yt_node *yt_get(const yt_node *map, const char *key) {
  if (!map || map->kind != YT_MAP) return NULL;
  for (size_t i = 0; i < map->n; i++)
    if (!strcmp(map->keys[i], key)) return map->items[i];
  return NULL;
}

/* Recursive descent over the event stream: parse one node whose first event
 * is `ev` (taken over by this function). */
static yt_node *parse_node(const char *name, yaml_parser_t *p, yaml_event_t *ev, int depth);

static int next_event(const char *name, yaml_parser_t *p, yaml_event_t *ev) {
  if (!yaml_parser_parse(p, ev)) {
    /* libyaml says "found character that cannot start any token" of a tab:
     * name it (the text is the string the parser was given) */
    const unsigned char *s = p->input.string.start;
    const size_t i = p->problem_mark.index;
    const int tab = s && s + i < p->input.string.end && s[i] == '\t';
    return ce_err("%s:%d:%d: YAML syntax error: %s%s", name, (int)p->problem_mark.line + 1,
                  (int)p->problem_mark.column + 1, p->problem ? p->problem : "unknown",
                  tab ? " (a tab: YAML indents with spaces only)" : "");
  }
  return 0;
}

static yt_node *parse_node(const char *name, yaml_parser_t *p, yaml_event_t *ev, int depth) {
  if (depth > 64) {
    ce_err("%s:%d:%d: nesting deeper than 64 levels", name, (int)ev->start_mark.line + 1,
           (int)ev->start_mark.column + 1);
    yaml_event_delete(ev);
    return NULL;
  }
  yt_node *node = NULL;
  switch (ev->type) {
    case YAML_ALIAS_EVENT:
      ce_err("%s:%d:%d: aliases (*name) are not supported in job files", name,
             (int)ev->start_mark.line + 1, (int)ev->start_mark.column + 1);
      yaml_event_delete(ev);
      return NULL;
    case YAML_SCALAR_EVENT:
      node = node_new(YT_SCALAR, &ev->start_mark);
      if (!node || !(node->text = strndup((const char *)ev->data.scalar.value,
                                          ev->data.scalar.length))) {
        ce_err("out of memory");
        free(node);
        yaml_event_delete(ev);
        return NULL;
      }
      node->quoted = ev->data.scalar.style == YAML_SINGLE_QUOTED_SCALAR_STYLE ||
                     ev->data.scalar.style == YAML_DOUBLE_QUOTED_SCALAR_STYLE ||
                     ev->data.scalar.style == YAML_LITERAL_SCALAR_STYLE ||
                     ev->data.scalar.style == YAML_FOLDED_SCALAR_STYLE;
      yaml_event_delete(ev);
      return node;
    case YAML_SEQUENCE_START_EVENT:
    case YAML_MAPPING_START_EVENT: {
      int is_map = ev->type == YAML_MAPPING_START_EVENT;
      node = node_new(is_map ? YT_MAP : YT_SEQ, &ev->start_mark);
      yaml_event_delete(ev);
      if (!node) {
        ce_err("out of memory");
        return NULL;
      }
      for (;;) {
        yaml_event_t e;
        if (next_event(name, p, &e) < 0) goto fail;
        if (e.type == YAML_SEQUENCE_END_EVENT || e.type == YAML_MAPPING_END_EVENT) {
          yaml_event_delete(&e);
          return node;
        }
        char *key = NULL;
        int kl = 0, kc = 0;
        if (is_map) {
          kl = (int)e.start_mark.line + 1;
          kc = (int)e.start_mark.column + 1;
          if (e.type != YAML_SCALAR_EVENT) {
            ce_err("%s:%d:%d: a mapping key must be a plain scalar", name, kl, kc);
            yaml_event_delete(&e);
            goto fail;
          }
          key = strndup((const char *)e.data.scalar.value, e.data.scalar.length);
          yaml_event_delete(&e);
          if (!key) {
            ce_err("out of memory");
            goto fail;
          }
          if (yt_get(node, key)) {
            ce_err("%s:%d:%d: key '%s' appears twice", name, kl, kc, key);
            free(key);
            goto fail;
          }
          if (next_event(name, p, &e) < 0) {
            free(key);
            goto fail;
          }
        }
        yt_node *child = parse_node(name, p, &e, depth + 1);
        if (!child || push_child(node, child, key, kl, kc) < 0) {
          yt_free(child);
          free(key);
          goto fail;
        }
        free(key);
      }
    fail:
      yt_free(node);
      return NULL;
    }
    default:
      ce_err("%s:%d:%d: unexpected YAML event", name, (int)ev->start_mark.line + 1,
             (int)ev->start_mark.column + 1);
      yaml_event_delete(ev);
      return NULL;
  }
}

yt_node *yt_parse(const char *name, const char *text, size_t len) {
  yaml_parser_t p;
  if (!yaml_parser_initialize(&p)) {
    ce_err("%s: cannot initialise the YAML parser", name);
    return NULL;
  }
  yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
  yt_node *root = NULL;
  yaml_event_t e;
  /* STREAM-START, then DOCUMENT-START or STREAM-END (empty input). */
  if (next_event(name, &p, &e) < 0) goto out;
  yaml_event_delete(&e);
  if (next_event(name, &p, &e) < 0) goto out;
  if (e.type == YAML_STREAM_END_EVENT) {
    yaml_event_delete(&e);
    root = node_new(YT_MAP, NULL);
    if (!root) ce_err("out of memory");
    goto out;
  }
  yaml_event_delete(&e);
  if (next_event(name, &p, &e) < 0) goto out;
  root = parse_node(name, &p, &e, 0);
  if (!root) goto out;
  if (next_event(name, &p, &e) < 0) goto fail; /* DOCUMENT-END */
  yaml_event_delete(&e);
  if (next_event(name, &p, &e) < 0) goto fail;
  if (e.type != YAML_STREAM_END_EVENT) {
    ce_err("%s:%d:%d: more than one YAML document", name, (int)e.start_mark.line + 1,
           (int)e.start_mark.column + 1);
    yaml_event_delete(&e);
    goto fail;
  }
  yaml_event_delete(&e);
  goto out;
fail:
  yt_free(root);
  root = NULL;
out:
  yaml_parser_delete(&p);
  return root;
}
