/* print.c — the textual form of IR. Floats are printed in the shortest form that reads back to the
 * same double, so print → parse → print is the identity. */
#include "ir/ir.h"

#include <math.h>
#include <stdlib.h>
#include <string.h>

static void print_float(FILE *f, double v)
{
    char buf[40];
    if (isinf(v)) {
        fputs(v > 0 ? "inf" : "-inf", f);
        return;
    }
    if (isnan(v)) {
        fputs("nan", f);
        return;
    }
    for (int prec = 1; prec <= 17; prec++) {
        snprintf(buf, sizeof buf, "%.*g", prec, v);
        if (strtod(buf, NULL) == v) break;
    }
    /* integral values print plainly (10000.0, not 1e+04) while that stays exact */
    if (v == floor(v) && fabs(v) < 1e15) snprintf(buf, sizeof buf, "%.1f", v);
    /* a float attribute always reads back as a float: keep a '.' or an exponent */
    if (!strpbrk(buf, ".e")) strcat(buf, ".0");
    fputs(buf, f);
}

/* Strings are quoted; '"' and '\\' are escaped with a backslash (parse.c reads them back). */
static void print_string(FILE *f, const char *s)
{
    fputc('"', f);
    for (; *s; s++) {
        if (*s == '"' || *s == '\\') fputc('\\', f);
        fputc(*s, f);
    }
    fputc('"', f);
}

static void print_type(FILE *f, const IrType *t)
{
    fprintf(f, "%s[", dtype_name(t->dtype));
    for (int i = 0; i < t->ndim; i++) {
        if (i) fputs(", ", f);
        if (t->dims[i] == IR_DIM_T) fputc('T', f);
        else fprintf(f, "%lld", (long long)t->dims[i]);
    }
    fputc(']', f);
}

static void print_attrs(FILE *f, const IrInstr *i)
{
    if (!i->n_attrs) return;
    fputs(" {", f);
    for (int k = 0; k < i->n_attrs; k++) {
        const IrAttr *a = &i->attrs[k];
        fprintf(f, "%s%s = ", k ? ", " : "", a->key);
        if (a->kind == IR_ATTR_INT) fprintf(f, "%lld", (long long)a->i);
        else if (a->kind == IR_ATTR_STR) print_string(f, a->s);
        else print_float(f, a->f);
    }
    fputc('}', f);
}

static void print_instr(FILE *f, const IrInstr *i)
{
    fputs("  ", f);
    for (int k = 0; k < i->n_out; k++) {
        const IrValue *v = i->out[k];
        fprintf(f, "%s%%%s : ", k ? ", " : "", v->name);
        print_type(f, &v->type);
        if (v->planned) fprintf(f, " @arena(%lld, %lld)", (long long)v->off_t, (long long)v->off_c);
    }
    fprintf(f, " = %s", ir_op_info(i->op)->name);
    for (int k = 0; k < i->n_in; k++) fprintf(f, "%s%%%s", k ? ", " : " ", i->in[k]->name);
    print_attrs(f, i);
    fputc('\n', f);
}

void ir_print(const IrModule *m, FILE *f)
{
    fputs("module ", f);
    print_string(f, m->name);
    if (m->planned) fprintf(f, " arena(%lld, %lld)", (long long)m->arena_t, (long long)m->arena_c);
    fputs(" {\n", f);
    for (int k = 0; k < m->n_values; k++) {
        const IrValue *v = m->values[k];
        if (v->kind == IR_VAL_RESULT) continue;
        fprintf(f, "  %s %%%s : ", v->kind == IR_VAL_INPUT ? "input" : "param", v->name);
        print_type(f, &v->type);
        if (v->kind == IR_VAL_PARAM) {
            fputs(" = ", f);
            print_string(f, v->tensor);
        }
        fputc('\n', f);
    }
    for (const IrInstr *i = m->first; i; i = i->next) print_instr(f, i);
    for (int k = 0; k < m->n_outputs; k++)
    {
        fputs("  output ", f);
        print_string(f, m->outputs[k].name);
        fprintf(f, " = %%%s\n", m->outputs[k].value->name);
    }
    fputs("}\n", f);
}

char *ir_print_string(const IrModule *m)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    MOE_ASSERT(f);
    ir_print(m, f);
    fclose(f);
    return buf;
}
