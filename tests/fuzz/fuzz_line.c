/* fuzz_line.c — a `run --prompts` line's two readers: token ids (ids_parse: "1 5 9", "1,5,9") and
 * escaped text (text_unescape: \n \t \r \\ \xHH), with the escaping of answers (text_write_escaped)
 * and of bytes shown in messages (str_escape). The input's first two bytes choose the vocabulary and
 * the limit on ids; the rest is the line.
 *   ids: refused with a printable reason, or ids in [0, vocab), no more than the limit, as many as the
 *        line's fields, each the number its field spells;
 *   text: read back, or refused at a backslash that starts no escape; what is read, written escaped,
 *        is one printable line that reads back to the same bytes, and so is any line's own bytes;
 *   messages: str_escape's text printable, terminated, within its buffer. */
#include "tests/fuzz/fuzz.h"

#include "runtime/runtime.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static void check_printable(const char *s, size_t n, const char *what)
{
    for (size_t i = 0; i < n; i++)
        FUZZ_CHECK((unsigned char)s[i] >= 0x20 && s[i] != 0x7f, "a control byte 0x%02x in %s", (unsigned char)s[i],
                   what);
}

/* s[n] written as text_write_escaped writes it, in a malloc'd buffer (its length in *len) */
static char *escaped(const char *s, size_t n, size_t *len)
{
    char *buf = NULL;
    FILE *f = open_memstream(&buf, len);
    FUZZ_CHECK(f != NULL, "open_memstream");
    text_write_escaped(f, s, n);
    fclose(f);
    return buf;
}

/* Written escaped, s[n] is one printable line that text_unescape reads back to s[n]. */
static void check_round_trip(const char *s, size_t n)
{
    size_t len, back_n, bad;
    char *e = escaped(s, n, &len);
    check_printable(e, len, "an escaped text");
    char *back = malloc(len + 1);
    FUZZ_CHECK(back && text_unescape(e, len, back, &back_n, &bad), "an escaped text not read back (at %zu)", bad);
    FUZZ_CHECK(back_n == n && memcmp(back, s, n) == 0, "escaped and read back: %zu bytes, not the %zu written",
               back_n, n);
    free(back);
    free(e);
}

static void check_ids(const char *text, int64_t vocab, int64_t max)
{
    char why[200] = "";
    int64_t n = -1;
    int32_t *ids = ids_parse(text, vocab, max, &n, why, sizeof why);
    if (!ids) {
        FUZZ_CHECK(why[0], "refused without a reason");
        check_printable(why, strlen(why), "the reason");
        return;
    }
    FUZZ_CHECK(max < 0 || n <= max, "%lld ids, more than the %lld allowed", (long long)n, (long long)max);
    int64_t k = 0; /* the fields, counted apart: each must be its id, written in decimal */
    for (const char *p = text + strspn(text, " ,\t\n"); *p; p += strspn(p, " ,\t\n"), k++) {
        size_t w = strcspn(p, " ,\t\n");
        FUZZ_CHECK(k < n, "a field past the %lld ids", (long long)n);
        FUZZ_CHECK(ids[k] >= 0 && ids[k] < vocab, "id %d outside [0, %lld)", ids[k], (long long)vocab);
        const char *d = p + (*p == '+' || *p == '-'); /* a sign, then digits alone */
        FUZZ_CHECK(d < p + w && strspn(d, "0123456789") >= (size_t)(p + w - d), "field %lld is no number, and id %d",
                   (long long)k + 1, ids[k]);
        char *end;
        long long v = strtoll(p, &end, 10);
        FUZZ_CHECK((size_t)(end - p) == w && v == ids[k], "field %lld is not id %d", (long long)k + 1, ids[k]);
        p += w;
    }
    FUZZ_CHECK(k == n, "%lld fields, %lld ids", (long long)k, (long long)n);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    if (size < 2) return 0;
    int64_t vocab = 1 + (int64_t)data[0] * 131, max = (int64_t)(data[1] % 24) - 1; /* -1: no limit */
    const char *line = (const char *)data + 2;
    size_t n = size - 2;

    char *text = malloc(n + 1); /* ids: the line up to its first NUL, as a C string */
    FUZZ_CHECK(text != NULL, "malloc");
    memcpy(text, line, n);
    text[n] = 0;
    check_ids(text, vocab, max);

    char *out = malloc(n + 1);
    size_t out_n = 0, bad = 0;
    FUZZ_CHECK(out != NULL, "malloc");
    if (text_unescape(line, n, out, &out_n, &bad)) {
        FUZZ_CHECK(out_n <= n, "%zu bytes read from %zu", out_n, n);
        check_round_trip(out, out_n);
    } else FUZZ_CHECK(bad < n && line[bad] == '\\', "refused at %zu, not at a backslash", bad);
    check_round_trip(line, n);

    char shown[48];
    memset(shown, 'x', sizeof shown);
    str_escape(line, n, shown, sizeof shown);
    size_t m = strnlen(shown, sizeof shown);
    FUZZ_CHECK(m < sizeof shown, "str_escape left its text unterminated");
    check_printable(shown, m, "str_escape's text");
    free(out);
    free(text);
    return 0;
}
