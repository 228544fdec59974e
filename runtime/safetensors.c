/* safetensors.c — read (mmap, validated) and write (atomic) safetensors checkpoints, single files
 * and sharded sets described by model.safetensors.index.json.
 *
 * File layout: u64 little-endian header length N, N bytes of JSON
 *   {"__metadata__": {str: str}, "NAME": {"dtype": "BF16", "shape": [..], "data_offsets": [b, e]}, ..}
 * then the data region; offsets are relative to its start (8 + N). Every field is checked before a
 * Tensor points into the mapping, so a bad file is an error message, never a crash.
 */
#include "runtime/weights_internal.h"

#include <cjson/cJSON.h>
#include <errno.h>
#include <fcntl.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define ST_HEADER_LIMIT 100000000ull     /* the reference implementation's 100 MB cap */
#define ST_MAX_DIMS 4
#define ST_MAX_JSON_INT 9007199254740992.0 /* 2^53: beyond this a JSON number is not exact */

/* ---- small helpers ------------------------------------------------------------------------------ */
static const struct {
    const char *name;
    moe_dtype   dt;
} st_dtypes[] = {{"F32", DT_F32}, {"BF16", DT_BF16}, {"F16", DT_F16}};

static bool st_dtype_parse(const char *s, moe_dtype *out)
{
    for (size_t i = 0; i < MOE_ARRAY_LEN(st_dtypes); i++) {
        if (strcmp(s, st_dtypes[i].name) == 0) {
            *out = st_dtypes[i].dt;
            return true;
        }
    }
    return false;
}

static const char *st_dtype_name(moe_dtype dt)
{
    for (size_t i = 0; i < MOE_ARRAY_LEN(st_dtypes); i++)
        if (st_dtypes[i].dt == dt) return st_dtypes[i].name;
    return NULL;
}

/* A short description of a JSON value for "found ..." in messages. */
static void json_describe(const cJSON *v, char *buf, size_t len)
{
    if (!v) snprintf(buf, len, "nothing");
    else if (cJSON_IsNumber(v)) snprintf(buf, len, "%.17g", v->valuedouble);
    else if (cJSON_IsString(v)) snprintf(buf, len, "\"%.60s\"", v->valuestring);
    else if (cJSON_IsArray(v)) snprintf(buf, len, "an array of %d", cJSON_GetArraySize(v));
    else if (cJSON_IsObject(v)) snprintf(buf, len, "an object");
    else if (cJSON_IsBool(v)) snprintf(buf, len, "%s", cJSON_IsTrue(v) ? "true" : "false");
    else snprintf(buf, len, "null");
}

/* A JSON number that is a non-negative integer exactly representable (cJSON stores doubles). */
static bool json_u64(const cJSON *v, uint64_t *out)
{
    if (!cJSON_IsNumber(v)) return false;
    double d = v->valuedouble;
    if (!(d >= 0 && d <= ST_MAX_JSON_INT) || d != (double)(uint64_t)d) return false;
    *out = (uint64_t)d;
    return true;
}

static uint64_t le64(const unsigned char *p)
{
    uint64_t v = 0;
    for (int i = 7; i >= 0; i--) v = (v << 8) | p[i];
    return v;
}

/* ---- reading one file ---------------------------------------------------------------------------- */
typedef struct {
    const char *path;
    const unsigned char *data;   /* start of the data region */
    uint64_t data_len;
} StFile;

typedef struct {
    int      index;              /* position in the WeightSet */
    uint64_t begin, end;
} StRange;

