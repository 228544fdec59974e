/* fuzz_util.c — the invariants every fuzz target checks on diagnostics, and temporary files. */
#include "tests/fuzz/fuzz.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

_Noreturn void fuzz_fail(const char *file, int line, const char *expr, const char *fmt, ...)
{
    fprintf(stderr, "%s:%d: fuzz invariant broken: %s\n  ", file, line, expr);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    fputc('\n', stderr);
    abort();
}

/* No byte below 0x20 but the line ends, no DEL: a message never echoes raw control bytes. */
static void check_printable(const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        FUZZ_CHECK((c >= 0x20 && c != 0x7f) || c == '\n', "control byte 0x%02x at %zu in the message:\n%.*s", c, i,
                   (int)n, s);
    }
}

void fuzz_diag_open(FuzzDiag *f, const char *file)
{
    f->text = NULL;
    f->len = 0;
    f->d = (Diag){open_memstream(&f->text, &f->len), file, 0};
    FUZZ_CHECK(f->d.out, "open_memstream failed");
}

/* "FILE: error: …", "FILE:L:C: error: …" (L, C >= 1), or the same with "warning". */
static void check_line(const char *line, size_t n, const char *file)
{
    size_t k = strlen(file);
    FUZZ_CHECK(n > k && memcmp(line, file, k) == 0 && line[k] == ':', "message not led by '%s:': %.*s", file, (int)n,
               line);
    const char *p = line + k + 1;
    if (*p >= '0' && *p <= '9') {
        long l = strtol(p, (char **)&p, 10);
        FUZZ_CHECK(l >= 1 && *p == ':', "bad line number in: %.*s", (int)n, line);
        long c = strtol(p + 1, (char **)&p, 10);
        FUZZ_CHECK(c >= 1 && *p == ':', "bad column number in: %.*s", (int)n, line);
        p++;
    }
    FUZZ_CHECK(!strncmp(p, " error: ", 8) || !strncmp(p, " warning: ", 10), "neither error nor warning: %.*s", (int)n,
               line);
}

void fuzz_diag_close(FuzzDiag *f, bool refused)
{
    fclose(f->d.out);
    if (refused) FUZZ_CHECK(f->d.n_errors > 0 && f->len > 0, "refused without a diagnostic");
    else FUZZ_CHECK(f->d.n_errors == 0, "accepted with %d errors:\n%s", f->d.n_errors, f->text);
    check_printable(f->text, f->len);
    for (const char *p = f->text; p < f->text + f->len;) {
        const char *nl = memchr(p, '\n', (size_t)(f->text + f->len - p));
        size_t n = nl ? (size_t)(nl - p) : (size_t)(f->text + f->len - p);
        check_line(p, n, f->d.file);
        p += n + 1;
    }
    free(f->text);
}

void fuzz_check_message(const char *msg, const char *where)
{
    size_t n = strlen(msg), k = strlen(where);
    const char *e = strstr(msg, ": error: ");
    FUZZ_CHECK(n > 0, "refused without a message");
    FUZZ_CHECK(e && n > k && memcmp(msg, where, k) == 0 && e[9], "message not led by '%s…: error: ': %s", where, msg);
    check_printable(msg, n);
}

/* A field added to ModelSpec changes its size: compare it here too, then update the size. */
_Static_assert(sizeof(ModelSpec) == 304, "ModelSpec has a new field: compare it in fuzz_spec_equal");

bool fuzz_spec_equal(const ModelSpec *a, const ModelSpec *b)
{
    return a->has_eos == b->has_eos && (!a->has_eos || a->eos_token_id == b->eos_token_id) && !strcmp(a->name, b->name) && a->vocab == b->vocab && a->hidden == b->hidden && a->n_layers == b->n_layers &&
           a->n_heads == b->n_heads && a->n_kv_heads == b->n_kv_heads && a->rope_theta == b->rope_theta &&
           a->norm_eps == b->norm_eps && a->max_positions == b->max_positions && a->dtype == b->dtype &&
           a->tie_embeddings == b->tie_embeddings && a->moe_every == b->moe_every &&
           a->dense_intermediate == b->dense_intermediate && a->top_k == b->top_k && a->n_ffn == b->n_ffn &&
           a->n_const == b->n_const && a->n_copy == b->n_copy && a->n_zero == b->n_zero &&
           a->ffn_intermediate == b->ffn_intermediate && a->router_layers == b->router_layers &&
           a->gating == b->gating && a->logits_norm == b->logits_norm && a->logits_norm_std == b->logits_norm_std &&
           a->gating_residual == b->gating_residual && a->input_scaling == b->input_scaling;
}

static char tmpdir[64];

static void remove_tmpdir(void)
{
    DIR *dir = opendir(tmpdir);
    struct dirent *e;
    char path[512];
    while (dir && (e = readdir(dir))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(path, sizeof path, "%s/%s", tmpdir, e->d_name);
        if (unlink(path) != 0) rmdir(path);
    }
    if (dir) closedir(dir);
    rmdir(tmpdir);
}

const char *fuzz_tmpdir(void)
{
    if (!tmpdir[0]) {
        snprintf(tmpdir, sizeof tmpdir, "/tmp/moeppc-fuzz.XXXXXX");
        FUZZ_CHECK(mkdtemp(tmpdir), "cannot create a directory under /tmp");
        atexit(remove_tmpdir);
    }
    return tmpdir;
}

void fuzz_write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    FUZZ_CHECK(f, "cannot write %s", path);
    FUZZ_CHECK(fwrite(data, 1, n, f) == n && fclose(f) == 0, "cannot write %s", path);
}
