/* tokenizer.c — text to token ids and back with a SentencePiece BPE model (runtime.h, "text and
 * token ids"): the tokenizer.model of LLaMA-family checkpoints, the released MoE++ one included.
 *
 * The file is a protobuf ModelProto; only the fields the encoder and decoder need are read (pieces,
 * the trainer's model type, byte fallback and special pieces, the normalizer's rules and its
 * precompiled character map), with a reader of protobuf's wire format, since protobuf-c would need
 * generated code for these few fields. The algorithm is SentencePiece's own (bpe_model.cc,
 * unigram_model.cc, normalizer.cc, sentencepiece_processor.cc): normalise (the character map's
 * longest match, or one UTF-8 character, a bad byte becoming U+FFFD; spaces as U+2581 '▁', a dummy
 * one in front); then BPE: split into characters, merge repeatedly the adjacent pair whose
 * concatenation is the best-scored piece (the leftmost on ties), split any unused piece back into
 * what formed it; or unigram: the segmentation of highest total score (Viterbi over every piece that
 * starts at each character, an unknown character scored below every piece); and spell a piece
 * outside the vocabulary in byte pieces <0xXX> (or <unk> without byte fallback). tests/runtime/test_tokenizer.sh
 * checks it against the sentencepiece library itself. */
#include "runtime/runtime.h"
#include "runtime/weights_internal.h"

#include <errno.h>
#include <float.h>
#include <math.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

enum { PIECE_NORMAL = 1, PIECE_UNKNOWN, PIECE_CONTROL, PIECE_USER, PIECE_UNUSED, PIECE_BYTE };
enum { MODEL_UNIGRAM = 1, MODEL_BPE, MODEL_WORD, MODEL_CHAR };

typedef struct {
    char    *s;
    uint32_t len;
    float    score;
    uint8_t  type;
} Piece;

/* Open addressing on a hash of the piece's bytes: ids of the pieces in one of two sets. */
typedef struct {
    int32_t *slot; /* [mask + 1], -1 empty */
    uint32_t mask;
} PieceMap;

struct Tokenizer {
    Piece   *piece; /* [n] */
    int32_t  n;
    PieceMap normal;   /* NORMAL, USER_DEFINED, UNUSED: what merges may form */
    PieceMap reserved; /* UNKNOWN, CONTROL, BYTE */
    int32_t  unk, bos, eos;
    int32_t  byte_id[256]; /* the piece <0xXX> of each byte, with byte fallback */
    int32_t *user;         /* [n_user] USER_DEFINED pieces: never split, never normalised */
    int32_t  n_user;
    int32_t *special;      /* [n_special] CONTROL and UNKNOWN pieces of some text (tokenizer_encode_special) */
    int32_t  n_special;
    uint8_t  special_first[32]; /* a bit for each byte one of them begins with */
    bool     byte_fallback, add_dummy_prefix, remove_extra_ws, escape_ws, ws_suffix;
    bool     unigram;              /* a unigram model (Viterbi over piece scores), else BPE */
    float    min_score, max_score; /* over the NORMAL pieces: unigram's unknown and user-defined scores */
    uint32_t max_len;              /* the longest piece a merge or the lattice can reach, in bytes */
    char    *unk_surface;
    uint32_t *trie; /* the character map: a darts-clone double array [n_trie] */
    uint32_t  n_trie;
    char     *norm; /* [n_norm] the replacements it points at, NUL-terminated */
    uint32_t  n_norm;
};

static const char SPACE[] = "\xe2\x96\x81"; /* U+2581, what a space becomes */

/* ---- protobuf's wire format ---------------------------------------------------------------- */

typedef struct {
    const uint8_t *p, *end, *base; /* base: the file's start, for offsets in messages */
    const char    *name;
    RtError       *err;
} Pb;

static bool pb_fail(Pb *b, const char *fmt, ...) __attribute__((format(printf, 2, 3)));
static bool pb_fail(Pb *b, const char *fmt, ...)
{
    char what[512];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(what, sizeof what, fmt, ap);
    va_end(ap);
    rt_errorf(b->err, b->name, "byte %lld: %s", (long long)(b->p - b->base), what);
    return false;
}

static bool pb_varint(Pb *b, uint64_t *v)
{
    *v = 0;
    for (int shift = 0; shift < 64; shift += 7) {
        if (b->p == b->end) return pb_fail(b, "a varint runs past the end of its message (a truncated file?)");
        uint8_t c = *b->p++;
        *v |= (uint64_t)(c & 0x7f) << shift;
        if (!(c & 0x80)) return true;
    }
    return pb_fail(b, "a varint longer than 10 bytes (not a protobuf file?)");
}

/* One field: its number and wire type; a length-delimited one's bytes in *sub, a number's in *v
 * (a fixed32's bits too). */
static bool pb_field(Pb *b, uint32_t *field, uint64_t *v, Pb *sub)
{
    uint64_t tag;
    if (!pb_varint(b, &tag)) return false;
    *field = (uint32_t)(tag >> 3);
    if (tag >> 3 == 0 || tag >> 3 > 536870911u) return pb_fail(b, "field number %llu (not a protobuf file?)", (unsigned long long)(tag >> 3));
    switch (tag & 7) {
    case 0: return pb_varint(b, v);
    case 1:
    case 5: {
        size_t k = (tag & 7) == 1 ? 8 : 4;
        if ((size_t)(b->end - b->p) < k) return pb_fail(b, "a fixed-size field runs past the end of its message");
        *v = 0;
        for (size_t i = 0; i < k; i++) *v |= (uint64_t)b->p[i] << (8 * i);
        b->p += k;
        return true;
    }
    case 2:
        if (!pb_varint(b, v)) return false;
        if (*v > (uint64_t)(b->end - b->p)) return pb_fail(b, "field %u's %llu bytes run past the end of its message", *field, (unsigned long long)*v);
        *sub = (Pb){b->p, b->p + *v, b->base, b->name, b->err};
        b->p += *v;
        return true;
    default: return pb_fail(b, "field %u has wire type %u, which these files do not use (not a tokenizer.model?)", *field, (unsigned)(tag & 7));
    }
}