/* Map PATH read-only; *ident gets its identity (WsMapping). */
static bool st_map_file(const char *path, void **base, size_t *len, char **ident, RtError *err)
{
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);    /* O_NONBLOCK: a FIFO must not hang us */
    if (fd < 0) {
        rt_errorf(err, path, "cannot open: %s", strerror(errno));
        return false;
    }
    struct stat st;
    bool ok = false;
    if (fstat(fd, &st) != 0) rt_errorf(err, path, "cannot stat: %s", strerror(errno));
    else if (!S_ISREG(st.st_mode)) rt_errorf(err, path, "not a regular file");
    else if (st.st_size == 0) rt_errorf(err, path, "file is empty, expected at least 8 bytes (the header length)");
    else if (st.st_size < 8)
        rt_errorf(err, path, "file is %lld bytes, expected at least 8 (the header length)", (long long)st.st_size);
    else {
        *len = (size_t)st.st_size;
        *base = mmap(NULL, *len, PROT_READ, MAP_PRIVATE, fd, 0);
        ok = *base != MAP_FAILED;
        if (!ok) rt_errorf(err, path, "cannot map: %s", strerror(errno));
        char id[128];
        snprintf(id, sizeof id, "file dev %llx ino %llu size %lld mtime %lld.%09ld", (unsigned long long)st.st_dev,
                 (unsigned long long)st.st_ino, (long long)st.st_size, (long long)st.st_mtim.tv_sec,
                 (long)st.st_mtim.tv_nsec);
        *ident = ok ? xstrdup(id) : NULL;
    }
    close(fd);
    return ok;
}

/* Parse the JSON header; *root is an object on success. The header is copied so that cJSON never
 * reads near the end of the mapping (and gets its terminating NUL). */
static bool st_parse_header(const char *path, const unsigned char *base, size_t len, cJSON **root,
                            uint64_t *header_len, RtError *err)
{
    uint64_t n = le64(base);
    if (n > ST_HEADER_LIMIT) {
        rt_errorf(err, path, "header length %llu is larger than the %llu-byte limit (file is %zu bytes)",
                  (unsigned long long)n, ST_HEADER_LIMIT, len);
        return false;
    }
    if (n > len - 8) {
        rt_errorf(err, path, "header length %llu runs past the end of the file (file is %zu bytes, %zu after "
                  "the length)", (unsigned long long)n, len, len - 8);
        return false;
    }
    char *text = xmalloc((size_t)n + 1);
    memcpy(text, base + 8, (size_t)n);
    text[n] = '\0';
    const char *end = NULL;
    *root = cJSON_ParseWithLengthOpts(text, (size_t)n, &end, 0);
    size_t pos = end ? (size_t)(end - text) : 0;
    /* Only the writer's padding may follow the JSON (spaces; be lenient with any whitespace/NUL). */
    while (*root && pos < n && (text[pos] == ' ' || text[pos] == '\t' || text[pos] == '\r' ||
                                text[pos] == '\n' || text[pos] == '\0'))
        pos++;
    free(text);
    if (!*root || pos < n) {
        rt_errorf(err, path, "header is not valid JSON: %s at header byte %zu (file offset %zu)",
                  *root ? "unexpected text after the JSON value" : "parse error", pos, pos + 8);
        cJSON_Delete(*root);
        *root = NULL;
        return false;
    }
    if (!cJSON_IsObject(*root)) {
        char found[96];
        json_describe(*root, found, sizeof found);
        rt_errorf(err, path, "header: expected a JSON object of tensors, found %s", found);
        cJSON_Delete(*root);
        *root = NULL;
        return false;
    }
    *header_len = n;
    return true;
}

static bool st_check_metadata(const char *path, const cJSON *meta, RtError *err)
{
    if (!cJSON_IsObject(meta)) {
        char found[96];
        json_describe(meta, found, sizeof found);
        rt_errorf(err, path, "__metadata__: expected an object of strings, found %s", found);
        return false;
    }
    const cJSON *kv;
    cJSON_ArrayForEach(kv, meta) {
        if (!cJSON_IsString(kv)) {
            char found[96];
            json_describe(kv, found, sizeof found);
            rt_errorf(err, path, "__metadata__ key '%s': expected a string, found %s", kv->string, found);
            return false;
        }
    }
    return true;
}

