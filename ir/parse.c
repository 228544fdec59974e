/* parse.c — reads the textual form of IR (print.c writes it). A hand-written lexer keeps line and
 * column for every token, so every error is `FILE:LINE:COL: error: …`. The parsed module is verified. */
#include "ir/ir.h"

#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

typedef enum { TK_EOF, TK_IDENT, TK_VALUE, TK_STRING, TK_NUMBER, TK_PUNCT, TK_BAD } tok_kind;

typedef struct {
    tok_kind kind;
    char text[256];          /* identifier, value name (without %), string contents, number, punct */
    bool is_float;           /* TK_NUMBER: has '.', an exponent, inf or nan */
    int line, col;
} Token;

typedef struct {
    const char *p, *end;
    int line, col;
    Token tok;               /* the current token */
    Diag *d;
    IrModule *m;
    bool failed;
} Parser;

static void perr(Parser *ps, const Token *t, const char *fmt, ...) __attribute__((format(printf, 3, 4)));

static void perr(Parser *ps, const Token *t, const char *fmt, ...)
{
    char msg[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    if (!ps->failed) diag_error(ps->d, t->line, t->col, "%s", msg);
    ps->failed = true;
}

static void advance_char(Parser *ps)
{
    if (*ps->p == '\n') {
        ps->line++;
        ps->col = 1;
    } else {
        ps->col++;
    }
    ps->p++;
}

static void skip_space(Parser *ps)
{
    while (ps->p < ps->end) {
        if (*ps->p == '#') {
            while (ps->p < ps->end && *ps->p != '\n') advance_char(ps);
        } else if (isspace((unsigned char)*ps->p)) {
            advance_char(ps);
        } else {
            break;
        }
    }
}

static bool is_name_char(int c) { return isalnum(c) || c == '_' || c == '.'; }

static void lex_name(Parser *ps, Token *t)
{
    size_t n = 0;
    while (ps->p < ps->end && is_name_char((unsigned char)*ps->p)) {
        if (n + 1 < sizeof t->text) t->text[n++] = *ps->p;
        advance_char(ps);
    }
    t->text[n] = '\0';
}

static void lex_string(Parser *ps, Token *t)
{
    size_t n = 0;
    advance_char(ps); /* opening quote */
    while (ps->p < ps->end && *ps->p != '"' && *ps->p != '\n') {
        if (*ps->p == '\\' && ps->p + 1 < ps->end) advance_char(ps);
        if (n + 1 < sizeof t->text) t->text[n++] = *ps->p;
        advance_char(ps);
    }
    t->text[n] = '\0';
    if (ps->p >= ps->end || *ps->p != '"') {
        t->kind = TK_BAD;
        snprintf(t->text, sizeof t->text, "unterminated string");
        return;
    }
    advance_char(ps);
}

static void lex_number(Parser *ps, Token *t)
{
    size_t n = 0;
    while (ps->p < ps->end && (isalnum((unsigned char)*ps->p) || strchr("+-.", *ps->p))) {
        /* a sign is part of a number only at its start or after an exponent */
        if ((*ps->p == '+' || *ps->p == '-') && n > 0 && t->text[n - 1] != 'e' && t->text[n - 1] != 'E') break;
        if (n + 1 < sizeof t->text) t->text[n++] = *ps->p;
        advance_char(ps);
    }
    t->text[n] = '\0';
    t->is_float = strpbrk(t->text, ".eEin") != NULL;
}

static void next(Parser *ps)
{
    skip_space(ps);
    Token *t = &ps->tok;
    memset(t, 0, sizeof *t);
    t->line = ps->line;
    t->col = ps->col;
    if (ps->p >= ps->end) {
        t->kind = TK_EOF;
        return;
    }
    int c = (unsigned char)*ps->p;
    if (c == '%') {
        advance_char(ps);
        t->kind = TK_VALUE;
        lex_name(ps, t);
    } else if (c == '"') {
        t->kind = TK_STRING;
        lex_string(ps, t);
    } else if (isdigit(c) || c == '-' || c == '+') {
        t->kind = TK_NUMBER;
        lex_number(ps, t);
    } else if (isalpha(c) || c == '_') {
        t->kind = TK_IDENT;
        lex_name(ps, t);
    } else if (strchr("{}[],:=@()", c)) {
        t->kind = TK_PUNCT;
        t->text[0] = (char)c;
        advance_char(ps);
    } else {
        t->kind = TK_BAD;
        if (isprint(c)) snprintf(t->text, sizeof t->text, "unexpected character '%c'", c);
        else snprintf(t->text, sizeof t->text, "unexpected byte 0x%02x", c);
        advance_char(ps);
    }
}

static const char *tok_desc(const Token *t, char *buf, size_t n)
{
    switch (t->kind) {
    case TK_EOF: return "end of file";
    case TK_VALUE: snprintf(buf, n, "'%%%s'", t->text); return buf;
    case TK_STRING: {
        char shown[96];
        str_escape(t->text, strlen(t->text), shown, sizeof shown);
        snprintf(buf, n, "string \"%s\"", shown);
        return buf;
    }
    case TK_BAD: return t->text;
    default: snprintf(buf, n, "'%s'", t->text); return buf;
    }
}

static bool is_punct(const Parser *ps, char c) { return ps->tok.kind == TK_PUNCT && ps->tok.text[0] == c; }
static bool is_ident(const Parser *ps, const char *s) { return ps->tok.kind == TK_IDENT && strcmp(ps->tok.text, s) == 0; }

static bool expect_punct(Parser *ps, char c)
{
    if (is_punct(ps, c)) {
        next(ps);
        return true;
    }
    char buf[300];
    perr(ps, &ps->tok, "expected '%c', found %s", c, tok_desc(&ps->tok, buf, sizeof buf));
    return false;
}

static bool expect_kind(Parser *ps, tok_kind k, const char *what, Token *out)
{
    if (ps->tok.kind == k) {
        *out = ps->tok;
        next(ps);
        return true;
    }
    char buf[300];
    perr(ps, &ps->tok, "expected %s, found %s", what, tok_desc(&ps->tok, buf, sizeof buf));
    return false;
}

static bool parse_int(Parser *ps, const Token *t, int64_t *out)
{
    char *endp;
    errno = 0;
    long long v = strtoll(t->text, &endp, 10);
    if (t->kind != TK_NUMBER || t->is_float || *endp || errno) {
        char buf[300];
        perr(ps, t, "expected an integer, found %s", tok_desc(t, buf, sizeof buf));
        return false;
    }
    *out = v;
    return true;
}

static bool parse_dim(Parser *ps, int64_t *out)
{
    if (is_ident(ps, "T")) {
        *out = IR_DIM_T;
        next(ps);
        return true;
    }
    Token t = ps->tok;
    if (!parse_int(ps, &t, out)) return false;
    if (*out <= 0) {
        perr(ps, &t, "dimension must be positive or T, found %lld", (long long)*out);
        return false;
    }
    next(ps);
    return true;
}

/* type := DTYPE '[' dim (',' dim)* ']' */
static bool parse_type(Parser *ps, IrType *t)
{
    Token name;
    if (!expect_kind(ps, TK_IDENT, "a type such as f32[T, 64]", &name)) return false;
    memset(t, 0, sizeof *t);
    if (!dtype_parse(name.text, &t->dtype)) {
        perr(ps, &name, "unknown element type '%s' (expected f32, bf16, f16, f64 or i32)", name.text);
        return false;
    }
    if (!expect_punct(ps, '[')) return false;
    for (;;) {
        if (t->ndim == IR_MAX_DIMS) {
            perr(ps, &ps->tok, "a type has at most %d dimensions", IR_MAX_DIMS);
            return false;
        }
        if (!parse_dim(ps, &t->dims[t->ndim++])) return false;
        if (is_punct(ps, ']')) break;
        if (!expect_punct(ps, ',')) return false;
    }
    next(ps);
    return true;
}

/* arena(per_t, fixed): an arena size or offset written by plan-memory, in bytes per token and fixed. */
static bool parse_arena(Parser *ps, int64_t *per_t, int64_t *fixed)
{
    Token a, b;
    if (!is_ident(ps, "arena")) {
        char buf[300];
        perr(ps, &ps->tok, "expected 'arena(PER_TOKEN, FIXED)', found %s", tok_desc(&ps->tok, buf, sizeof buf));
        return false;
    }
    next(ps);
    if (!expect_punct(ps, '(') || !expect_kind(ps, TK_NUMBER, "bytes per token", &a) || !parse_int(ps, &a, per_t) ||
        !expect_punct(ps, ',') || !expect_kind(ps, TK_NUMBER, "fixed bytes", &b) || !parse_int(ps, &b, fixed) ||
        !expect_punct(ps, ')'))
        return false;
    if (*per_t < 0 || *fixed < 0) {
        perr(ps, &a, "arena offsets and sizes cannot be negative");
        return false;
    }
    if (*per_t > IR_MAX_ARENA || *fixed > IR_MAX_ARENA) {
        perr(ps, *per_t > IR_MAX_ARENA ? &a : &b, "arena offsets and sizes are at most 2^50 bytes");
        return false;
    }
    return true;
}

static bool define_check(Parser *ps, const Token *name)
{
    IrValue *old = ir_value_find(ps->m, name->text);
    if (!old) return true;
    perr(ps, name, "value '%%%s' is already defined at line %d", name->text, old->line);
    return false;
}

static bool parse_input_or_param(Parser *ps, bool is_param)
{
    Token name, tensor;
    IrType t;
    next(ps);
    if (!expect_kind(ps, TK_VALUE, "a value name such as %x", &name) || !define_check(ps, &name)) return false;
    if (!expect_punct(ps, ':') || !parse_type(ps, &t)) return false;
    IrValue *v;
    if (is_param) {
        if (!expect_punct(ps, '=') || !expect_kind(ps, TK_STRING, "the checkpoint tensor name", &tensor)) return false;
        v = ir_param_new(ps->m, name.text, tensor.text, t);
    } else {
        v = ir_input_new(ps->m, name.text, t);
    }
    v->line = name.line;
    v->col = name.col;
    return true;
}

static bool parse_output(Parser *ps)
{
    Token name, val;
    next(ps);
    if (!expect_kind(ps, TK_STRING, "the output's name", &name) || !expect_punct(ps, '=')) return false;
    if (!expect_kind(ps, TK_VALUE, "a value", &val)) return false;
    IrValue *v = ir_value_find(ps->m, val.text);
    if (!v) {
        perr(ps, &val, "use of undefined value '%%%s'", val.text);
        return false;
    }
    ir_output_add(ps->m, name.text, v);
    return true;
}

static bool parse_attrs(Parser *ps, IrInstr *in)
{
    next(ps); /* '{' */
    for (;;) {
        Token key, val;
        if (!expect_kind(ps, TK_IDENT, "an attribute name", &key) || !expect_punct(ps, '=')) return false;
        if (ir_attr_get(in, key.text)) {
            perr(ps, &key, "attribute '%s' given twice", key.text);
            return false;
        }
        if (ps->tok.kind == TK_STRING) {
            ir_attr_set_str(ps->m, in, key.text, ps->tok.text);
            next(ps);
        } else if (is_ident(ps, "inf") || is_ident(ps, "nan")) { /* as print.c writes them (-inf lexes as a number) */
            ir_attr_set_float(ps->m, in, key.text, ps->tok.text[0] == 'i' ? INFINITY : NAN);
            next(ps);
        } else if (!expect_kind(ps, TK_NUMBER, "a number or a string", &val)) {
            return false;
        } else if (val.is_float) {
            char *endp;
            double f = strtod(val.text, &endp);
            if (*endp) {
                perr(ps, &val, "expected a number, found '%s'", val.text);
                return false;
            }
            ir_attr_set_float(ps->m, in, key.text, f);
        } else {
            int64_t i;
            if (!parse_int(ps, &val, &i)) return false;
            ir_attr_set_int(ps->m, in, key.text, i);
        }
        if (is_punct(ps, '}')) break;
        if (!expect_punct(ps, ',')) return false;
    }
    next(ps);
    return true;
}

#define MAX_RESULTS 16
#define MAX_OPERANDS 1024

/* instr := result (',' result)* '=' OP operands? attrs?   with result := VALUE ':' type */
static bool parse_instr(Parser *ps)
{
    Token names[MAX_RESULTS];
    IrType types[MAX_RESULTS];
    int64_t off[MAX_RESULTS][2];
    bool planned[MAX_RESULTS] = {false};
    const char *cnames[MAX_RESULTS];
    int n_out = 0;
    for (;;) {
        if (n_out == MAX_RESULTS) {
            perr(ps, &ps->tok, "too many results (at most %d)", MAX_RESULTS);
            return false;
        }
        if (!expect_kind(ps, TK_VALUE, "a value name", &names[n_out]) || !define_check(ps, &names[n_out])) return false;
        for (int k = 0; k < n_out; k++) {
            if (strcmp(names[k].text, names[n_out].text) == 0) {
                perr(ps, &names[n_out], "value '%%%s' is defined twice", names[k].text);
                return false;
            }
        }
        if (!expect_punct(ps, ':') || !parse_type(ps, &types[n_out])) return false;
        if (is_punct(ps, '@')) {
            next(ps);
            if (!parse_arena(ps, &off[n_out][0], &off[n_out][1])) return false;
            planned[n_out] = true;
        }
        cnames[n_out] = names[n_out].text;
        n_out++;
        if (is_punct(ps, '=')) break;
        if (!expect_punct(ps, ',')) return false;
    }
    next(ps);
    Token opname;
    ir_op op;
    if (!expect_kind(ps, TK_IDENT, "an operation name", &opname)) return false;
    if (!ir_op_lookup(opname.text, &op)) {
        const char *best = NULL;
        int best_d = 3;
        for (int k = 0; k < IR_OP_COUNT; k++) {
            int dd = str_edit_distance(opname.text, ir_op_info((ir_op)k)->name);
            if (dd < best_d) best_d = dd, best = ir_op_info((ir_op)k)->name;
        }
        if (best) perr(ps, &opname, "unknown operation '%s'; did you mean '%s'?", opname.text, best);
        else perr(ps, &opname, "unknown operation '%s'", opname.text);
        return false;
    }
    IrValue *in[MAX_OPERANDS];
    int n_in = 0;
    /* operands share the operation's line: a following line may begin with the next result */
    if (ps->tok.kind == TK_VALUE && ps->tok.line == opname.line) {
        for (;;) {
            Token v;
            if (n_in == MAX_OPERANDS) {
                perr(ps, &ps->tok, "too many operands (at most %d)", MAX_OPERANDS);
                return false;
            }
            if (!expect_kind(ps, TK_VALUE, "an operand", &v)) return false;
            in[n_in] = ir_value_find(ps->m, v.text);
            if (!in[n_in]) {
                perr(ps, &v, "use of undefined value '%%%s'", v.text);
                return false;
            }
            n_in++;
            if (!is_punct(ps, ',')) break;
            next(ps);
        }
    }
    IrInstr *i = ir_instr_append(ps->m, op, in, n_in, types, cnames, n_out);
    i->line = opname.line;
    i->col = opname.col;
    for (int k = 0; k < n_out; k++) {
        i->out[k]->line = names[k].line;
        i->out[k]->col = names[k].col;
        i->out[k]->planned = planned[k];
        if (planned[k]) i->out[k]->off_t = off[k][0], i->out[k]->off_c = off[k][1];
    }
    return is_punct(ps, '{') ? parse_attrs(ps, i) : true;
}

static bool parse_items(Parser *ps)
{
    while (!ps->failed && !is_punct(ps, '}')) {
        char buf[300];
        if (is_ident(ps, "input")) parse_input_or_param(ps, false);
        else if (is_ident(ps, "param")) parse_input_or_param(ps, true);
        else if (is_ident(ps, "output")) parse_output(ps);
        else if (ps->tok.kind == TK_VALUE) parse_instr(ps);
        else perr(ps, &ps->tok, "expected 'input', 'param', 'output', an instruction or '}', found %s",
                  tok_desc(&ps->tok, buf, sizeof buf));
    }
    return !ps->failed;
}

IrModule *ir_parse(const char *text, size_t len, Diag *d)
{
    Parser ps = {.p = text, .end = text + len, .line = 1, .col = 1, .d = d};
    Token name;
    char buf[300];
    next(&ps);
    if (!is_ident(&ps, "module")) {
        perr(&ps, &ps.tok, "expected 'module', found %s", tok_desc(&ps.tok, buf, sizeof buf));
        return NULL;
    }
    next(&ps);
    if (!expect_kind(&ps, TK_STRING, "the module's name in quotes", &name)) return NULL;
    ps.m = ir_module_new(name.text);
    if (is_ident(&ps, "arena")) {
        ps.m->planned = parse_arena(&ps, &ps.m->arena_t, &ps.m->arena_c);
    }
    if (!ps.failed && expect_punct(&ps, '{') && parse_items(&ps)) {
        next(&ps); /* '}' */
        if (ps.tok.kind != TK_EOF) perr(&ps, &ps.tok, "expected end of file after the module, found %s",
                                        tok_desc(&ps.tok, buf, sizeof buf));
    }
    if (ps.failed || !ir_verify(ps.m, d)) {
        ir_module_free(ps.m);
        return NULL;
    }
    return ps.m;
}