static float pb_float(uint64_t bits)
{
    uint32_t u = (uint32_t)bits;
    float f;
    memcpy(&f, &u, sizeof f);
    return f;
}

/* ---- piece sets ------------------------------------------------------------------------------ */

static uint32_t piece_hash(const char *s, size_t n)
{
    uint32_t h = 2166136261u; /* FNV-1a */
    for (size_t i = 0; i < n; i++) h = (h ^ (uint8_t)s[i]) * 16777619u;
    return h;
}

/* s[n]'s id in m (h: piece_hash(s, n)), -1 if none. */
static int32_t map_find_h(const Tokenizer *t, const PieceMap *m, const char *s, size_t n, uint32_t h)
{
    for (uint32_t i = h & m->mask;; i = (i + 1) & m->mask) {
        int32_t id = m->slot[i];
        if (id < 0) return -1;
        if (t->piece[id].len == n && memcmp(t->piece[id].s, s, n) == 0) return id;
    }
}

static int32_t map_find(const Tokenizer *t, const PieceMap *m, const char *s, size_t n)
{
    return map_find_h(t, m, s, n, piece_hash(s, n));
}

/* SentencePiece's PieceToId: the reserved pieces first, then the rest; the unknown piece otherwise. */
static int32_t piece_id(const Tokenizer *t, const char *s, size_t n)
{
    int32_t id = map_find(t, &t->reserved, s, n);
    if (id < 0) id = map_find(t, &t->normal, s, n);
    return id < 0 ? t->unk : id;
}

/* ---- loading --------------------------------------------------------------------------------- */

/* What loading gathers beside the Tokenizer: the trainer's and normaliser's fields that are only
 * needed to check and finish it, and the piece being read. */
typedef struct {
    Tokenizer *t;
    uint64_t   model_type;
    char      *bos_piece, *eos_piece;
    Pb         charsmap;
    Piece      pc;
    bool       have_text;
} Load;

/* Each field of message b to visit (sub: a length-delimited field's bytes, else sub->p is NULL). */
typedef bool (*PbVisit)(Load *ld, Pb *b, uint32_t field, uint64_t v, const Pb *sub);

static bool pb_each(Load *ld, Pb *b, PbVisit visit)
{
    while (b->p < b->end) {
        uint32_t f = 0;
        uint64_t v = 0;
        Pb sub = {0};
        if (!pb_field(b, &f, &v, &sub) || !visit(ld, b, f, v, &sub)) return false;
    }
    return true;
}

static char *pb_string(const Pb *sub)
{
    size_t n = (size_t)(sub->end - sub->p);
    char *s = xmalloc(n + 1);
    memcpy(s, sub->p, n);
    s[n] = 0;
    return s;
}

static bool visit_piece(Load *ld, Pb *b, uint32_t f, uint64_t v, const Pb *sub)
{
    (void)b;
    if (f == 1 && sub->p) {
        free(ld->pc.s);
        ld->pc.s = pb_string(sub);
        ld->pc.len = (uint32_t)v, ld->have_text = true;
    } else if (f == 2) ld->pc.score = pb_float(v);
    else if (f == 3) ld->pc.type = (uint8_t)(v >= PIECE_NORMAL && v <= PIECE_BYTE ? v : 0);
    return true;
}

static bool visit_trainer(Load *ld, Pb *b, uint32_t f, uint64_t v, const Pb *sub)
{
    (void)b;
    Tokenizer *t = ld->t;
    if (f == 3) ld->model_type = v;
    else if (f == 24) t->ws_suffix = v != 0;
    else if (f == 35) t->byte_fallback = v != 0;
    else if (f == 44 && sub->p) free(t->unk_surface), t->unk_surface = pb_string(sub);
    else if (f == 46 && sub->p) free(ld->bos_piece), ld->bos_piece = pb_string(sub);
    else if (f == 47 && sub->p) free(ld->eos_piece), ld->eos_piece = pb_string(sub);
    return true;
}

static bool visit_normalizer(Load *ld, Pb *b, uint32_t f, uint64_t v, const Pb *sub)
{
    (void)b;
    if (f == 2 && sub->p) ld->charsmap = *sub;
    else if (f == 3) ld->t->add_dummy_prefix = v != 0;
    else if (f == 4) ld->t->remove_extra_ws = v != 0;
    else if (f == 5) ld->t->escape_ws = v != 0;
    return true;
}

/* ModelProto: 1 its pieces, 2 the trainer's spec, 3 the normaliser's. */
static bool visit_model(Load *ld, Pb *b, uint32_t f, uint64_t v, const Pb *sub)
{
    (void)v;
    Pb m = *sub;
    if (!sub->p) return true;
    if (f == 2) return pb_each(ld, &m, visit_trainer);
    if (f == 3) return pb_each(ld, &m, visit_normalizer);
    if (f != 1) return true;
    Tokenizer *t = ld->t;
    ld->pc = (Piece){.type = PIECE_NORMAL}, ld->have_text = false;
    bool ok = pb_each(ld, &m, visit_piece);
    if (ok && (!ld->have_text || !ld->pc.type || ld->pc.len == 0)) {
        b->p = sub->p; /* the offset of the piece */
        ok = pb_fail(b, "piece %d: %s", t->n, !ld->have_text || ld->pc.len == 0 ? "no text" : "an unknown type");
    }
    if (!ok) return free(ld->pc.s), false;
    t->piece = xrealloc(t->piece, (size_t)(t->n + 1) * sizeof *t->piece);
    t->piece[t->n++] = ld->pc;
    return true;
}