static bool st_parse_dtype(const StFile *f, const cJSON *e, const char *name, moe_dtype *dt, RtError *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(e, "dtype");
    if (!cJSON_IsString(v)) {
        char found[96];
        json_describe(v, found, sizeof found);
        rt_errorf(err, f->path, "tensor '%s': expected \"dtype\" to be a string, found %s", name, found);
        return false;
    }
    if (!st_dtype_parse(v->valuestring, dt)) {
        rt_errorf(err, f->path, "tensor '%s': expected dtype F32, BF16 or F16, found %.40s (not supported)", name,
                  v->valuestring);
        return false;
    }
    return true;
}

static bool st_parse_shape(const StFile *f, const cJSON *e, const char *name, Tensor *t, RtError *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(e, "shape");
    char found[96];
    if (!cJSON_IsArray(v)) {
        json_describe(v, found, sizeof found);
        rt_errorf(err, f->path, "tensor '%s': expected \"shape\" to be an array, found %s", name, found);
        return false;
    }
    int nd = cJSON_GetArraySize(v);
    if (nd > ST_MAX_DIMS) {
        rt_errorf(err, f->path, "tensor '%s': expected at most %d dimensions, found %d", name, ST_MAX_DIMS, nd);
        return false;
    }
    t->ndim = nd;
    int i = 0;
    const cJSON *d;
    cJSON_ArrayForEach(d, v) {
        uint64_t x;
        if (!json_u64(d, &x)) {
            json_describe(d, found, sizeof found);
            rt_errorf(err, f->path, "tensor '%s': expected shape entries to be non-negative integers, found %s",
                      name, found);
            return false;
        }
        t->shape[i++] = (int64_t)x;
    }
    return true;
}

static bool st_parse_offsets(const StFile *f, const cJSON *e, const char *name, StRange *r, RtError *err)
{
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(e, "data_offsets");
    uint64_t b, en;
    if (!cJSON_IsArray(v) || cJSON_GetArraySize(v) != 2 || !json_u64(cJSON_GetArrayItem(v, 0), &b) ||
        !json_u64(cJSON_GetArrayItem(v, 1), &en)) {
        char found[96];
        json_describe(v, found, sizeof found);
        rt_errorf(err, f->path, "tensor '%s': expected \"data_offsets\" to be two non-negative integers, found %s",
                  name, found);
        return false;
    }
    if (en < b) {
        rt_errorf(err, f->path, "tensor '%s': expected data_offsets end >= begin, found [%llu, %llu]", name,
                  (unsigned long long)b, (unsigned long long)en);
        return false;
    }
    if (en > f->data_len) {
        rt_errorf(err, f->path, "tensor '%s': expected data_offsets within the data region (%llu bytes), "
                  "found end %llu", name, (unsigned long long)f->data_len, (unsigned long long)en);
        return false;
    }
    r->begin = b;
    r->end = en;
    return true;
}

/* Validate one header entry into *t (name not yet set) and its byte range. */
static bool st_parse_entry(const StFile *f, const cJSON *e, Tensor *t, StRange *r, RtError *err)
{
    const char *name = e->string;
    if (!cJSON_IsObject(e)) {
        char found[96];
        json_describe(e, found, sizeof found);
        rt_errorf(err, f->path, "tensor '%s': expected an object with dtype, shape and data_offsets, found %s", name,
                  found);
        return false;
    }
    if (!st_parse_dtype(f, e, name, &t->dtype, err) || !st_parse_shape(f, e, name, t, err) ||
        !st_parse_offsets(f, e, name, r, err))
        return false;
    int64_t count = 1;
    bool ok = true;
    for (int i = 0; i < t->ndim; i++) ok = ok && i64_mul_ok(count, t->shape[i], &count);
    ok = ok && i64_mul_ok(count, (int64_t)dtype_size(t->dtype), &count);
    char type[128];
    rt_format_type(type, sizeof type, t->dtype, t->ndim, t->shape);
    if (!ok) {
        rt_errorf(err, f->path, "tensor '%s': expected a size below 2^63 bytes, found %s", name, type);
        return false;
    }
    if ((uint64_t)count != r->end - r->begin) {
        rt_errorf(err, f->path, "tensor '%s': expected %lld bytes for %s, found data_offsets [%llu, %llu] "
                  "spanning %llu", name, (long long)count, type, (unsigned long long)r->begin, (unsigned long long)r->end,
                  (unsigned long long)(r->end - r->begin));
        return false;
    }
    t->nbytes = (size_t)count;
    t->data = f->data + r->begin;
    return true;
}

