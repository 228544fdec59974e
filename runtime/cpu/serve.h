/* serve.h — `moeppc run --serve`: requests and answers as JSON lines, one request a line in, its
 * answer (and, streaming, its tokens) a line each out, tagged with the request's id. The driver
 * (driver.c) runs them as --batch lines; this is their wire form, parsed and written with cJSON.
 *
 * A request: {"id": any JSON scalar (echoed; default: its line number),
 *             "prompt": "text" (with a tokenizer) | "ids": [token ids],
 *             "continue": the id of an earlier request, whose sequence this one goes on,
 *             "max_tokens": N, "temperature": X, "top_k": K, "top_p": P, "repetition_penalty": R,
 *             "presence_penalty": X, "frequency_penalty": X (OpenAI's, over this request's tokens),
 *             "logit_bias": {"ID": bias, ...} (OpenAI's; replaces --logit-bias),
 *             "seed": S, "logprobs": K, "stop": [ids and strings] (the run's options are the defaults; ids replace its
 *             stop tokens, strings end the text where one begins), "stream": true|false,
 *             "echo": true|false (the answer also gives the prompt, and with "logprobs" its tokens'),
 *             "special": true|false (the prompt's text is the whole sequence, as a chat template writes
 *             it: the text of a control piece in it, <s> or </s>, is that token, and no
 *             beginning-of-sequence id is added)}
 * An answer: {"id": …, "ids": […], "text": "…" (with a tokenizer), "finish_reason": "length" |
 *             "stop" | "max_positions" | "cancelled", "prompt_tokens": N, "cached_tokens": K,
 *             with "logprobs": {"token_logprobs": [...], "top_logprobs": [[[id, logprob], ...], ...]}
 *             (with a tokenizer also "tokens": [pieces], and [id, logprob, "piece"] each top entry),
 *             with "echo": "prompt_ids": [...], "prompt_text" (with a tokenizer), and with "logprobs"
 *             "prompt_logprobs" as "logprobs" over the prompt's tokens (null for one no row before it
 *             ran: a new sequence's first; all null for a request cancelled before its prompt ran whole)}
 * or {"id": …, "error": "…"}; streaming, first a line per token: {"id": …, "token": T, "text": "…"}.
 * A cancel: {"cancel": an id} alone ends every request of that id still waiting or running: each
 *             answered at once with what it has, "finish_reason": "cancelled"; no answer of its own. */
#ifndef MOEPPC_RUNTIME_CPU_SERVE_H
#define MOEPPC_RUNTIME_CPU_SERVE_H

#include "runtime/runtime.h"

#include <stdbool.h>
#include <stdint.h>

typedef struct ServeRequest {
    char *id;            /* the request's "id" as JSON text, or its line number */
    char *cont;          /* "continue": that request's id as JSON text, or NULL */
    char *cancel;        /* a cancel line: the id of the requests to end, as JSON text (nothing else set) */
    char *prompt;        /* "prompt", or NULL */
    int32_t *ids;        /* "ids" [n_ids], or NULL */
    int64_t n_ids;
    int64_t max_tokens;
    SampleParams sample;
    uint64_t seed;
    SampleBias *bias;    /* "logit_bias" (sample.bias points here), or NULL */
    int32_t *stop;       /* "stop"'s token ids [n_stop]: the stop tokens when stop_set */
    int64_t n_stop;
    char **stop_text;    /* "stop"'s strings [n_stop_text] (with a tokenizer: the text ends before one) */
    int64_t n_stop_text;
    int64_t logprobs;    /* "logprobs": K, each generated token's log-probability and the K likeliest
                            tokens' (0 to SERVE_LOGPROBS_MAX), or -1: none */
    bool stop_set, stream;
    bool echo;           /* "echo": the answer gives the prompt (and with "logprobs", its tokens' too) */
    bool special;        /* "special": the prompt's control pieces' text their ids, no BOS added */
} ServeRequest;

enum { SERVE_LOGPROBS_MAX = 20 };

/* The log-probabilities of a request's generated tokens (log-softmax of the model's logits, before
 * any temperature or truncation), n of them so far. */
typedef struct {
    int64_t k, n, cap;
    double *chosen;    /* [n] the generated token's */
    int32_t *top_ids;  /* [n * k] the k likeliest tokens, likeliest first (ties: lower id first) */
    double *top_lp;    /* [n * k] theirs */
} ServeLogprobs;

/* One more: the token chosen from logits row[V]. */
void  serve_logprobs_add(ServeLogprobs *lp, const double *row, int64_t V, int32_t chosen);
/* One more: from's entry j, its first lp->k likeliest (lp->k <= from->k: the same as computing them). */
void  serve_logprobs_append(ServeLogprobs *lp, const ServeLogprobs *from, int64_t j);
void  serve_logprobs_free(ServeLogprobs *lp);

/* Line `line_no` of the input (len bytes) into *q, the fields it lacks from *defaults (its max_tokens,
 * sample, seed): false with the reason in why (and q->id set, for the answer) when it is not one. */
bool  serve_request_parse(const char *line, size_t len, int64_t line_no, int64_t vocab, const ServeRequest *defaults,
                          ServeRequest *q, char *why, size_t n);
void  serve_request_free(ServeRequest *q);

/* What a request's answer says. */
typedef struct {
    const char *id;
    const int32_t *ids;         /* the generated tokens [n] */
    int64_t n;
    const char *text;           /* their text [text_len] (it may hold NUL bytes), or NULL (no tokenizer) */
    size_t text_len;
    const char *finish;
    int64_t prompt_tokens, cached_tokens;
    const ServeLogprobs *lp;    /* "logprobs": the first n of its entries, or NULL (not asked) */
    const int32_t *prompt_ids;  /* "echo": the prompt's tokens [prompt_tokens], or NULL (not asked) */
    const ServeLogprobs *prompt_lp; /* "echo" with "logprobs": its last lp->n tokens', or NULL */
    const Tokenizer *tok;       /* the pieces and the prompt's text, or NULL */
    const int64_t *text_offset; /* "logprobs" with text: where each token's text begins in text, in
                                   characters [n] (tokenizer_decode_offsets' rule), or NULL */
} ServeAnswer;

/* Answer lines (each ending in a newline; the caller frees them). */
char *serve_answer(const ServeAnswer *a);
char *serve_error(const char *id, const char *message);
/* A stream's first line for an "echo" request: a's id and prompt fields alone, as serve_answer gives
 * them (its prompt run, before its first token). */
char *serve_echo(const ServeAnswer *a);
/* A streamed token (token < 0: the text's held-back end alone, after the last token), with lp's entry
 * `at` when lp is not NULL (and the token's piece, tok not NULL; where its text begins in the whole
 * text streamed, in characters, text_offset >= 0: in the text as generated, which the answer's
 * text_offset cuts to where a stop string begins). */
char *serve_event(const char *id, int32_t token, const char *text, size_t text_len, const ServeLogprobs *lp,
                  int64_t at, const Tokenizer *tok, int64_t text_offset);

#endif