/* The precompiled character map: a little-endian uint32 byte count of the trie, the trie's units,
 * then the replacement strings the trie's values point at. */
static bool load_charsmap(Pb *b, Tokenizer *t)
{
    size_t n = (size_t)(b->end - b->p);
    if (n == 0) return true;
    uint32_t trie_bytes = 0;
    if (n >= 4) memcpy(&trie_bytes, b->p, 4);
    if (n < 4 || trie_bytes % 4 || trie_bytes == 0 || trie_bytes > n - 4)
        return pb_fail(b, "the normalizer's character map (%zu bytes) is malformed: its trie of %u bytes", n, trie_bytes);
    t->n_trie = trie_bytes / 4;
    t->trie = xmalloc(trie_bytes);
    memcpy(t->trie, b->p + 4, trie_bytes);
    t->n_norm = (uint32_t)(n - 4 - trie_bytes);
    t->norm = xmalloc((size_t)t->n_norm + 1);
    memcpy(t->norm, b->p + 4 + trie_bytes, t->n_norm);
    t->norm[t->n_norm] = 0; /* the last replacement ends even if the file forgot to end it */
    return true;
}

static void map_build(const Tokenizer *t, PieceMap *m, bool reserved)
{
    uint32_t size = 16;
    while (size < 2u * (uint32_t)t->n) size *= 2;
    m->mask = size - 1;
    m->slot = xmalloc(size * sizeof *m->slot);
    memset(m->slot, 0xff, size * sizeof *m->slot);
    for (int32_t id = 0; id < t->n; id++) {
        uint8_t ty = t->piece[id].type;
        if ((ty == PIECE_UNKNOWN || ty == PIECE_CONTROL || ty == PIECE_BYTE) != reserved) continue;
        uint32_t i = piece_hash(t->piece[id].s, t->piece[id].len) & m->mask;
        while (m->slot[i] >= 0) i = (i + 1) & m->mask;
        m->slot[i] = id;
    }
}

static int hexval(char c)
{
    return c >= '0' && c <= '9' ? c - '0' : c >= 'A' && c <= 'F' ? c - 'A' + 10 : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* The normal pieces' lowest and highest scores (unigram's unknown and user-defined scores) and the
 * longest piece a merge or the lattice can reach. */
static void piece_stats(Tokenizer *t)
{
    t->min_score = FLT_MAX, t->max_score = FLT_MIN; /* SentencePiece's starting values, FLT_MIN included */
    for (int32_t id = 0; id < t->n; id++) {
        const Piece *p = &t->piece[id];
        if (p->type == PIECE_NORMAL) t->min_score = fminf(t->min_score, p->score), t->max_score = fmaxf(t->max_score, p->score);
        if ((p->type == PIECE_NORMAL || p->type == PIECE_USER || p->type == PIECE_UNUSED) && p->len > t->max_len) t->max_len = p->len;
    }
}

/* What SentencePiece checks when it loads a model, and what this file needs of it. */
static bool check_model(Tokenizer *t, const Load *sp, const char *name, RtError *err)
{
    const char *type_name[] = {"?", "unigram", "bpe", "word", "char"};
    if (sp->model_type != MODEL_BPE && sp->model_type != MODEL_UNIGRAM) {
        rt_errorf(err, name, "a SentencePiece %s model: moeppc reads BPE models (LLaMA's tokenizer.model is one) and "
                  "unigram ones", sp->model_type <= MODEL_CHAR ? type_name[sp->model_type] : "unknown");
        return false;
    }
    t->unigram = sp->model_type == MODEL_UNIGRAM;
    piece_stats(t);
    if (t->n == 0) return rt_errorf(err, name, "no pieces (not a tokenizer.model?)"), false;
    map_build(t, &t->normal, false);
    map_build(t, &t->reserved, true);
    t->unk = t->bos = t->eos = -1;
    for (int i = 0; i < 256; i++) t->byte_id[i] = -1;
    for (int32_t id = 0; id < t->n; id++) {
        const Piece *p = &t->piece[id];
        bool reserved = p->type == PIECE_UNKNOWN || p->type == PIECE_CONTROL || p->type == PIECE_BYTE;
        if (map_find(t, reserved ? &t->reserved : &t->normal, p->s, p->len) != id) {
            char shown[48];
            str_escape(p->s, p->len, shown, sizeof shown);
            return rt_errorf(err, name, "piece %d \"%s\" is already defined", id, shown), false;
        }
        if (p->type == PIECE_UNKNOWN) {
            if (t->unk >= 0) return rt_errorf(err, name, "pieces %d and %d are both the unknown piece", t->unk, id), false;
            t->unk = id;
        }
        if (p->type == PIECE_USER) t->user = xrealloc(t->user, (size_t)(t->n_user + 1) * sizeof *t->user), t->user[t->n_user++] = id;
        if ((p->type == PIECE_CONTROL || p->type == PIECE_UNKNOWN) && p->len > 0) {
            t->special = xrealloc(t->special, (size_t)(t->n_special + 1) * sizeof *t->special);
            t->special[t->n_special++] = id;
            t->special_first[(uint8_t)p->s[0] >> 3] |= (uint8_t)(1u << ((uint8_t)p->s[0] & 7));
        }
        if (p->type == PIECE_BYTE) {
            int hi = p->len == 6 ? hexval(p->s[3]) : -1, lo = p->len == 6 ? hexval(p->s[4]) : -1;
            if (!t->byte_fallback || hi < 0 || lo < 0 || memcmp(p->s, "<0x", 3) || p->s[5] != '>')
                return rt_errorf(err, name, "piece %d is a byte piece, but %s", id,
                                t->byte_fallback ? "not of the form <0xXX>" : "the model has no byte fallback"), false;
            t->byte_id[hi * 16 + lo] = id;
        }
    }
    if (t->unk < 0) return rt_errorf(err, name, "no unknown piece (every model has one)"), false;
    for (int i = 0; t->byte_fallback && i < 256; i++)
        if (t->byte_id[i] < 0) return rt_errorf(err, name, "byte fallback, but no piece <0x%02X>", i), false;
    int32_t b = map_find(t, &t->reserved, sp->bos_piece, strlen(sp->bos_piece));
    int32_t e = map_find(t, &t->reserved, sp->eos_piece, strlen(sp->eos_piece));
    t->bos = b >= 0 && t->piece[b].type == PIECE_CONTROL ? b : -1;
    t->eos = e >= 0 && t->piece[e].type == PIECE_CONTROL ? e : -1;
    return true;
}