static int st_range_cmp(const void *a, const void *b)
{
    const StRange *x = a, *y = b;
    if (x->begin != y->begin) return x->begin < y->begin ? -1 : 1;
    return x->end < y->end ? -1 : x->end > y->end;
}

/* Two tensors must never share bytes: sort by begin and compare neighbours. Empty tensors share
 * nothing, whatever their offset. */
static bool st_check_overlaps(const StFile *f, const WeightSet *w, StRange *r, int n, RtError *err)
{
    qsort(r, (size_t)n, sizeof *r, st_range_cmp);
    int prev = -1;
    for (int i = 0; i < n; i++) {
        if (r[i].begin == r[i].end) continue;
        if (prev >= 0 && r[i].begin < r[prev].end) {
            rt_errorf(err, f->path, "tensor '%s': expected its bytes [%llu, %llu) not to overlap tensor '%s' "
                      "[%llu, %llu)", w->tensors[r[i].index].name, (unsigned long long)r[i].begin, (unsigned long long)r[i].end,
                      w->tensors[r[prev].index].name, (unsigned long long)r[prev].begin,
                      (unsigned long long)r[prev].end);
            return false;
        }
        prev = i;
    }
    return true;
}

/* Typed loads need data aligned to the element size. The reference writer pads the header so the
 * data region starts 8-aligned, but a writer that does not leaves tensors misaligned in the
 * mapping; those few are copied into malloc'd (16-aligned) memory. */
static bool st_align_tensors(const StFile *f, WeightSet *w, int first, RtError *err)
{
    for (int i = first; i < w->n; i++) {
        Tensor *t = &w->tensors[i];
        if ((uintptr_t)t->data % dtype_size(t->dtype) == 0) continue;
        void *copy = malloc(t->nbytes);
        if (!copy) {
            rt_errorf(err, f->path, "tensor '%s': cannot allocate %zu bytes for an aligned copy", t->name, t->nbytes);
            return false;
        }
        memcpy(copy, t->data, t->nbytes);
        t->data = copy;
        ws_add_copy(w, copy);
    }
    return true;
}

/* Add every tensor of the header to w. */
static bool st_load_entries(const StFile *f, const cJSON *root, WeightSet *w, RtError *err)
{
    int first = w->n, cap = cJSON_GetArraySize(root);
    StRange *ranges = xmalloc((size_t)(cap ? cap : 1) * sizeof *ranges);
    int nr = 0;
    bool ok = true;
    const cJSON *e;
    cJSON_ArrayForEach(e, root) {
        if (strcmp(e->string, "__metadata__") == 0) {
            ok = st_check_metadata(f->path, e, err);
        } else {
            Tensor t = {0};
            ok = st_parse_entry(f, e, &t, &ranges[nr], err);
            if (ok) {
                t.name = xstrdup(e->string);
                ranges[nr++].index = w->n;
                ws_push(w, &t);
            }
        }
        if (!ok) break;
    }
    ok = ok && st_check_overlaps(f, w, ranges, nr, err) && st_align_tensors(f, w, first, err);
    free(ranges);
    return ok;
}

/* Map PATH and append its tensors to w (w keeps the mapping, even on failure, and frees it). */
static bool st_load_file(const char *path, WeightSet *w, RtError *err)
{
    void *base;
    size_t len;
    char *ident;
    if (!st_map_file(path, &base, &len, &ident, err)) return false;
    ws_add_mapping(w, base, len, ident);
    cJSON *root;
    uint64_t hlen;
    if (!st_parse_header(path, base, len, &root, &hlen, err)) return false;
    StFile f = {path, (const unsigned char *)base + 8 + hlen, len - 8 - hlen};
    bool ok = st_load_entries(&f, root, w, err);
    cJSON_Delete(root);
    return ok;
}

