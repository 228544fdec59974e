/* fuzz_panel_file.c — the panel cache's file reader (runtime/cpu/panel_cache.c: panel_cache_list,
 * what `moeppc panel-cache` prints): a file in a panel cache's directory, whole or cut short,
 * damaged, another program's. The input is the file's bytes; it is named as a run names the file its
 * description keys (the FNV-1a of the description its header points at, where it can), so that a
 * well-formed input gets past the name check to its checksums. Accepted: one entry, a known state,
 * a printable reason for every state but ok and none for ok, a printable first weight's name; and
 * --verify's verdict no kinder than the plain listing's (a file the listing calls damaged or stale
 * stays so; a verified ok is ok unverified). */
#include "tests/fuzz/fuzz.h"

#include "runtime/cpu/panel_cache.h"
#include "support/support.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static char dir[256];

static void remove_dir(void) { rmdir(dir); }

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
    (void)argc, (void)argv;
    const char *tmp = getenv("TMPDIR");
    snprintf(dir, sizeof dir, "%s/moeppc-fuzz-panels-XXXXXX", tmp && tmp[0] ? tmp : "/tmp");
    FUZZ_CHECK(mkdtemp(dir) != NULL, "cannot make a folder under %s", dir);
    atexit(remove_dir);
    return 0;
}

static bool printable(const char *s)
{
    for (; *s; s++)
        if ((unsigned char)*s < 0x20 || *s == 0x7f) return false;
    return true;
}

static void check(const PanelFileInfo *f, int n, const char *name, size_t size, bool verify)
{
    FUZZ_CHECK(n == 1, "%d entries for one file", n);
    FUZZ_CHECK(strcmp(f->name, name) == 0, "listed as '%s'", f->name);
    FUZZ_CHECK(f->state >= PANEL_FILE_OK && f->state <= PANEL_FILE_UNFINISHED, "state %d", (int)f->state);
    FUZZ_CHECK(f->state != PANEL_FILE_UNFINISHED, "a .bin file called unfinished");
    FUZZ_CHECK((f->state == PANEL_FILE_OK) == (f->why[0] == '\0'), "state %d with reason '%s'", (int)f->state, f->why);
    FUZZ_CHECK(printable(f->why) && printable(f->first), "unprintable reason or name");
    FUZZ_CHECK(f->bytes == (double)size && f->weights >= 0, "%.0f bytes, %d weights", f->bytes, f->weights);
    FUZZ_CHECK(!f->verified || verify, "verified without --verify");
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    uint64_t desc_len = 0, key = 0;
    for (int i = 0; i < 8 && size >= 40; i++) desc_len |= (uint64_t)data[16 + i] << (8 * i);
    if (size >= 40 && desc_len <= size - 40) key = hash_bytes(data + 40, (size_t)desc_len);
    char name[64], path[400];
    snprintf(name, sizeof name, "panels-%016llx.bin", (unsigned long long)key);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    FILE *out = fopen(path, "wb");
    FUZZ_CHECK(out && fwrite(data, 1, size, out) == size && fclose(out) == 0, "cannot write %s", path);
    PanelFileInfo *f[2];
    int n[2];
    char why[512];
    for (int verify = 0; verify < 2; verify++) {
        f[verify] = panel_cache_list(dir, verify, NULL, &n[verify], why, sizeof why);
        FUZZ_CHECK(f[verify] != NULL, "cannot list: %s", why);
        check(f[verify], n[verify], name, size, verify);
    }
    FUZZ_CHECK(f[0]->state == PANEL_FILE_OK || f[1]->state == f[0]->state, "--verify called a %d file %d",
               (int)f[0]->state, (int)f[1]->state);
    FUZZ_CHECK(f[1]->state != PANEL_FILE_OK || f[0]->state == PANEL_FILE_OK, "ok only verified");
    panel_cache_list_free(f[0], n[0]);
    panel_cache_list_free(f[1], n[1]);
    unlink(path);
    return 0;
}
