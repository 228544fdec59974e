/* fuzz_safetensors_index.c — a sharded checkpoint's model.safetensors.index.json through weights_open
 * on its directory. The shards are fixed (written once by LLVMFuzzerInitialize): two good ones that
 * share a tensor (the index decides which copy counts), a broken one, and a directory. Accepted: every
 * tensor is sound (fuzz_check_weights) and each the index names is there. */
#include "tests/fuzz/fuzz.h"
#include "tests/fuzz/fuzz_weights.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

static char dir[128], index_path[192];

static void write_shard(const char *name, const Tensor *t, int n)
{
    char p[256];
    snprintf(p, sizeof p, "%s/%s", dir, name);
    RtError err;
    FUZZ_CHECK(safetensors_write(p, t, n, &err), "%s", err.msg);
}

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    snprintf(dir, sizeof dir, "%s", fuzz_tmpdir());
    snprintf(index_path, sizeof index_path, "%s/model.safetensors.index.json", dir);
    static const float f[6] = {1, 2, 3, 4, 5, 6};
    Tensor one[] = {
        {"model.embed_tokens.weight", DT_F32, 2, {2, 2}, f, 16},
        {"model.norm.weight", DT_BF16, 1, {3}, f, 6},
        {"lm_head.weight", DT_F16, 2, {1, 2}, f, 4},
    };
    Tensor two[] = {
        {"model.layers.0.mlp.gate.weight", DT_F32, 1, {1}, f + 1, 4},
        {"lm_head.weight", DT_F16, 2, {1, 2}, f + 2, 4},
        {"empty", DT_F32, 2, {0, 3}, NULL, 0},
    };
    write_shard("model-00001-of-00002.safetensors", one, 3);
    write_shard("model-00002-of-00002.safetensors", two, 3);
    char p[256];
    snprintf(p, sizeof p, "%s/broken.safetensors", dir);
    fuzz_write_file(p, "\xff\xff\xff\xff\xff\xff\xff\x7f{}", 10);
    snprintf(p, sizeof p, "%s/subdir.safetensors", dir);
    FUZZ_CHECK(mkdir(p, 0700) == 0, "cannot create %s", p);
    return 0;
}

/* Each tensor the index maps (when it is a plain object of strings) is in the set. */
static void check_mapped(const WeightSet *w, const uint8_t *data, size_t size)
{
    cJSON *root = cJSON_ParseWithLength((const char *)data, size);
    const cJSON *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map"), *kv;
    if (!cJSON_IsObject(map)) map = NULL;
    cJSON_ArrayForEach(kv, map)
        FUZZ_CHECK(weights_find(w, kv->string), "tensor '%s' of the index is missing", kv->string);
    cJSON_Delete(root);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    fuzz_write_file(index_path, data, size);
    WeightSet *w;
    RtError err;
    if (!weights_open(dir, &w, &err)) {
        fuzz_check_message(err.msg, dir);
        return 0;
    }
    fuzz_check_weights(w);
    check_mapped(w, data, size);
    weights_close(w);
    return 0;
}