bool tokenizer_parse(const void *data, size_t n, const char *name, Tokenizer **out, RtError *err)
{
    Tokenizer *t = xcalloc(1, sizeof *t);
    t->add_dummy_prefix = t->remove_extra_ws = t->escape_ws = true; /* the proto's defaults */
    t->unk_surface = xstrdup(" \xe2\x81\x87 ");
    Load ld = {.t = t, .model_type = MODEL_UNIGRAM, .bos_piece = xstrdup("<s>"), .eos_piece = xstrdup("</s>")};
    Pb b = {data, (const uint8_t *)data + n, data, name, err};
    bool ok = pb_each(&ld, &b, visit_model) && load_charsmap(&ld.charsmap, t) && check_model(t, &ld, name, err);
    free(ld.bos_piece);
    free(ld.eos_piece);
    if (!ok) {
        tokenizer_free(t);
        return false;
    }
    *out = t;
    return true;
}

bool tokenizer_load(const char *path, Tokenizer **out, RtError *err)
{
    size_t n;
    char *data = file_read_all(path, &n); /* at most FILE_READ_LIMIT: a tokenizer.model is a few MB */
    if (!data) return rt_errorf(err, path, "%s", strerror(errno)), false;
    bool ok = tokenizer_parse(data, n, path, out, err);
    free(data);
    return ok;
}

void tokenizer_free(Tokenizer *t)
{
    if (!t) return;
    for (int32_t i = 0; i < t->n; i++) free(t->piece[i].s);
    free(t->piece);
    free(t->normal.slot);
    free(t->reserved.slot);
    free(t->user);
    free(t->special);
    free(t->unk_surface);
    free(t->trie);
    free(t->norm);
    free(t);
}

int64_t     tokenizer_size(const Tokenizer *t) { return t->n; }
int32_t     tokenizer_bos(const Tokenizer *t) { return t->bos; }
int32_t     tokenizer_eos(const Tokenizer *t) { return t->eos; }
const char *tokenizer_piece(const Tokenizer *t, int32_t id) { return t->piece[id].s; }

/* ---- normalising ----------------------------------------------------------------------------- */

/* The length of the valid UTF-8 character at s (SentencePiece's IsValidDecodeUTF8: no overlong
 * forms, no surrogates, nothing above U+10FFFF), 0 if it is not one. */
static size_t utf8_char(const uint8_t *s, size_t n)
{
    if (n == 0) return 0;
    uint8_t c = s[0];
    size_t len = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
    if (len == 0 || len > n) return 0;
    uint32_t cp = len == 1 ? c : c & (0x7f >> len);
    for (size_t i = 1; i < len; i++) {
        if ((s[i] & 0xc0) != 0x80) return 0;
        cp = cp << 6 | (s[i] & 0x3f);
    }
    static const uint32_t least[] = {0, 0, 0x80, 0x800, 0x10000};
    if (cp < least[len] || cp > 0x10ffff || (cp >= 0xd800 && cp <= 0xdfff)) return 0;
    return len;
}

/* Whether s[0..n) (n >= 1) is the beginning of a well-formed UTF-8 character that needs more bytes:
 * some completion of it is one (a second byte of 0x80, 0x90 or 0xa0 meets every lead's range). */
static bool utf8_begins(const uint8_t *s, size_t n)
{
    uint8_t c = s[0];
    size_t len = (c & 0xe0) == 0xc0 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 ? 4 : 0;
    if (n >= len) return false;
    static const uint8_t second[] = {0x80, 0x90, 0xa0};
    for (size_t t = 0; t < 3; t++) {
        uint8_t whole[4] = {c, second[t], 0x80, 0x80};
        memcpy(whole, s, n);
        if (utf8_char(whole, len) == len) return true;
    }
    return false;
}

/* The longest user-defined piece at s, its length (0: none). */
static size_t user_match(const Tokenizer *t, const char *s, size_t n)
{
    size_t best = 0;
    for (int32_t i = 0; i < t->n_user; i++) {
        const Piece *p = &t->piece[t->user[i]];
        if (p->len > best && p->len <= n && memcmp(p->s, s, p->len) == 0) best = p->len;
    }
    return best;
}

/* The longest key of the character map that prefixes s: its replacement's offset in t->norm, and
 * its length in *len (0: none). A darts-clone double array: unit = label, has-leaf bit, offset. */
