/* fuzz_tokenizer.c — a SentencePiece model (tokenizer_parse, what `--tokenizer FILE` reads), then
 * what run does with one: encoding texts (fixed ones, and the input's own bytes as text; plainly and
 * with special pieces, as --serve's "special" and `tokenize --special` do) and
 * decoding their ids. Refused: one clean message naming the file. Accepted: every id below the
 * piece count, the BOS and EOS ids control pieces or none, decoding total, a held decoding of every
 * prefix the start of the whole text (what streaming relies on) and each id's offset its length. */
#include "tests/fuzz/fuzz.h"

#include "runtime/runtime.h"

#include <stdlib.h>
#include <string.h>

static void check_ids(const Tokenizer *t, const char *text, size_t n, bool special)
{
    int32_t *ids;
    int64_t k = (special ? tokenizer_encode_special : tokenizer_encode)(t, text, n, &ids), size = tokenizer_size(t);
    for (int64_t i = 0; i < k; i++) FUZZ_CHECK(ids[i] >= 0 && ids[i] < size, "id %d of %lld pieces", ids[i], (long long)size);
    size_t len, part_len;
    char *whole = tokenizer_decode(t, ids, k, false, &len);
    FUZZ_CHECK(strlen(whole) <= len, "decoding's length");
    int64_t *offs = malloc(((size_t)k + 1) * sizeof *offs);
    char *with = tokenizer_decode_offsets(t, ids, k, offs, &part_len);
    FUZZ_CHECK(part_len == len && memcmp(with, whole, len) == 0, "decoding with offsets gives another text");
    free(with);
    for (int64_t j = 0; j <= k && j < 64; j++) {
        char *part = tokenizer_decode(t, ids, j, true, &part_len);
        FUZZ_CHECK(part_len <= len && memcmp(part, whole, part_len) == 0, "held prefix %lld is not the start of the text", (long long)j);
        FUZZ_CHECK(j == k || offs[j] == text_chars(part, part_len), "id %lld's offset is not its held prefix's length", (long long)j);
        free(part);
    }
    free(offs);
    free(whole);
    free(ids);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    Tokenizer *t;
    RtError err;
    if (!tokenizer_parse(data, size, "fuzz.model", &t, &err)) {
        fuzz_check_message(err.msg, "fuzz.model");
        return 0;
    }
    int64_t n = tokenizer_size(t);
    FUZZ_CHECK(n > 0, "a model of no pieces accepted");
    FUZZ_CHECK(tokenizer_bos(t) >= -1 && tokenizer_bos(t) < n && tokenizer_eos(t) >= -1 && tokenizer_eos(t) < n, "bos/eos");
    static const char *const texts[] = {"", " ", "Hello  world, this is  a test.\n", "  lead and trail  ", "日本語 café 😀",
                                        "\xff\xfe bad \xe6\x97", "<s></s><unk><0x41>", "aaaaaaaa eeeee"};
    for (size_t i = 0; i < sizeof texts / sizeof *texts; i++)
        for (int s = 0; s < 2; s++) check_ids(t, texts[i], strlen(texts[i]), s);
    for (int s = 0; s < 2; s++) check_ids(t, (const char *)data, size < 4096 ? size : 4096, s);
    int32_t all[512];
    for (int i = 0; i < 512; i++) all[i] = (int32_t)(i % (n + 2)) - 1; /* ids past the pieces too: decoded as nothing */
    size_t len;
    free(tokenizer_decode(t, all, 512, false, &len));
    tokenizer_free(t);
    return 0;
}
