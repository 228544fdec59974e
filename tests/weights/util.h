/* util.h — helpers for the weights tests: temp directories, raw safetensors files, small specs. */
#ifndef MOEPPC_TESTS_WEIGHTS_UTIL_H
#define MOEPPC_TESTS_WEIGHTS_UTIL_H

#include "runtime/runtime.h"

/* CMocka's headers need these first. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <cmocka.h>

/* A fresh directory under /tmp (mkdtemp); caller frees and removes it with tu_rmtree. */
char *tu_tmpdir(void);
void  tu_rmtree(const char *dir);
/* The per-group temp directory: tu_setup makes it (CMocka group setup), tu_teardown removes it. */
extern char *tmp;
int   tu_setup(void **state);
int   tu_teardown(void **state);
/* DIR/NAME, malloc'd. */
char *tu_path(const char *dir, const char *name);
void  tu_write_file(const char *path, const void *data, size_t n);
/* A safetensors file with header length field hlen (normally strlen(header)), the header text
 * and n data bytes. */
void  tu_write_st_raw(const char *path, uint64_t hlen, const char *header, const void *data, size_t n);
void  tu_write_st(const char *path, const char *header, const void *data, size_t n);
/* Number of entries in a directory (minus . and ..). */
int   tu_count_entries(const char *dir);
/* A tiny MoE++ spec: V 64, D 16, 2 layers, 2 heads, 2 FFN + 1 const + 1 copy + 1 zero, I 8,
 * two-layer router, gating residual. */
ModelSpec tu_tiny_spec(moe_dtype dt);
/* The paper's 0.6B/(8+4)E shape: V 32000, D 768, 12 layers, 12 heads, I 2048. */
ModelSpec tu_small_paper_spec(moe_dtype dt);

#endif
