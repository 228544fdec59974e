/* init_weights.c — `moeppc init-weights SPEC --seed N -o FILE.safetensors`: seeded random weights
 * for a spec (distribution: weights.c), written as one safetensors file. */
#include "runtime/weights_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>

static const char init_usage[] = "usage: moeppc init-weights SPEC --seed N -o FILE.safetensors\n";

typedef struct {
    const char *spec, *out;
    uint64_t    seed;
    bool        has_seed;
} InitArgs;

/* A seed is a decimal integer in [0, 2^64); "-1", "abc", "12x" and overflow are refused. */
static bool parse_seed(const char *s, uint64_t *out)
{
    if (!s || s[0] < '0' || s[0] > '9') return false;
    errno = 0;
    char *end;
    unsigned long long v = strtoull(s, &end, 10);
    if (errno || *end) return false;
    *out = v;
    return true;
}

/* 0 on success, else the exit status (2: usage error; -1: --help printed, exit 0). */
static int init_parse_args(int argc, char **argv, InitArgs *a)
{
    for (int i = 1; i < argc; i++) {
        const char *arg = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(arg, "-h") == 0 || strcmp(arg, "--help") == 0) {
            fputs(init_usage, stdout);
            return -1;
        } else if (strcmp(arg, "--seed") == 0 || strncmp(arg, "--seed=", 7) == 0) {
            const char *v = arg[6] == '=' ? arg + 7 : (i++, val);
            if (!parse_seed(v, &a->seed)) {
                fprintf(stderr, "moeppc init-weights: error: --seed: expected an integer in [0, 2^64), found '%s'\n",
                        v ? v : "nothing");
                return 2;
            }
            a->has_seed = true;
        } else if (strcmp(arg, "-o") == 0 || strcmp(arg, "--output") == 0) {
            if (!val) break;
            a->out = val;
            i++;
        } else if (arg[0] == '-' && arg[1] != '\0') {
            fprintf(stderr, "moeppc init-weights: error: unknown option '%s'\n%s", arg, init_usage);
            return 2;
        } else if (a->spec) {
            fprintf(stderr, "moeppc init-weights: error: expected one SPEC, found '%s' and '%s'\n%s", a->spec, arg,
                    init_usage);
            return 2;
        } else {
            a->spec = arg;
        }
    }
    const char *missing = !a->spec ? "SPEC" : !a->has_seed ? "--seed N" : !a->out ? "-o FILE" : NULL;
    if (missing) {
        fprintf(stderr, "moeppc init-weights: error: missing %s\n%s", missing, init_usage);
        return 2;
    }
    return 0;
}

int cmd_init_weights(int argc, char **argv)
{
    InitArgs a = {0};
    int rc = init_parse_args(argc, argv, &a);
    if (rc) return rc < 0 ? 0 : rc;
    ModelSpec spec;
    Diag d = {stderr, a.spec, 0};
    if (!spec_load_file(a.spec, &spec, &d)) return 1;
    RtError err;
    WeightSet *w;
    if (!weights_random(&spec, a.seed, &w, &err)) {
        fprintf(stderr, "%s\n", err.msg);
        return 1;
    }
    bool ok = true;
    for (int i = 0; ok && i < w->n; i++) ok = weights_data(w, &w->tensors[i], &err) || !w->tensors[i].nbytes;
    static const char *const meta[] = {"format", "pt", NULL};
    ok = ok && safetensors_write_meta(a.out, w->tensors, w->n, meta, &err); /* (each tensor made first) */
    if (ok) {
        int64_t params = 0;
        size_t bytes = 0;
        for (int i = 0; i < w->n; i++) {
            params += (int64_t)(w->tensors[i].nbytes / dtype_size(w->tensors[i].dtype));
            bytes += w->tensors[i].nbytes;
        }
        printf("wrote %d tensors, %lld params, %.1f MB to %s\n", w->n, (long long)params, (double)bytes / 1e6, a.out);
    } else {
        fprintf(stderr, "%s\n", err.msg);
    }
    weights_close(w);
    return ok ? 0 : 1;
}