/* cJSON keeps both copies of a repeated key; the by-name index finds them. For the whole set (not
 * one shard of it) a Mixtral checkpoint's names are then mapped, and a mapped name that the checkpoint
 * also holds is found twice the same way. */
static bool ws_finish(WeightSet *w, const char *path, bool whole, RtError *err)
{
    int dup = ws_build_index(w);
    if (dup < 0 && whole) {
        if (!ws_map_mixtral(w, path, err)) return false;
        if (w->from_mixtral) dup = ws_build_index(w); /* names changed: index them again */
    }
    if (dup >= 0) {
        rt_errorf(err, path, "tensor '%s': expected one entry, found it twice", w->tensors[dup].name);
        return false;
    }
    return true;
}

/* ---- sharded checkpoints: model.safetensors.index.json ------------------------------------------ */
typedef struct {
    const char *name;            /* tensor name (points into the index JSON) */
    const char *shard;           /* shard file name (idem)                   */
    int         shard_id;
} MapEntry;

static int map_by_shard(const void *a, const void *b)
{
    return strcmp(((const MapEntry *)a)->shard, ((const MapEntry *)b)->shard);
}

static int map_by_name(const void *a, const void *b)
{
    return strcmp(((const MapEntry *)a)->name, ((const MapEntry *)b)->name);
}

static const MapEntry *map_find(const MapEntry *m, int n, const char *name)
{
    MapEntry key = {.name = name};
    return bsearch(&key, m, (size_t)n, sizeof *m, map_by_name);
}

/* Shards are named relative to the index's directory; a path separator or '..' could reach
 * outside it, so such names are refused. */
static bool shard_name_ok(const char *s)
{
    return s[0] != '\0' && !strchr(s, '/') && !strstr(s, "..");
}

/* Read weight_map into entries sorted by tensor name, shard ids numbered by sorted shard name. */
static bool idx_collect(const char *path, const cJSON *map, MapEntry **out, int *n_out, int *n_shards,
                        RtError *err)
{
    int n = cJSON_GetArraySize(map), i = 0;
    MapEntry *m = xmalloc((size_t)(n ? n : 1) * sizeof *m);
    const cJSON *kv;
    cJSON_ArrayForEach(kv, map) {
        if (!cJSON_IsString(kv) || !shard_name_ok(kv->valuestring)) {
            char found[96];
            json_describe(kv, found, sizeof found);
            rt_errorf(err, path, "weight_map tensor '%s': expected a shard file name in the index's directory "
                      "(no '/' or '..'), found %s", kv->string, found);
            free(m);
            return false;
        }
        m[i++] = (MapEntry){kv->string, kv->valuestring, 0};
    }
    qsort(m, (size_t)n, sizeof *m, map_by_shard);
    int ids = 0;
    for (i = 0; i < n; i++) m[i].shard_id = (i > 0 && strcmp(m[i].shard, m[i - 1].shard) == 0) ? ids - 1 : ids++;
    qsort(m, (size_t)n, sizeof *m, map_by_name);
    for (i = 1; i < n; i++) {
        if (strcmp(m[i].name, m[i - 1].name) == 0) {
            rt_errorf(err, path, "weight_map tensor '%s': expected one entry, found it twice", m[i].name);
            free(m);
            return false;
        }
    }
    *out = m, *n_out = n, *n_shards = ids;
    return true;
}

/* Move the tensors of one loaded shard into w: those the map assigns to this shard and those it
 * does not mention; a tensor the map places in another shard is a stale copy and is dropped. */
static void idx_take_shard(WeightSet *w, WeightSet *shard, const MapEntry *m, int nm, int shard_id)
{
    for (int i = 0; i < shard->n; i++) {
        const MapEntry *e = map_find(m, nm, shard->tensors[i].name);
        if (e && e->shard_id != shard_id) free(shard->tensors[i].name);
        else ws_push(w, &shard->tensors[i]);
    }
    shard->n = 0;
    for (int i = 0; i < shard->n_maps; i++)
        ws_add_mapping(w, shard->maps[i].base, shard->maps[i].len, shard->maps[i].ident);
    shard->n_maps = 0;
    for (int i = 0; i < shard->n_copies; i++) ws_add_copy(w, shard->copies[i]);
    shard->n_copies = 0;
}

