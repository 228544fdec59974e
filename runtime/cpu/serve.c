/* serve.c — `moeppc run --serve`'s wire form: JSON request lines parsed, answer lines written
 * (serve.h), with cJSON. */
#include "runtime/cpu/serve.h"

#include "support/support.h"

#include <cjson/cJSON.h>
#include <ctype.h>
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* An integer field in [lo, hi]: false (why set) when it is not one. */
static bool int_field(const cJSON *v, const char *name, double lo, double hi, int64_t *out, char *why, size_t n)
{
    double d = cJSON_IsNumber(v) ? v->valuedouble : NAN;
    if (!(d >= lo && d <= hi) || d != floor(d)) {
        snprintf(why, n, "\"%s\": expected an integer in [%.0f, %.0f]", name, lo, hi);
        return false;
    }
    *out = (int64_t)d;
    return true;
}

static bool num_field(const cJSON *v, const char *name, double *out, char *why, size_t n)
{
    if (!cJSON_IsNumber(v)) {
        snprintf(why, n, "\"%s\": expected a number", name);
        return false;
    }
    *out = v->valuedouble;
    return true;
}

/* An array of token ids below vocab into *ids (allocated even for an empty one), *count. */
static bool ids_field(const cJSON *v, const char *name, int64_t vocab, int32_t **ids, int64_t *count, char *why,
                      size_t n)
{
    if (!cJSON_IsArray(v)) {
        snprintf(why, n, "\"%s\": expected an array of token ids", name);
        return false;
    }
    int64_t k = cJSON_GetArraySize(v), j = 0;
    *ids = xmalloc((size_t)(k ? k : 1) * sizeof **ids); /* given, even if empty */
    *count = k;
    for (const cJSON *e = v->child; e; e = e->next, j++) {
        int64_t id;
        if (!int_field(e, name, 0, (double)(vocab - 1), &id, why, n)) {
            size_t l = strlen(why);
            snprintf(why + l, n - l, " (element %lld: a token id of the vocabulary of %lld)", (long long)j,
                     (long long)vocab);
            return false;
        }
        (*ids)[j] = (int32_t)id;
    }
    return true;
}

/* "logit_bias": {"ID": bias, ...} (OpenAI's: token ids as the keys' text) into q->bias, which replaces
 * the run's --logit-bias; each id of the vocabulary once, each bias in ±SAMPLE_MAX_BIAS
 * (sample_params_check's). */
static bool bias_field(const cJSON *v, int64_t vocab, ServeRequest *q, char *why, size_t n)
{
    if (!cJSON_IsObject(v)) {
        snprintf(why, n, "\"logit_bias\": expected an object of token ids and biases ({\"13\": -100})");
        return false;
    }
    int64_t k = cJSON_GetArraySize(v);
    if (k > SAMPLE_MAX_BIASES) {
        snprintf(why, n, "\"logit_bias\": %lld entries, at most %d", (long long)k, SAMPLE_MAX_BIASES);
        return false;
    }
    q->bias = xmalloc((size_t)(k ? k : 1) * sizeof *q->bias);
    q->sample.bias = q->bias, q->sample.n_bias = 0;
    for (const cJSON *e = v->child; e; e = e->next) {
        char *end, shown[64];
        str_escape(e->string, strlen(e->string), shown, sizeof shown);
        errno = 0;
        long long id = strtoll(e->string, &end, 10);
        if (end == e->string || *end || errno || id < 0 || id >= vocab || !isdigit((unsigned char)e->string[0])) {
            snprintf(why, n, "\"logit_bias\": \"%s\": expected a token id of the vocabulary of %lld", shown,
                     (long long)vocab);
            return false;
        }
        if (!cJSON_IsNumber(e)) {
            snprintf(why, n, "\"logit_bias\": \"%s\": expected a number", shown);
            return false;
        }
        q->bias[q->sample.n_bias++] = (SampleBias){(int32_t)id, e->valuedouble};
    }
    return true; /* (ranges and ids given twice: sample_params_check) */
}

/* "stop": token ids (which replace the run's stop tokens, as an empty array does) and strings (which
 * end the text where one of them begins, the run's stop tokens kept), in any mix. */
