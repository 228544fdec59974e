/* runtime.h — weights for a compiled (or interpreted) model, and choosing the next token from its
 * logits (at the end).
 *
 * In:  a safetensors checkpoint (one file, a sharded set through model.safetensors.index.json, or a
 *      directory holding either), or a seed for random weights; the spec's tensor list (frontend.h).
 * Out: a WeightSet: named tensors in their stored dtype, either mapped read-only from the files
 *      (mmap, nothing copied) or owned in memory (random weights).
 * Errors: every failure is returned as false with a message in err (file name, tensor name,
 *      expected vs found) — truncated files, bad headers, overlapping offsets never crash.
 * Memory: the WeightSet owns its mappings/buffers and the tensor table; free with weights_close().
 *      Tensor data pointers stay valid until then.
 */
#ifndef MOEPPC_RUNTIME_H
#define MOEPPC_RUNTIME_H

#include "frontend/frontend.h"
#include "support/support.h"

typedef struct Tensor {
    char       *name;
    moe_dtype   dtype;          /* DT_F32, DT_BF16 or DT_F16 */
    int         ndim;           /* 0..4 */
    int64_t     shape[4];
    const void *data;           /* little-endian, row-major, aligned to the element size; NULL for a
                                   tensor held in two parts (weights_parts) */
    size_t      nbytes;
} Tensor;

typedef struct WeightSet WeightSet;

/* Error text buffer used by every runtime call that can fail on user input. Room for
 * weights_check's report (a header line and up to 20 problem lines). */
typedef struct RtError {
    char msg[4096];
} RtError;

/* Open a checkpoint: PATH may be a .safetensors file, a model.safetensors.index.json, or a
 * directory containing model.safetensors or model.safetensors.index.json. */
bool        weights_open(const char *path, WeightSet **out, RtError *err);
/* A run's tokens' sequences (seq[T]; NULL: all sequence 0) each in [0, n), the sequences a model keeps
 * caches for (cpu_model_run_seqs, cuda_model_run_seqs); false with a message naming the first that
 * is not. */
bool        rt_sequences_ok(const int32_t *seq, int64_t T, int n, RtError *err);
/* A fork's arguments (cpu_model_copy_sequence, cuda_model_copy_sequence): both sequences in [0, n),
 * positions in [0, max_positions]; false with a message otherwise. */
bool        rt_copy_ok(int from, int to, int64_t positions, int n, int64_t max_positions, RtError *err);

/* Seeded random weights for every tensor of the spec, in the spec's dtype (distribution: see
 * weights_random's definition and README). Each tensor is made when first read (its data NULL until
 * weights_data), or row by row into its reader's memory (weights_make_rows): a packer that copies a
 * weight anyway need never have the whole of it. Refused where the whole set would not fit in 80 %
 * of the memory available (a reader that keeps every tensor); weights_random_lazy is not, for a
 * reader that releases each tensor once copied and has counted what it keeps (the CPU backend). */
bool        weights_random(const ModelSpec *s, uint64_t seed, WeightSet **out, RtError *err);
bool        weights_random_lazy(const ModelSpec *s, uint64_t seed, WeightSet **out, RtError *err);
/* Whether t's values are made when read: a random set's tensor not made yet, or released. */
bool        weights_made_on_read(const WeightSet *w, const Tensor *t);
/* Rows row0 .. row0 + rows - 1 of a random set's tensor t (of shape[0] rows) made into dst: the bytes
 * weights_data holds there; more than 2^20 values on a pool of threads of its own. Safe to call from
 * several threads at once. */
void        weights_make_rows(const WeightSet *w, const Tensor *t, int64_t row0, int64_t rows, void *dst);
/* t's identity as text into buf (n bytes): its name and type, and where its values come from: the
 * place in a checkpoint's file (device, inode, size and modification time of the file, offset and
 * length), or a random set's seed and scale. Two tensors with the same identity have the same
 * values while their files are not rewritten in place within the clock's resolution. False where t
 * has none (a copy in memory, not from a file) or buf is too short. Keys a panel cache's files. */
