/* common.c — what the subcommands share: usage errors, atomic file writes, loading a spec. */
#include "tools/commands.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

int usage_error(const char *cmd, const char *usage, const char *fmt, const char *arg)
{
    fprintf(stderr, "moeppc %s: error: ", cmd);
    fprintf(stderr, fmt, arg);
    fprintf(stderr, "\nusage: moeppc %s\n", usage);
    return 2;
}

bool write_file_atomic(const char *path, const void *data, size_t n, const char *cmd)
{
    char why[512];
    bool ok = file_write_atomic(path, data, n, why, sizeof why);
    if (!ok) fprintf(stderr, "moeppc %s: error: %s\n", cmd, why);
    return ok;
}

bool load_spec(const char *path, ModelSpec *s)
{
    Diag d = {stderr, path, 0};
    return spec_load_file(path, s, &d);
}


const char *args_value(int argc, char **argv, const char *opt)
{
    for (int a = 1; a + 1 < argc; a++)
        if (strcmp(argv[a], opt) == 0) return argv[a + 1];
    return NULL;
}