static bool stop_field(const cJSON *v, int64_t vocab, ServeRequest *q, char *why, size_t n)
{
    if (!cJSON_IsArray(v)) {
        snprintf(why, n, "\"stop\": expected an array of token ids and strings");
        return false;
    }
    int64_t k = cJSON_GetArraySize(v), j = 0;
    q->stop = xmalloc((size_t)(k ? k : 1) * sizeof *q->stop);
    q->stop_text = xcalloc((size_t)(k ? k : 1), sizeof *q->stop_text);
    for (const cJSON *e = v->child; e; e = e->next, j++) {
        int64_t id;
        if (cJSON_IsString(e) && *e->valuestring) q->stop_text[q->n_stop_text++] = xstrdup(e->valuestring);
        else if (cJSON_IsString(e)) {
            snprintf(why, n, "\"stop\": element %lld: an empty string", (long long)j);
            return false;
        } else if (int_field(e, "stop", 0, (double)(vocab - 1), &id, why, n)) q->stop[q->n_stop++] = (int32_t)id;
        else {
            snprintf(why, n, "\"stop\": element %lld: expected a string or a token id of the vocabulary of %lld",
                     (long long)j, (long long)vocab);
            return false;
        }
    }
    q->stop_set = q->n_stop > 0 || k == 0;
    return true;
}

/* The length of the well-formed UTF-8 sequence s[i] begins (no overlong forms, no surrogates,
 * nothing past U+10FFFF), or 0 where none does. */
static size_t utf8_at(const char *s, size_t n, size_t i)
{
    unsigned char c = (unsigned char)s[i];
    size_t k = c < 0x80 ? 1 : (c & 0xe0) == 0xc0 && c >= 0xc2 ? 2 : (c & 0xf0) == 0xe0 ? 3 : (c & 0xf8) == 0xf0 && c <= 0xf4 ? 4 : 0;
    bool ok = k > 0 && i + k <= n;
    for (size_t j = 1; ok && j < k; j++) ok = ((unsigned char)s[i + j] & 0xc0) == 0x80;
    unsigned char d = k > 1 && ok ? (unsigned char)s[i + 1] : 0x80;
    if (ok && k == 3) ok = !(c == 0xe0 && d < 0xa0) && !(c == 0xed && d >= 0xa0);
    if (ok && k == 4) ok = !(c == 0xf0 && d < 0x90) && !(c == 0xf4 && d >= 0x90);
    return ok ? k : 0;
}

/* What cJSON takes without a word but a request must not hold: a byte that is not UTF-8 (JSON text
 * is UTF-8; an id so echoed would make the answer line no JSON) or an escaped NUL character (\u0000:
 * cJSON's strings end at a NUL, so such an id, prompt or stop string would be cut short). Its column
 * (1-based; 0: none) and what it is in *what. */
/* Whether line[i] begins a \u0000 escape, the backslashes right before it counted in *slashes (an
 * escaped backslash does not begin one); call for each i in turn. */
static bool nul_escape_at(const char *line, size_t len, size_t i, size_t *slashes)
{
    bool at = line[i] == '\\' && *slashes % 2 == 0 && len - i >= 6 && memcmp(line + i + 1, "u0000", 5) == 0;
    *slashes = line[i] == '\\' ? *slashes + 1 : 0;
    return at;
}

static size_t bad_bytes(const char *line, size_t len, const char **what)
{
    for (size_t i = 0, slashes = 0; i < len; i++) {
        if (nul_escape_at(line, len, i, &slashes))
            return *what = "a string with a NUL character (\\u0000), which moeppc does not take", i + 1;
        if ((unsigned char)line[i] >= 0x80) {
            size_t k = utf8_at(line, len, i);
            if (!k) return *what = "a byte that is not UTF-8 (JSON text is UTF-8)", i + 1;
            i += k - 1; /* (its bytes are no backslash: slashes is 0 after the first) */
        }
    }
    return 0;
}

/* An id is echoed as it came: a string, a number, true/false or null. */
static bool scalar(const cJSON *v) { return cJSON_IsString(v) || cJSON_IsNumber(v) || cJSON_IsBool(v) || cJSON_IsNull(v); }

/* The id to answer a line bad_bytes refuses with: its "id" where that holds neither of what it found
 * (a client waits for an answer under its id), else the line's number. The line is parsed again with
 * each NUL escape made U+FFFF, so that no string ends early; an id with U+FFFF or a byte that is not
 * UTF-8 in it is not echoed. */