static uint32_t charsmap_match(const Tokenizer *t, const uint8_t *s, size_t n, size_t *len)
{
    *len = 0;
    uint32_t value = 0, pos = 0, u = t->trie[0];
    pos ^= (u >> 10) << ((u & (1u << 9)) >> 6);
    for (size_t i = 0; i < n; i++) {
        pos ^= s[i];
        if (pos >= t->n_trie) break;
        u = t->trie[pos];
        if ((u & ((1u << 31) | 0xff)) != s[i]) break;
        pos ^= (u >> 10) << ((u & (1u << 9)) >> 6);
        if (pos >= t->n_trie) break;
        if ((u >> 8) & 1) value = t->trie[pos] & 0x7fffffffu, *len = i + 1;
    }
    return value;
}

/* What the next piece of the input becomes (*out, *out_n) and how many bytes it takes. */
static size_t normalize_prefix(const Tokenizer *t, const char *s, size_t n, const char **out, size_t *out_n)
{
    size_t len = user_match(t, s, n);
    if (len) return *out = s, *out_n = len, len;
    if (t->trie) {
        uint32_t v = charsmap_match(t, (const uint8_t *)s, n, &len);
        if (len && v < t->n_norm) return *out = t->norm + v, *out_n = strlen(t->norm + v), len;
    }
    len = utf8_char((const uint8_t *)s, n);
    if (len) return *out = s, *out_n = len, len;
    return *out = "\xef\xbf\xbd", *out_n = 3, 1; /* U+FFFD for a byte that begins no character */
}

typedef struct {
    char  *s;
    size_t n, cap;
} Buf;

static void buf_put(Buf *b, const char *s, size_t n)
{
    if (b->n + n + 1 > b->cap) b->s = xrealloc(b->s, b->cap = 2 * (b->n + n + 1) + 64);
    memcpy(b->s + b->n, s, n);
    b->s[b->n += n] = 0;
}

static void put_space(const Tokenizer *t, Buf *o)
{
    if (t->escape_ws) buf_put(o, SPACE, 3);
    else buf_put(o, " ", 1);
}

/* SentencePiece's Normalizer::Normalize. */
static void normalize(const Tokenizer *t, const char *s, size_t n, Buf *o)
{
    const char *r;
    size_t rn, k;
    while (t->remove_extra_ws && n && (k = normalize_prefix(t, s, n, &r, &rn)) && rn == 1 && *r == ' ') s += k, n -= k;
    if (n == 0) return;
    if (!t->ws_suffix && t->add_dummy_prefix) put_space(t, o);
    bool prev_space = t->remove_extra_ws;
    while (n) {
        k = normalize_prefix(t, s, n, &r, &rn);
        while (prev_space && rn && *r == ' ') r++, rn--;
        for (size_t i = 0; i < rn; i++)
            if (t->escape_ws && r[i] == ' ') put_space(t, o);
            else buf_put(o, r + i, 1);
        if (rn) prev_space = r[rn - 1] == ' ';
        s += k, n -= k;
        if (!t->remove_extra_ws) prev_space = false;
    }
    size_t sl = t->escape_ws ? 3 : 1;
    while (t->remove_extra_ws && o->n >= sl && memcmp(o->s + o->n - sl, t->escape_ws ? SPACE : " ", sl) == 0) o->s[o->n -= sl] = 0;
    if (t->ws_suffix && t->add_dummy_prefix) put_space(t, o);
}

/* ---- BPE ------------------------------------------------------------------------------------- */

typedef struct {
    int32_t  prev, next; /* the neighbours still standing, -1 at the ends */
    uint32_t off, len;   /* its bytes in the normalised text; 0 once merged into its left */
    bool     freeze;     /* a user-defined piece */
} Sym;

typedef struct {
    float    score;
    int32_t  left, right;
    uint32_t len; /* of the merged piece: a pair gone stale no longer adds up to it */
} Pair;

typedef struct {
    Pair  *a;
    size_t n, cap;
} Heap;

/* The best pair first: the higher score, then the leftmost. */
static bool pair_before(const Pair *x, const Pair *y)
{
    return x->score > y->score || (x->score == y->score && x->left < y->left);
}

static void heap_push(Heap *h, Pair p)
{
    if (h->n == h->cap) h->a = xrealloc(h->a, (h->cap = 2 * h->cap + 64) * sizeof *h->a);
    size_t i = h->n++;
    for (; i > 0 && pair_before(&p, &h->a[(i - 1) / 2]); i = (i - 1) / 2) h->a[i] = h->a[(i - 1) / 2];
    h->a[i] = p;
}

static Pair heap_pop(Heap *h)
{
    Pair top = h->a[0], last = h->a[--h->n];
    size_t i = 0;
    for (;;) {
        size_t c = 2 * i + 1;
        if (c >= h->n) break;
        if (c + 1 < h->n && pair_before(&h->a[c + 1], &h->a[c])) c++;
        if (!pair_before(&h->a[c], &last)) break;
        h->a[i] = h->a[c], i = c;
    }
    if (h->n) h->a[i] = last;
    return top;
}

typedef struct {
    const Tokenizer *t;
    const char      *text;  /* normalised */
    Sym             *sym;
    Heap             heap;
    uint32_t        *split; /* [t->n] with unused pieces: the left part's length in the last pair that formed each */
    int32_t         *ids;
    int64_t          n_ids, cap_ids;
} Bpe;