bool        weights_identity(const WeightSet *w, const Tensor *t, char *buf, size_t n);
/* The bytes weights_random reserves for s (0 past 2^63): touched only as tensors are read whole. */
size_t      weights_random_bytes(const ModelSpec *s);
/* Check that every tensor the spec needs exists with the right shape and dtype. Reports the
 * first problems (all of them, one per line, up to a limit) in err. */
bool        weights_check(const WeightSet *w, const ModelSpec *s, RtError *err);
const Tensor *weights_find(const WeightSet *w, const char *name);
/* Whether w's tensor t is held in two parts, each in place in the files (a Mixtral expert's up
 * projection: w1's rows over w3's; its data NULL until weights_data): its first *part0_bytes bytes
 * at part[0], the rest at part[1]. */
bool        weights_parts(const WeightSet *w, const Tensor *t, const void *part[2], size_t *part0_bytes);
/* t's bytes as one block, for a reader that needs them whole: t->data, which for a tensor held in
 * two parts is set here, at the first call, to a copy of the two stacked (kept with w; NULL, with
 * err, when it cannot be allocated), and for a random tensor not made yet or released
 * (weights_release) to its values, made there. Readers that can take the parts or rows (packing,
 * uploading) should; every reader of a random set, or of one that may have been released, reads
 * through here, not t->data. */
const void *weights_data(const WeightSet *w, const Tensor *t, RtError *err);
/* bytes at data (a tensor's, or a part's) are not needed again soon (copied: packed, uploaded), so
 * that they and the copy do not both stay resident: where they lie in one of w's file mappings, the
 * whole pages among them leave this process (madvise MADV_DONTNEED on the read-only private mapping:
 * the file's pages are read again if touched; the page cache keeps them while memory allows); where
 * they are a whole random tensor's, its pages leave and its data is NULL until weights_data makes its
 * values again. Anywhere else (part of a random tensor, copies, caller memory): nothing. */
void        weights_release(const WeightSet *w, const void *data, size_t bytes);
/* Whether weights_release gives w's memory back to the system (random weights), rather than to the
 * page cache (a checkpoint's mapped pages, counted as available memory already). */
bool        weights_release_frees(const WeightSet *w);
int         weights_count(const WeightSet *w);
const Tensor *weights_at(const WeightSet *w, int i);
void        weights_close(WeightSet *w);

/* Write tensors to one safetensors file (atomically: a temporary file renamed into place, so a
 * failure leaves nothing half-written). Header keys in the given order; data contiguous in the
 * given order (the reference reader rejects gaps), header padded with spaces to a multiple of 8.
 * safetensors_write writes no __metadata__; safetensors_write_meta writes meta, a NULL-terminated
 * list of key, value strings (e.g. {"format", "pt", NULL}), or none if meta is NULL. */
bool        safetensors_write(const char *path, const Tensor *tensors, int n, RtError *err);
bool        safetensors_write_meta(const char *path, const Tensor *tensors, int n, const char *const *meta,
                                   RtError *err);

int cmd_init_weights(int argc, char **argv);

/* ---- choosing the next token (sample.c) --------------------------------------------------------
 * From one row of logits ([vocab], f64), first each bias added to its token's logit (OpenAI's
 * logit_bias), then as Hugging Face's generate does, in its order: the logit
 * of every token already in the sequence divided by repetition_penalty where positive, multiplied
 * where negative (1: none); then, as OpenAI's API and vLLM do, from the logit of every token this
 * generation has chosen so far frequency_penalty times the number of times it was chosen and
 * presence_penalty once (0: none; the prompt's tokens are not counted); then greedy (temperature 0:
 * the largest logit, the lowest id on ties), or a draw from softmax(logits / temperature) among the
 * top_k largest (0: all), then, of those renormalised, the smallest set of the most probable whose
 * mass reaches top_p (1: all), renormalised again. NaN logits are never chosen. A Sampler's draws
 * are a function of its seed and the logits it is given, through the candidate set and its
 * probabilities alone (sampler_candidates' order is the ids'): the same seed, the same tokens, on
 * every backend whose logits agree closely enough to keep the set and the candidate the draw's u
 * falls in. */