static char *refused_id(const char *line, size_t len, const char *num)
{
    char *copy = xmalloc(len + 1);
    memcpy(copy, line, len);
    copy[len] = 0;
    for (size_t i = 0, slashes = 0; i < len; i++)
        if (nul_escape_at(copy, len, i, &slashes)) memcpy(copy + i + 1, "uffff", 5);
    cJSON *root = cJSON_ParseWithLength(copy, len);
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(root, "id");
    bool ok = id && scalar(id);
    if (ok && cJSON_IsString(id)) {
        size_t n = strlen(id->valuestring);
        ok = !strstr(id->valuestring, "\xef\xbf\xbf");
        for (size_t i = 0; ok && i < n; i += utf8_at(id->valuestring, n, i)) ok = utf8_at(id->valuestring, n, i) > 0;
    }
    char *out = ok ? cJSON_PrintUnformatted(id) : xstrdup(num);
    cJSON_Delete(root);
    free(copy);
    return out;
}

bool serve_request_parse(const char *line, size_t len, int64_t line_no, int64_t vocab, const ServeRequest *defaults,
                         ServeRequest *q, char *why, size_t n)
{
    memset(q, 0, sizeof *q);
    q->max_tokens = defaults->max_tokens, q->sample = defaults->sample, q->seed = defaults->seed, q->logprobs = -1;
    char num[32];
    snprintf(num, sizeof num, "%lld", (long long)line_no);
    const char *end = NULL;
    cJSON *root = cJSON_ParseWithLengthOpts(line, len, &end, false);
    if (!root || !cJSON_IsObject(root)) {
        q->id = xstrdup(num);
        if (!root) snprintf(why, n, "column %zu: not JSON", (size_t)((end ? end : line) - line) + 1);
        else snprintf(why, n, "a request is a JSON object ({\"ids\": [...]} or {\"prompt\": \"...\"})");
        cJSON_Delete(root);
        return false;
    }
    const char *what;
    size_t bad = bad_bytes(line, len, &what);
    if (bad) {
        q->id = refused_id(line, len, num);
        snprintf(why, n, "column %zu: %s", bad, what);
        cJSON_Delete(root);
        return false;
    }
    const cJSON *id = cJSON_GetObjectItemCaseSensitive(root, "id");
    q->id = id && scalar(id) ? cJSON_PrintUnformatted(id) : xstrdup(num);
    bool ok = true;
    if (id && !scalar(id)) ok = false, snprintf(why, n, "\"id\": expected a string or a number");
    for (const cJSON *f = root->child; ok && f; f = f->next) {
        const char *k = f->string;
        int64_t i = 0;
        char shown[64];
        str_escape(k, strlen(k), shown, sizeof shown);
        if (cJSON_GetObjectItemCaseSensitive(root, k) != f) ok = false, snprintf(why, n, "\"%s\" given twice", shown);
        else if (strcmp(k, "id") == 0) continue;
        else if (strcmp(k, "prompt") == 0) {
            if (!cJSON_IsString(f)) ok = false, snprintf(why, n, "\"prompt\": expected a string");
            else q->prompt = xstrdup(f->valuestring);
        } else if (strcmp(k, "ids") == 0) ok = ids_field(f, k, vocab, &q->ids, &q->n_ids, why, n);
        else if (strcmp(k, "stop") == 0) ok = stop_field(f, vocab, q, why, n);
        else if (strcmp(k, "logit_bias") == 0) ok = bias_field(f, vocab, q, why, n);
        else if (strcmp(k, "continue") == 0) {
            if (!scalar(f)) ok = false, snprintf(why, n, "\"continue\": expected the id of an earlier request");
            else q->cont = cJSON_PrintUnformatted(f);
        } else if (strcmp(k, "cancel") == 0) {
            if (!scalar(f)) ok = false, snprintf(why, n, "\"cancel\": expected the id of a request");
            else if (f != root->child || f->next) ok = false, snprintf(why, n, "a cancel is {\"cancel\": ID} alone");
            else q->cancel = cJSON_PrintUnformatted(f);
        } else if (strcmp(k, "max_tokens") == 0) ok = int_field(f, k, 0, 1e6, &q->max_tokens, why, n);
        else if (strcmp(k, "temperature") == 0) ok = num_field(f, k, &q->sample.temperature, why, n);
        else if (strcmp(k, "top_p") == 0) ok = num_field(f, k, &q->sample.top_p, why, n);
        else if (strcmp(k, "repetition_penalty") == 0) ok = num_field(f, k, &q->sample.repetition_penalty, why, n);
        else if (strcmp(k, "presence_penalty") == 0) ok = num_field(f, k, &q->sample.presence_penalty, why, n);
        else if (strcmp(k, "frequency_penalty") == 0) ok = num_field(f, k, &q->sample.frequency_penalty, why, n);
        else if (strcmp(k, "logprobs") == 0) ok = int_field(f, k, 0, SERVE_LOGPROBS_MAX, &q->logprobs, why, n);
        else if (strcmp(k, "top_k") == 0) ok = int_field(f, k, 0, 1e9, &q->sample.top_k, why, n);
        else if (strcmp(k, "seed") == 0) ok = int_field(f, k, 0, 9007199254740992.0, &i, why, n), q->seed = (uint64_t)i;
        else if (strcmp(k, "stream") == 0 || strcmp(k, "echo") == 0 || strcmp(k, "special") == 0) {
            if (!cJSON_IsBool(f)) ok = false, snprintf(why, n, "\"%s\": expected true or false", k);
            else *(k[1] == 't' ? &q->stream : k[1] == 'c' ? &q->echo : &q->special) = cJSON_IsTrue(f);
        } else ok = false, snprintf(why, n, "unknown field \"%s\"", shown);
    }
    if (ok && !q->cancel && !q->prompt == !q->ids)
        ok = false, snprintf(why, n, "give one of \"prompt\" (text) and \"ids\" (token ids)");
    if (ok && q->ids && q->n_ids == 0) ok = false, snprintf(why, n, "\"ids\": no tokens");
    if (ok && q->ids && q->special) ok = false, snprintf(why, n, "\"special\": for a \"prompt\"'s text, not \"ids\"");
    if (ok && !sample_params_check(&q->sample, why, n)) ok = false;
    cJSON_Delete(root);
    return ok;
}

