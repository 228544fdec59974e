/* tokenizer_check CASES — moeppc's tokenizer against the sentencepiece library's own encodings and
 * decodings (tokenizer_cases.py writes them): every text's ids (also with special pieces in the text,
 * against the library encoding the parts between them), every id sequence's text, byte for byte;
 * decoding with hold only ever appends (each prefix's text, held, begins the whole one's) and holds
 * back only an unfinished character (the "hold" cases).
 * Prints the first mismatches; exit status 1 on any. */
#include "runtime/runtime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int failures;

static size_t unhex(const char *h, char *out)
{
    size_t n = 0;
    if (strcmp(h, "-") == 0) return 0;
    for (; h[0] && h[1]; h += 2) {
        unsigned v;
        sscanf(h, "%2x", &v);
        out[n++] = (char)v;
    }
    return n;
}

static void fail(const char *what, int line, const char *text, size_t n)
{
    char shown[160];
    str_escape(text, n, shown, sizeof shown);
    if (failures++ < 12) fprintf(stderr, "cases line %d: %s (\"%s\")\n", line, what, shown);
}

static void print_ids(const char *label, const int32_t *ids, int64_t n)
{
    if (failures > 12) return;
    fprintf(stderr, "  %s:", label);
    for (int64_t i = 0; i < n; i++) fprintf(stderr, " %d", ids[i]);
    fprintf(stderr, "\n");
}

static void check_enc(const Tokenizer *t, char *rest, int line, char *buf, bool special)
{
    char *hex = strtok(rest, " "), *tok;
    size_t n = unhex(hex, buf);
    int64_t want_n = strtoll(strtok(NULL, " "), NULL, 10);
    int32_t *want = xmalloc((size_t)(want_n + 1) * sizeof *want);
    for (int64_t i = 0; i < want_n && (tok = strtok(NULL, " ")); i++) want[i] = (int32_t)strtol(tok, NULL, 10);
    int32_t *got;
    int64_t got_n = (special ? tokenizer_encode_special : tokenizer_encode)(t, buf, n, &got);
    if (got_n != want_n || memcmp(got, want, (size_t)want_n * sizeof *got)) {
        fail(special ? "encoding with special pieces differs" : "encoding differs", line, buf, n);
        print_ids("sentencepiece", want, want_n);
        print_ids("moeppc", got, got_n);
    }
    free(got);
    free(want);
}

/* "dec N IDS HEX" (hold: "hold N IDS HEX", the ids decoded held: a last run of byte pieces' unfinished
 * character kept back, and only that) */
static void check_dec(const Tokenizer *t, char *rest, int line, char *buf, bool hold)
{
    int64_t n = strtoll(strtok(rest, " "), NULL, 10);
    int32_t *ids = xmalloc((size_t)(n + 1) * sizeof *ids);
    for (int64_t i = 0; i < n; i++) ids[i] = (int32_t)strtol(strtok(NULL, " "), NULL, 10);
    size_t want_n = unhex(strtok(NULL, " \n"), buf), got_n;
    char *got = tokenizer_decode(t, ids, n, hold, &got_n);
    if (got_n != want_n || memcmp(got, buf, want_n)) {
        fail(hold ? "decoding held differs: moeppc's text follows" : "decoding differs: moeppc's text follows", line,
             got, got_n);
        print_ids("ids", ids, n);
        char shown[160];
        str_escape(buf, want_n, shown, sizeof shown);
        if (failures <= 12) fprintf(stderr, "  sentencepiece: \"%s\"\n", shown);
    }
    if (hold) {
        free(got);
        free(ids);
        return;
    }
    int64_t *offs = xmalloc((size_t)(n + 1) * sizeof *offs);
    size_t on;
    char *with = tokenizer_decode_offsets(t, ids, n, offs, &on);
    if (on != got_n || memcmp(with, got, on)) fail("decoding with offsets gives another text", line, with, on);
    for (int64_t k = 0; k <= n; k++) {
        size_t pn;
        char *part = tokenizer_decode(t, ids, k, true, &pn);
        if (pn > got_n || memcmp(part, got, pn)) fail("a held prefix's text does not begin the whole text", line, part, pn);
        if (k < n && offs[k] != text_chars(part, pn)) fail("an id's offset is not its held prefix's length", line, part, pn);
        free(part);
    }
    free(with);
    free(offs);
    /* streamed as it grows, a token a put after a prompt of 3: the rest of the whole text */
    int64_t p0 = n < 3 ? n : 3;
    size_t pn0, out_n = 0;
    free(tokenizer_decode(t, ids, p0, true, &pn0));
    char *out = NULL;
    FILE *mem = open_memstream(&out, &out_n);
    TextStream ts;
    text_stream_begin(&ts, t, mem, false, ids, p0);
    for (int64_t k = p0 + 1; k <= n; k++) text_stream_put(&ts, ids, k, k == n);
    if (p0 == n) text_stream_put(&ts, ids, n, true);
    fclose(mem);
    if (out_n != got_n - pn0 || memcmp(out, got + pn0, out_n)) fail("the streamed text differs from the whole", line, out, out_n);
    free(out);
    free(got);
    free(ids);
}

int main(int argc, char **argv)
{
    if (argc != 2) return fprintf(stderr, "usage: tokenizer_check CASES\n"), 2;
    FILE *f = fopen(argv[1], "r");
    if (!f) return perror(argv[1]), 2;
    size_t cap = 1 << 20;
    char *line = xmalloc(cap), *buf = xmalloc(cap);
    Tokenizer *t = NULL;
    int ln = 0, n_enc = 0, n_spc = 0, n_dec = 0, n_hold = 0, n_models = 0;
    while (fgets(line, (int)cap, f)) {
        ln++;
        line[strcspn(line, "\n")] = 0;
        if (strncmp(line, "model ", 6) == 0) {
            tokenizer_free(t);
            char path[4096];
            long size, bos, eos;
            RtError err;
            if (sscanf(line + 6, "%4095s %ld %ld %ld", path, &size, &bos, &eos) != 4) return fprintf(stderr, "line %d?\n", ln), 2;
            if (!tokenizer_load(path, &t, &err)) return fprintf(stderr, "%s\n", err.msg), 1;
            if (tokenizer_size(t) != size || tokenizer_bos(t) != bos || tokenizer_eos(t) != eos)
                fail("size, bos or eos differ", ln, path, strlen(path));
            n_models++;
        } else if (strncmp(line, "enc ", 4) == 0) check_enc(t, line + 4, ln, buf, false), n_enc++;
        else if (strncmp(line, "spc ", 4) == 0) check_enc(t, line + 4, ln, buf, true), n_spc++;
        else if (strncmp(line, "dec ", 4) == 0) check_dec(t, line + 4, ln, buf, false), n_dec++;
        else if (strncmp(line, "hold ", 5) == 0) check_dec(t, line + 5, ln, buf, true), n_hold++;
    }
    fclose(f);
    tokenizer_free(t);
    free(line);
    free(buf);
    printf("tokenizer_check: %d models, %d encodings, %d with special pieces, %d decodings, %d held: %d differ\n",
           n_models, n_enc, n_spc, n_dec, n_hold, failures);
    return failures ? 1 : 0;
}
