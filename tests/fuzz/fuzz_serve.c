/* fuzz_serve.c — a `moeppc run --serve` request line (serve_request_parse), then the answers made
 * from it. Accepted: a cancel alone, or one of "prompt" and "ids", every id and stop id in the
 * vocabulary, the sampling parameters sample_params_check accepts; refused: a reason without control bytes. Either way the
 * request has an id, and every answer (ids, the input's bytes as its text, "echo"'s prompt and its
 * log-probabilities; an error; a streamed token) is one line of JSON that parses back with that id and valid UTF-8 text or error. */
#include "tests/fuzz/fuzz.h"

#include "runtime/cpu/serve.h"

#include <cjson/cJSON.h>
#include <stdlib.h>
#include <string.h>

enum { VOCAB = 300 };

/* The answer line parses as one JSON object whose "id" prints as id, and the whole line (its id and
 * text included) is well-formed UTF-8 (cJSON keeps the bytes: checked here). */
static void check_line(char *line, const char *id)
{
    size_t n = strlen(line);
    FUZZ_CHECK(n >= 2 && line[n - 1] == '\n' && !memchr(line, '\n', n - 1), "not one line: %s", line);
    cJSON *o = cJSON_Parse(line);
    FUZZ_CHECK(o && cJSON_IsObject(o), "not a JSON object: %s", line);
    char *got = cJSON_PrintUnformatted(cJSON_GetObjectItemCaseSensitive(o, "id"));
    cJSON *want_v = cJSON_Parse(id);
    char *want = cJSON_PrintUnformatted(want_v);
    FUZZ_CHECK(got && want && strcmp(got, want) == 0, "id %s answered as %s", want ? want : "?", got ? got : "?");
    for (const unsigned char *p = (const unsigned char *)line; *p;) {
        int k = *p < 0x80 ? 1 : (*p & 0xe0) == 0xc0 ? 2 : (*p & 0xf0) == 0xe0 ? 3 : (*p & 0xf8) == 0xf0 ? 4 : 0;
        FUZZ_CHECK(k > 0, "a stray byte 0x%02x in the answer: %s", *p, line);
        for (int j = 1; j < k; j++) FUZZ_CHECK((p[j] & 0xc0) == 0x80, "a cut UTF-8 sequence in the answer: %s", line);
        p += k;
    }
    cJSON_free(got), cJSON_free(want);
    cJSON_Delete(want_v), cJSON_Delete(o);
    free(line);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
    ServeRequest def = {.max_tokens = 16, .sample = {.top_p = 1, .repetition_penalty = 1}}, q;
    char why[256];
    bool ok = serve_request_parse((const char *)data, size, 7, VOCAB, &def, &q, why, sizeof why);
    FUZZ_CHECK(q.id && *q.id, "a request without an id");
    if (!ok) {
        for (const unsigned char *p = (const unsigned char *)why; *p; p++)
            FUZZ_CHECK(*p >= 0x20 && *p != 0x7f, "a control byte in the reason: %s", why);
        FUZZ_CHECK(*why, "refused without a reason");
        check_line(serve_error(q.id, why), q.id);
    } else {
        if (q.cancel) { /* {"cancel": ID} alone; the requests it ends are answered with that id */
            FUZZ_CHECK(!q.prompt && !q.ids && !q.cont && !q.stop_set, "a cancel with a request's fields");
            ServeAnswer none = {.id = q.cancel, .text = "", .finish = "cancelled"};
            check_line(serve_answer(&none), q.cancel);
        } else FUZZ_CHECK(!q.prompt != !q.ids && (!q.ids || q.n_ids >= 1), "not one of prompt and ids");
        for (int64_t j = 0; j < q.n_ids; j++) FUZZ_CHECK(q.ids[j] >= 0 && q.ids[j] < VOCAB, "id %d", q.ids[j]);
        for (int64_t j = 0; j < q.n_stop; j++) FUZZ_CHECK(q.stop[j] >= 0 && q.stop[j] < VOCAB, "stop id %d", q.stop[j]);
        for (int64_t j = 0; j < q.n_stop_text; j++) FUZZ_CHECK(*q.stop_text[j], "an empty stop string");
        FUZZ_CHECK(sample_params_check(&q.sample, why, sizeof why), "sampling accepted: %s", why);
        FUZZ_CHECK(q.max_tokens >= 0, "max_tokens %lld", (long long)q.max_tokens);
    }
    char *text = malloc(size + 1); /* the input's bytes, as a tokenizer might make them (NULs too) */
    memcpy(text, data, size);
    text[size] = 0;
    ServeLogprobs lp = {.k = q.logprobs > 0 ? q.logprobs : 0}; /* each id's logprobs over a row of them */
    double row[VOCAB];
    for (int64_t v = 0; v < VOCAB; v++) row[v] = (double)((v * 37 + (int64_t)size) % 101) / 7.0;
    for (int64_t j = 0; q.logprobs >= 0 && j < q.n_ids; j++) serve_logprobs_add(&lp, row, VOCAB, q.ids[j]);
    ServeLogprobs plp = lp; /* "echo": as if the prompt's first token had none */
    plp.n = lp.n > 0 ? lp.n - 1 : 0;
    ServeAnswer a = {q.id, q.ids, q.n_ids, text, size, "length", q.n_ids, 0, q.logprobs >= 0 ? &lp : NULL,
                     q.echo ? q.ids : NULL, q.echo && q.logprobs >= 0 ? &plp : NULL, NULL, NULL};
    check_line(serve_answer(&a), q.id);
    check_line(serve_event(q.id, 3, text, size, q.logprobs >= 0 ? &lp : NULL, 0, NULL, 0), q.id);
    for (int64_t j = 0; j < lp.n; j++)
        for (int64_t i = 1; i < lp.k; i++)
            FUZZ_CHECK(lp.top_lp[j * lp.k + i - 1] >= lp.top_lp[j * lp.k + i], "top logprobs out of order");
    serve_logprobs_free(&lp);
    free(text);
    serve_request_free(&q);
    return 0;
}