void serve_request_free(ServeRequest *q)
{
    for (int64_t k = 0; k < q->n_stop_text; k++) free(q->stop_text[k]);
    free(q->id), free(q->cont), free(q->cancel), free(q->prompt), free(q->ids), free(q->stop), free(q->stop_text);
    free(q->bias);
    memset(q, 0, sizeof *q);
}

/* The answer object's "id" (its JSON text parsed again) and the printed line. */
static cJSON *with_id(const char *id)
{
    cJSON *o = cJSON_CreateObject(), *v = cJSON_Parse(id);
    cJSON_AddItemToObject(o, "id", v ? v : cJSON_CreateNull());
    return o;
}

static char *line_of(cJSON *o)
{
    char *s = cJSON_PrintUnformatted(o);
    cJSON_Delete(o);
    MOE_ASSERT(s);
    size_t l = strlen(s);
    char *out = xmalloc(l + 2);
    memcpy(out, s, l);
    out[l] = '\n', out[l + 1] = 0;
    cJSON_free(s);
    return out;
}

/* s [n] with each byte that does not begin or continue a well-formed UTF-8 sequence replaced by
 * U+FFFD (a model's byte tokens can make any bytes; JSON text is UTF-8); its length in *len. */
static char *utf8_clean(const char *s, size_t n, size_t *len)
{
    size_t o = 0;
    char *out = xmalloc(3 * n + 1);
    for (size_t i = 0; i < n;) {
        size_t k = utf8_at(s, n, i);
        if (k) memcpy(out + o, s + i, k), o += k, i += k;
        else memcpy(out + o, "\xef\xbf\xbd", 3), o += 3, i++;
    }
    out[o] = 0;
    *len = o;
    return out;
}

/* The string text [n] under key. A NUL byte (a byte token's <0x00>) is a character of the text, which
 * cJSON's strings (NUL-terminated) cannot hold: such a text goes in as raw JSON, each NUL-free run
 * quoted by cJSON and the NULs between them \u0000. */
static void add_text(cJSON *o, const char *key, const char *text, size_t n)
{
    size_t len;
    char *t = utf8_clean(text, n, &len);
    if (!memchr(t, 0, len)) {
        cJSON_AddStringToObject(o, key, t);
        free(t);
        return;
    }
    char *raw = xmalloc(6 * len + 3), *w = raw; /* (cJSON's escapes take at most 6 bytes a byte) */
    *w++ = '"';
    for (size_t i = 0; i <= len;) {
        size_t run = strlen(t + i);
        if (run) {
            cJSON *item = cJSON_CreateString(t + i);
            char *q = cJSON_PrintUnformatted(item); /* "...": its inside */
            MOE_ASSERT(q);
            size_t l = strlen(q) - 2;
            memcpy(w, q + 1, l), w += l;
            cJSON_free(q);
            cJSON_Delete(item);
        }
        i += run + 1;
        if (i <= len) memcpy(w, "\\u0000", 6), w += 6;
    }
    *w++ = '"', *w = 0;
    cJSON_AddRawToObject(o, key, raw);
    free(raw);
    free(t);
}

