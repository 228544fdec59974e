/* fuzz_safetensors.c — one safetensors file (header and data) through weights_open, as `moeppc run
 * --weights FILE` reads it: the input is a file (a memfd, mapped like any checkpoint). Accepted: every
 * tensor is sound (fuzz_check_weights), the writer writes them out again and they read back the same. */
#include "tests/fuzz/fuzz.h"
#include "tests/fuzz/fuzz_weights.h"

#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static char path[64];
static int fd = -1;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    fd = memfd_create("fuzz.safetensors", MFD_CLOEXEC);
    FUZZ_CHECK(fd >= 0, "memfd_create failed");
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    return 0;
}

static void load_input(const uint8_t *data, size_t size)
{
    FUZZ_CHECK(ftruncate(fd, 0) == 0, "ftruncate failed");
    for (size_t done = 0; done < size;) {
        ssize_t k = pwrite(fd, data + done, size - done, (off_t)done);
        FUZZ_CHECK(k > 0, "pwrite failed");
        done += (size_t)k;
    }
}

/* safetensors_write → weights_open gives the same tensors, bytes included. */
static void check_rewrite(const WeightSet *w)
{
    int n = weights_count(w);
    Tensor *t = xmalloc((size_t)(n ? n : 1) * sizeof *t);
    RtError err;
    for (int i = 0; i < n; i++) { /* (a tensor in two parts stacked: the writer takes one block) */
        t[i] = *weights_at(w, i);
        t[i].data = weights_data(w, weights_at(w, i), &err);
        FUZZ_CHECK(t[i].data || !t[i].nbytes, "tensor '%s': %s", t[i].name, err.msg);
    }
    char out[128];
    snprintf(out, sizeof out, "%s/rewritten.safetensors", fuzz_tmpdir());
    FUZZ_CHECK(safetensors_write(out, t, n, &err), "cannot write what was read: %s", err.msg);
    WeightSet *back;
    FUZZ_CHECK(weights_open(out, &back, &err), "what was written does not read back: %s", err.msg);
    FUZZ_CHECK(weights_count(back) == n, "%d tensors read back of %d", weights_count(back), n);
    for (int i = 0; i < n; i++) {
        const Tensor *b = weights_find(back, t[i].name);
        FUZZ_CHECK(b && b->dtype == t[i].dtype && b->ndim == t[i].ndim && b->nbytes == t[i].nbytes &&
                       !memcmp(b->shape, t[i].shape, (size_t)t[i].ndim * sizeof b->shape[0]) &&
                       (t[i].nbytes == 0 || !memcmp(b->data, t[i].data, t[i].nbytes)),
                   "tensor '%s' reads back different", t[i].name);
    }
    weights_close(back);
    free(t);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    load_input(data, size);
    WeightSet *w;
    RtError err;
    if (!weights_open(path, &w, &err)) {
        fuzz_check_message(err.msg, path);
        return 0;
    }
    fuzz_check_weights(w);
    check_rewrite(w);
    weights_close(w);
    return 0;
}