static void bpe_try(Bpe *e, int32_t l, int32_t r)
{
    if (l < 0 || r < 0 || e->sym[l].freeze || e->sym[r].freeze) return;
    uint32_t len = e->sym[l].len + e->sym[r].len;
    int32_t id = map_find(e->t, &e->t->normal, e->text + e->sym[l].off, len);
    if (id < 0) return;
    heap_push(&e->heap, (Pair){e->t->piece[id].score, l, r, len});
    if (e->t->piece[id].type == PIECE_UNUSED) {
        if (!e->split) e->split = xcalloc((size_t)e->t->n, sizeof *e->split);
        e->split[id] = e->sym[l].len;
    }
}

static void bpe_emit(Bpe *e, int32_t id)
{
    if (e->n_ids == e->cap_ids) e->ids = xrealloc(e->ids, (size_t)(e->cap_ids = 2 * e->cap_ids + 16) * sizeof *e->ids);
    e->ids[e->n_ids++] = id;
}

/* A piece of the result (its id, its text): outside the vocabulary, spelt in bytes where the model
 * falls back, or else <unk> once for a run of them, as SentencePiece writes it. */
static void emit_piece(Bpe *e, int32_t id, const char *s, uint32_t len)
{
    const Tokenizer *t = e->t;
    if (id == t->unk && t->byte_fallback)
        for (uint32_t i = 0; i < len; i++) bpe_emit(e, t->byte_id[(uint8_t)s[i]]);
    else if (!(id == t->unk && e->n_ids && e->ids[e->n_ids - 1] == t->unk))
        bpe_emit(e, id);
}

/* A final symbol's ids: an unused piece split back into what formed it (the last pair that formed
 * it), a piece outside the vocabulary spelt in bytes where the model falls back, or else <unk> (once
 * for a run of them, as SentencePiece writes it). The parts to do wait on a stack, left on top. */
static void bpe_output(Bpe *e, const char *s, uint32_t len)
{
    const Tokenizer *t = e->t;
    size_t n = 1, cap = 16;
    struct Part {
        const char *s;
        uint32_t    len;
    } *stack = xmalloc(cap * sizeof *stack);
    stack[0] = (struct Part){s, len};
    while (n) {
        struct Part p = stack[--n];
        int32_t id = piece_id(t, p.s, p.len);
        if (id != t->unk && t->piece[id].type == PIECE_UNUSED && e->split && e->split[id]) {
            if (n + 2 > cap) stack = xrealloc(stack, (cap *= 2) * sizeof *stack);
            uint32_t ll = e->split[id];
            stack[n++] = (struct Part){p.s + ll, p.len - ll};
            stack[n++] = (struct Part){p.s, ll};
        } else {
            emit_piece(e, id, p.s, p.len);
        }
    }
    free(stack);
}

/* Unigram: the segmentation of the normalised text[n] whose pieces' scores sum highest (SentencePiece's
 * EncodeOptimized, its arithmetic included: a path's score kept in float, a candidate's in double).
 * best[k]: the best path ending at byte k, its last piece from byte from[k], piece id[k]. */
static void unigram_encode(Bpe *e, const char *text, size_t n)
{
    const Tokenizer *t = e->t;
    float *best = xcalloc(n + 1, sizeof *best);
    int32_t *from = xmalloc((n + 1) * sizeof *from), *id = xmalloc((n + 1) * sizeof *id);
    for (size_t k = 0; k <= n; k++) from[k] = -1;
    double unk_score = (double)t->min_score - 10.0; /* kUnkPenalty */
    for (size_t at = 0; at < n;) {
        size_t one = utf8_char((const uint8_t *)text + at, n - at);
        if (!one) one = 1;
        bool single = false;
        uint32_t h = 2166136261u;
        for (size_t len = 1; len <= t->max_len && at + len <= n; len++) {
            h = (h ^ (uint8_t)text[at + len - 1]) * 16777619u; /* piece_hash, a byte at a time */
            int32_t p = map_find_h(t, &t->normal, text + at, len, h);
            if (p < 0 || t->piece[p].type == PIECE_UNUSED) continue;
            double score = t->piece[p].type == PIECE_USER ? (double)len * t->max_score - 0.1 : t->piece[p].score;
            double cand = score + best[at];
            if (from[at + len] == -1 || cand > best[at + len]) best[at + len] = (float)cand, from[at + len] = (int32_t)at, id[at + len] = p;
            single |= len == one;
        }
        double cand = unk_score + best[at];
        if (!single && (from[at + one] == -1 || cand > best[at + one]))
            best[at + one] = (float)cand, from[at + one] = (int32_t)at, id[at + one] = t->unk;
        at += one;
    }
    size_t count = 0;
    for (size_t k = n; k > 0; k = (size_t)from[k]) count++;
    size_t *ends = xmalloc((count + 1) * sizeof *ends);
    for (size_t k = n, j = count; k > 0; k = (size_t)from[k]) ends[--j] = k;
    for (size_t j = 0; j < count; j++) emit_piece(e, id[ends[j]], text + from[ends[j]], (uint32_t)(ends[j] - (size_t)from[ends[j]]));
    free(ends);
    free(best);
    free(from);
    free(id);
}

