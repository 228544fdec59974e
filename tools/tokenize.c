/* tokenize.c — `moeppc tokenize`: text to token ids and back with a checkpoint's tokenizer.model
 * (runtime.h's tokenizer), to prepare --ids or read what a run generated. */
#include "runtime/runtime.h"
#include "tools/commands.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

#define TOKENIZE_LINE_MAX ((size_t)64 << 20)

typedef struct {
    const char *model, *file;
    bool decode, pieces, no_bos, escape, special;
} TokenizeArgs;

static int tok_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "moeppc tokenize: error: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nusage: moeppc " TOKENIZE_USAGE "\n");
    return 2;
}

/* One input: text to ids (or pieces), or with --decode ids to text. False on a bad one (reported). */
static bool tokenize_one(const Tokenizer *t, const TokenizeArgs *a, const char *in, size_t n, const char *where)
{
    if (a->decode) {
        char why[160];
        int64_t k;
        int32_t *ids = strlen(in) == n ? ids_parse(in, tokenizer_size(t), -1, &k, why, sizeof why) : NULL;
        if (!ids) {
            if (strlen(in) != n) snprintf(why, sizeof why, "column %zu: a NUL byte", strlen(in) + 1);
            fprintf(stderr, "moeppc tokenize: error: %s: %s\n", where, why);
            return false;
        }
        size_t len;
        char *text = tokenizer_decode(t, ids, k, false, &len);
        if (a->escape) text_write_escaped(stdout, text, len);
        else fwrite(text, 1, len, stdout);
        putchar('\n');
        free(text);
        free(ids);
        return true;
    }
    int32_t *ids;
    int64_t k = (a->special ? tokenizer_encode_special : tokenizer_encode)(t, in, n, &ids);
    int64_t first = !a->no_bos && !a->special && tokenizer_bos(t) >= 0 ? -1 : 0; /* -1: the beginning-of-sequence id */
    for (int64_t i = first; i < k; i++) {
        int32_t id = i < 0 ? tokenizer_bos(t) : ids[i];
        if (i > first) putchar(' ');
        if (a->pieces) text_write_escaped(stdout, tokenizer_piece(t, id), strlen(tokenizer_piece(t, id)));
        else printf("%d", id);
    }
    putchar('\n');
    free(ids);
    return true;
}

static int tokenize_file(const Tokenizer *t, const TokenizeArgs *a)
{
    FILE *f = strcmp(a->file, "-") == 0 ? stdin : fopen(a->file, "rb");
    if (!f) return fprintf(stderr, "moeppc tokenize: error: %s: %s\n", a->file, strerror(errno)), 1;
    char *line = NULL, where[64];
    size_t cap = 0, n;
    bool too_long;
    int rc = 0;
    for (long ln = 1; file_read_line(f, &line, &cap, TOKENIZE_LINE_MAX, &n, &too_long); ln++) {
        snprintf(where, sizeof where, "line %ld", ln);
        if (too_long) {
            fprintf(stderr, "moeppc tokenize: error: %s: longer than %zu MiB\n", where, TOKENIZE_LINE_MAX >> 20);
            rc = 1;
            putchar('\n');
            continue;
        }
        if (!tokenize_one(t, a, line, n, where)) rc = 1, putchar('\n');
    }
    if (ferror(f)) fprintf(stderr, "moeppc tokenize: error: %s: read error\n", a->file), rc = 1;
    free(line);
    if (f != stdin) fclose(f);
    return rc;
}

int cmd_tokenize(int argc, char **argv)
{
    TokenizeArgs a = {0};
    int first_text = 0;
    for (int i = 1; i < argc; i++) {
        const char *o = argv[i];
        if (strcmp(o, "--decode") == 0) a.decode = true;
        else if (strcmp(o, "--pieces") == 0) a.pieces = true;
        else if (strcmp(o, "--no-bos") == 0) a.no_bos = true;
        else if (strcmp(o, "--escape") == 0) a.escape = true;
        else if (strcmp(o, "--special") == 0) a.special = true;
        else if (strcmp(o, "--file") == 0) {
            if (i + 1 >= argc) return tok_usage("%s needs a value", o);
            a.file = argv[++i];
        } else if (strcmp(o, "--") == 0) {
            first_text = i + 1;
            break;
        } else if (o[0] == '-' && o[1]) return tok_usage("unknown option '%s'", o);
        else if (!a.model) a.model = o;
        else {
            first_text = i;
            break;
        }
    }
    if (!a.model) return tok_usage("%s", "missing TOKENIZER (a checkpoint's tokenizer.model)");
    if (!a.file == !first_text) return tok_usage("%s", a.file ? "give --file or TEXT, not both" : "missing TEXT (or --file F)");
    if (a.decode && a.pieces) return tok_usage("%s", "--pieces shows an encoding's pieces: not with --decode");
    if (a.decode && a.special) return tok_usage("%s", "--special reads control pieces in text: not with --decode");
    Tokenizer *t;
    RtError err;
    if (!tokenizer_load(a.model, &t, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
    int rc = 0;
    if (a.file) rc = tokenize_file(t, &a);
    for (int i = first_text; first_text && i < argc; i++) {
        char where[32];
        snprintf(where, sizeof where, "argument %d", i - first_text + 1);
        if (!tokenize_one(t, &a, argv[i], strlen(argv[i]), where)) rc = 1;
    }
    tokenizer_free(t);
    if (fflush(stdout) != 0) fprintf(stderr, "moeppc tokenize: error: writing the output: %s\n", strerror(errno)), rc = 1;
    return rc;
}