static bool idx_load_shard(const char *index_path, const char *dir, const MapEntry *m, int nm, int shard_id,
                           WeightSet *w, RtError *err)
{
    const MapEntry *first = NULL;
    for (int i = 0; i < nm && !first; i++)
        if (m[i].shard_id == shard_id) first = &m[i];
    char *path = xmalloc(strlen(dir) + strlen(first->shard) + 2);
    sprintf(path, "%s/%s", dir, first->shard);
    struct stat st;
    bool ok = false;
    WeightSet *shard = ws_new(path);
    if (stat(path, &st) != 0) {
        rt_errorf(err, index_path, "shard '%s' (listed for tensor '%s') cannot be opened: %s", first->shard,
                  first->name, strerror(errno));
    } else if (st_load_file(path, shard, err) && ws_finish(shard, path, false, err)) {
        ok = true;
        for (int i = 0; i < nm && ok; i++) {
            if (m[i].shard_id == shard_id && !weights_find(shard, m[i].name)) {
                rt_errorf(err, index_path, "tensor '%s': expected in shard '%s' as weight_map says, not found there",
                          m[i].name, m[i].shard);
                ok = false;
            }
        }
    }
    if (ok) idx_take_shard(w, shard, m, nm, shard_id);
    weights_close(shard);
    free(path);
    return ok;
}

static cJSON *idx_read(const char *path, const cJSON **map, RtError *err)
{
    size_t len;
    char *text = file_read_all(path, &len);
    if (!text) {
        rt_errorf(err, path, "cannot read: %s", strerror(errno));
        return NULL;
    }
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(text, len, &end, 0);
    size_t pos = end ? (size_t)(end - text) : 0;
    free(text);
    if (!root) {
        rt_errorf(err, path, "not valid JSON: parse error at byte %zu", pos);
        return NULL;
    }
    *map = cJSON_GetObjectItemCaseSensitive(root, "weight_map");
    if (!cJSON_IsObject(*map)) {
        char found[96];
        json_describe(*map, found, sizeof found);
        rt_errorf(err, path, "expected \"weight_map\" to be an object of tensor name -> shard file, found %s", found);
        cJSON_Delete(root);
        return NULL;
    }
    return root;
}

static bool idx_open(const char *path, WeightSet *w, RtError *err)
{
    const cJSON *map;
    cJSON *root = idx_read(path, &map, err);
    if (!root) return false;
    MapEntry *m = NULL;
    int nm = 0, n_shards = 0;
    bool ok = idx_collect(path, map, &m, &nm, &n_shards, err);
    const char *slash = strrchr(path, '/');
    char *dir = slash ? xstrdup(path) : xstrdup(".");
    if (slash) dir[slash == path ? 1 : slash - path] = '\0';
    for (int s = 0; ok && s < n_shards; s++) ok = idx_load_shard(path, dir, m, nm, s, w, err);
    ok = ok && ws_finish(w, path, true, err);
    free(dir);
    free(m);
    cJSON_Delete(root);
    return ok;
}

/* ---- weights_open ---------------------------------------------------------------------------------- */
static bool ends_with(const char *s, const char *suffix)
{
    size_t n = strlen(s), k = strlen(suffix);
    return n >= k && strcmp(s + n - k, suffix) == 0;
}

static bool file_exists(const char *path)
{
    struct stat st;
    return stat(path, &st) == 0;
}

