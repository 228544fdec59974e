/* diag.c — where every layer's user diagnostics are printed: `FILE:LINE:COL: error: …`. In its own file
 * so that the IR reader (and the embedded layer library, embed/) links without the YAML frontend. */
#include "frontend/frontend.h"

#include <stdarg.h>

void diag_error(Diag *d, int line, int col, const char *fmt, ...)
{
    FILE *f = d->out ? d->out : stderr;
    const char *file = d->file ? d->file : "<input>";
    if (line > 0)
        fprintf(f, "%s:%d:%d: error: ", file, line, col);
    else
        fprintf(f, "%s: error: ", file);
    va_list ap;
    va_start(ap, fmt);
    vfprintf(f, fmt, ap);
    va_end(ap);
    fputc('\n', f);
    d->n_errors++;
}
