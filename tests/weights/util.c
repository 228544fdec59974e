/* util.c — helpers for the weights tests (see util.h). */
#include "tests/weights/util.h"

#include <dirent.h>
#include <ftw.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

char *tu_tmpdir(void)
{
    char tmpl[] = "/tmp/moeppc-weights-XXXXXX";
    char *d = mkdtemp(tmpl);
    assert_non_null(d);
    return xstrdup(d);
}

static int rm_one(const char *path, const struct stat *st, int flag, struct FTW *ftw)
{
    (void)st, (void)flag, (void)ftw;
    return remove(path);
}

void tu_rmtree(const char *dir) { nftw(dir, rm_one, 16, FTW_DEPTH | FTW_PHYS); }

char *tu_path(const char *dir, const char *name)
{
    char *p = xmalloc(strlen(dir) + strlen(name) + 2);
    sprintf(p, "%s/%s", dir, name);
    return p;
}

void tu_write_file(const char *path, const void *data, size_t n)
{
    FILE *f = fopen(path, "wb");
    assert_non_null(f);
    assert_int_equal(fwrite(data, 1, n, f), n);
    assert_int_equal(fclose(f), 0);
}

void tu_write_st_raw(const char *path, uint64_t hlen, const char *header, const void *data, size_t n)
{
    size_t k = strlen(header);
    unsigned char *buf = xmalloc(8 + k + n + 1);
    for (int i = 0; i < 8; i++) buf[i] = (unsigned char)(hlen >> (8 * i));
    memcpy(buf + 8, header, k);
    if (n) memcpy(buf + 8 + k, data, n);
    tu_write_file(path, buf, 8 + k + n);
    free(buf);
}

void tu_write_st(const char *path, const char *header, const void *data, size_t n)
{
    tu_write_st_raw(path, strlen(header), header, data, n);
}

int tu_count_entries(const char *dir)
{
    DIR *d = opendir(dir);
    assert_non_null(d);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

ModelSpec tu_tiny_spec(moe_dtype dt)
{
    ModelSpec s = {
        .vocab = 64, .hidden = 16, .n_layers = 2, .n_heads = 2, .n_kv_heads = 2, .rope_theta = 10000.0,
        .norm_eps = 1e-6, .max_positions = 128, .dtype = dt, .tie_embeddings = false, .moe_every = 1,
        .dense_intermediate = 0, .top_k = 2, .n_ffn = 2, .n_const = 1, .n_copy = 1, .n_zero = 1,
        .ffn_intermediate = 8, .router_layers = 2, .gating = GATING_SOFTMAX_TOPK, .logits_norm = false,
        .logits_norm_std = 1.0, .gating_residual = true, .input_scaling = true,
    };
    snprintf(s.name, sizeof s.name, "tiny");
    return s;
}

ModelSpec tu_small_paper_spec(moe_dtype dt)
{
    ModelSpec s = tu_tiny_spec(dt);
    s.vocab = 32000, s.hidden = 768, s.n_layers = 12, s.n_heads = 12, s.n_kv_heads = 12;
    s.n_ffn = 8, s.n_const = 2, s.n_copy = 1, s.n_zero = 1, s.ffn_intermediate = 2048;
    s.max_positions = 2048;
    snprintf(s.name, sizeof s.name, "moepp-0.6b");
    return s;
}

char *tmp;

int tu_setup(void **state)
{
    (void)state;
    tmp = tu_tmpdir();
    return 0;
}

int tu_teardown(void **state)
{
    (void)state;
    tu_rmtree(tmp);
    free(tmp);
    tmp = NULL;
    return 0;
}