int64_t tokenizer_encode(const Tokenizer *t, const char *text, size_t n, int32_t **ids)
{
    Buf norm = {0};
    normalize(t, text, n, &norm);
    Bpe e = {.t = t, .text = norm.s};
    if (t->unigram) {
        unigram_encode(&e, norm.s, norm.n);
        free(norm.s);
        *ids = e.ids ? e.ids : xmalloc(sizeof **ids);
        return e.n_ids;
    }
    int32_t n_sym = 0;
    e.sym = xmalloc((norm.n + 1) * sizeof *e.sym);
    for (size_t off = 0; off < norm.n; n_sym++) {
        size_t k = user_match(t, norm.s + off, norm.n - off), u = k ? k : utf8_char((const uint8_t *)norm.s + off, norm.n - off);
        if (!u) u = 1; /* cannot happen after normalising: a stray byte would have become U+FFFD */
        e.sym[n_sym] = (Sym){n_sym - 1, -1, (uint32_t)off, (uint32_t)u, k > 0};
        if (n_sym) e.sym[n_sym - 1].next = n_sym;
        off += u;
    }
    for (int32_t i = 1; i < n_sym; i++) bpe_try(&e, i - 1, i);
    while (e.heap.n) {
        Pair p = heap_pop(&e.heap);
        Sym *l = &e.sym[p.left], *r = &e.sym[p.right];
        if (l->len == 0 || r->len == 0 || l->len + r->len != p.len || l->next != p.right) continue;
        l->len += r->len;
        l->next = r->next;
        if (r->next >= 0) e.sym[r->next].prev = p.left;
        r->len = 0;
        bpe_try(&e, l->prev, p.left);
        bpe_try(&e, p.left, l->next);
    }
    for (int32_t i = n_sym ? 0 : -1; i >= 0; i = e.sym[i].next) bpe_output(&e, norm.s + e.sym[i].off, e.sym[i].len);
    free(e.sym);
    free(e.heap.a);
    free(e.split);
    free(norm.s);
    *ids = e.ids ? e.ids : xmalloc(sizeof **ids);
    return e.n_ids;
}

/* The longest special piece (control or unknown) whose text begins s[n]: its id, its length in *len;
 * -1 if none does. */
static int32_t special_match(const Tokenizer *t, const char *s, size_t n, size_t *len)
{
    int32_t best = -1;
    *len = 0;
    if (!(t->special_first[(uint8_t)s[0] >> 3] & (1u << ((uint8_t)s[0] & 7)))) return -1;
    for (int32_t i = 0; i < t->n_special; i++) {
        const Piece *p = &t->piece[t->special[i]];
        if (p->len > *len && p->len <= n && memcmp(p->s, s, p->len) == 0) best = t->special[i], *len = p->len;
    }
    return best;
}

int64_t tokenizer_encode_special(const Tokenizer *t, const char *text, size_t n, int32_t **ids)
{
    int32_t *out = NULL;
    int64_t n_out = 0, cap = 0;
    for (size_t at = 0, from = 0; from < n;) {
        size_t len = 0;
        int32_t id = at < n ? special_match(t, text + at, n - at, &len) : -1;
        if (id < 0 && at < n) {
            at++;
            continue;
        }
        int32_t *seg;
        int64_t k = at > from ? tokenizer_encode(t, text + from, at - from, &seg) : 0;
        if (n_out + k + 1 > cap) cap = 2 * (n_out + k + 1), out = xrealloc(out, (size_t)cap * sizeof *out);
        if (at > from) memcpy(out + n_out, seg, (size_t)k * sizeof *out), free(seg), n_out += k;
        if (id >= 0) out[n_out++] = id;
        from = at = at + len;
    }
    *ids = out ? out : xmalloc(sizeof **ids);
    return n_out;
}

/* ---- decoding -------------------------------------------------------------------------------- */

/* Bytes of byte pieces as text: each valid UTF-8 character as it is, each other byte as U+FFFD; an
 * incomplete character at the end kept back when hold (it may be completed by what follows; bytes
 * that no completion makes a character, such as a lead 0xf7 or 0xe0 0x80, are U+FFFD at once). */
static size_t flush_bytes(Buf *o, const uint8_t *b, size_t n, bool hold)
{
    size_t i = 0;
    while (i < n) {
        size_t k = utf8_char(b + i, n - i);
        if (!k && hold && utf8_begins(b + i, n - i)) return i; /* b[i..n) may yet become a character */
        if (k) buf_put(o, (const char *)b + i, k), i += k;
        else buf_put(o, "\xef\xbf\xbd", 3), i++;
    }
    return n;
}

/* Decoding from a point where nothing is pending (no byte run); bos_ws: no text yet (a leading space,
 * the one normalising added, is still to drop). at (NULL: not wanted): where each id's text begins, in
 * bytes: the length of the ids before it decoded held (what streaming has printed when it comes). */
static char *decode_from(const Tokenizer *t, const int32_t *ids, int64_t n, bool hold, bool bos_ws, size_t *len,
                         size_t *at)
{
    Buf o = {0};
    buf_put(&o, "", 0);
    uint8_t *bytes = xmalloc((size_t)n + 1);
    size_t nb = 0, held_from = 0; /* (at: the run's bytes before held_from are text in held) */
    Buf held = {0};
    for (int64_t i = 0; i <= n; i++) {
        bool known = i < n && ids[i] >= 0 && ids[i] < t->n; /* an id past the pieces: nothing */
        const Piece *p = known ? &t->piece[ids[i]] : NULL;
        if (at && i < n) { /* the text so far, a run's bytes held (they go out at its end) */
            held_from += flush_bytes(&held, bytes + held_from, nb - held_from, true);
            at[i] = o.n + held.n;
        }
        if (p && p->type == PIECE_BYTE) {
            bytes[nb++] = (uint8_t)(hexval(p->s[3]) * 16 + hexval(p->s[4]));
            continue;
        }
        if (nb) flush_bytes(&o, bytes, nb, hold && i == n), nb = 0, bos_ws = bos_ws && o.n == 0;
        held.n = 0, held_from = 0;
        if (!p || p->type == PIECE_CONTROL) continue;
        if (p->type == PIECE_UNKNOWN) {
            buf_put(&o, t->unk_surface, strlen(t->unk_surface));
            bos_ws = bos_ws && o.n == 0;
            continue;
        }
        const char *s = p->s;
        size_t sl = p->len;
        bool dropped = false;
        if (bos_ws && (t->add_dummy_prefix || t->remove_extra_ws) && sl >= 3 && memcmp(s, SPACE, 3) == 0) {
            s += 3, sl -= 3, dropped = !t->remove_extra_ws;
        }
        for (size_t k = 0; k < sl;)
            if (sl - k >= 3 && memcmp(s + k, SPACE, 3) == 0) buf_put(&o, " ", 1), k += 3;
            else buf_put(&o, s + k, 1), k++;
        if (dropped || o.n) bos_ws = false;
    }
    free(bytes);
    free(held.s);
    *len = o.n;
    return o.s;
}

