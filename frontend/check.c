/* check.c — `moeppc check SPEC` and `moeppc import-hf CONFIG.json -o SPEC.yaml`.
 *
 * Exit status: 0 success, 1 the input is wrong (diagnostics on stderr), 2 the command line is wrong.
 */
#include "frontend/frontend.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static int usage_error(const char *usage, const char *fmt, const char *arg)
{
    fprintf(stderr, "moeppc: error: ");
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nusage: moeppc %s\n", usage);
    return 2;
}

static const char check_usage[] = "check SPEC";
static const char import_usage[] = "import-hf CONFIG.json -o SPEC.yaml";

int cmd_check(int argc, char **argv)
{
    const char *path = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: moeppc %s\n\nValidate a model spec and print its parameter and FLOP counts.\n",
                   check_usage);
            return 0;
        }
        if (argv[i][0] == '-' && argv[i][1]) return usage_error(check_usage, "unknown option '%s'", argv[i]);
        if (path) return usage_error(check_usage, "unexpected argument '%s'", argv[i]);
        path = argv[i];
    }
    if (!path) return usage_error(check_usage, "missing the spec file%s", "");
    ModelSpec s;
    Diag d = {.out = stderr, .file = path};
    if (!spec_load_any(path, &s, &d)) return 1;
    spec_print_summary(&s, stdout);
    return 0;
}

/* Write to OUT.tmp, then rename: a reader never sees a half-written spec, a failure leaves nothing. */
static bool write_atomically(const ModelSpec *s, const char *out)
{
    size_t n = strlen(out) + 5;
    char *tmp = xmalloc(n);
    snprintf(tmp, n, "%s.tmp", out);
    FILE *f = fopen(tmp, "w");
    bool ok = f != NULL;
    if (ok) {
        ok = spec_write_yaml(s, f);
        ok = (fclose(f) == 0) && ok;
        ok = ok && rename(tmp, out) == 0;
    }
    if (!ok) {
        fprintf(stderr, "moeppc: error: cannot write %s: %s\n", out, strerror(errno));
        remove(tmp);
    }
    free(tmp);
    return ok;
}

int cmd_import_hf(int argc, char **argv)
{
    const char *in = NULL, *out = NULL;
    for (int i = 1; i < argc; i++) {
        if (!strcmp(argv[i], "--help") || !strcmp(argv[i], "-h")) {
            printf("usage: moeppc %s\n\nConvert a Hugging Face MoE++ config.json into a model spec.\n",
                   import_usage);
            return 0;
        }
        if (!strcmp(argv[i], "-o")) {
            if (i + 1 >= argc) return usage_error(import_usage, "option '%s' needs a file name", argv[i]);
            out = argv[++i];
        } else if (argv[i][0] == '-' && argv[i][1]) {
            return usage_error(import_usage, "unknown option '%s'", argv[i]);
        } else if (in) {
            return usage_error(import_usage, "unexpected argument '%s'", argv[i]);
        } else {
            in = argv[i];
        }
    }
    if (!in) return usage_error(import_usage, "missing the config file%s", "");
    if (!out) return usage_error(import_usage, "missing the output file (-o SPEC.yaml)%s", "");
    ModelSpec s;
    Diag d = {.out = stderr, .file = in};
    if (!spec_from_hf_config(in, &s, &d)) return 1;
    spec_name_from_path(out, s.name, sizeof s.name); /* named after the file it is written to */
    return write_atomically(&s, out) ? 0 : 1;
}