/* Room for one more entry. */
static void logprobs_grow(ServeLogprobs *lp)
{
    if (lp->n < lp->cap) return;
    lp->cap = lp->cap ? 2 * lp->cap : 16;
    lp->chosen = xrealloc(lp->chosen, (size_t)lp->cap * sizeof *lp->chosen);
    lp->top_ids = xrealloc(lp->top_ids, (size_t)(lp->cap * (lp->k ? lp->k : 1)) * sizeof *lp->top_ids);
    lp->top_lp = xrealloc(lp->top_lp, (size_t)(lp->cap * (lp->k ? lp->k : 1)) * sizeof *lp->top_lp);
}

void serve_logprobs_add(ServeLogprobs *lp, const double *row, int64_t V, int32_t chosen)
{
    logprobs_grow(lp);
    double m = row[0], sum = 0;
    for (int64_t v = 1; v < V; v++) m = row[v] > m ? row[v] : m;
    for (int64_t v = 0; v < V; v++) sum += exp(row[v] - m);
    double lse = m + log(sum);
    int32_t *ids = lp->top_ids + lp->n * lp->k;
    double *top = lp->top_lp + lp->n * lp->k;
    int64_t have = 0; /* the k best so far, sorted: insertion, rejecting at the k-th */
    for (int64_t v = 0; v < V; v++) {
        if (have == lp->k && (lp->k == 0 || row[v] <= top[have - 1])) continue;
        int64_t j = have < lp->k ? have++ : have - 1;
        for (; j > 0 && row[v] > top[j - 1]; j--) top[j] = top[j - 1], ids[j] = ids[j - 1];
        top[j] = row[v], ids[j] = (int32_t)v;
    }
    for (int64_t j = 0; j < lp->k; j++) top[j] -= lse;
    lp->chosen[lp->n++] = row[chosen] - lse;
}

void serve_logprobs_append(ServeLogprobs *lp, const ServeLogprobs *from, int64_t j)
{
    MOE_ASSERT(j < from->n && lp->k <= from->k);
    logprobs_grow(lp);
    memcpy(lp->top_ids + lp->n * lp->k, from->top_ids + j * from->k, (size_t)lp->k * sizeof *lp->top_ids);
    memcpy(lp->top_lp + lp->n * lp->k, from->top_lp + j * from->k, (size_t)lp->k * sizeof *lp->top_lp);
    lp->chosen[lp->n++] = from->chosen[j];
}

void serve_logprobs_free(ServeLogprobs *lp)
{
    free(lp->chosen), free(lp->top_ids), free(lp->top_lp);
    *lp = (ServeLogprobs){0};
}

/* Token id's piece, as valid UTF-8 (null for an id of the model's vocabulary past the tokenizer's). */
static cJSON *piece_of(const Tokenizer *tok, int32_t id)
{
    if (id >= tokenizer_size(tok)) return cJSON_CreateNull();
    const char *piece = tokenizer_piece(tok, id);
    size_t len;
    char *t = utf8_clean(piece, strlen(piece), &len);
    cJSON *s = cJSON_CreateString(t);
    free(t);
    return s;
}

/* Entry j of lp's top tokens: [[id, logprob], ...], with a tokenizer [[id, logprob, "piece"], ...]. */
static cJSON *top_of(const ServeLogprobs *lp, int64_t j, const Tokenizer *tok)
{
    cJSON *a = cJSON_CreateArray();
    for (int64_t i = 0; i < lp->k; i++) {
        cJSON *e = cJSON_CreateArray();
        int32_t id = lp->top_ids[j * lp->k + i];
        cJSON_AddItemToArray(e, cJSON_CreateNumber(id));
        cJSON_AddItemToArray(e, cJSON_CreateNumber(lp->top_lp[j * lp->k + i]));
        if (tok) cJSON_AddItemToArray(e, piece_of(tok, id));
        cJSON_AddItemToArray(a, e);
    }
    return a;
}

/* A "logprobs" object of tokens ids[n] whose last lp->n (at most n) have log-probabilities, the
 * first null: {"tokens": pieces (with a tokenizer), "token_logprobs": [...], "top_logprobs": [...],
 * "text_offset": offs[n] (where each token's text begins, in characters; offs NULL: none)}. */
