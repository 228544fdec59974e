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

/* Write a buffer to PATH through a temporary file renamed into place: all or nothing. */
bool write_file_atomic(const char *path, const void *data, size_t n, const char *cmd)
{
    size_t len = strlen(path);
    char *tmp = xmalloc(len + 16);
    snprintf(tmp, len + 16, "%s.tmpXXXXXX", path);
    int fd = mkstemp(tmp);
    bool ok = fd >= 0;
    if (ok) {
        FILE *f = fdopen(fd, "wb");
        ok = f && fwrite(data, 1, n, f) == n;
        if (f) ok = (fclose(f) == 0) && ok;
        else close(fd);
        ok = ok && rename(tmp, path) == 0;
        if (!ok) unlink(tmp);
    }
    if (!ok) fprintf(stderr, "moeppc %s: error: cannot write '%s': %s\n", cmd, path, strerror(errno));
    free(tmp);
    return ok;
}

bool load_spec(const char *path, ModelSpec *s)
{
    Diag d = {stderr, path, 0};
    return spec_load_file(path, s, &d);
}

