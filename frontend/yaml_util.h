/* yaml_util.h — what the YAML readers (specs, tuning databases) share: describing a node for a
 * message, decimal integers, and loading exactly one document with libyaml's own problems reported
 * as FILE:LINE:COL diagnostics. */
#ifndef MOEPPC_YAML_UTIL_H
#define MOEPPC_YAML_UTIL_H

#include "frontend/frontend.h"

#include <yaml.h>

/* A scalar's text for a message: printable, at most ~40 characters. */
void yaml_show_text(const char *s, size_t len, char *buf, size_t n);
/* "'abc'", "a mapping", "a sequence", "the quoted string \"4\"": what a node is, for "found ...". */
void yaml_describe_node(const yaml_node_t *nd, char *buf, size_t n);
/* A plain decimal integer ("64.0", "0x40", "1e3" are not). */
bool yaml_node_int(const yaml_node_t *nd, int64_t *out);
/* One YAML document of `what` ("a spec"): false (reported) when libyaml fails, a second document
 * follows, or the text nests deeper than 64 levels or holds more than 2^20 nodes (checked before
 * anything is built); *empty when there is no document. On success the caller deletes *doc. */
bool yaml_load_one(const char *text, size_t len, const char *what, yaml_document_t *doc, Diag *d, bool *empty);

#endif
