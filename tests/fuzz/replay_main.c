/* replay_main.c — a fuzz target without libFuzzer: feeds every file named on the command line (and
 * every file in every directory named, in name order) to LLVMFuzzerTestOneInput, each in a buffer of
 * exactly its size so that the sanitizers see reads past its end. CTest runs it over the seed corpus
 * and the regressions; a broken invariant aborts, a sanitizer report fails the test. */
#include "tests/fuzz/fuzz.h"

#include <dirent.h>
#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

/* Targets that need set-up define it; the others leave this weak symbol undefined. */
__attribute__((weak)) int LLVMFuzzerInitialize(int *argc, char ***argv);

static int replay_file(const char *path)
{
    size_t len = 0;
    char *text = file_read_all(path, &len);
    if (!text) {
        fprintf(stderr, "replay: cannot read %s: %s\n", path, strerror(errno));
        return 1;
    }
    uint8_t *data = xmalloc(len ? len : 1);
    memcpy(data, text, len);
    free(text);
    printf("replay %s (%zu bytes)\n", path, len);
    fflush(stdout);
    LLVMFuzzerTestOneInput(data, len); /* never NULL, like libFuzzer's empty input */
    free(data);
    return 0;
}

static int by_name(const struct dirent **a, const struct dirent **b) { return strcmp((*a)->d_name, (*b)->d_name); }

static int replay_dir(const char *dir, int *count)
{
    struct dirent **list;
    int n = scandir(dir, &list, NULL, by_name), bad = 0;
    if (n < 0) {
        fprintf(stderr, "replay: cannot list %s: %s\n", dir, strerror(errno));
        return 1;
    }
    for (int i = 0; i < n; i++) {
        char *path = xmalloc(strlen(dir) + strlen(list[i]->d_name) + 2);
        sprintf(path, "%s/%s", dir, list[i]->d_name);
        struct stat st;
        if (list[i]->d_name[0] != '.' && stat(path, &st) == 0 && S_ISREG(st.st_mode)) {
            bad |= replay_file(path);
            (*count)++;
        }
        free(path);
        free(list[i]);
    }
    free(list);
    return bad;
}

int main(int argc, char **argv)
{
    if (LLVMFuzzerInitialize) LLVMFuzzerInitialize(&argc, &argv);
    int bad = 0, count = 0;
    for (int i = 1; i < argc; i++) {
        struct stat st;
        if (stat(argv[i], &st) == 0 && S_ISDIR(st.st_mode)) {
            bad |= replay_dir(argv[i], &count);
        } else {
            bad |= replay_file(argv[i]);
            count++;
        }
    }
    if (count == 0) {
        fprintf(stderr, "replay: no inputs given\n");
        return 1;
    }
    printf("replayed %d inputs, every invariant held\n", count);
    return bad;
}