static void add_logprobs(cJSON *o, const char *key, const int32_t *ids, int64_t n, const ServeLogprobs *lp,
                         const Tokenizer *tok, const int64_t *offs)
{
    cJSON *l = cJSON_AddObjectToObject(o, key);
    if (tok) {
        cJSON *p = cJSON_AddArrayToObject(l, "tokens");
        for (int64_t j = 0; j < n; j++) cJSON_AddItemToArray(p, piece_of(tok, ids[j]));
    }
    cJSON *c = cJSON_AddArrayToObject(l, "token_logprobs"), *t = cJSON_AddArrayToObject(l, "top_logprobs");
    int64_t none = n > lp->n ? n - lp->n : 0;
    for (int64_t j = 0; j < n; j++) {
        cJSON_AddItemToArray(c, j < none ? cJSON_CreateNull() : cJSON_CreateNumber(lp->chosen[j - none]));
        cJSON_AddItemToArray(t, j < none ? cJSON_CreateNull() : top_of(lp, j - none, tok));
    }
    cJSON *f = offs ? cJSON_AddArrayToObject(l, "text_offset") : NULL;
    for (int64_t j = 0; f && j < n; j++) cJSON_AddItemToArray(f, cJSON_CreateNumber((double)offs[j]));
}

static void add_ids(cJSON *o, const char *key, const int32_t *ids, int64_t n)
{
    cJSON *a = cJSON_AddArrayToObject(o, key);
    for (int64_t j = 0; j < n; j++) cJSON_AddItemToArray(a, cJSON_CreateNumber(ids[j]));
}

/* "echo"'s fields: the prompt's ids, with a tokenizer its text, with "logprobs" its tokens'. */
static void add_prompt(cJSON *o, const ServeAnswer *a)
{
    add_ids(o, "prompt_ids", a->prompt_ids, a->prompt_tokens);
    int64_t *offs = NULL;
    if (a->tok) {
        size_t len;
        offs = xmalloc(((size_t)a->prompt_tokens + 1) * sizeof *offs);
        char *t = tokenizer_decode_offsets(a->tok, a->prompt_ids, a->prompt_tokens, offs, &len);
        add_text(o, "prompt_text", t, len);
        free(t);
    }
    if (a->prompt_lp) add_logprobs(o, "prompt_logprobs", a->prompt_ids, a->prompt_tokens, a->prompt_lp, a->tok, offs);
    free(offs);
}

char *serve_answer(const ServeAnswer *a)
{
    cJSON *o = with_id(a->id);
    add_ids(o, "ids", a->ids, a->n);
    if (a->text) add_text(o, "text", a->text, a->text_len);
    cJSON_AddStringToObject(o, "finish_reason", a->finish);
    cJSON_AddNumberToObject(o, "prompt_tokens", (double)a->prompt_tokens);
    cJSON_AddNumberToObject(o, "cached_tokens", (double)a->cached_tokens);
    if (a->lp) { /* (a cancelled request may have fewer than its tokens) */
        ServeLogprobs first = *a->lp;
        first.n = a->n < a->lp->n ? a->n : a->lp->n;
        add_logprobs(o, "logprobs", a->ids, first.n, &first, a->tok, a->text ? a->text_offset : NULL);
    }
    if (a->prompt_ids) add_prompt(o, a);
    return line_of(o);
}

char *serve_echo(const ServeAnswer *a)
{
    cJSON *o = with_id(a->id);
    add_prompt(o, a);
    return line_of(o);
}

char *serve_error(const char *id, const char *message)
{
    cJSON *o = with_id(id);
    add_text(o, "error", message, strlen(message)); /* it may quote the request's bytes */
    return line_of(o);
}

char *serve_event(const char *id, int32_t token, const char *text, size_t text_len, const ServeLogprobs *lp,
                  int64_t at, const Tokenizer *tok, int64_t text_offset)
{
    cJSON *o = with_id(id);
    if (token >= 0) cJSON_AddNumberToObject(o, "token", token);
    if (text) add_text(o, "text", text, text_len);
    if (token >= 0 && lp && at >= 0 && at < lp->n) {
        if (tok) cJSON_AddItemToObject(o, "piece", piece_of(tok, token));
        cJSON_AddNumberToObject(o, "logprob", lp->chosen[at]);
        cJSON_AddItemToObject(o, "top_logprobs", top_of(lp, at, tok));
        if (text_offset >= 0) cJSON_AddNumberToObject(o, "text_offset", (double)text_offset);
    }
    return line_of(o);
}