char *tokenizer_decode(const Tokenizer *t, const int32_t *ids, int64_t n, bool hold, size_t *len)
{
    return decode_from(t, ids, n, hold, true, len, NULL);
}

char *tokenizer_decode_offsets(const Tokenizer *t, const int32_t *ids, int64_t n, int64_t *offsets, size_t *len)
{
    size_t *at = xmalloc(((size_t)n + 1) * sizeof *at);
    char *text = decode_from(t, ids, n, false, true, len, at);
    int64_t chars = 0;
    for (int64_t i = 0; i < n; i++) { /* (at never decreases) */
        chars += text_chars(text + (i ? at[i - 1] : 0), at[i] - (i ? at[i - 1] : 0));
        offsets[i] = chars;
    }
    free(at);
    return text;
}

/* ---- text on a line, and streaming ----------------------------------------------------------- */

int64_t text_chars(const char *s, size_t n)
{
    int64_t chars = 0;
    for (size_t b = 0; b < n; b++) chars += ((unsigned char)s[b] & 0xc0) != 0x80; /* a character's first byte */
    return chars;
}

bool text_unescape(const char *s, size_t n, char *out, size_t *out_n, size_t *bad)
{
    static const char from[] = "ntr\\", to[] = "\n\t\r\\";
    size_t o = 0;
    for (size_t i = 0; i < n; i++) {
        if (s[i] != '\\') {
            out[o++] = s[i];
            continue;
        }
        const char *e = i + 1 < n && s[i + 1] ? strchr(from, s[i + 1]) : NULL;
        int hi = i + 3 < n && s[i + 1] == 'x' ? hexval(s[i + 2]) : -1, lo = hi >= 0 ? hexval(s[i + 3]) : -1;
        if (e) out[o++] = to[e - from], i += 1;
        else if (lo >= 0) out[o++] = (char)(hi * 16 + lo), i += 3;
        else return *bad = i, false;
    }
    *out_n = o;
    return true;
}

void text_write_escaped(FILE *f, const char *s, size_t n)
{
    for (size_t i = 0; i < n; i++) {
        unsigned char c = (unsigned char)s[i];
        if (c == '\\') fputs("\\\\", f);
        else if (c == '\n') fputs("\\n", f);
        else if (c == '\t') fputs("\\t", f);
        else if (c == '\r') fputs("\\r", f);
        else if (c < 0x20 || c == 0x7f) fprintf(f, "\\x%02x", c);
        else fputc(c, f);
    }
}

/* The text of seq[n] (held unless final) from the stream's restart point on, its length in *len and
 * the length of what precedes it in *base; the restart point moves to n when that is one: a piece
 * other than a byte ends seq[n] (nothing pending) and there is text (the leading space is settled),
 * so that each put decodes only what the last few ids add. */
static char *stream_decode(TextStream *ts, const int32_t *seq, int64_t n, bool final, size_t *len, size_t *base)
{
    MOE_ASSERT(n >= ts->from);
    char *text = decode_from(ts->t, seq + ts->from, n - ts->from, !final, ts->from == 0, len, NULL);
    *base = ts->from_len;
    const Piece *last = n > 0 && seq[n - 1] >= 0 && seq[n - 1] < ts->t->n ? &ts->t->piece[seq[n - 1]] : NULL;
    if (n > 0 && (!last || last->type != PIECE_BYTE) && *base + *len > 0) ts->from = n, ts->from_len = *base + *len;
    return text;
}

void text_stream_begin(TextStream *ts, const Tokenizer *t, FILE *f, bool escape, const int32_t *seq, int64_t n)
{
    *ts = (TextStream){t, f, escape, 0, 0, 0};
    size_t len, base;
    free(stream_decode(ts, seq, n, false, &len, &base));
    ts->printed = base + len;
}

void text_stream_put(TextStream *ts, const int32_t *seq, int64_t n, bool final)
{
    size_t len, base;
    char *text = stream_decode(ts, seq, n, final, &len, &base);
    MOE_ASSERT(base + len >= ts->printed && base <= ts->printed); /* held decodings only grow */
    size_t skip = ts->printed - base;
    if (ts->escape) text_write_escaped(ts->f, text + skip, len - skip);
    else fwrite(text + skip, 1, len - skip, ts->f);
    ts->printed = base + len;
    free(text);
}

bool tokenizer_beside(const char *weights, char *path, size_t n)
{
    struct stat st;
    bool dir = stat(weights, &st) == 0 && S_ISDIR(st.st_mode);
    const char *slash = strrchr(weights, '/');
    int k = dir ? snprintf(path, n, "%s/tokenizer.model", weights)
          : slash ? snprintf(path, n, "%.*s/tokenizer.model", (int)(slash - weights), weights)
                  : snprintf(path, n, "tokenizer.model");
    return k > 0 && (size_t)k < n && stat(path, &st) == 0 && S_ISREG(st.st_mode);
}
