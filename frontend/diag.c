/* diag.c — where every layer's user diagnostics are printed: `FILE:LINE:COL: error: …` (or warning).
 * In its own file so that the IR reader (and the embedded layer library, embed/) links without the
 * YAML frontend. */
#include "frontend/frontend.h"

#include <stdarg.h>

static void vdiag(Diag *d, const char *kind, int line, int col, const char *fmt, va_list ap)
{
    FILE *f = d->out ? d->out : stderr;
    const char *file = d->file ? d->file : "<input>";
    if (line > 0)
        fprintf(f, "%s:%d:%d: %s: ", file, line, col, kind);
    else
        fprintf(f, "%s: %s: ", file, kind);
    vfprintf(f, fmt, ap);
    fputc('\n', f);
}

void diag_error(Diag *d, int line, int col, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vdiag(d, "error", line, col, fmt, ap);
    va_end(ap);
    d->n_errors++;
}

void diag_warning(Diag *d, int line, int col, const char *fmt, ...)
{
    va_list ap;
    va_start(ap, fmt);
    vdiag(d, "warning", line, col, fmt, ap);
    va_end(ap);
}
