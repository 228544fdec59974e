/* yaml_util.c — the YAML helpers the spec and tuning-database readers share. */
#include "frontend/yaml_util.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

void yaml_show_text(const char *s, size_t len, char *buf, size_t n)
{
    size_t o = 0;
    for (size_t i = 0; i < len && o + 8 < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (i >= 40) {
            o += (size_t)snprintf(buf + o, n - o, "...");
            break;
        }
        if (c >= 0x20 && c != 0x7f)
            buf[o++] = (char)c;
        else
            o += (size_t)snprintf(buf + o, n - o, "\\x%02x", c);
    }
    buf[o] = 0;
}

void yaml_describe_node(const yaml_node_t *nd, char *buf, size_t n)
{
    char text[128];
    if (nd->type == YAML_MAPPING_NODE) {
        snprintf(buf, n, "a mapping");
    } else if (nd->type == YAML_SEQUENCE_NODE) {
        snprintf(buf, n, "a sequence");
    } else {
        yaml_show_text((const char *)nd->data.scalar.value, nd->data.scalar.length, text, sizeof text);
        if (nd->data.scalar.style == YAML_PLAIN_SCALAR_STYLE)
            snprintf(buf, n, "'%s'", text);
        else
            snprintf(buf, n, "the quoted string \"%s\"", text);
    }
}

bool yaml_node_int(const yaml_node_t *nd, int64_t *out)
{
    if (nd->type != YAML_SCALAR_NODE || nd->data.scalar.style != YAML_PLAIN_SCALAR_STYLE) return false;
    const char *s = (const char *)nd->data.scalar.value;
    size_t i = (s[0] == '-' || s[0] == '+') ? 1 : 0;
    if (s[i] == 0 || nd->data.scalar.length != strlen(s)) return false;
    for (size_t j = i; s[j]; j++)
        if (s[j] < '0' || s[j] > '9') return false;
    errno = 0;
    long long v = strtoll(s, NULL, 10);
    if (errno == ERANGE) return false;
    *out = v;
    return true;
}

/* libyaml's own problem text and mark for bytes that are not YAML. */
static void report_parser_error(const yaml_parser_t *p, const char *text, size_t len, const char *what, Diag *d)
{
    if (p->error == YAML_READER_ERROR) { /* the reader gives a byte offset, not a mark */
        int line = 1, col = 1;
        for (size_t i = 0; i < p->problem_offset && i < len; i++) {
            if (text[i] == '\n')
                line++, col = 1;
            else
                col++;
        }
        if (p->problem_value != -1)
            diag_error(d, line, col, "%s (byte 0x%02x); %s is UTF-8 text", p->problem, p->problem_value & 0xff, what);
        else
            diag_error(d, line, col, "%s; %s is UTF-8 text", p->problem, what);
        return;
    }
    const yaml_mark_t *m = p->problem ? &p->problem_mark : &p->context_mark;
    const char *problem = p->problem ? p->problem : "cannot parse the document";
    if (p->context)
        diag_error(d, (int)m->line + 1, (int)m->column + 1, "%s %s", problem, p->context);
    else
        diag_error(d, (int)m->line + 1, (int)m->column + 1, "%s", problem);
}

/* Checked on libyaml's event stream before a document is built, so that a hostile file costs no
 * more than these allow: libyaml itself has no limit, and a few megabytes of "[[[[…" or "[1,1,…"
 * become gigabytes of nodes. A spec nests 3 levels and has ~40 nodes; a tuning database ~90 nodes
 * an entry. */
#define YAML_MAX_DEPTH 64
#define YAML_MAX_NODES (1 << 20)

static bool check_limits(const char *text, size_t len, const char *what, Diag *d)
{
    yaml_parser_t p;
    MOE_ASSERT(yaml_parser_initialize(&p));
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    int depth = 0;
    long nodes = 0;
    bool ok = true, done = false;
    while (ok && !done) {
        yaml_event_t e;
        if (!yaml_parser_parse(&p, &e)) break; /* not YAML: the loader reports the same problem */
        int line = (int)e.start_mark.line + 1, col = (int)e.start_mark.column + 1;
        bool opens = e.type == YAML_SEQUENCE_START_EVENT || e.type == YAML_MAPPING_START_EVENT;
        if (opens && ++depth > YAML_MAX_DEPTH) {
            diag_error(d, line, col, "expected at most %d levels of nested mappings and sequences in %s, found more",
                       YAML_MAX_DEPTH, what);
            ok = false;
        } else if ((opens || e.type == YAML_SCALAR_EVENT || e.type == YAML_ALIAS_EVENT) && ++nodes > YAML_MAX_NODES) {
            diag_error(d, line, col, "expected at most %d nodes in %s, found more", YAML_MAX_NODES, what);
            ok = false;
        }
        if (e.type == YAML_SEQUENCE_END_EVENT || e.type == YAML_MAPPING_END_EVENT) depth--;
        done = e.type == YAML_STREAM_END_EVENT;
        yaml_event_delete(&e);
    }
    yaml_parser_delete(&p);
    return ok;
}

bool yaml_load_one(const char *text, size_t len, const char *what, yaml_document_t *doc, Diag *d, bool *empty)
{
    if (!check_limits(text, len, what, d)) return false;
    yaml_parser_t p;
    MOE_ASSERT(yaml_parser_initialize(&p));
    yaml_parser_set_input_string(&p, (const unsigned char *)text, len);
    bool ok = yaml_parser_load(&p, doc) != 0;
    if (!ok) {
        report_parser_error(&p, text, len, what, d);
        yaml_parser_delete(&p);
        return false;
    }
    *empty = yaml_document_get_root_node(doc) == NULL;
    if (!*empty) { /* a second document would be silently ignored: say so */
        yaml_document_t next;
        if (!yaml_parser_load(&p, &next)) {
            report_parser_error(&p, text, len, what, d);
            ok = false;
        } else {
            yaml_node_t *r = yaml_document_get_root_node(&next);
            if (r) {
                diag_error(d, (int)r->start_mark.line + 1, (int)r->start_mark.column + 1,
                           "expected a single YAML document, found a second one");
                ok = false;
            }
            yaml_document_delete(&next);
        }
    }
    yaml_parser_delete(&p);
    if (!ok) yaml_document_delete(doc);
    return ok;
}