/* A directory holds model.safetensors.index.json (sharded) or model.safetensors. */
static char *dir_pick(const char *dir, RtError *err)
{
    static const char *const names[] = {"model.safetensors.index.json", "model.safetensors"};
    for (size_t i = 0; i < MOE_ARRAY_LEN(names); i++) {
        char *p = xmalloc(strlen(dir) + strlen(names[i]) + 2);
        sprintf(p, "%s/%s", dir, names[i]);
        if (file_exists(p)) return p;
        free(p);
    }
    rt_errorf(err, dir, "expected model.safetensors.index.json or model.safetensors in this directory, found neither");
    return NULL;
}

bool weights_open(const char *path, WeightSet **out, RtError *err)
{
    *out = NULL;
    err->msg[0] = '\0';
    struct stat st;
    if (stat(path, &st) != 0) {
        rt_errorf(err, path, "cannot open: %s", strerror(errno));
        return false;
    }
    char *file = S_ISDIR(st.st_mode) ? dir_pick(path, err) : xstrdup(path);
    if (!file) return false;
    WeightSet *w = ws_new(file);
    bool ok = ends_with(file, ".json") ? idx_open(file, w, err)
                                       : st_load_file(file, w, err) && ws_finish(w, file, true, err);
    free(file);
    if (!ok) {
        weights_close(w);
        return false;
    }
    *out = w;
    return true;
}

/* ---- writing ------------------------------------------------------------------------------------------ */
static int name_ptr_cmp(const void *a, const void *b) { return strcmp(*(char *const *)a, *(char *const *)b); }

static bool st_check_tensor(const char *path, const Tensor *t, RtError *err)
{
    if (!st_dtype_name(t->dtype) || t->ndim < 0 || t->ndim > ST_MAX_DIMS) {
        rt_errorf(err, path, "tensor '%s': expected dtype f32/bf16/f16 and at most 4 dimensions", t->name);
        return false;
    }
    int64_t count = (int64_t)dtype_size(t->dtype);
    bool ok = true;
    for (int i = 0; i < t->ndim; i++) ok = ok && t->shape[i] >= 0 && i64_mul_ok(count, t->shape[i], &count);
    if (!ok || (uint64_t)count != (uint64_t)t->nbytes || (t->nbytes && !t->data)) {
        rt_errorf(err, path, "tensor '%s': nbytes %zu does not match its shape and dtype", t->name, t->nbytes);
        return false;
    }
    return true;
}

static bool st_check_names(const char *path, const Tensor *tensors, int n, RtError *err)
{
    char **names = xmalloc((size_t)(n ? n : 1) * sizeof *names);
    for (int i = 0; i < n; i++) names[i] = tensors[i].name;
    qsort(names, (size_t)n, sizeof *names, name_ptr_cmp);
    bool ok = true;
    for (int i = 1; i < n && ok; i++) {
        if (strcmp(names[i], names[i - 1]) == 0) {
            rt_errorf(err, path, "tensor '%s': given twice", names[i]);
            ok = false;
        }
    }
    for (int i = 0; i < n && ok; i++) {
        if (strcmp(tensors[i].name, "__metadata__") == 0) {
            rt_errorf(err, path, "tensor name '__metadata__' is reserved");
            ok = false;
        }
    }
    free(names);
    return ok;
}

/* One header entry; shape and offsets are raw text so 64-bit values print exactly. */
static void st_add_entry(cJSON *root, const Tensor *t, uint64_t begin)
{
    char buf[160];
    cJSON *e = cJSON_AddObjectToObject(root, t->name);
    cJSON_AddStringToObject(e, "dtype", st_dtype_name(t->dtype));
    int k = snprintf(buf, sizeof buf, "[");
    for (int i = 0; i < t->ndim; i++)
        k += snprintf(buf + k, sizeof buf - (size_t)k, "%s%lld", i ? "," : "", (long long)t->shape[i]);
    snprintf(buf + k, sizeof buf - (size_t)k, "]");
    cJSON_AddItemToObject(e, "shape", cJSON_CreateRaw(buf));
    snprintf(buf, sizeof buf, "[%llu,%llu]", (unsigned long long)begin, (unsigned long long)(begin + t->nbytes));
    cJSON_AddItemToObject(e, "data_offsets", cJSON_CreateRaw(buf));
}