#define SAMPLE_MAX_TEMPERATURE 100.0
#define SAMPLE_MAX_PENALTY 100.0
#define SAMPLE_MAX_OPENAI_PENALTY 2.0 /* presence and frequency penalties: OpenAI's range, ±2 */
#define SAMPLE_MAX_BIAS 100.0         /* a logit bias: OpenAI's range, ±100 */
#define SAMPLE_MAX_BIASES 1024        /* logit biases a request at most */
typedef struct {
    int32_t id;   /* a token of the vocabulary, each once */
    double  bias; /* [-100, 100] */
} SampleBias;
typedef struct {
    double  temperature;        /* [0, SAMPLE_MAX_TEMPERATURE]; 0: greedy */
    int64_t top_k;              /* ≥ 0; 0: every token */
    double  top_p;              /* (0, 1]; 1: every token */
    double  repetition_penalty; /* (0, SAMPLE_MAX_PENALTY]; 1: none (0 in a SampleParams is taken as 1) */
    double  presence_penalty;   /* [-2, 2]; 0: none */
    double  frequency_penalty;  /* [-2, 2]; 0: none */
    const SampleBias *bias;     /* [n_bias] (the caller's, which outlives the samplers made with it) */
    int64_t n_bias;             /* 0..SAMPLE_MAX_BIASES */
} SampleParams;
typedef struct {
    double  p;
    int64_t id;
} SampleCand;
typedef struct {
    SampleParams p;
    int64_t      vocab;
    moe_rng      rng;
    int64_t     *ids;  /* [vocab] the last draw's candidates */
    double      *prob; /* [vocab] their probabilities */
    SampleCand  *cand; /* [vocab] scratch */
    double      *by_id; /* [vocab] scratch, zero between draws */
    double      *row;  /* [vocab] the biased and penalised logits (a bias or penalty given) */
    uint8_t     *mark; /* [vocab] tokens penalised in this draw (repetition_penalty ≠ 1) */
    int32_t     *count; /* [vocab] times each was generated (a presence or frequency penalty), zero
                         * between draws */
} Sampler;
/* False with the reason in why when p is out of range, or asks for top-k/top-p at temperature 0
 * (a bias's token against the vocabulary is its parser's to check). */
bool    sample_params_check(const SampleParams *p, char *why, size_t n);
/* "ID:BIAS,ID:BIAS…" (--logit-bias) into a SampleBias array [*n] (xmalloc'd): NULL with why set
 * when a token is outside the vocabulary or given twice, a bias outside ±100, or the text malformed. */
SampleBias *sample_bias_parse(const char *text, int64_t vocab, int64_t *n, char *why, size_t why_len);
void    sampler_init(Sampler *s, const SampleParams *p, uint64_t seed, int64_t vocab); /* p checked */
/* The next token from logits, given the sequence so far (seen: n_seen ids below vocab, the prompt
 * and what was generated, the generated ones from seen[from] on; only the penalties read them: the
 * repetition penalty all, the presence and frequency penalties the generated ones). */
int64_t sampler_next(Sampler *s, const double *logits, const int32_t *seen, int64_t n_seen, int64_t from);
/* The tokens a draw chooses among and their probabilities (summing to 1), in ids and prob (each
 * [vocab]), in ascending id order; their count. Temperature > 0 only. A draw takes u = rng_uniform
 * (one a draw) and the first candidate whose cumulative probability passes it. */
int64_t sampler_candidates(Sampler *s, const double *logits, int64_t *ids, double *prob);
int64_t sample_argmax(const double *logits, int64_t vocab);
void    sampler_free(Sampler *s);

/* ---- text and token ids (tokenizer.c) ------------------------------------------------------------
 * A SentencePiece model (BPE, as the tokenizer.model beside a LLaMA-family checkpoint, or unigram),
 * encoding and decoding exactly as the sentencepiece library does (its tests compare with it). Loading checks the
 * file as SentencePiece does (a malformed one: false, the file and the byte offset in err); nothing
 * after that fails. Ids are the pieces' indices, below tokenizer_size. */
