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
 *      panel_file_commit stores their checksums (an XXH64 of each 4 MiB), syncs it and links it in
 *      under its name: no reader sees half a file, and a run stopped while packing leaves nothing
 *      behind (a temporary name: a file panels-*.tmp*). A cache made to verify checks a hit's panels
 *      against those sums before it maps them for use (reading the whole file once): a damaged file
 *      is said on stderr and packed again, as a miss. panel_cache_list checks a directory's files.
 * Errors: the cache only saves time. Any failure (a directory that cannot be made, no space, a
 *      file that does not match) is said once on stderr ("moeppc: panel cache DIR: …") and the step
 *      packs into memory as it would without a cache. Unless verifying, the panels in a file are
 *      trusted as the checkpoint is: a file changed in place under its name is not detected, nor one
 *      truncated while a run maps it (SIGBUS, as for a checkpoint). Files
 *      stay until removed, or until panel_cache_trim removes the least recently used past a size.
 * Memory: a PanelFile owns its mapping; the CgPackedB pointing into it must not be freed with
 *      cg_packed_b_free (panel_file_holds says which).
 */
#ifndef MOEPPC_RUNTIME_PANEL_CACHE_H
#define MOEPPC_RUNTIME_PANEL_CACHE_H

#include "codegen/llvm/cg_llvm.h"

#include <sys/types.h>
#include <time.h>

typedef struct PanelCache PanelCache;
typedef struct PanelFile PanelFile;

typedef struct PanelCacheStats {
    int    hits, misses;         /* steps mapped from a file; packed into a new one */
    double hit_bytes, kept_bytes; /* their files' bytes                              */
    int    failed;               /* steps packed in memory after a failure          */
    int    removed;              /* other files panel_cache_trim removed            */
    double removed_bytes;
    int    damaged;              /* files whose panels failed their checksums (then misses) */
} PanelCacheStats;

/* A cache in dir (nothing touched yet); pool's threads compute the checksums (NULL: the caller's
 * alone); verify: each hit's panels checked against them before use. */
PanelCache *panel_cache_new(const char *dir, CgPool *pool, bool verify);
void        panel_cache_free(PanelCache *pc);
PanelCacheStats panel_cache_stats(const PanelCache *pc);
/* "panel cache DIR: 169 steps' panels mapped (15059.6 MB), 0 packed and kept (0.0 MB)", with what
 * failed, was damaged or removed after it, in buf (returned). */
const char *panel_cache_stats_line(const PanelCacheStats *st, const char *dir, char *buf, size_t n);

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

/* What a directory's panel files are (`moeppc panel-cache`). */
typedef enum {
    PANEL_FILE_OK,         /* whole, and (verified) its panels match their checksums            */
    PANEL_FILE_DAMAGED,    /* cut short, a header or description not its own, or (verified) panels
                            * that differ from their checksums: a run packs its step again       */
    PANEL_FILE_STALE,      /* another moeppc's (file format or panel layout): this one never maps it */
    PANEL_FILE_UNFINISHED, /* a temporary file a run stopped while packing left (panels-*.tmp*):
                            * unlocked and unchanged for PANEL_TMP_QUIET_S seconds              */
    PANEL_FILE_WRITING,    /* a temporary file a running moeppc is packing into (it holds its lock),
                            * or one changed in the last PANEL_TMP_QUIET_S seconds              */
} PanelFileState;
/* An unlocked temporary file changed this recently is taken for one being written: a run locks its
 * file just after making it (a lister may come between), and on a file system without flock never;
 * its writes keep the modification time moving. A stopped run's file waits this long to be removed. */
#define PANEL_TMP_QUIET_S 300

typedef struct PanelFileInfo {
    char           *name;     /* in the directory */
    double          bytes;
    struct timespec used;     /* its modification time: when a run last mapped or wrote it */
    PanelFileState  state;
    bool            verified; /* its panels were checked against their checksums */
    int             weights;  /* how many weights' panels it holds (read from its description) */
    char            first[96]; /* the first one's name */
    char            why[192]; /* for any state but OK: what is wrong */
    dev_t           dev;      /* the file examined (panel_cache_remove removes no other) */
    ino_t           ino;
} PanelFileInfo;

/* The panel files of dir (panels-*.bin, and unfinished panels-*.tmp*), by name, each checked (its
 * header, description, name and size; with verify its panels against their checksums too, on pool's
 * threads): *n of them, xmalloc'd. NULL with why set when dir cannot be read. */
PanelFileInfo *panel_cache_list(const char *dir, bool verify, CgPool *pool, int *n, char *why, size_t why_len);
void           panel_cache_list_free(PanelFileInfo *f, int n);

/* Remove the file fi describes, if its name still holds that file: one a run named there since
 * (packed again, in place of a damaged one) is kept, and so is a temporary file a running moeppc is
 * writing. panel_cache_trim removes files the same way. */
typedef enum {
    PANEL_REMOVED,     /* removed                                                   */
    PANEL_GONE,        /* already gone                                              */
    PANEL_REPLACED,    /* kept: another file is under its name now                   */
    PANEL_WRITING,     /* kept: a running moeppc is writing it                       */
    PANEL_NOT_REMOVED, /* errno says why                                             */
} PanelRemoved;
PanelRemoved   panel_cache_remove(const char *dir, const PanelFileInfo *fi);

#endif