/* The header text, padded with spaces to a multiple of 8 (as the reference writer does, so the
 * data region starts 8-byte aligned). Tensors are contiguous in the given order: the reference
 * reader rejects gaps between them. */
static char *st_build_header(const Tensor *tensors, int n, const char *const *meta, size_t *len)
{
    cJSON *root = cJSON_CreateObject();
    if (meta && meta[0]) {
        cJSON *m = cJSON_AddObjectToObject(root, "__metadata__");
        for (int i = 0; meta[i] && meta[i + 1]; i += 2) cJSON_AddStringToObject(m, meta[i], meta[i + 1]);
    }
    uint64_t off = 0;
    for (int i = 0; i < n; i++) {
        st_add_entry(root, &tensors[i], off);
        off += tensors[i].nbytes;
    }
    char *json = cJSON_PrintUnformatted(root);
    cJSON_Delete(root);
    MOE_ASSERT(json);
    size_t k = strlen(json), padded = (k + 7) & ~(size_t)7;
    json = xrealloc(json, padded + 1);
    memset(json + k, ' ', padded - k);
    json[padded] = '\0';
    *len = padded;
    return json;
}

static bool st_write_stream(FILE *f, const char *header, size_t hlen, const Tensor *tensors, int n)
{
    unsigned char lenbuf[8];
    for (int i = 0; i < 8; i++) lenbuf[i] = (unsigned char)((uint64_t)hlen >> (8 * i));
    if (fwrite(lenbuf, 1, 8, f) != 8 || fwrite(header, 1, hlen, f) != hlen) return false;
    const size_t chunk = (size_t)64 << 20;
    for (int i = 0; i < n; i++) {
        const unsigned char *p = tensors[i].data;
        for (size_t done = 0; done < tensors[i].nbytes;) {
            size_t k = tensors[i].nbytes - done < chunk ? tensors[i].nbytes - done : chunk;
            if (fwrite(p + done, 1, k, f) != k) return false;
            done += k;
        }
    }
    return true;
}

/* Write to PATH.tmp.XXXXXX beside PATH, then rename over PATH: readers never see a partial file. */
static bool st_write_atomic(const char *path, const char *header, size_t hlen, const Tensor *tensors, int n,
                            RtError *err)
{
    char *tmp = xmalloc(strlen(path) + 16);
    sprintf(tmp, "%s.tmp.XXXXXX", path);
    int fd = mkstemp(tmp);
    if (fd < 0) {
        rt_errorf(err, path, "cannot create a temporary file beside it: %s", strerror(errno));
        free(tmp);
        return false;
    }
    mode_t mask = umask(0);
    umask(mask);
    bool ok = fchmod(fd, 0666 & ~mask) == 0;    /* mkstemp makes 0600; a checkpoint is shareable */
    FILE *f = fdopen(fd, "wb");
    if (!f) close(fd);
    ok = ok && f && st_write_stream(f, header, hlen, tensors, n);
    int saved = errno;
    if (f && fclose(f) != 0 && ok) ok = false, saved = errno;
    if (ok && rename(tmp, path) != 0) ok = false, saved = errno;
    if (!ok) {
        rt_errorf(err, path, "cannot write: %s", strerror(saved ? saved : EIO));
        unlink(tmp);
    }
    free(tmp);
    return ok;
}

bool safetensors_write_meta(const char *path, const Tensor *tensors, int n, const char *const *meta, RtError *err)
{
    err->msg[0] = '\0';
    for (int i = 0; i < n; i++)
        if (!st_check_tensor(path, &tensors[i], err)) return false;
    if (!st_check_names(path, tensors, n, err)) return false;
    size_t hlen;
    char *header = st_build_header(tensors, n, meta, &hlen);
    bool ok = st_write_atomic(path, header, hlen, tensors, n, err);
    free(header);
    return ok;
}

bool safetensors_write(const char *path, const Tensor *tensors, int n, RtError *err)
{
    return safetensors_write_meta(path, tensors, n, NULL, err);
}