typedef struct Tokenizer Tokenizer;
bool        tokenizer_load(const char *path, Tokenizer **out, RtError *err);
bool        tokenizer_parse(const void *data, size_t n, const char *name, Tokenizer **out, RtError *err);
void        tokenizer_free(Tokenizer *t);
int64_t     tokenizer_size(const Tokenizer *t);
int32_t     tokenizer_bos(const Tokenizer *t); /* the control pieces <s> and </s> (the trainer's names): -1 if none */
int32_t     tokenizer_eos(const Tokenizer *t);
const char *tokenizer_piece(const Tokenizer *t, int32_t id); /* id below tokenizer_size */
/* text[n] (any bytes: invalid UTF-8 becomes U+FFFD, as SentencePiece's normaliser makes it) as ids in
 * *ids (malloc'd; the caller frees it), their count returned. No BOS: the caller adds it. */
int64_t     tokenizer_encode(const Tokenizer *t, const char *text, size_t n, int32_t **ids);
/* The same, except that the text of each control or unknown piece in text (<s>, </s>, <unk>: the
 * special tokens of a Hugging Face tokenizer made from the model) is that piece's id, the longest
 * where several begin at one place, and the text between them is encoded on its own, as Hugging
 * Face's tokenizers split special tokens out before anything else: what a chat template writes. */
int64_t     tokenizer_encode_special(const Tokenizer *t, const char *text, size_t n, int32_t **ids);
/* ids[n] as text (malloc'd, NUL-terminated, *len bytes): control pieces and ids past the pieces give
 * nothing. hold: an incomplete UTF-8 character that byte pieces at the end began is left out (a
 * later id may complete it), so that decoding a growing sequence only ever appends: what streaming
 * prints. */
char       *tokenizer_decode(const Tokenizer *t, const int32_t *ids, int64_t n, bool hold, size_t *len);
/* The same (not held), and where each id's text begins in it, in characters, in offsets[n]: the length
 * of the ids before it decoded held, what streaming has printed when it comes (a byte piece inside a
 * character: where that character begins). */
char       *tokenizer_decode_offsets(const Tokenizer *t, const int32_t *ids, int64_t n, int64_t *offsets, size_t *len);
/* The tokenizer.model beside a checkpoint (in the folder --weights names, or the one its file is
 * in), its path in path[n]: false if there is none. */
bool        tokenizer_beside(const char *weights, char *path, size_t n);

/* Text on one line (a --prompts line, a --quiet answer): \n \t \r \\ and \xHH stand for their bytes.
 * text_unescape writes s[n]'s bytes to out (room for n), their count in *out_n; false at an
 * unknown escape, the offset of its backslash in *bad. text_write_escaped writes s[n] so. */
bool        text_unescape(const char *s, size_t n, char *out, size_t *out_n, size_t *bad);
void        text_write_escaped(FILE *f, const char *s, size_t n);
/* The characters (Unicode code points) of valid UTF-8 s[n], as Python's len counts them. */
int64_t     text_chars(const char *s, size_t n);
/* Printing a sequence's text as it grows: begin takes the text of seq[n] as printed already (a
 * prompt); each put prints what seq[n] added since (an incomplete UTF-8 character kept back until
 * final), seq growing by appending only. escape: as text_write_escaped does. A put decodes from the
 * last point where nothing was pending, not the whole sequence. */
typedef struct {
    const Tokenizer *t;
    FILE            *f;
    bool             escape;
    size_t           printed;  /* bytes of text printed (or taken as printed) */
    int64_t          from;     /* the restart point: seq[from..) is decoded again by each put */
    size_t           from_len; /* the length of seq[0..from)'s text */
} TextStream;
void        text_stream_begin(TextStream *ts, const Tokenizer *t, FILE *f, bool escape, const int32_t *seq, int64_t n);
void        text_stream_put(TextStream *ts, const int32_t *seq, int64_t n, bool final);

#endif
