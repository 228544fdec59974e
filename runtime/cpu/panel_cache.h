/* panel_cache.h — packed weights kept in files, so that a later run maps its panels instead of
 * packing them (`moeppc run --panel-cache DIR`, MOEPPC_PANEL_CACHE).
 *
 * In:  a directory (made where missing); for each packing step of the CPU backend (one op's
 *      weights, cpu.c's pack_sources) the packed forms (cg_pack_b_size) and, for each weight, its
 *      identity (weights_identity: its checkpoint file's device, inode, size and modification time
 *      and its place there, or a random set's seed; NULL for one that has none: packed in memory).
 * Out: a step is one file, DIR/panels-HASH.bin, HASH the FNV-1a of its description (the panels'
 *      layout version, each kept weight's identity and packed form). The file begins with the
 *      description whole; a hit compares it byte for byte (a collision of hashes is a miss), checks
 *      the file's size and maps it read-only: nothing is packed or zeroed, the checkpoint is not read,
 *      and the panels are the page cache's pages (shared by every process running the model). A miss
 *      makes an unnamed file in DIR (O_TMPFILE; else a temporary name), reserves its space (a full
 *      disk is a miss, not a SIGBUS), the step's packing writes the panels into its mapping, and
 *      panel_file_commit syncs it and links it in under its name: no reader sees half a file, and a
 *      run stopped while packing leaves nothing behind (a temporary name: a file panels-*.tmp*).
 * Errors: the cache only saves time. Any failure (a directory that cannot be made, no space, a
 *      file that does not match) is said once on stderr ("moeppc: panel cache DIR: …") and the step
 *      packs into memory as it would without a cache. The panels in a file are trusted as the
 *      checkpoint is: a file changed in place under its name is not detected (remove the directory
 *      to start again), nor one truncated while a run maps it (SIGBUS, as for a checkpoint). Files
 *      stay until removed, or until panel_cache_trim removes the least recently used past a size.
 * Memory: a PanelFile owns its mapping; the CgPackedB pointing into it must not be freed with
 *      cg_packed_b_free (panel_file_holds says which).
 */
#ifndef MOEPPC_RUNTIME_PANEL_CACHE_H
#define MOEPPC_RUNTIME_PANEL_CACHE_H

#include "codegen/llvm/cg_llvm.h"

typedef struct PanelCache PanelCache;
typedef struct PanelFile PanelFile;

typedef struct PanelCacheStats {
    int    hits, misses;         /* steps mapped from a file; packed into a new one */
    double hit_bytes, kept_bytes; /* their files' bytes                              */
    int    failed;               /* steps packed in memory after a failure          */
    int    removed;              /* other files panel_cache_trim removed            */
    double removed_bytes;
} PanelCacheStats;

/* A cache in dir (nothing touched yet). */
PanelCache *panel_cache_new(const char *dir);
void        panel_cache_free(PanelCache *pc);
PanelCacheStats panel_cache_stats(const PanelCache *pc);

/* The step's weights pk[0..n) (their forms set, data NULL) and their identities id[0..n) (NULL: not
 * kept). Returns the file holding the kept ones' panels, each pk[e].data pointed into it, *hit true
 * when they are there already, false when the caller must pack them (then panel_file_commit); NULL
 * with every data left NULL when no file serves (none kept, or a failure, said on stderr). */
PanelFile  *panel_cache_open(PanelCache *pc, CgPackedB *pk, const char *const *id, int n, bool *hit);
/* A miss's panels packed: the file synced, made read-only and named (a failure is said, and the
 * panels stay in use from the unnamed file). */
void        panel_file_commit(PanelCache *pc, PanelFile *f);
/* Remove the least recently used files of the directory (by modification time: a hit sets it)
 * until they take max_bytes at most, never one this cache's model maps: a model larger than
 * max_bytes keeps its own. */
void        panel_cache_trim(PanelCache *pc, double max_bytes);
/* Whether p lies in f's mapping (a packed weight's data not to free). */
bool        panel_file_holds(const PanelFile *f, const void *p);
void        panel_file_free(PanelFile *f);

#endif
