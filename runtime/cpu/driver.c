/* driver.c — running a whole model from the command line, shared by `moeppc run` and the
 * executables `moeppc build` writes: real or random weights, the reference interpreter or the CPU
 * backend (kernels from the JIT or linked in), predictions, routing statistics, decoding on the KV
 * cache (greedy, or drawn: runtime.h's sampler), logits and routes written out. */
#include "runtime/cpu/driver.h"
#include "runtime/cpu/serve.h"

#include "passes/passes.h"
#include "passes/tuning.h"

#include <ctype.h>
#include <errno.h>
#include <poll.h>
#include <sys/stat.h>
#include <stdarg.h>
#include <limits.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

typedef enum { BACKEND_INTERP, BACKEND_CPU, BACKEND_CUDA } run_backend;

static const DriverConfig *cfg; /* the one configuration of this process's driver */
static FILE *say;                /* what a run reports: stdout, or nowhere with --quiet */
static FILE *answer;             /* --quiet's generated ids or text: stdout (--batch: a line's buffer) */

static void drv_err(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

static char last_err[512]; /* the last drv_err message (--serve answers a request with it) */

/* "PROG: error: …" */
static void drv_err(const char *fmt, ...)
{
    va_list ap, again;
    va_start(ap, fmt);
    va_copy(again, ap);
    fprintf(stderr, "%s: error: ", cfg->prog);
    vfprintf(stderr, fmt, ap);
    va_end(ap);
    vsnprintf(last_err, sizeof last_err, fmt, again);
    va_end(again);
    size_t n = strlen(last_err);
    for (size_t i = 0; i < n; i++) last_err[i] = last_err[i] == '\n' ? ' ' : last_err[i]; /* one line */
    while (n && last_err[n - 1] == ' ') last_err[--n] = 0;
}

/* "usage: PROG [SPEC] …" (--tuning where it is available) */
static void print_usage(FILE *f)
{
    fprintf(f, "usage: %s %s(--weights W | --random-weights SEED) (--ids \"1 2 3\" | --prompt TEXT | --prompts F [--batch N [--chunk N] [--unordered]] [--no-prefix-reuse] | --serve [--batch N]) [--max-positions N] [--tokenizer F] [--no-bos] [--special] "
               "[--backend interp|cpu] "
               "[--device cpu|cuda[:N]] [--threads N] "
               "[--panel-cache DIR [--panel-cache-max MB] [--panel-cache-verify]] "
               "[--generate N [--temperature X] [--top-k K] [--top-p P] "
               "[--repetition-penalty R] [--presence-penalty X] [--frequency-penalty X] [--logit-bias ID:B,…] "
               "[--seed N] "
               "[--stop IDS] [--ignore-eos]] [--logits-out F] [--routes-out F] [--route-stats] "
               "[--precision f64|f32] [--top N] [--perplexity] [--quiet] %s[-O0|-O1]\n",
            cfg->prog, cfg->spec_text ? "" : "SPEC ", cfg->load_tuning && !cfg->ir_text ? "[--tuning DB] " : "");
}

/* "PROG: error: …" and the usage line; returns 2, the usage exit status. */
static int drv_usage(const char *fmt, const char *arg)
{
    fprintf(stderr, "%s: error: ", cfg->prog);
    fprintf(stderr, fmt, arg);
    fputc('\n', stderr);
    print_usage(stderr);
    return 2;
}

typedef struct {
    const char *spec, *weights, *ids, *prompts, *logits_out, *routes_out, *tuning, *stop;
    const char *logit_bias;       /* --logit-bias: checked against the vocabulary once the spec is read */
    const char *prompt, *tokenizer; /* --prompt's text; the tokenizer.model for it and for printing text */
    const char *panel_cache;      /* --panel-cache (MOEPPC_PANEL_CACHE): packed weights kept there    */
    int64_t panel_cache_max;      /* --panel-cache-max (MOEPPC_PANEL_CACHE_MAX_MB): MB at most, 0: any */
    bool panel_cache_verify;      /* --panel-cache-verify (MOEPPC_PANEL_CACHE_VERIFY=1)              */
    bool random, route_stats, ignore_eos, perplexity, quiet, no_bos, special;
    bool no_reuse;                /* --no-prefix-reuse: every prompt run whole                       */
    uint64_t seed;
    SampleParams sample;          /* --generate's tokens: greedy unless --temperature/--top-k/--top-p */
    uint64_t sample_seed;
    const char *sampling;         /* the first sampling option given (for the message without --generate) */
    bool temperature_set;
    eval_precision prec;
    int top, opt_level, threads, batch;
    int64_t chunk;                /* --chunk: prompt tokens a --batch step at most                   */
    bool chunk_set;
    bool unordered;               /* --unordered: --batch lines answered as they end, numbered      */
    bool serve;                   /* --serve: JSON requests on standard input, JSON answers (serve.h) */
    int64_t generate;
    int64_t max_positions;        /* --max-positions: the caches' positions (0: the spec's)         */
    run_backend backend;
    bool backend_set;             /* --backend or --device given */
    int cuda_device;              /* --device cuda:N's ordinal (0 for cuda)                         */
} RunArgs;

static double now_s(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

/* "token" or "tokens", for a count of n in what run says */
static const char *tokens_word(int64_t n) { return n == 1 ? "token" : "tokens"; }

/* An option's value as an integer in [lo, hi]; false (after a usage message) otherwise. */
static bool int_option(const char *opt, const char *v, int64_t lo, int64_t hi, int64_t *out)
{
    uint64_t n;
    if (!parse_u64(v, &n) || n < (uint64_t)lo || n > (uint64_t)hi) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s: expected an integer in [%lld, %lld], found '%%s'", opt, (long long)lo, (long long)hi);
        drv_usage(msg, v);
        return false;
    }
    *out = (int64_t)n;
    return true;
}

/* An option's value as a number in [lo, hi], or (lo, hi] where open_lo; false (after a usage
 * message) otherwise. */
static bool number_option(const char *opt, const char *v, double lo, bool open_lo, double hi, double *out)
{
    char *end;
    errno = 0;
    double x = strtod(v, &end);
    if (end == v || *end || errno || !(open_lo ? x > lo : x >= lo) || !(x <= hi)) {
        char msg[128];
        snprintf(msg, sizeof msg, "%s: expected a number in %c%g, %g], found '%%s'", opt, open_lo ? '(' : '[', lo, hi);
        drv_usage(msg, v);
        return false;
    }
    *out = x;
    return true;
}

/* --temperature, --top-k, --top-p, --repetition-penalty, --presence-penalty, --frequency-penalty,
 * --logit-bias, --seed, --stop: how --generate chooses its tokens. */
static int sample_option(RunArgs *r, const char *o, const char *v)
{
    int64_t n;
    if (!r->sampling) r->sampling = o;
    if (strcmp(o, "--temperature") == 0) {
        if (!number_option(o, v, 0, false, SAMPLE_MAX_TEMPERATURE, &r->sample.temperature)) return 2;
        r->temperature_set = true;
    } else if (strcmp(o, "--top-k") == 0) {
        if (!int_option(o, v, 0, INT32_MAX, &n)) return 2;
        r->sample.top_k = n;
    } else if (strcmp(o, "--top-p") == 0) {
        if (!number_option(o, v, 0, true, 1, &r->sample.top_p)) return 2;
    } else if (strcmp(o, "--repetition-penalty") == 0) {
        if (!number_option(o, v, 0, true, SAMPLE_MAX_PENALTY, &r->sample.repetition_penalty)) return 2;
    } else if (strcmp(o, "--presence-penalty") == 0 || strcmp(o, "--frequency-penalty") == 0) {
        double *x = o[2] == 'p' ? &r->sample.presence_penalty : &r->sample.frequency_penalty;
        if (!number_option(o, v, -SAMPLE_MAX_OPENAI_PENALTY, false, SAMPLE_MAX_OPENAI_PENALTY, x)) return 2;
    } else if (strcmp(o, "--logit-bias") == 0) {
        r->logit_bias = v;
    } else if (strcmp(o, "--seed") == 0) {
        if (!parse_u64(v, &r->sample_seed)) return drv_usage("--seed: '%s' is not a seed (a non-negative integer)", v);
    } else {
        r->stop = v; /* --stop: its ids are checked against the vocabulary once the spec is read */
    }
    return 0;
}

/* An option with its value. Each one here is also in parse_run_args' `valued` list, which tells an
 * unknown option from one whose value is missing. */
static int parse_option(RunArgs *r, const char *o, const char *v)
{
    int64_t n;
    if (strcmp(o, "--weights") == 0) r->weights = v;
    else if (strcmp(o, "--random-weights") == 0) {
        if (!parse_u64(v, &r->seed)) return drv_usage("--random-weights: '%s' is not a seed (a non-negative integer)", v);
        r->random = true;
    } else if (strcmp(o, "--ids") == 0) r->ids = v;
    else if (strcmp(o, "--prompts") == 0) r->prompts = v;
    else if (strcmp(o, "--prompt") == 0) r->prompt = v;
    else if (strcmp(o, "--tokenizer") == 0) r->tokenizer = v;
    else if (strcmp(o, "--logits-out") == 0) r->logits_out = v;
    else if (strcmp(o, "--routes-out") == 0) r->routes_out = v;
    else if (strcmp(o, "--panel-cache") == 0) {
        if (!*v) return drv_usage("%s", "--panel-cache: expected a directory, found ''");
        r->panel_cache = v;
    } else if (strcmp(o, "--panel-cache-max") == 0) {
        if (!int_option(o, v, 1, INT64_C(1) << 40, &r->panel_cache_max)) return 2;
    }
    else if (strcmp(o, "--tuning") == 0) {
        if (!cfg->load_tuning || cfg->ir_text) return drv_usage("--tuning '%s': not available here (an executable's tiles are fixed when it is built)", v);
        r->tuning = v;
    }
    else if (strcmp(o, "--precision") == 0) {
        if (strcmp(v, "f64") && strcmp(v, "f32")) return drv_usage("--precision: expected f64 or f32, found '%s'", v);
        r->prec = strcmp(v, "f32") == 0 ? EVAL_F32 : EVAL_F64;
    } else if (strcmp(o, "--backend") == 0) {
        if (strcmp(v, "interp") && strcmp(v, "cpu")) return drv_usage("--backend: expected interp or cpu, found '%s'", v);
        r->backend = strcmp(v, "cpu") == 0 ? BACKEND_CPU : BACKEND_INTERP;
        r->backend_set = true;
    } else if (strcmp(o, "--device") == 0) { /* DESIGN.md's executable flag */
        if (strcmp(v, "cpu") == 0) r->backend = BACKEND_CPU, r->backend_set = true;
        else if (parse_cuda_device(v, &r->cuda_device)) {
            if (!cfg->cuda && cfg->spec_text) {
                drv_err("--device cuda: this executable was built for the CPU only (moeppc build --target sm_XX "
                        "builds one that runs on the GPU too)\n");
                return 1;
            }
            if (!cfg->cuda) {
                drv_err("--device cuda: this build has no CUDA backend (the CUDA toolkit's NVRTC was not found when it "
                        "was configured)\n");
                return 1;
            }
            r->backend = BACKEND_CUDA, r->backend_set = true;
        } else return drv_usage("--device: expected cpu, cuda or cuda:N (N: the GPU's ordinal, 0..255), found '%s'", v);
    } else if (strcmp(o, "--top") == 0) {
        if (!int_option(o, v, 0, 100, &n)) return 2;
        r->top = (int)n;
    } else if (strcmp(o, "--threads") == 0) {
        if (!int_option(o, v, 1, MOE_MAX_THREADS, &n)) return 2;
        r->threads = (int)n;
    } else if (strcmp(o, "--max-positions") == 0) {
        if (!int_option(o, v, 1, INT32_MAX, &r->max_positions)) return 2;
    } else if (strcmp(o, "--chunk") == 0) {
        if (!int_option(o, v, 1, 1 << 20, &r->chunk)) return 2;
        r->chunk_set = true;
    } else if (strcmp(o, "--batch") == 0) {
        if (!int_option(o, v, 1, 256, &n)) return 2;
        r->batch = (int)n;
    } else if (strcmp(o, "--generate") == 0) {
        if (!int_option(o, v, 0, 1000000, &r->generate)) return 2;
    } else if (strcmp(o, "--temperature") == 0 || strcmp(o, "--top-k") == 0 || strcmp(o, "--top-p") == 0 ||
               strcmp(o, "--repetition-penalty") == 0 || strcmp(o, "--presence-penalty") == 0 ||
               strcmp(o, "--frequency-penalty") == 0 || strcmp(o, "--logit-bias") == 0 || strcmp(o, "--seed") == 0 ||
               strcmp(o, "--stop") == 0) {
        return sample_option(r, o, v);
    } else return drv_usage("unknown option '%s'", o);
    return 0;
}

/* --help: the usage line, then what each option does, for moeppc run or this executable. */
static void print_help(FILE *f)
{
    bool exe = cfg->spec_text != NULL;
    print_usage(f);
    fprintf(f, "\nRuns %s on a prompt\n"
               "(token ids, or text through the checkpoint's tokenizer.model) and prints, per position, the\n"
               "top next tokens with their logits, and per MoE layer the share of the T*k routing picks that\n"
               "went to FFN, constant, copy and zero experts.\n\n",
            exe ? "this executable's model (spec, plan and kernels built in)"
                : "the whole model of SPEC (a model spec, .yaml; a Hugging Face MoE++ or Mixtral config.json;\n"
                  "or a model folder holding config.json, whose checkpoint is then --weights unless given)");
    fputs("weights (exactly one):\n"
          "  --weights W         a .safetensors file, a sharded model.safetensors.index.json, or a folder\n"
          "                      holding either; every tensor checked by name, shape and dtype first\n"
          "  --random-weights S  seeded random weights (the same for the same seed and spec)\n"
          "input and output:\n"
          "  --ids \"1 2 3\"       the prompt's token ids (spaces or commas), each below the vocabulary\n"
          "  --prompt TEXT       instead, text: the beginning-of-sequence id, then TEXT encoded by the\n"
          "                      tokenizer (--tokenizer, or the tokenizer.model beside --weights); the\n"
          "                      generated tokens are then printed as text too, as they come\n"
          "  --tokenizer F       a SentencePiece tokenizer.model (moeppc tokenize): generated tokens as\n"
          "                      text, and --prompts lines as text\n"
          "  --no-bos            text without the beginning-of-sequence id first\n"
          "  --special           text as a chat template writes it: <s>, </s> (the control pieces' text)\n"
          "                      are those tokens, and no beginning-of-sequence id is added\n"
          "  --prompts F         instead, a prompt a line of F (- for standard input), each run as it is\n"
          "                      read, as a new sequence on the model loaded once, or, starting with +,\n"
          "                      continuing the one before (its prompts and generated tokens stay in\n"
          "                      the caches: a conversation's turns), or with +@N, line N's (while a\n"
          "                      sequence still ends with that line's turn: with --batch, the\n"
          "                      sequence of a done line is kept until a new line needs it, the one\n"
          "                      idle longest first); blank and # lines skipped, a bad\n"
          "                      line reported by its number and the rest still run. Ids, or with\n"
          "                      --tokenizer text, in which \\n \\t \\r \\\\ \\xHH stand for their bytes\n"
          "                      (a text that begins with # or +: \\x23, \\x2b; a + line's with @: \\x40)\n"
          "  --batch N           with --prompts: up to N lines' sequences at once (the CPU backend or\n"
          "                      the GPU; default 1: one line after the other), each step one row of\n"
          "                      each decoding sequence and a chunk of the prompts to run through the\n"
          "                      model together, so an expert's weights serve all that picked it; each\n"
          "                      line prints what it prints alone, in the lines' order, once its\n"
          "                      sequence is done (a + line waits for the sequence it continues)\n"
          "  --unordered         with --batch: each line's answer as soon as its sequence is done, not\n"
          "                      after the lines before it; with --quiet, its line number and a tab\n"
          "                      first (a report names its line anyway): a short request is not held\n"
          "                      up by a long one before it\n"
          "  --serve             instead of --prompts: JSON requests on standard input, a line each, up\n"
          "                      to --batch N at once, each answered in JSON as it ends, by its id:\n"
          "                      {\"id\", \"ids\": [...] or \"prompt\": text, \"continue\": an earlier id,\n"
          "                      \"max_tokens\" (default --generate, else 16), \"temperature\", \"top_k\",\n"
          "                      \"top_p\", \"repetition_penalty\", \"presence_penalty\",\n"
          "                      \"frequency_penalty\", \"logit_bias\": {\"ID\": bias}, \"seed\", \"stop\": [ids,\n"
          "                      strings],\n"
          "                      \"logprobs\": K, \"echo\", \"stream\", \"special\": the prompt's <s>, </s>\n"
          "                      those tokens and no BOS added, as a chat template writes it}\n"
          "                      -> {\"id\", \"ids\", \"text\", \"finish_reason\", \"prompt_tokens\",\n"
          "                      \"cached_tokens\", \"logprobs\", with \"echo\" \"prompt_ids\", \"prompt_text\",\n"
          "                      \"prompt_logprobs\"} or {\"id\", \"error\"}; streamed, a line a token first\n"
          "                      (echoed, the prompt's fields' line before them);\n"
          "                      {\"cancel\": ID} ends that request now (\"finish_reason\": \"cancelled\")\n"
          "  --chunk N           with --batch: prompt tokens a step at most (default 256): a long\n"
          "                      prompt runs over several steps, the decoding sequences' rows beside it\n"
          "  --no-prefix-reuse   with --prompts: run every prompt whole; by default a new line whose\n"
          "                      first tokens are those of a sequence the caches hold (the one before;\n"
          "                      with --batch any, copied over: a shared system prompt runs once) runs\n"
          "                      only the rest, where nothing but its last position's logits is\n"
          "                      printed (--quiet or --top 0, no --perplexity or --route-stats)\n"
          "  --max-positions N   KV caches of N positions, at most the spec's max_positions (the default):\n"
          "                      a sequence ends there; less memory a sequence, more of them (--batch)\n"
          "  --quiet             print nothing but the generated ids (with --tokenizer, text, escaped\n"
          "                      so), a line a prompt (an empty line for a bad one): with --prompts -, a\n"
          "                      line in, a line out\n"
          "  --generate N        then N tokens of decoding on the KV cache (default 0), greedy unless:\n"
          "  --temperature X     draw each token from softmax(logits / X), X in [0, 100] (0: greedy, the\n"
          "                      default; 1 when only --top-k or --top-p is given)\n"
          "  --top-k K           draw among the K most likely tokens only (default 0: all)\n"
          "  --top-p P           then among the fewest most likely whose probability reaches P, in (0, 1]\n"
          "                      (default 1: all); the order and meaning of Hugging Face's generate\n"
          "  --repetition-penalty R  before all that (greedy too), the logit of each token already in the\n"
          "                      sequence divided by R where positive, times R where negative; R in\n"
          "                      (0, 100] (default 1: none), Hugging Face's repetition_penalty\n"
          "  --presence-penalty X  then (greedy too) X off the logit of every token this generation has\n"
          "                      chosen, X in [-2, 2] (default 0: none), OpenAI's presence_penalty\n"
          "  --frequency-penalty X  and X times the number of times it chose it, X in [-2, 2] (default 0),\n"
          "                      OpenAI's frequency_penalty (the prompt's tokens count for neither)\n"
          "  --logit-bias \"13:-100,42:2.5\"  before all of them, each bias added to its token's logit\n"
          "                      (-100 bans it), each in [-100, 100]: OpenAI's logit_bias\n"
          "  --seed N            the draws' seed (default 0): the same seed, the same tokens\n"
          "  --stop \"2 13\"       end the generation after one of these tokens (default: the spec's\n"
          "                      model.eos_token_id, which import-hf takes from the config, if it has one,\n"
          "                      else the tokenizer's </s>)\n"
          "  --ignore-eos        generate all N tokens, past the spec's eos_token_id\n"
          "  --top N             next-token candidates printed per position (0..100, default 5; 0: no\n"
          "                      table, and the CPU backend computes only the last position's logits,\n"
          "                      as with --quiet: what decoding reads)\n"
          "  --perplexity        also each position's negative log-likelihood of the next --ids token,\n"
          "                      and the prompt's perplexity (to compare with another implementation)\n"
          "  --route-stats       routing with counts and the FFN work the zero-computation experts saved\n"
          "  --logits-out F      the prompt's logits, raw little-endian f32 [T, vocab], row-major\n"
          "  --routes-out F      the routing: a line per MoE layer and token: layer token ids... weights...\n"
          "where it runs:\n", f);
    if (cfg->kernels_new)
        fprintf(f, "  --device cpu        the CPU backend's kernels%s (the default)\n",
                exe ? " built into this executable" : ", JIT-compiled through the LLVM C API");
    fprintf(f, "  --device cuda       %s\n"
               "  --device cuda:N     the same on GPU N (the CUDA driver's ordinal: after CUDA_VISIBLE_DEVICES)\n",
            !cfg->cuda ? (exe ? "(not here: built for the CPU only; moeppc build --target sm_XX adds the GPU)"
                              : "(not in this build: it has no CUDA backend)")
            : cfg->cuda_images ? "the GPU: the kernels built in (a newer GPU JIT-compiles their PTX)"
                               : "the GPU: kernels compiled by NVRTC for it at load");
    fprintf(f, "  --backend interp    the reference interpreter over the optimised IR%s\n",
            cfg->default_cpu ? "" : " (the default in this build)");
    if (cfg->kernels_new) fputs("  --backend cpu       the same as --device cpu\n", f);
    fprintf(f, "  --threads N         CPU threads (1..256; default: one a core this process may use, %d here)\n",
            threads_default());
    if (cfg->kernels_new)
        fputs("  --panel-cache DIR   keep the CPU backend's packed weights in files in DIR (made if missing; a file\n"
              "                      a packing step, keyed by the weights' files and places and the packed form):\n"
              "                      a later run maps them instead of packing, and shares them in the page cache\n"
              "                      (default: MOEPPC_PANEL_CACHE, else none)\n"
              "  --panel-cache-max MB then remove its least recently used files (never this model's) past MB\n"
              "                      (default: MOEPPC_PANEL_CACHE_MAX_MB, else none: files stay until removed)\n"
              "  --panel-cache-verify check each file's panels against their checksums before use (reads it\n"
              "                      whole; a damaged one is packed again) (default: MOEPPC_PANEL_CACHE_VERIFY=1,\n"
              "                      else trusted as the checkpoint is; `moeppc panel-cache DIR --verify`)\n", f);
    fputs(exe ? "  --version           what this is: its model, the moeppc that built it, the CPU its kernels\n"
                "                      were compiled for (and whether this one runs them), its GPU kernels\n"
              : "  --version           moeppc's version (moeppc --version --verbose: more)\n", f);
    fputs("  --precision P       the interpreter's arithmetic: f64 (default) or f32\n"
          "  -O0 | -O1           -O0: interpret the dense form (every expert for every token, SEMANTICS.md\n"
          "                      literally); -O1 (default): the optimised IR\n", f);
    if (cfg->load_tuning && !cfg->ir_text)
        fputs("  --tuning DB         kernel configurations from a tuning database (moeppc tune): a CPU\n"
              "                      one for --device cpu, a GPU one (--target sm_XX) for --device cuda\n", f);
    fputs("environment:\n", f);
    if (!exe && cfg->kernels_new)
        fputs("  MOEPPC_ISA          the widest instruction set the JIT may use: avx512 (default), avx2, sse\n"
              "  MOEPPC_JIT_SERIAL=1 compile the kernels one by one as the model asks for them (default: all\n"
              "                      at once, on every CPU this process may use)\n"
              "  MOEPPC_PERF_MAP=1   name the JIT's kernels in /tmp/perf-PID.map, for perf report\n"
              "  MOEPPC_JIT_CACHE    a folder keeping the JIT's compiled kernels between runs\n", f);
    if (cfg->cuda_compile)
        fputs("  MOEPPC_NVRTC_CACHE  a folder keeping NVRTC's results between runs\n", f);
    if (cfg->kernels_new)
        fputs("  MOEPPC_PROGRESS     start-up's progress on stderr as the weights are packed, mapped or sent\n"
              "                      to the GPU: shown on a terminal for weights of 256 MB or more; 1: always\n"
              "                      (a line a tenth where stderr is not a terminal), 0: never\n", f);
    if (cfg->kernels_new)
        fputs("  MOEPPC_PANEL_CACHE  --panel-cache's default\n"
              "  MOEPPC_PANEL_CACHE_MAX_MB --panel-cache-max's\n"
              "  MOEPPC_PANEL_CACHE_VERIFY=1 --panel-cache-verify\n", f);
    fputs("  MOEPPC_CUDA_DRIVER  the CUDA driver library to open (default libcuda.so.1)\n"
          "  MOEPPC_CUDA_SYNC=1  synchronise after every GPU instruction and name the one that fails\n"
          "  MOEPPC_MEM_LIMIT_MB the host memory taken as available (default /proc/meminfo's MemAvailable):\n"
          "                      random weights, packed weights and caches beyond it are refused\n"
          "exit status: 0 done; 1 bad input (spec, weights, ids) or a failure, with a message; 2 a wrong\n"
          "command line.\n", f);
}

static bool load_spec(const RunArgs *r, ModelSpec *s);

/* --version: moeppc's; a built executable's also what it is: its model, what built it, the CPU its
 * kernels were compiled for and whether this one runs them, its GPU kernels. -1 (done), or 1 when
 * its spec does not load. */
static int print_version(FILE *f)
{
    if (!cfg->built_by) {
        fprintf(f, "moeppc %s\n", MOEPPC_VERSION);
        return -1;
    }
    ModelSpec s;
    if (!load_spec(&(RunArgs){0}, &s)) return 1;
    fprintf(f, "%s: %s (%s, %lld layer%s), built by %s\n", cfg->prog, s.name, dtype_name(s.dtype),
            (long long)s.n_layers, s.n_layers == 1 ? "" : "s", cfg->built_by);
    if (cfg->cpu_name) {
        char missing[512];
        bool runs = cpu_runs_features(cfg->cpu_features, missing, sizeof missing);
        fprintf(f, "  CPU kernels:  %d, compiled for %s (%s); ", cfg->n_cpu_kernels, cfg->cpu_name,
                cfg->cpu_vector_features);
        if (runs) fprintf(f, "this CPU runs them\n");
        else fprintf(f, "this CPU lacks %s: --device cpu refuses to start here\n", missing);
    }
    bool db = false; /* (the build's schedules: a GPU tuning database's where any is set) */
    for (int k = 0; cfg->cuda_tile_sched && k < 4; k++) db |= cfg->cuda_tile_sched[k] != NULL;
    if (cfg->cuda_images)
        fprintf(f, "  GPU kernels:  %d, for %s (a newer GPU compiles their PTX), tiles %s\n", cfg->n_cuda_images,
                cfg->cuda_arch, db ? "from a GPU tuning database" : "by the rule");
    else
        fprintf(f, "  GPU kernels:  none (built for the CPU only)\n");
    return -1;
}

static int parse_run_args(int argc, char **argv, RunArgs *r)
{
    *r = (RunArgs){.prec = EVAL_F64, .top = 5, .opt_level = 1, .threads = threads_default(), .batch = 1, .chunk = 256,
                   .sample = {.top_p = 1, .repetition_penalty = 1}, .panel_cache = getenv("MOEPPC_PANEL_CACHE"),
                   .backend = cfg->default_cpu ? BACKEND_CPU : BACKEND_INTERP};
    for (int a = 1; a < argc; a++) {
        const char *o = argv[a];
        if (strcmp(o, "-O0") == 0 || strcmp(o, "-O1") == 0) r->opt_level = o[2] - '0';
        else if (strcmp(o, "--route-stats") == 0) r->route_stats = true;
        else if (strcmp(o, "--perplexity") == 0) r->perplexity = true;
        else if (strcmp(o, "--quiet") == 0) r->quiet = true;
        else if (strcmp(o, "--unordered") == 0) r->unordered = true;
        else if (strcmp(o, "--serve") == 0) r->serve = true;
        else if (strcmp(o, "--no-bos") == 0) r->no_bos = true;
        else if (strcmp(o, "--special") == 0) r->special = true;
        else if (strcmp(o, "--no-prefix-reuse") == 0) r->no_reuse = true;
        else if (strcmp(o, "--panel-cache-verify") == 0) r->panel_cache_verify = true;
        else if (strcmp(o, "--ignore-eos") == 0) r->ignore_eos = true, r->sampling = r->sampling ? r->sampling : o;
        else if (strcmp(o, "--help") == 0 || strcmp(o, "-h") == 0) return print_help(stdout), -1;
        else if (strcmp(o, "--version") == 0) return print_version(stdout);
        else if (o[0] == '-') {
            static const char *const valued[] = {"--weights", "--random-weights", "--ids", "--prompts", "--logits-out", "--routes-out",
                                                 "--tuning", "--precision", "--backend", "--device", "--top",
                                                 "--threads", "--generate", "--temperature", "--top-k", "--top-p",
                                                 "--repetition-penalty", "--presence-penalty", "--frequency-penalty",
                                                 "--logit-bias", "--seed", "--stop", "--prompt", "--tokenizer",
                                                 "--batch", "--max-positions", "--chunk", "--panel-cache",
                                                 "--panel-cache-max"};
            bool known = false;
            for (size_t k = 0; k < MOE_ARRAY_LEN(valued); k++) known |= strcmp(o, valued[k]) == 0;
            if (!known) return drv_usage("unknown option '%s'", o);
            if (a + 1 >= argc) return drv_usage("option '%s' needs a value", o);
            int rc = parse_option(r, o, argv[++a]);
            if (rc) return rc;
        } else if (!r->spec && !cfg->spec_text) r->spec = o;
        else return drv_usage("unexpected argument '%s'", o);
    }
    if (!r->spec && !cfg->spec_text) return drv_usage("%s", "missing SPEC");
    if (r->panel_cache_max && !r->panel_cache)
        return drv_usage("%s", "--panel-cache-max: only with --panel-cache (or MOEPPC_PANEL_CACHE)");
    if (r->panel_cache_verify && !r->panel_cache)
        return drv_usage("%s", "--panel-cache-verify: only with --panel-cache (or MOEPPC_PANEL_CACHE)");
    const char *verify = getenv("MOEPPC_PANEL_CACHE_VERIFY");
    if (verify && *verify && strcmp(verify, "0") != 0 && strcmp(verify, "1") != 0)
        return drv_usage("MOEPPC_PANEL_CACHE_VERIFY: expected 0 or 1, found '%s'", verify);
    r->panel_cache_verify |= verify && strcmp(verify, "1") == 0;
    const char *max = getenv("MOEPPC_PANEL_CACHE_MAX_MB");
    if (!r->panel_cache_max && max && *max && !int_option("MOEPPC_PANEL_CACHE_MAX_MB", max, 1, INT64_C(1) << 40,
                                                          &r->panel_cache_max))
        return 2;
    /* a model directory (config.json, its checkpoint, tokenizer.model) is its own weights */
    if (r->spec && !r->weights && !r->random && spec_is_model_dir(r->spec)) r->weights = r->spec;
    if (!r->weights == !r->random) return drv_usage("%s", "give exactly one of --weights and --random-weights");
    if (r->serve && (r->ids || r->prompts || r->prompt))
        return drv_usage("%s", "--serve reads its requests from standard input: not with --ids, --prompt or --prompts");
    if (r->serve && (r->quiet || r->unordered))
        return drv_usage("%s", "--serve answers in JSON as each request ends: no --quiet or --unordered to give");
    if (r->serve && r->backend == BACKEND_INTERP)
        return drv_usage("%s", "--serve runs on the CPU backend or the GPU (not --backend interp, which keeps no KV cache)");
    if (r->serve) r->prompts = "-";
    if (r->opt_level == 0 && !r->backend_set) r->backend = BACKEND_INTERP; /* -O0: the dense form interpreted */
    if (!!r->ids + !!r->prompts + !!r->prompt != 1)
        return drv_usage("%s", r->ids || r->prompts || r->prompt ? "give one of --ids, --prompt and --prompts" : "missing --ids (or --prompt, --prompts)");
    if (r->no_bos && !r->prompt && !(r->prompts && r->tokenizer))
        return drv_usage("%s", "--no-bos applies to text a tokenizer encodes: --prompt, or --prompts with --tokenizer");
    if (r->special && !r->prompt && !(r->prompts && r->tokenizer && !r->serve))
        return drv_usage("%s", "--special applies to text a tokenizer encodes: --prompt, or --prompts with --tokenizer "
                               "(--serve: a request's \"special\")");
    if (r->prompts && (r->logits_out || r->routes_out))
        return drv_usage("%s", "--logits-out and --routes-out write one prompt's: give it with --ids");
    if (r->batch > 1 && !r->prompts) return drv_usage("%s", "--batch decodes several --prompts lines together: give --prompts");
    if (r->chunk_set && r->batch < 2) return drv_usage("%s", "--chunk sizes the steps of --batch N (N > 1): give that too");
    if (r->no_reuse && !r->prompts) return drv_usage("%s", "--no-prefix-reuse applies to the lines of --prompts: give that too");
    if (r->unordered && r->batch < 2)
        return drv_usage("%s", "--unordered answers the lines of --batch N (N > 1) as they end: give that too");
    if (r->batch > 1 && r->backend == BACKEND_INTERP)
        return drv_usage("%s", "--batch runs on the CPU backend or the GPU (not --backend interp, which keeps no KV cache)");
    if (r->quiet && r->generate == 0) return drv_usage("%s", "--quiet prints the tokens of --generate N only; give that too");
    if (r->sampling && r->generate == 0 && !r->serve)
        return drv_usage("%s: it applies to the tokens of --generate N; give that too", r->sampling);
    if (r->serve) r->quiet = r->unordered = true; /* --batch lines, answered in JSON */
    if (!r->temperature_set && (r->sample.top_k > 0 || r->sample.top_p < 1)) r->sample.temperature = 1;
    char why[160];
    if (!sample_params_check(&r->sample, why, sizeof why)) return drv_usage("%s", why);
    return 0;
}

/* "1 5 9" or "1,5,9" → ids; every id checked against the vocabulary and the position limit. */
static int32_t *parse_ids(const char *opt, const char *text, const ModelSpec *s, int64_t *n_out)
{
    char why[160];
    int32_t *ids = ids_parse(text, s->vocab, s->max_positions, n_out, why, sizeof why);
    if (ids && *n_out == 0) {
        free(ids);
        ids = NULL;
        snprintf(why, sizeof why, "the list is empty");
    }
    if (!ids) drv_err("%s: %s\n", opt, why);
    return ids;
}

/* Whether the runner's random weights go to the CPU backend, which makes each as it packs it and
 * releases it once packed: random_room's count is the check (weights_random_lazy). */
static bool random_for_cpu(const RunArgs *r) { return r->random && r->backend == BACKEND_CPU && cfg->kernels_new; }

static bool open_weights(const RunArgs *r, const ModelSpec *s, WeightSet **w)
{
    RtError err = {{0}};
    bool ok = random_for_cpu(r) ? weights_random_lazy(s, r->seed, w, &err)
              : r->random     ? weights_random(s, r->seed, w, &err)
                              : weights_open(r->weights, w, &err);
    if (ok && !weights_check(*w, s, &err)) {
        weights_close(*w);
        ok = false;
    }
    if (!ok && strstr(err.msg, ": error: ")) fprintf(stderr, "%s\n", err.msg); /* already "FILE: error: …" */
    else if (!ok) drv_err("%s\n", err.msg);
    return ok;
}

/* -log softmax(row)[next], in nats: how surprised the model is by the prompt's next token. */
static double next_nll(const double *row, int64_t V, int32_t next)
{
    double m = row[0], sum = 0;
    for (int64_t v = 1; v < V; v++) m = row[v] > m ? row[v] : m;
    for (int64_t v = 0; v < V; v++) sum += exp(row[v] - m);
    return m + log(sum) - row[next];
}

/* Per position from row0 on the top next tokens (and, with nll, the negative log-likelihood of the
 * prompt's own next token); then, with nll, the perplexity over those. ids[t] is row t's token, at
 * position pos0 + t. */
static void print_predictions(const EvalTensor *logits, int64_t row0, int64_t pos0, const int32_t *ids, int top,
                              bool nll, FILE *f)
{
    int64_t T = logits->type.dims[0], V = logits->type.dims[1];
    double sum = 0;
    if (top) fprintf(f, "\n position  token  next: top %d (logit)%s\n", top, nll ? "; NLL of the next token" : "");
    else fprintf(f, "\n position  token  NLL of the next token\n");
    int *best = xmalloc((size_t)(top + 1) * sizeof *best);
    for (int64_t t = row0; t < T; t++) {
        const double *row = logits->data + t * V;
        int nb = 0;
        for (int64_t v = 0; top > 0 && v < V; v++) {
            int j = nb < top ? nb++ : top;
            if (j == top && row[v] <= row[best[top - 1]]) continue;
            if (j == top) j = top - 1;
            while (j > 0 && row[v] > row[best[j - 1]]) best[j] = best[j - 1], j--;
            best[j] = (int)v;
        }
        fprintf(f, " %8lld %6d  ", (long long)(pos0 + t), ids[t]);
        for (int j = 0; j < nb; j++) fprintf(f, " %6d (%.3f)", best[j], row[best[j]]);
        if (nll && t + 1 < T) {
            double x = next_nll(row, V, ids[t + 1]);
            sum += x;
            fprintf(f, "   NLL %.4f", x);
        }
        fputc('\n', f);
    }
    if (nll && T - 1 > row0)
        fprintf(f, " perplexity %.6g over %lld predictions (mean NLL %.6f nats)\n", exp(sum / (double)(T - 1 - row0)),
                (long long)(T - 1 - row0), sum / (double)(T - 1 - row0));
    free(best);
}

/* Per MoE layer, the share of the T·k picks that went to each kind of expert (with counts: how many,
 * and the FFN FLOPs those picks cost: 2·3·D·I each). */
static void print_route_stats(const ModelSpec *s, const EvalResult *res, bool counts, FILE *f)
{
    fprintf(f, "\n routing: picks per MoE layer (%lld FFN, %lld constant, %lld copy, %lld zero experts; top-%lld)\n",
            (long long)s->n_ffn, (long long)s->n_const, (long long)s->n_copy, (long long)s->n_zero, (long long)s->top_k);
    fprintf(f, " layer      FFN  constant     copy     zero%s\n", counts ? "   (counts)            FFN GFLOP" : "");
    int64_t b1 = s->n_ffn, b2 = b1 + s->n_const, b3 = b2 + s->n_copy;
    double per_pick = 6.0 * (double)s->hidden * (double)s->ffn_intermediate;
    for (int64_t l = 0; l < s->n_layers; l++) {
        char name[64];
        snprintf(name, sizeof name, "route.%lld.ids", (long long)l);
        const EvalTensor *ids = eval_output(res, name);
        if (!ids) continue;
        int64_t n = ids->type.dims[0] * ids->type.dims[1], c[4] = {0};
        for (int64_t j = 0; j < n; j++) {
            int64_t e = (int64_t)ids->data[j];
            c[e < b1 ? 0 : e < b2 ? 1 : e < b3 ? 2 : 3]++;
        }
        fprintf(f, " %5lld", (long long)l);
        for (int k = 0; k < 4; k++) fprintf(f, "  %6.1f%%", 100.0 * (double)c[k] / (double)n);
        if (counts)
            fprintf(f, "   %4lld %4lld %4lld %4lld   %10.4g", (long long)c[0], (long long)c[1], (long long)c[2],
                    (long long)c[3], 1e-9 * per_pick * (double)c[0]);
        fputc('\n', f);
    }
}

static bool write_out(const char *path, const void *data, size_t n)
{
    char why[256];
    bool ok = file_write_atomic(path, data, n, why, sizeof why);
    if (!ok) drv_err("%s\n", why);
    return ok;
}

static bool write_logits(const char *path, const EvalTensor *logits)
{
    size_t n = (size_t)(logits->type.dims[0] * logits->type.dims[1]);
    float *buf = xmalloc(n * sizeof *buf);
    for (size_t j = 0; j < n; j++) buf[j] = (float)logits->data[j]; /* little-endian hosts only (x86, arm) */
    bool ok = write_out(path, buf, n * sizeof *buf);
    free(buf);
    return ok;
}

/* "layer token id0 .. id{k-1} w0 .. w{k-1}" per MoE layer and token: compared against the oracle. */
static bool write_routes(const char *path, const ModelSpec *s, const EvalResult *res)
{
    char *buf = NULL;
    size_t len = 0;
    FILE *f = open_memstream(&buf, &len);
    for (int64_t l = 0; l < s->n_layers; l++) {
        char name[64];
        snprintf(name, sizeof name, "route.%lld.ids", (long long)l);
        const EvalTensor *ids = eval_output(res, name);
        snprintf(name, sizeof name, "route.%lld.weights", (long long)l);
        const EvalTensor *w = eval_output(res, name);
        if (!ids || !w) continue;
        int64_t T = ids->type.dims[0], k = ids->type.dims[1];
        for (int64_t t = 0; t < T; t++) {
            fprintf(f, "%lld %lld", (long long)l, (long long)t);
            for (int64_t j = 0; j < k; j++) fprintf(f, " %d", (int)ids->data[t * k + j]);
            for (int64_t j = 0; j < k; j++) fprintf(f, " %.9g", w->data[t * k + j]);
            fputc('\n', f);
        }
    }
    fclose(f);
    bool ok = write_out(path, buf, len);
    free(buf);
    return ok;
}

/* ---- one way to run the model: the interpreter or the CPU backend ----------------------------- */

typedef struct {
    const RunArgs *r;
    const ModelSpec *s;
    IrModule *m;
    WeightSet *w;
    CpuKernelSource *ks;
    CpuModel *cm;
    CudaModel *gpu;
    TuneDb db;
    double macs_linear, macs_grouped;
    const Tokenizer *tok; /* text in and out (--prompt, --tokenizer), or NULL: ids */
    bool last_only;       /* only the last position's logits are read (last_row_only) */
    int64_t logits_rows;  /* ... of each run but for a step whose last logits_rows rows need theirs
                             (--batch: the decoding sequences', each prompt's last; 0: none such) */
} Runner;

/* The module to run: the one embedded in a built executable, or the spec lowered and optimised now
 * (for the CPU backend with widen-activations, as `moeppc build` does). */
static bool load_module(Runner *rn)
{
    Diag d = {stderr, cfg->prog, 0};
    if (cfg->ir_text) {
        rn->m = ir_parse(cfg->ir_text, strlen(cfg->ir_text), &d);
        return rn->m != NULL;
    }
    bool cpu_db = rn->r->tuning && rn->r->backend != BACKEND_CUDA; /* a GPU database goes to the executor */
    if (cpu_db && !cfg->load_tuning(rn->r->tuning, &rn->db)) return false;
    Diag dt = {stderr, rn->r->tuning, 0};
    if (rn->r->tuning && !cpu_db && !tune_db_load(rn->r->tuning, &rn->db, &dt)) return false;
    rn->m = ir_lower_spec(rn->s);
    PassOptions po = {.opt_level = rn->r->opt_level, .target = TARGET_CPU, .codegen = rn->r->backend != BACKEND_INTERP,
                      .tuning = cpu_db ? &rn->db : NULL};
    if (rn->r->backend == BACKEND_CPU && cfg->host_options) cfg->host_options(&po);
    d.file = rn->r->spec;
    MOE_ASSERT(passes_run(rn->m, &po, &d));
    return true;
}

/* Only each prompt's last position's logits are read (its next token): no table of predictions
 * (--quiet or --top 0), no perplexity, no logits written. The backends then run the final norm and
 * lm_head on that row alone (or on the rows a --batch step needs, put last: logits_rows), and only
 * they are copied out. */
static bool last_row_only(const RunArgs *r) { return (r->quiet || r->top == 0) && !r->perplexity && !r->logits_out; }

/* The runner's module (before any weights are read: random_room may refuse them first). */
static bool runner_init(Runner *rn, const RunArgs *r, const ModelSpec *s)
{
    *rn = (Runner){.r = r, .s = s, .last_only = last_row_only(r)};
    return load_module(rn);
}

/* Random weights for the CPU backend: those it packs leave memory once packed, the rest (tables read in
 * place) stay beside its packed copy (file pages with a panel cache, which need not fit) and KV
 * caches; all of that must fit, said before seconds of generating them rather than after. */
static bool random_room(const Runner *rn)
{
    if (!random_for_cpu(rn->r)) return true;
    bool files = rn->r->panel_cache && *rn->r->panel_cache;
    double need = cpu_model_bytes_on_random(rn->m, rn->s, files), have = mem_available_bytes();
    if (need <= 0.9 * have) return true;
    char a[32], b[32];
    str_bytes(need, a, sizeof a), str_bytes(have, b, sizeof b);
    drv_err("--random-weights: the CPU backend's %sKV caches and the weights it reads in place (%s) do not fit the "
            "%s of memory available; use a smaller spec%s\n", files ? "" : "packed weights and ", a, b,
            files ? "" : " (or a panel cache: --panel-cache DIR)");
    return false;
}

/* Start-up's progress as the weights are packed or mapped (CpuModelOptions.progress), on stderr:
 * "PROG: weights ready: 43% (6.5 of 15.1 GB)". Shown (mode 1) where stderr is a terminal and the
 * weights take 256 MB or more, one line rewritten every quarter second at most and cleared at the
 * end; MOEPPC_PROGRESS=1 shows it anyway (on a terminal so, else mode 2: a line at the start and at
 * each tenth, for a log), MOEPPC_PROGRESS=0 never. */
typedef struct {
    int mode; /* 0 none, 1 a terminal's line, 2 lines */
    double last;
    bool shown;
    int tenth; /* mode 2: the tenths said so far */
} Progress;

static Progress progress_start(void)
{
    const char *e = getenv("MOEPPC_PROGRESS");
    int mode = e && strcmp(e, "0") == 0 ? 0 : isatty(2) ? 1 : e && strcmp(e, "1") == 0 ? 2 : 0;
    return (Progress){mode, 0, false, 0};
}

/* The model is ready: a terminal's line cleared. */
static void progress_end(const Progress *p)
{
    if (p->shown && p->mode == 1) fputs("\r\033[K", stderr);
}

static void progress(void *ctx, double ready, double total)
{
    Progress *p = ctx;
    double now = now_s();
    bool forced = getenv("MOEPPC_PROGRESS") != NULL;
    if ((!forced && total < 256e6) || total <= 0) return;
    int tenth = (int)(10.0 * ready / total);
    if (p->mode == 1 ? ready < total && now - p->last < 0.25 : p->shown && tenth <= p->tenth) return;
    p->last = now, p->shown = true, p->tenth = tenth;
    double unit = total < 1e9 ? 1e6 : 1e9;
    fprintf(stderr, "%s%s: weights ready: %3.0f%% (%.1f of %.1f %s)%s", p->mode == 1 ? "\r" : "", cfg->prog,
            100.0 * ready / total, ready / unit, total / unit, unit == 1e6 ? "MB" : "GB", p->mode == 1 ? "" : "\n");
    fflush(stderr);
}

/* The backend for the runner's module, on weights w. */
static bool runner_start(Runner *rn, WeightSet *w)
{
    const RunArgs *r = rn->r;
    const ModelSpec *s = rn->s;
    rn->w = w;
    if (r->backend == BACKEND_INTERP) return true;
    RtError err = {{0}};
    if (r->opt_level < 1) {
        drv_err("%s needs the optimised IR (drop -O0)\n", r->backend == BACKEND_CUDA ? "--device cuda" : "--backend cpu");
        return false;
    }
    if (r->backend == BACKEND_CUDA) {
        CudaOptions o = {.images = cfg->cuda_images, .n_images = cfg->n_cuda_images, .images_arch = cfg->cuda_arch,
                         .no_graph = cuda_env_off("MOEPPC_CUDA_GRAPH"), .poison = getenv("MOEPPC_CUDA_POISON") != NULL,
                         .sync_each = getenv("MOEPPC_CUDA_SYNC") != NULL, .compile = cfg->cuda_compile,
                         .last_rows = rn->last_only, .device = r->cuda_device};
        Progress pg = progress_start();
        o.progress = pg.mode ? progress : NULL, o.progress_ctx = &pg;
        cuda_options_env(&o);
        if (cfg->cuda_tile_sched)
            for (int k = 0; k < 4; k++) o.tile_sched[k] = cfg->cuda_tile_sched[k];
        if (r->tuning) { /* the GPU's identity first: a database made for another one is not used */
            char gpu[128], arch[16];
            if (!cfg->cuda->identity(r->cuda_device, gpu, sizeof gpu, arch, sizeof arch, &err)) {
                drv_err("CUDA backend: %s\n", err.msg);
                return false;
            }
            tune_db_apply_gpu(r->tuning, &rn->db, gpu, arch, cfg->nvrtc_version ? cfg->nvrtc_version : "", rn->m,
                              o.tile_sched, &rn->m->arena);
        }
        rn->gpu = cfg->cuda->model_new(rn->m, w, s->max_positions, &o, &err);
        progress_end(&pg);
        if (!rn->gpu) drv_err("CUDA backend: %s\n", err.msg);
        return rn->gpu != NULL;
    }
    if (!cfg->kernels_new) {
        drv_err("built without the CPU backend (no LLVM C API was found at configure time); use --backend interp\n");
        return false;
    }
    rn->ks = cfg->kernels_new(&err);
    Progress pg = progress_start();
    CpuModelOptions o = {.threads = r->threads, .panel_cache = r->panel_cache,
                         .panel_cache_max = (double)r->panel_cache_max * 1048576.0,
                         .panel_cache_verify = r->panel_cache_verify, .progress = pg.mode ? progress : NULL,
                         .progress_ctx = &pg};
    if (rn->ks) rn->cm = cpu_model_open(rn->m, w, s->max_positions, rn->ks, &o, &err);
    progress_end(&pg);
    if (!rn->cm) drv_err("CPU backend: %s\n", err.msg);
    PanelCacheStats pst;
    char line[512];
    if (rn->cm && cpu_model_panel_stats(rn->cm, &pst))
        fprintf(stderr, "%s: %s\n", cfg->prog, panel_cache_stats_line(&pst, r->panel_cache, line, sizeof line));
    return rn->cm != NULL;
}

/* The rows of a run of T whose logits are computed: the last this many (T: all). */
static int64_t logits_rows(const Runner *rn, int64_t T)
{
    int64_t n = !rn->last_only ? T : rn->logits_rows > 0 ? rn->logits_rows : 1;
    return n < T ? n : T;
}

/* A backend's outputs, copied into the interpreter's result form for printing: the logits of the
 * last logits_rows rows, the others' of all T. */
static bool backend_outputs(const Runner *rn, int64_t T, EvalResult *res, RtError *err)
{
    const IrModule *m = rn->m;
    res->n_outputs = m->n_outputs;
    res->outputs = xcalloc((size_t)m->n_outputs, sizeof *res->outputs);
    for (int k = 0; k < m->n_outputs; k++) {
        int64_t c = 0;
        moe_dtype dt = DT_F32;
        const void *p = rn->gpu ? cfg->cuda->output(rn->gpu, m->outputs[k].name, &c, &dt, err)
                                : cpu_model_output(rn->cm, m->outputs[k].name, &c, &dt);
        if (!p) return false;
        EvalTensor *o = &res->outputs[k];
        int64_t rows = strcmp(m->outputs[k].name, "logits") == 0 ? logits_rows(rn, T) : T;
        size_t first = (size_t)((T - rows) * c);
        o->name = xstrdup(m->outputs[k].name);
        o->type = ir_type_2d(dt, rows, c);
        o->data = xmalloc((size_t)(rows * c) * sizeof *o->data);
        for (int64_t j = 0; j < rows * c; j++) o->data[j] = dtype_load(dt, p, first + (size_t)j);
    }
    return true;
}

/* Multiply-adds of the FFN experts the routes picked (3·D·I per pick), from the route outputs. */
static double ffn_macs(const Runner *rn, const EvalResult *res)
{
    double picks = 0;
    for (int64_t l = 0; l < rn->s->n_layers; l++) {
        char name[64];
        snprintf(name, sizeof name, "route.%lld.ids", (long long)l);
        const EvalTensor *ids = eval_output(res, name);
        int64_t n = ids ? ids->type.dims[0] * ids->type.dims[1] : 0;
        for (int64_t j = 0; j < n; j++) picks += ids->data[j] < (double)rn->s->n_ffn;
    }
    return picks * 3.0 * (double)rn->s->hidden * (double)rn->s->ffn_intermediate;
}

/* Run T tokens at positions pos (of sequences seq on the CPU backend: --batch; NULL: sequence 0). The
 * interpreter has no KV cache: for decoding, the caller passes the whole sequence again. */
static bool runner_step(Runner *rn, const int32_t *ids, const int32_t *pos, const int32_t *seq, int64_t T,
                        EvalResult *res)
{
    RtError err = {{0}};
    bool ok;
    memset(res, 0, sizeof *res);
    if (rn->gpu) {
        double t0 = now_s();
        cfg->cuda->set_last_rows(rn->gpu, logits_rows(rn, T));
        ok = cfg->cuda->run_seqs(rn->gpu, ids, pos, seq, T, &err) && backend_outputs(rn, T, res, &err);
        res->seconds = now_s() - t0;
        if (ok) rn->macs_grouped = ffn_macs(rn, res);
        if (!ok) drv_err("CUDA backend: %s\n", err.msg);
        return ok;
    }
    if (rn->cm) {
        double t0 = now_s();
        double before = cpu_model_profile(rn->cm).ffn_macs;
        cpu_model_set_last_rows(rn->cm, logits_rows(rn, T));
        ok = cpu_model_run_seqs(rn->cm, ids, pos, seq, T, &err);
        if (ok) backend_outputs(rn, T, res, &err);
        rn->macs_grouped = cpu_model_profile(rn->cm).ffn_macs - before;
        res->seconds = now_s() - t0;
        if (!ok) drv_err("%s\n", err.msg);
        return ok;
    }
    ok = ir_eval(rn->m, rn->w, ids, pos, T, rn->r->prec, res, &err);
    if (!ok) drv_err("%s\n", err.msg);
    rn->macs_linear = res->macs_linear;
    rn->macs_grouped = res->macs_grouped;
    return ok;
}

static void runner_free(Runner *rn)
{
    cpu_model_free(rn->cm);
    if (rn->gpu) cfg->cuda->model_free(rn->gpu);
    if (rn->ks) cfg->kernels_free(rn->ks);
    ir_module_free(rn->m);
    tune_db_free(&rn->db);
}

/* ---- the command ------------------------------------------------------------------------------- */

/* The last row of logits [T, V]. */
static const double *last_row(const EvalTensor *logits, int64_t *V)
{
    *V = logits->type.dims[1];
    return logits->data + (logits->type.dims[0] - 1) * *V;
}

typedef struct {
    const int32_t *ids; /* generation ends after one of these: --stop's, or the spec's eos_token_id */
    int64_t n;
    const char *why;    /* which they are, for the message */
} StopIds;

/* How a sequence's tokens are generated: --generate N and the sampling options, for every line. */
typedef struct {
    int64_t generate;
    SampleParams sample;
    uint64_t seed;
    StopIds stop;
} Req;

static bool is_stop(const StopIds *st, int32_t t)
{
    for (int64_t k = 0; k < st->n; k++)
        if (st->ids[k] == t) return true;
    return false;
}

/* A sequence on the loaded model: seq[0..len) its tokens, the first fed of them in the caches (the
 * last generated token is in seq, not yet fed), which are the model's sequence `slot` (--batch; else
 * 0). A --prompts line starting with + continues it. */
typedef struct {
    int32_t *seq; /* [max_positions + 1] */
    int64_t len, fed;
    int slot;
    int64_t line; /* the --prompts line of its latest turn (what +@N names; 0: none) */
    int64_t reused; /* its latest prompt's first tokens that were in the caches already (prefix_reuse) */
    char *id;       /* --serve: the id of its latest turn's request (what "continue" names), or NULL */
    ServeLogprobs scored; /* --serve: its tokens 1 .. scored.n's log-probabilities (entry j: token j + 1's,
                             from row j's logits; the SERVE_LOGPROBS_MAX likeliest), where an "echo" with
                             "logprobs" ran those rows, and on through the tokens generated after them
                             and a next turn's scored prompt: a later such prompt that begins with them
                             takes them rather than run the rows again (prefix_scored) */
} Conv;

/* How many of ids[T]'s first tokens are c's first `upto` (at most T - 1), where prefixes are reused. */
static int64_t prefix_held(const Runner *rn, const Conv *c, int64_t upto, const int32_t *ids, int64_t T)
{
    if (!rn->last_only || rn->r->route_stats || rn->r->no_reuse || rn->r->backend == BACKEND_INTERP) return 0;
    int64_t n = 0;
    while (n < upto && n < T - 1 && c->seq[n] == ids[n]) n++;
    return n;
}

/* A new sequence on c's caches whose first tokens ids[T] may be those c holds (its fed positions):
 * how many of them to keep rather than run again — a prompt that repeats the one before, or a
 * conversation sent whole again, or a shared system prompt, runs only what is new. None where a row's
 * outputs before the last are printed (a prompt's predictions, perplexity, routing), with the
 * interpreter (no caches) or with --no-prefix-reuse; at most T - 1, as the last position's logits
 * must come from a run. */
static int64_t prefix_reuse(const Runner *rn, const Conv *c, const int32_t *ids, int64_t T)
{
    return prefix_held(rn, c, c->fed, ids, T);
}

/* For a prompt ids[T] whose every token's log-probability is wanted ("echo" with "logprobs"): how
 * many of its first positions to take from c's caches. Token p's comes from row p - 1, so each kept
 * position's token, and the first run one's, must be among c's scored tokens (and be the same): at
 * most prefix_held's less one. */
static int64_t prefix_scored(const Runner *rn, const Conv *c, const int32_t *ids, int64_t T)
{
    int64_t upto = (c->fed < c->scored.n ? c->fed : c->scored.n) + 1;
    int64_t k = prefix_held(rn, c, upto < c->len ? upto : c->len, ids, T);
    return k > 0 ? k - 1 : 0;
}

/* ids[T] becomes c's sequence (or its first positions are c's: a fork copied them): of c's scored
 * tokens, those it shares with them stay (token p's needs tokens 0 .. p the same). */
static void scored_keep(Conv *c, const Conv *of, const int32_t *ids, int64_t T)
{
    int64_t m = 0;
    while (m < of->len && m < T && of->seq[m] == ids[m]) m++;
    int64_t n = of->scored.n < m - 1 ? of->scored.n : m > 0 ? m - 1 : 0;
    if (of != c) {
        c->scored.n = 0;
        for (int64_t j = 0; j < n; j++) serve_logprobs_append(&c->scored, &of->scored, j);
    }
    c->scored.n = n;
}

/* Decoding a sequence: n tokens after it, each chosen (greedy or drawn: rn->r->sample) from the last
 * logits and fed back at the next position; early at a stop token or max_positions. */
typedef struct {
    Conv *c;
    const Req *q;
    Sampler sm;
    TextStream text;  /* with a tokenizer: the text as it grows (on one line with --quiet) */
    int64_t n, g, len, first;
    int32_t next;     /* chosen, to be put at seq[len] */
    double t0;
    const char *why;  /* why it ended early: "stop" or "max_positions" (NULL: its count) */
} Gen;

/* Start: the first token chosen from row (the prefill's last logits); what is printed before them. */
static void gen_begin(Runner *rn, Gen *G, Conv *c, const Req *q, const double *row, int64_t V)
{
    *G = (Gen){.c = c, .q = q, .n = q->generate, .len = c->len, .first = c->len};
    sampler_init(&G->sm, &q->sample, q->seed, V);
    G->next = (int32_t)sampler_next(&G->sm, row, c->seq, c->len, c->len);
    G->t0 = now_s();
    fprintf(say, "\n generated");
    const SampleParams *sp = &q->sample;
    if (sp->temperature > 0)
        fprintf(say, " (drawn at temperature %g, top-k %lld, top-p %g, seed %llu", sp->temperature, (long long)sp->top_k,
                sp->top_p, (unsigned long long)q->seed);
    bool pen = sp->repetition_penalty != 1 || sp->presence_penalty != 0 || sp->frequency_penalty != 0 || sp->n_bias;
    if (sp->temperature == 0 && pen) fprintf(say, " (greedy");
    if (sp->repetition_penalty != 1) fprintf(say, ", repetition penalty %g", sp->repetition_penalty);
    if (sp->presence_penalty != 0) fprintf(say, ", presence penalty %g", sp->presence_penalty);
    if (sp->frequency_penalty != 0) fprintf(say, ", frequency penalty %g", sp->frequency_penalty);
    if (sp->n_bias) fprintf(say, ", %lld logit bias%s", (long long)sp->n_bias, sp->n_bias > 1 ? "es" : "");
    if (sp->temperature > 0 || pen) fprintf(say, ")");
    fprintf(say, rn->tok ? " text: " : ":");
    if (rn->tok) /* --quiet: escaped, on one line; --serve: as it is, for JSON */
        text_stream_begin(&G->text, rn->tok, rn->r->quiet ? answer : say, rn->r->quiet && !rn->r->serve, c->seq, c->len);
}

/* Decoding ends with the token chosen last (it joins the sequence, unfed), for this reason. */
static void gen_ends_here(Gen *G, const char *why) { G->n = G->g + 1, G->why = why; }

/* The chosen token joins the sequence and is printed; true when it is to be fed for the next one
 * (at position G->len: gen_advance after the step), false when decoding ends with it. */
static bool gen_put(Runner *rn, Gen *G)
{
    const StopIds *stop = &G->q->stop;
    int32_t *seq = G->c->seq, next = G->next;
    seq[G->len] = next;
    if (rn->tok) text_stream_put(&G->text, seq, G->len + 1, false);
    else fprintf(say, " %d", next);
    if (rn->r->quiet && !rn->tok) fprintf(answer, "%s%d", G->g ? " " : "", next);
    fflush(rn->r->quiet ? answer : say);
    if (is_stop(stop, next)) { /* first: a stop token as the last one asked for still ends it as "stop" */
        fprintf(say, "\n (stopped: token %d, %s)", next, stop->why);
        gen_ends_here(G, "stop");
        return false;
    }
    if (G->g + 1 == G->n) return false;
    if (G->len >= rn->s->max_positions) {
        fprintf(say, "\n (stopped: max_positions %lld reached)", (long long)rn->s->max_positions);
        gen_ends_here(G, "max_positions");
        return false;
    }
    return true;
}

/* After the step that fed seq[len]: the next token from its logits. */
static void gen_advance(Gen *G, const double *row)
{
    G->next = (int32_t)sampler_next(&G->sm, row, G->c->seq, G->len + 1, G->first);
    G->len++;
    G->g++;
}

/* The end: the tokens stay in the sequence (the last one unfed); the text's end, the rate. */
static bool gen_end(Runner *rn, Gen *G, bool ok)
{
    Conv *c = G->c;
    sampler_free(&G->sm);
    c->seq[G->len] = G->next;
    c->len = G->len + 1, c->fed = G->len;
    if (rn->tok) {
        text_stream_put(&G->text, c->seq, c->len, true);
        fprintf(say, "\n generated ids:");
        for (int64_t i = G->first; i < c->len; i++) fprintf(say, " %d", c->seq[i]);
    }
    if (!ok) return false;
    double dt = now_s() - G->t0;
    fprintf(say, "\n decode: %lld %s in %.3f s (%.2f tokens/s)\n", (long long)G->n, tokens_word(G->n), dt,
            (double)G->n / dt);
    return true;
}

/* Decoding one sequence (all of it fed, its logits' last row in prefill): the tokens join c->seq, the
 * last one unfed. */
static bool generate(Runner *rn, Conv *c, const EvalResult *prefill, const Req *q)
{
    int64_t V;
    Gen G;
    const double *row = last_row(eval_output(prefill, "logits"), &V);
    gen_begin(rn, &G, c, q, row, V);
    bool ok = true;
    while (ok && gen_put(rn, &G)) {
        int32_t *seq = c->seq, *pos = xmalloc((size_t)(G.len + 1) * sizeof *pos);
        for (int64_t t = 0; t <= G.len; t++) pos[t] = (int32_t)t;
        bool cached = rn->r->backend != BACKEND_INTERP; /* one new token on the KV cache, or the whole sequence */
        EvalResult res;
        ok = cached ? runner_step(rn, seq + G.len, pos + G.len, NULL, 1, &res) : runner_step(rn, seq, pos, NULL, G.len + 1, &res);
        free(pos);
        if (ok) gen_advance(&G, last_row(eval_output(&res, "logits"), &V));
        if (ok) ir_eval_result_free(&res);
    }
    return gen_end(rn, &G, ok);
}

static void print_ffn_work(const Runner *rn, int64_t T)
{
    const ModelSpec *s = rn->s;
    double dense = 0;
    for (int64_t l = 0; l < s->n_layers; l++)
        if (spec_layer_is_moe(s, l)) dense += (double)T * (double)s->n_ffn * 3.0 * (double)s->hidden * (double)s->ffn_intermediate;
    fprintf(say, " FFN-expert work executed: %.4g GFLOP (%.1f %% of running every FFN expert on every token, %.4g GFLOP)\n",
           2e-9 * rn->macs_grouped, dense > 0 ? 100.0 * rn->macs_grouped / dense : 0.0, 2e-9 * dense);
}

/* ids[T] join c's sequence (a new one: c->len = 0): false (after a message) when they pass
 * max_positions. *from, *n: the positions the model is to run (the backends' caches hold 0 .. fed - 1;
 * the interpreter keeps none and runs it all). */
static bool prompt_start(Runner *rn, Conv *c, const int32_t *ids, int64_t T, int64_t *from, int64_t *n)
{
    if (c->len + T > rn->s->max_positions) {
        drv_err("%lld tokens after the %lld of the sequence exceed max_positions (%lld)\n", (long long)T,
                (long long)c->len, (long long)rn->s->max_positions);
        return false;
    }
    memcpy(c->seq + c->len, ids, (size_t)T * sizeof *ids);
    c->len += T;
    if (rn->tok) { /* what the text became, to compare with another tokenizer */
        fprintf(say, " prompt ids:");
        for (int64_t i = 0; i < T && i < 64; i++) fprintf(say, " %d", ids[i]);
        fprintf(say, "%s\n", T > 64 ? " ..." : "");
    }
    *from = rn->r->backend == BACKEND_INTERP ? 0 : c->fed;
    *n = c->len - *from;
    return true;
}

/* What a prompt's run prints (res: the n positions from `from`, in res->seconds), its outputs written;
 * the sequence is then fed. 0, or 1 when an output could not be written. */
static int prompt_report(Runner *rn, Conv *c, const EvalResult *res, int64_t from, int64_t n)
{
    const RunArgs *r = rn->r;
    const EvalTensor *logits = eval_output(res, "logits");
    if (rn->gpu)
        fprintf(say, "ran %lld %s in %.3f s (%.1f tokens/s; GPU time %.3f ms) on the GPU: %s", (long long)n,
                tokens_word(n), res->seconds, (double)n / res->seconds, cfg->cuda->last_ms(rn->gpu),
                cfg->cuda->device(rn->gpu));
    else
        fprintf(say, "ran %lld %s in %.3f s (%.1f tokens/s) on the %s", (long long)n, tokens_word(n), res->seconds,
                (double)n / res->seconds, r->backend == BACKEND_CPU ? (cfg->ir_text ? "CPU backend (kernels compiled into this executable)"
                                                : "CPU backend (JIT-compiled kernels)")
                : r->opt_level ? "interpreter (optimised IR)" : "interpreter (dense IR)");
    if (c->reused) fprintf(say, "; the %lld before them were in the caches", (long long)c->reused);
    fprintf(say, "\n");
    if (!rn->last_only) print_predictions(logits, c->fed - from, from, c->seq + from, r->top, r->perplexity, say);
    print_route_stats(rn->s, res, r->route_stats, say);
    if (r->route_stats) print_ffn_work(rn, n);
    c->fed = c->len;
    int rc = 0;
    if (r->logits_out && !write_logits(r->logits_out, logits)) rc = 1;
    if (r->routes_out && !write_routes(r->routes_out, rn->s, res)) rc = 1;
    return rc;
}

/* ids[T] after c's sequence (a new one: c->len = 0) on the loaded model: the prefill of what is not in
 * the caches yet, what it prints, the outputs, --generate. */
static int run_prompt(Runner *rn, Conv *c, const int32_t *ids, int64_t T, const Req *q)
{
    int64_t from, n;
    if (!prompt_start(rn, c, ids, T, &from, &n)) return 1;
    int32_t *pos = xmalloc((size_t)n * sizeof *pos);
    for (int64_t t = 0; t < n; t++) pos[t] = (int32_t)(from + t);
    EvalResult res;
    int rc = 1;
    if (runner_step(rn, c->seq + from, pos, NULL, n, &res)) {
        rc = prompt_report(rn, c, &res, from, n);
        if (rc == 0 && q->generate > 0 && !generate(rn, c, &res, q)) rc = 1;
        ir_eval_result_free(&res);
    }
    fflush(say);
    free(pos);
    return rc;
}

/* The tokenizer for text in and out: --tokenizer, or for --prompt the tokenizer.model beside
 * --weights; *out NULL when neither is asked for. False (with a message) when one is needed and
 * missing, or is not this model's. */
static bool open_tokenizer(const RunArgs *r, const ModelSpec *s, Tokenizer **out)
{
    char found[4096];
    const char *path = r->tokenizer;
    *out = NULL;
    if (!path && r->prompt && r->weights && tokenizer_beside(r->weights, found, sizeof found)) path = found;
    if (!path && r->prompt) {
        drv_err("--prompt: text needs a tokenizer: give --tokenizer FILE (a checkpoint's tokenizer.model)%s\n",
                r->weights ? "; there is none beside --weights" : "");
        return false;
    }
    RtError err;
    if (!path) return true;
    if (!tokenizer_load(path, out, &err)) return fprintf(stderr, "%s\n", err.msg), false;
    if (tokenizer_size(*out) > s->vocab) {
        drv_err("%s: %lld pieces, more than the model's vocabulary of %lld: not this model's tokenizer\n", path,
                (long long)tokenizer_size(*out), (long long)s->vocab);
        tokenizer_free(*out);
        *out = NULL;
        return false;
    }
    return true;
}

/* Text as ids: the beginning-of-sequence id first where bos (and not --no-bos, nor special), then the
 * tokenizer's encoding (special: tokenizer_encode_special's, the text naming its special tokens). NULL
 * (after a message) when they are none or more than max_positions. */
static int32_t *encode_text(const Tokenizer *tok, const RunArgs *r, const ModelSpec *s, const char *what, const char *text,
                            size_t n, bool bos, bool special, int64_t *T)
{
    int32_t *enc;
    int64_t k = (special ? tokenizer_encode_special : tokenizer_encode)(tok, text, n, &enc);
    int64_t b = bos && !special && !r->no_bos && tokenizer_bos(tok) >= 0;
    *T = k + b;
    if (*T == 0 || *T > s->max_positions) {
        drv_err("%s: %lld tokens%s\n", what, (long long)*T,
                *T ? ", more than max_positions" : " (no text, and no beginning-of-sequence id)");
        free(enc);
        return NULL;
    }
    int32_t *ids = xmalloc((size_t)*T * sizeof *ids);
    if (b) ids[0] = tokenizer_bos(tok);
    memcpy(ids + b, enc, (size_t)k * sizeof *ids);
    free(enc);
    return ids;
}

/* --perplexity needs a next token to predict (T counts a + line's turn before it: its answer's last
 * token, unfed, predicts the line's first). */
static bool prompt_ok(const RunArgs *r, const char *what, int64_t T)
{
    if (r->perplexity && T < 2) drv_err("%s: one token, and --perplexity needs a next one to predict\n", what);
    return !(r->perplexity && T < 2);
}

/* A --prompts line of text, body[n] its part after any + (at column col): its escapes read, encoded
 * (bos: the beginning-of-sequence id first, for a new sequence). */
static int32_t *prompt_line_text(const Runner *rn, const char *what, const char *body, size_t n, size_t col, bool bos,
                                 int64_t *T)
{
    size_t bad;
    char *text = xmalloc(n + 1), shown[8];
    int32_t *ids = NULL;
    if (!text_unescape(body, n, text, &n, &bad)) {
        str_escape(body + bad, body[bad + 1] ? 2 : 1, shown, sizeof shown);
        drv_err("%s, column %zu: '%s' is not an escape (\\n \\t \\r \\\\ \\xHH)\n", what, col + bad, shown);
    } else ids = encode_text(rn->tok, rn->r, rn->s, what, text, n, bos, rn->r->special, T);
    free(text);
    return ids;
}

/* Reading --prompts: a line at a time (a prompt, + for the next turn of the sequence before it). From a
 * pipe or a terminal (fd >= 0) the bytes come through buf, read(2) as they are there, so that whether a
 * line waits to be read is what buf holds or else poll's answer (stdio's buffer is hidden from poll;
 * unbuffered, it made a system call a byte: 3 s for a line of 6 MB); from a file, through stdio. */
enum { LINE_IN_BUF = 1 << 16 };
typedef struct {
    char *line;
    size_t cap, limit;
    int64_t n;       /* lines read */
    FILE *in;
    int fd;          /* -1: read in through stdio */
    char *buf;       /* [LINE_IN_BUF]: buf[pos..end) read, not yet taken */
    size_t pos, end;
} LineReader;

static LineReader line_reader(const Runner *rn, FILE *in, bool pipe)
{
    return (LineReader){.limit = 16 * (size_t)rn->s->max_positions + (1 << 20), /* ids and any spacing */
                        .in = in, .fd = pipe ? fileno(in) : -1, .buf = pipe ? xmalloc(LINE_IN_BUF) : NULL};
}

static int line_next(void *p)
{
    LineReader *lr = p;
    if (lr->fd < 0) return getc(lr->in);
    if (lr->pos == lr->end) {
        ssize_t k;
        do k = read(lr->fd, lr->buf, LINE_IN_BUF);
        while (k < 0 && errno == EINTR);
        if (k <= 0) return EOF; /* (an error ends the input as its end does) */
        lr->pos = 0, lr->end = (size_t)k;
    }
    return (unsigned char)lr->buf[lr->pos++];
}

static void line_reader_free(LineReader *lr)
{
    free(lr->line);
    free(lr->buf);
}

typedef struct {
    int32_t *ids;    /* [T], or NULL when bad */
    int64_t T, line;
    bool more, bad;  /* more: starts with + */
    int64_t of;      /* +@N: the line whose sequence it continues (0: + alone, the one before) */
    char what[64];   /* "--prompts line N", for messages */
    ServeRequest sr; /* --serve: the request (its id, "continue", generation parameters) */
} PromptLine;

/* A --serve request line into pl (pl->sr): bad, with the reason said, when it is not one (too_long: the
 * line passed that many bytes). */
static void serve_line(const Runner *rn, const char *line, size_t len, size_t too_long, PromptLine *pl)
{
    ServeRequest def = {.max_tokens = rn->r->generate > 0 ? rn->r->generate : 16, .sample = rn->r->sample,
                        .seed = rn->r->sample_seed};
    char why[256];
    pl->bad = true;
    if (too_long) {
        snprintf(why, sizeof why, "%lld", (long long)pl->line);
        pl->sr.id = xstrdup(why);
        drv_err("%s: longer than %zu bytes\n", pl->what, too_long);
    } else if (!serve_request_parse(line, len, pl->line, rn->s->vocab, &def, &pl->sr, why, sizeof why))
        drv_err("%s: %s\n", pl->what, why);
    else if (pl->sr.cancel)
        pl->bad = false; /* no tokens: the driver acts on it as it is read */
    else if (pl->sr.n_stop_text && !rn->tok)
        drv_err("%s: \"stop\": strings end the text, and there is no tokenizer (--tokenizer F): give token ids\n", pl->what);
    else if (pl->sr.prompt && !rn->tok)
        drv_err("%s: \"prompt\" is text, and there is no tokenizer (--tokenizer F): give \"ids\"\n", pl->what);
    else {
        pl->more = pl->sr.cont != NULL;
        if (pl->sr.prompt)
            pl->ids = encode_text(rn->tok, rn->r, rn->s, pl->what, pl->sr.prompt, strlen(pl->sr.prompt), !pl->more,
                                  pl->sr.special, &pl->T);
        else pl->ids = memcpy(xmalloc((size_t)pl->sr.n_ids * sizeof *pl->ids), pl->sr.ids, (size_t)pl->sr.n_ids * sizeof *pl->ids), pl->T = pl->sr.n_ids;
        pl->bad = !pl->ids || !prompt_ok(rn->r, pl->what, pl->T + pl->more);
    }
}

/* The next line that is neither blank nor a comment, parsed (a bad one reported, bad set): false at
 * the end of the input. */
static bool next_prompt(const Runner *rn, LineReader *lr, PromptLine *pl)
{
    size_t len;
    bool too_long;
    while (read_line_from(line_next, lr, &lr->line, &lr->cap, lr->limit, &len, &too_long)) {
        char *line = lr->line;
        lr->n++;
        if (len && line[len - 1] == '\r') line[--len] = 0;
        const char *p = rn->tok ? line : line + strspn(line, " \t,"); /* text keeps its spaces */
        if (!too_long && (!*p || *p == '#')) continue;
        *pl = (PromptLine){.line = lr->n, .more = *p == '+' && !rn->r->serve};
        snprintf(pl->what, sizeof pl->what, "%s line %lld", rn->r->serve ? "--serve" : "--prompts", (long long)lr->n);
        if (rn->r->serve) {
            serve_line(rn, line, len, too_long ? lr->limit : 0, pl);
            return true;
        }
        const char *body = p + pl->more;
        if (!too_long && pl->more && *body == '@') { /* +@N */
            char *end;
            errno = 0;
            long long n = isdigit((unsigned char)body[1]) ? strtoll(body + 1, &end, 10) : 0;
            if (n <= 0 || errno || n >= lr->n) {
                drv_err("%s, column %zu: +@N continues the sequence of an earlier line N (1 to %lld)\n", pl->what,
                        (size_t)(body - line) + 1, (long long)lr->n - 1);
                pl->bad = true;
                return true;
            }
            pl->of = n, body = end;
        }
        size_t col = (size_t)(body - line) + 1;
        if (too_long) drv_err("%s: longer than %zu bytes\n", pl->what, lr->limit);
        else if (rn->tok) pl->ids = prompt_line_text(rn, pl->what, body, len - (col - 1), col, !pl->more, &pl->T);
        else if (strlen(line) != len) drv_err("%s, column %zu: a NUL byte\n", pl->what, strlen(line) + 1);
        else pl->ids = parse_ids(pl->what, body, rn->s, &pl->T);
        pl->bad = !pl->ids || !prompt_ok(rn->r, pl->what, pl->T + pl->more);
        return true;
    }
    return false;
}

/* A + line with no sequence before it to continue. */
static void no_sequence_before(PromptLine *pl)
{
    drv_err("%s: + continues a sequence, and none has run before it\n", pl->what);
    pl->bad = true;
}

/* A +@N line whose line N is not the latest turn of a sequence held now (held: how many are). */
static void not_held(PromptLine *pl, int held)
{
    drv_err("%s: +@%lld: no sequence held now ends with line %lld's turn (%s)\n", pl->what, (long long)pl->of,
            (long long)pl->of, held > 1 ? "a later turn continued it, a later line took its place among the --batch "
                                          "sequences, or the line was bad"
                                        : "only the latest sequence is held without --batch N, and only to its "
                                          "latest turn");
    pl->bad = true;
}

/* A --serve "continue" whose sequence is not held (or no longer: it waited, and another took it). */
static void not_continued(PromptLine *pl)
{
    drv_err("%s: \"continue\": no sequence held now ends with request %s's turn (a later turn continued it, a "
            "later request took its place, or it failed)\n", pl->what, pl->sr.cont);
    pl->bad = true;
}

static void header(const PromptLine *pl, int64_t k)
{
    fprintf(say, "\n== prompt %lld (line %lld): %lld %s", (long long)k, (long long)pl->line, (long long)pl->T,
            tokens_word(pl->T));
    if (pl->of) fprintf(say, ", continuing line %lld's sequence", (long long)pl->of);
    else if (pl->more) fprintf(say, ", continuing the sequence before it");
    fprintf(say, "\n");
    fflush(say);
}

/* --prompts: each line a prompt, run as it is read (so a terminal or a pipe can feed it) on the one
 * loaded model; a line starting with + continues the sequence before it (prompts and generated
 * tokens, kept in the caches: a conversation's turns), +@N the sequence line N's turn ended if it is
 * this one. A bad line is reported by its number and
 * skipped (exit status 1 at the end; with --quiet, an empty line answers it). Blank lines and lines
 * starting with # are passed over. */
static int run_prompts(Runner *rn, FILE *in, const Req *q)
{
    LineReader lr = line_reader(rn, in, false);
    PromptLine pl;
    int rc = 0;
    int64_t done = 0;
    Conv c = {.seq = xmalloc((size_t)(rn->s->max_positions + 1) * sizeof *c.seq)};
    while (next_prompt(rn, &lr, &pl)) {
        if (!pl.bad && pl.more && !pl.of && c.len == 0) no_sequence_before(&pl);
        if (!pl.bad && pl.of && (pl.of != c.line || c.len == 0)) not_held(&pl, 1);
        if (!pl.bad) {
            c.reused = pl.more ? 0 : prefix_reuse(rn, &c, pl.ids, pl.T);
            if (!pl.more) c.len = c.fed = c.reused, c.line = 0; /* the sequence before is no more */
            int64_t before = c.len;
            header(&pl, ++done);
            pl.bad = run_prompt(rn, &c, pl.ids + c.reused, pl.T - c.reused, q);
            if (c.len > before) c.line = pl.line; /* its turn joined the sequence */
        }
        if (pl.bad) rc = 1;
        if (rn->r->quiet) fprintf(answer, "\n"); /* one line an input line, an empty one for a bad line */
        fflush(stdout);
        free(pl.ids);
    }
    line_reader_free(&lr);
    free(c.seq);
    if (ferror(in)) drv_err("--prompts: read error: %s\n", strerror(errno)), rc = 1;
    return rc;
}

/* ---- --batch N: up to N --prompts lines' sequences decoded together ------------------------------ */

/* A sequence of the batch: the model's sequence `c.slot`, and what its line prints, kept until the
 * lines before it have printed theirs. */
typedef enum { LANE_FREE, LANE_PREFILL, LANE_DECODE } lane_state;
typedef struct {
    Conv c;
    Gen g;
    const Req *q;    /* how its line's tokens are generated */
    Req own;         /* --serve: its request's, q = &own */
    ServeRequest sr; /* --serve: its request */
    int64_t T;       /* its line's tokens */
    size_t sent;     /* --serve with "stream": the bytes of its text streamed so far */
    size_t scanned, cut; /* --serve "stop" strings: its text's bytes searched, where one begins (or SIZE_MAX) */
    ServeLogprobs lp; /* --serve "logprobs": its tokens' */
    int64_t *lp_at;  /* ... with a tokenizer: where each token's text begins in text, in characters [lp.n] */
    int64_t lp_at_cap, text_chars; /* (text_chars: the characters of text's first text_counted bytes) */
    size_t text_counted;
    ServeLogprobs plp; /* --serve "echo" with "logprobs": its prompt's tokens' (from the rows this request ran) */
    int64_t prompt_at; /* where its prompt begins in its sequence */
    lane_state state;
    int64_t from, n, done; /* prefill: positions from .. from + n - 1 to run, done of them run     */
    EvalResult acc;  /* ... their rows of every output, gathered over the steps that ran them      */
    int64_t ticket;  /* its line's place among the answered lines */
    int64_t idle;    /* free since this step (0: never used): a new line takes the lowest */
    FILE *buf;       /* what the line prints (an open_memstream of text, text_n) */
    char *text;
    size_t text_n;
} Lane;

/* Each answered line's output by its place, printed in that order as soon as those before are (or,
 * --unordered, at once). */
typedef struct {
    char **text;     /* [n] NULL: not done yet */
    int64_t n, cap, next;
    bool now;        /* --unordered */
    int64_t finished; /* lines done so far (a lane's idle stamp) */
} Answers;

static int64_t answer_ticket(Answers *a)
{
    if (a->now) return a->n++; /* printed at once: nothing kept (a server's memory does not grow) */
    if (a->n == a->cap) {
        a->cap = a->cap ? 2 * a->cap : 16;
        a->text = xrealloc(a->text, (size_t)a->cap * sizeof *a->text);
    }
    a->text[a->n] = NULL;
    return a->n++;
}

static void answer_done(Answers *a, int64_t ticket, char *text)
{
    if (a->now) {
        fputs(text, stdout);
        free(text);
        fflush(stdout);
        return;
    }
    a->text[ticket] = text;
    for (; a->next < a->n && a->text[a->next]; a->next++) {
        fputs(a->text[a->next], stdout);
        free(a->text[a->next]);
    }
    fflush(stdout);
}

/* What is printed goes to the lane's buffer (with --quiet, the answer; else the report) until
 * lane_print_end. */
static FILE *say_all, *answer_all;
static void lane_print(const Runner *rn, Lane *L) { *(rn->r->quiet ? &answer : &say) = L->buf; }
static void lane_print_end(void) { say = say_all, answer = answer_all; }

/* Whether the lane's --serve request asked "logprobs" (no request: --prompts); with "echo", its
 * prompt's too (all its prompt's rows then compute their logits, and none is taken from the caches). */
static bool lp_asked(const Lane *L) { return L->sr.id && L->sr.logprobs >= 0; }
static bool plp_asked(const Lane *L) { return lp_asked(L) && L->sr.echo; }

/* --serve with "stream": what its line's text gained since the last, with the token put last (< 0:
 * the text's held-back end alone), as a line at once. */
/* --serve "stop" strings: how many of the last bytes of the lane's text could begin one (streaming
 * holds them back until the next token says). */
static size_t stop_held(const Lane *L)
{
    size_t held = 0;
    for (int64_t k = 0; k < L->sr.n_stop_text; k++) {
        const char *s = L->sr.stop_text[k];
        for (size_t m = strlen(s) - 1; m > held; m--)
            if (m <= L->text_n && memcmp(L->text + L->text_n - m, s, m) == 0) {
                held = m;
                break;
            }
    }
    return held;
}

/* Whether a "stop" string now begins in the lane's text (the first such place: its cut, where the
 * answer's text ends); only what the last check had not seen whole is searched. */
static bool stop_text_found(Lane *L)
{
    if (!L->sr.n_stop_text || L->cut != SIZE_MAX) return false;
    fflush(L->buf);
    size_t at = SIZE_MAX;
    for (int64_t k = 0; k < L->sr.n_stop_text; k++) {
        size_t m = strlen(L->sr.stop_text[k]), from = L->scanned >= m ? L->scanned - m + 1 : 0;
        const char *p = from < L->text_n ? memmem(L->text + from, L->text_n - from, L->sr.stop_text[k], m) : NULL;
        if (p && (size_t)(p - L->text) < at) at = (size_t)(p - L->text);
    }
    L->scanned = L->text_n;
    L->cut = at;
    return at != SIZE_MAX;
}

/* After a lane's token: true when decoding ends there (or would have), a "stop" string having come. */
static bool stop_text_hit(Lane *L)
{
    if (!stop_text_found(L)) return false;
    gen_ends_here(&L->g, "stop");
    return true;
}

static void lane_stream(const Runner *rn, Lane *L, int32_t token)
{
    if (!rn->r->serve || !L->sr.stream) return;
    fflush(L->buf);
    size_t upto = L->cut != SIZE_MAX ? L->cut : token < 0 ? L->text_n : L->text_n - stop_held(L);
    upto = upto > L->sent ? upto : L->sent;
    const char *delta = rn->tok ? L->text + L->sent : NULL; /* (NUL bytes in it are the text's) */
    size_t n = upto - L->sent;
    L->sent = upto;
    if (token >= 0 || (delta && n)) {
        char *e = serve_event(L->sr.id, token, delta, n, lp_asked(L) ? &L->lp : NULL, L->lp.n - 1, rn->tok,
                              L->lp_at && L->lp.n ? L->lp_at[L->lp.n - 1] : -1);
        fputs(e, stdout);
        fflush(stdout);
        free(e);
    }
}

/* A line is done (ok: its run did not fail): its answer (--serve: in JSON) goes out when its turn
 * comes, and its sequence is free. */
static void lane_finish(const Runner *rn, Lane *L, Answers *a, bool ok)
{
    if (rn->r->quiet && !rn->r->serve) fprintf(L->buf, "\n");
    if (rn->r->serve && stop_text_found(L) && !L->g.why) L->g.why = "stop"; /* (in the text's held-back end) */
    if (rn->r->serve) lane_stream(rn, L, -1);
    fclose(L->buf);
    lane_print_end();
    if (rn->r->serve) {
        char *t = L->text;
        size_t len = L->cut != SIZE_MAX ? L->cut : L->text_n; /* the text before the stop string */
        int64_t n = L->g.q ? L->c.len - L->g.first : 0; /* what it generated */
        int64_t chars = text_chars(t, len); /* (a stop string's tokens begin within the text cut) */
        for (int64_t j = 0; L->lp_at && j < L->lp.n; j++) L->lp_at[j] = L->lp_at[j] < chars ? L->lp_at[j] : chars;
        ServeAnswer sa = {L->sr.id, L->c.seq + L->g.first, n, rn->tok ? t : NULL, len, L->g.why ? L->g.why : "length",
                          L->T, L->c.reused, lp_asked(L) ? &L->lp : NULL, L->sr.echo ? L->c.seq + L->prompt_at : NULL,
                          plp_asked(L) ? &L->plp : NULL, rn->tok, L->lp_at};
        L->text = ok ? serve_answer(&sa) : serve_error(L->sr.id, last_err);
        serve_logprobs_free(&L->lp);
        serve_logprobs_free(&L->plp);
        free(L->lp_at);
        L->lp_at = NULL, L->lp_at_cap = 0, L->text_chars = 0, L->text_counted = 0;
        free(t);
        serve_request_free(&L->sr);
    }
    answer_done(a, L->ticket, L->text);
    L->state = LANE_FREE;
    L->idle = ++a->finished;
}

/* Rows at[0 .. n - 1] of every output of res (a run of T rows) after those acc has (prefill chunks,
 * in order); an output of R < T rows (logits of the last R rows alone: logits_rows) gives those of
 * them it has. last_logits: of the logits, only the last row is kept (the one read: last_only). */
static void acc_append(EvalResult *acc, const EvalResult *res, int64_t T, const int64_t *at, int64_t n, bool last_logits)
{
    if (!acc->outputs) {
        acc->n_outputs = res->n_outputs;
        acc->outputs = xcalloc((size_t)res->n_outputs, sizeof *acc->outputs);
        for (int k = 0; k < res->n_outputs; k++) {
            acc->outputs[k].name = xstrdup(res->outputs[k].name);
            acc->outputs[k].type = ir_type_2d(res->outputs[k].type.dtype, 0, res->outputs[k].type.dims[1]);
        }
    }
    for (int k = 0; k < res->n_outputs; k++) {
        EvalTensor *a = &acc->outputs[k];
        int64_t cols = a->type.dims[1], first = T - res->outputs[k].type.dims[0];
        a->data = xrealloc(a->data, (size_t)((a->type.dims[0] + n) * cols + 1) * sizeof *a->data);
        for (int64_t j = 0; j < n; j++)
            if (at[j] >= first)
                memcpy(a->data + a->type.dims[0]++ * cols, res->outputs[k].data + (at[j] - first) * cols,
                       (size_t)cols * sizeof *a->data);
        if (last_logits && a->type.dims[0] > 1 && strcmp(a->name, "logits") == 0) {
            memmove(a->data, a->data + (a->type.dims[0] - 1) * cols, (size_t)cols * sizeof *a->data);
            a->type.dims[0] = 1;
        }
    }
}

/* Prefixes shared by sequences count from this many tokens: a BOS or a word in common does not take a
 * warm sequence's place, nor wait. */
enum { SHARED_PREFIX_MIN = 8 };

/* Whether a --serve line is scored: "echo" with "logprobs" (every prompt token's log-probability). */
static bool line_scored(const PromptLine *pl) { return pl->sr.echo && pl->sr.logprobs >= 0; }

/* Whether a new sequence among lines[n] would start from c's caches (a shared prefix). */
static bool lane_wanted(const Runner *rn, const Conv *c, const PromptLine *lines, int n)
{
    for (int i = 0; i < n; i++) {
        const PromptLine *pl = &lines[i];
        if (pl->bad || pl->more || pl->sr.cont) continue;
        if ((line_scored(pl) ? prefix_scored(rn, c, pl->ids, pl->T) : prefix_reuse(rn, c, pl->ids, pl->T)) >= SHARED_PREFIX_MIN) return true;
    }
    return false;
}

/* The lane for a new line ids[T], and how many of its first tokens its caches hold (*reuse, run no
 * more): the free lane whose caches hold most of them, else the one idle longest (what a +@N may
 * still want is kept longest); where another lane's caches hold more, their first positions are
 * copied over (a fork: a shared system prompt runs once for all). NULL when none is free, or when a
 * lane still running its prompt will hold more of it than any holds now (SHARED_PREFIX_MIN more): the
 * line waits for that rather than run the same tokens beside it. scored: its every row's logits are
 * wanted ("echo" with "logprobs"): it keeps only positions whose tokens' log-probabilities a lane has
 * (prefix_scored), and waits only for a lane running such a prompt. later[n_later]: --serve's requests
 * waiting after it; where one of them would start from the caches of the lane it would take, while
 * the lane it would copy from is busy, it waits for that lane rather than take the other's. */
static Lane *lane_for(Runner *rn, Lane *lanes, int B, const int32_t *ids, int64_t T, bool scored, int64_t *reuse,
                      const PromptLine *later, int n_later)
{
    Lane *L = NULL, *from = NULL;
    int64_t most = 0, there = 0, soon = 0;
    for (int b = 0; b < B; b++) {
        const Conv *c = &lanes[b].c;
        int64_t k = scored ? prefix_scored(rn, c, ids, T) : prefix_reuse(rn, c, ids, T), by = k >= SHARED_PREFIX_MIN ? k : 0;
        int64_t will = lanes[b].state != LANE_PREFILL ? 0 : !scored ? prefix_held(rn, c, c->len, ids, T)
                     : plp_asked(&lanes[b]) && c->scored.n >= lanes[b].from ? prefix_held(rn, c, c->len, ids, T) - 1 : 0;
        soon = will > soon ? will : soon;
        if (by > there) from = &lanes[b], there = by;
        if (lanes[b].state == LANE_FREE && (!L || by > most || (by == most && lanes[b].idle < L->idle)))
            L = &lanes[b], most = by, *reuse = k;
    }
    if (!L || soon >= there + SHARED_PREFIX_MIN) return NULL;
    if (from && there > *reuse && from->state != LANE_FREE && *reuse < SHARED_PREFIX_MIN && lane_wanted(rn, &L->c, later, n_later))
        return NULL;
    if (from && there > *reuse) {
        RtError err = {{0}};
        if (rn->gpu ? cfg->cuda->copy_sequence(rn->gpu, from->c.slot, L->c.slot, there, &err)
                    : cpu_model_copy_sequence(rn->cm, from->c.slot, L->c.slot, there, &err)) {
            scored_keep(&L->c, &from->c, ids, T);
            memcpy(L->c.seq, from->c.seq, (size_t)there * sizeof *L->c.seq);
            L->c.fed = there, *reuse = there;
            return L;
        }
        drv_err("%s (the prompt runs whole)\n", err.msg);
    }
    scored_keep(&L->c, &L->c, ids, T);
    return L;
}

/* Whether a line can be read from a pipe or a terminal without waiting: bytes read and not yet taken,
 * or bytes there to read (poll). */
static bool readable(const LineReader *lr)
{
    struct pollfd p = {.fd = lr->fd, .events = POLLIN};
    return lr->pos < lr->end || poll(&p, 1, 0) > 0;
}

/* --serve "logprobs": the log-probabilities of the token just chosen from row[V], and the likeliest.
 * A sequence whose scored tokens reach the one before it (an "echo" with "logprobs" ran its rows) keeps
 * the chosen token's with them too, so that a next turn's scored prompt, or a later one repeating the
 * whole conversation, goes on from them (prefix_scored) rather than stop where its first prompt did. */
static void lane_logprob(const Runner *rn, Lane *L, const double *row, int64_t V)
{
    if (lp_asked(L) && rn->tok) { /* where the token's text will begin: the end of its text so far */
        fflush(L->buf);
        L->text_chars += text_chars(L->text + L->text_counted, L->text_n - L->text_counted);
        L->text_counted = L->text_n;
        if (L->lp.n >= L->lp_at_cap) {
            L->lp_at_cap = 2 * L->lp_at_cap + 16;
            L->lp_at = xrealloc(L->lp_at, (size_t)L->lp_at_cap * sizeof *L->lp_at);
        }
        L->lp_at[L->lp.n] = L->text_chars;
    }
    ServeLogprobs *sc = &L->c.scored;
    if ((sc->n > 0 || plp_asked(L)) && sc->n == L->g.len - 1) {
        serve_logprobs_add(sc, row, V, L->g.next);
        if (lp_asked(L)) serve_logprobs_append(&L->lp, sc, sc->n - 1);
    } else if (lp_asked(L)) serve_logprobs_add(&L->lp, row, V, L->g.next);
}

/* --serve "echo" with "logprobs": the log-probability of prompt token p + 1 from row p's logits [V],
 * and the likeliest; kept with the sequence too where it follows the tokens kept there. */
static void lane_prompt_logprob(Lane *L, const double *row, int64_t V, int64_t p)
{
    ServeLogprobs *sc = &L->c.scored;
    if (sc->n != p) {
        serve_logprobs_add(&L->plp, row, V, L->c.seq[p + 1]);
        return;
    }
    serve_logprobs_add(sc, row, V, L->c.seq[p + 1]);
    serve_logprobs_append(&L->plp, sc, p);
}

/* A lane whose prompt has run whole: its report, then decoding starts (or the line is done). */
static void lane_prefilled(Runner *rn, Lane *L, Answers *ans, int *rc, int64_t *tokens)
{
    if (rn->r->serve && L->sr.stream && L->sr.echo) { /* the stream's first line: the prompt, as the answer gives it */
        ServeAnswer sa = {.id = L->sr.id, .prompt_tokens = L->T, .prompt_ids = L->c.seq + L->prompt_at,
                          .prompt_lp = plp_asked(L) ? &L->plp : NULL, .tok = rn->tok};
        char *e = serve_echo(&sa);
        fputs(e, stdout);
        fflush(stdout);
        free(e);
    }
    lane_print(rn, L);
    rn->macs_grouped = ffn_macs(rn, &L->acc); /* its rows' own (a step's count has the others') */
    if (prompt_report(rn, &L->c, &L->acc, L->from, L->n)) *rc = 1;
    bool decoding = false;
    if (L->q->generate > 0) {
        int64_t V;
        const double *row = last_row(eval_output(&L->acc, "logits"), &V);
        gen_begin(rn, &L->g, &L->c, L->q, row, V);
        lane_logprob(rn, L, row, V);
        decoding = gen_put(rn, &L->g);
        decoding = !stop_text_hit(L) && decoding; /* (its last token too: the stream must not pass it) */
        lane_stream(rn, L, L->c.seq[L->g.len]);
        if (!decoding) gen_end(rn, &L->g, true), *tokens += L->g.n;
    }
    ir_eval_result_free(&L->acc);
    memset(&L->acc, 0, sizeof L->acc);
    if (decoding) {
        L->state = LANE_DECODE;
        lane_print_end();
    } else lane_finish(rn, L, ans, true);
}

/* A bad line's answer (the reason is said; --serve: its error, in JSON; else with --quiet an empty
 * line), in its turn. */
static void line_refused(const Runner *rn, Answers *ans, PromptLine *pl)
{
    char none[32];
    if (rn->r->quiet && ans->now) snprintf(none, sizeof none, "%lld\t\n", (long long)pl->line);
    else snprintf(none, sizeof none, "%s", rn->r->quiet ? "\n" : "");
    answer_done(ans, answer_ticket(ans), rn->r->serve ? serve_error(pl->sr.id, last_err) : xstrdup(none));
    serve_request_free(&pl->sr);
    free(pl->ids);
}

/* --serve: requests read while others run, waiting for a sequence (at most this many; past them the
 * input is left unread until one starts, and a client writing more waits on its pipe). */
enum { SERVE_QUEUE = 1024 };

/* --serve's {"cancel": id}: every request of that id still waiting (queue[*nq]) or running ends now,
 * answered with what it has (finish_reason "cancelled"). A decoding one keeps its tokens so far in
 * its sequence, which a "continue" goes on from; one still running its prompt has generated none, and
 * the positions it ran stay in its caches for a later prompt that starts with them (no "continue" can
 * name it). How many ended. */
static int64_t serve_cancel(Runner *rn, const char *id, Lane *lanes, int B, PromptLine *queue, int *nq, Answers *ans,
                            int64_t *busy, int64_t *tokens)
{
    int64_t n = 0;
    for (int i = 0; i < *nq;) {
        PromptLine *pl = &queue[i];
        if (pl->bad || strcmp(pl->sr.id, id) != 0) { /* a bad one gets its error */
            i++;
            continue;
        }
        ServeLogprobs none = {.k = pl->sr.logprobs};
        bool lp = pl->sr.logprobs >= 0;
        ServeAnswer sa = {id, NULL, 0, rn->tok ? "" : NULL, 0, "cancelled", pl->T, 0, lp ? &none : NULL,
                          pl->sr.echo ? pl->ids : NULL, lp && pl->sr.echo ? &none : NULL, rn->tok, NULL};
        answer_done(ans, answer_ticket(ans), serve_answer(&sa));
        serve_request_free(&pl->sr);
        free(pl->ids);
        memmove(pl, pl + 1, (size_t)(--*nq - i) * sizeof *pl);
        n++;
    }
    for (int b = 0; b < B; b++) {
        Lane *L = &lanes[b];
        if (L->state == LANE_FREE || strcmp(L->sr.id, id) != 0) continue;
        lane_print(rn, L);
        if (L->state == LANE_DECODE) {
            gen_ends_here(&L->g, "cancelled");
            gen_end(rn, &L->g, true);
            *tokens += L->g.n;
        } else {
            L->plp.n = 0; /* (its prompt's first rows ran: "prompt_logprobs" would name the last) */
            L->c.len = L->c.fed = L->from + L->done;
            L->c.line = 0;
            free(L->c.id);
            L->c.id = NULL;
            ir_eval_result_free(&L->acc);
            memset(&L->acc, 0, sizeof L->acc);
        }
        L->g.why = "cancelled"; /* (a prompt's: nothing generated) */
        lane_finish(rn, L, ans, true);
        (*busy)--, n++;
    }
    return n;
}

/* --prompts with --batch B (the CPU backend or the GPU): a line starts as soon as one of the B
 * sequences of the model is free (a new line: the one free longest, so that a done line's sequence
 * stays for a +@N as long as can be; a + or +@N line: when the sequence it continues has ended, in
 * its place);
 * then every step runs, as one run of the model, one token of each decoding sequence and up to
 * --chunk tokens of the prompts still to run (the oldest first), so the rows of all of them go through
 * the grouped GEMMs together and a long prompt stalls the decoding ones a chunk at a time. Each line
 * prints what it prints alone, after the lines before it (--unordered: at once). Reading a pipe or a terminal never waits
 * while sequences run: only lines already there are read. Lines start in order; with --serve every
 * request already sent is read, and one that must wait (for its sequence, or for a shared prefix)
 * lets those after it start, but for one that continues it. */
static int run_prompts_batched(Runner *rn, FILE *in, const Req *q)
{
    int B = rn->r->batch, rc = 0, latest = -1; /* the lane of the sequence a + line continues */
    RtError err = {{0}};
    if (rn->gpu ? !cfg->cuda->set_sequences(rn->gpu, B, &err) : !cpu_model_set_sequences(rn->cm, B, &err)) {
        drv_err("--batch %d: %s\n", B, err.msg);
        return 1;
    }
    struct stat st;
    bool pipe = fstat(fileno(in), &st) != 0 || !S_ISREG(st.st_mode);
    say_all = say, answer_all = answer;
    Lane *lanes = xcalloc((size_t)B, sizeof *lanes);
    for (int b = 0; b < B; b++)
        lanes[b].c = (Conv){.seq = xmalloc((size_t)(rn->s->max_positions + 1) * sizeof(int32_t)), .slot = b,
                            .scored = {.k = SERVE_LOGPROBS_MAX}};
    int64_t chunk = rn->r->chunk, cap = B + chunk; /* rows a step at most */
    int32_t *ids = xmalloc((size_t)cap * sizeof *ids), *pos = xmalloc((size_t)cap * sizeof *pos), *sq = xmalloc((size_t)cap * sizeof *sq);
    int *who = xmalloc((size_t)cap * sizeof *who);
    int32_t *run_ids = xmalloc((size_t)cap * sizeof *run_ids), *run_pos = xmalloc((size_t)cap * sizeof *run_pos),
            *run_sq = xmalloc((size_t)cap * sizeof *run_sq); /* the rows in the order they run (at) */
    int64_t *at = xmalloc((size_t)cap * sizeof *at);
    LineReader lr = line_reader(rn, in, pipe);
    Answers ans = {.now = rn->r->unordered};
    int nq = 0, qcap = rn->r->serve ? SERVE_QUEUE : 1; /* lines read, not started */
    PromptLine *queue = xmalloc((size_t)qcap * sizeof *queue);
    bool eof = false;
    int64_t started = 0, tokens = 0, steps = 0, rows = 0, busy = 0, cancelled = 0;
    double t0 = now_s();
    for (;;) {
        bool moved;
        do { /* read and start lines until one waits or none is there */
            moved = false;
            while (!eof && nq < qcap) { /* read what is there (blocking only when nothing is to be done) */
                if ((busy || nq) && pipe && !readable(&lr)) break;
                PromptLine *pl = &queue[nq];
                if (!next_prompt(rn, &lr, pl)) {
                    eof = true;
                    break;
                }
                if (pl->bad && rn->r->serve) { /* answered now, with its reason */
                    line_refused(rn, &ans, pl), rc = 1;
                    continue;
                }
                if (!pl->sr.cancel) {
                    nq++;
                    continue;
                }
                int64_t k = serve_cancel(rn, pl->sr.cancel, lanes, B, queue, &nq, &ans, &busy, &tokens);
                if (!k) fprintf(stderr, "%s: %s: cancel %s: no request of that id is waiting or running\n", cfg->prog, pl->what, pl->sr.cancel);
                cancelled += k;
                serve_request_free(&pl->sr);
            }
            for (int i = 0; i < nq;) { /* start what can start */
                PromptLine pl = queue[i];
                bool before = false; /* --serve: it continues a request still waiting before it */
                for (int j = 0; !pl.bad && pl.sr.cont && !pl.of && j < i; j++) before = before || strcmp(queue[j].sr.id, pl.sr.cont) == 0;
                if (before) {
                    i++;
                    continue;
                }
                for (int b = 0; !pl.bad && pl.sr.cont && !pl.of && b < B; b++) /* --serve: "continue" names its lane */
                    if (lanes[b].c.id && strcmp(lanes[b].c.id, pl.sr.cont) == 0 && lanes[b].c.len > 0) pl.of = lanes[b].c.line;
                if (!pl.bad && pl.sr.cont && !pl.of) not_continued(&pl);
                if (!pl.bad && pl.more && !pl.of && latest < 0) no_sequence_before(&pl);
                int of = pl.more && !pl.of ? latest : -1; /* the lane it continues */
                for (int b = 0; !pl.bad && pl.of && of < 0 && b < B; b++)
                    if (lanes[b].c.line == pl.of && lanes[b].c.len > 0) of = b;
                if (!pl.bad && pl.of && of < 0) pl.sr.cont ? not_continued(&pl) : not_held(&pl, B); /* (taken since) */
                Lane *L = NULL;
                if (!pl.bad && pl.more) L = lanes[of].state != LANE_FREE ? NULL : &lanes[of];
                int64_t reuse = 0;
                if (!pl.bad && !pl.more)
                    L = lane_for(rn, lanes, B, pl.ids, pl.T, line_scored(&pl), &reuse, queue + i + 1,
                                 rn->r->serve ? nq - i - 1 : 0);
                if (!pl.bad && !L) { /* it waits for a sequence to end */
                    queue[i++] = pl;
                    if (!rn->r->serve) break;
                    continue;
                }
                memmove(queue + i, queue + i + 1, (size_t)(--nq - i) * sizeof *queue);
                moved = true;
                if (pl.bad) {
                    line_refused(rn, &ans, &pl), rc = 1;
                    continue;
                }
                int64_t ticket = answer_ticket(&ans);
                L->ticket = ticket, L->q = q, L->T = pl.T, L->sent = L->scanned = 0, L->cut = SIZE_MAX, L->g = (Gen){0};
                if (rn->r->serve) { /* the request's own parameters */
                    L->sr = pl.sr;
                    memset(&pl.sr, 0, sizeof pl.sr);
                    L->lp = (ServeLogprobs){.k = L->sr.logprobs > 0 ? L->sr.logprobs : 0};
                    L->plp = L->lp;
                    L->own = (Req){L->sr.max_tokens, L->sr.sample, L->sr.seed, q->stop};
                    if (L->sr.stop_set) L->own.stop = (StopIds){L->sr.stop, L->sr.n_stop, "a stop token of the request"};
                    L->q = &L->own;
                }
                L->buf = open_memstream(&L->text, &L->text_n);
                MOE_ASSERT(L->buf);
                if (rn->r->quiet && ans.now && !rn->r->serve) fprintf(L->buf, "%lld\t", (long long)pl.line);
                lane_print(rn, L);
                L->c.reused = reuse;
                if (!pl.more) { /* the sequence it held is no more (+@ cannot name it) */
                    L->c.len = L->c.fed = reuse, L->c.line = 0;
                    free(L->c.id);
                    L->c.id = NULL;
                }
                for (int64_t j = 0; plp_asked(L) && j < reuse; j++) /* the kept tokens' (and the first run one's) */
                    serve_logprobs_append(&L->plp, &L->c.scored, j);
                latest = (int)(L - lanes);
                if (pl.more && plp_asked(L) && L->c.fed == L->c.len && L->c.fed > 0)
                    L->c.fed--; /* its first token's log-probability: the turn before's last row, run again */
                header(&pl, ++started);
                bool ok = prompt_start(rn, &L->c, pl.ids + reuse, pl.T - reuse, &L->from, &L->n);
                L->prompt_at = L->c.len - pl.T;
                free(pl.ids);
                if (ok) {
                    L->c.line = pl.line;
                    free(L->c.id);
                    L->c.id = L->sr.id ? xstrdup(L->sr.id) : NULL;
                } else {
                    rc = 1;
                    fflush(say);
                    lane_finish(rn, L, &ans, false);
                    continue;
                }
                L->state = LANE_PREFILL, L->done = 0, busy++;
                lane_print_end();
            }
        } while (moved && !eof);
        MOE_ASSERT(busy || !nq); /* with every sequence free, the first line waiting starts */
        if (!busy) {
            if (eof) break;
            continue;
        }
        /* the step: a row of each decoding sequence, then prompt chunks, the oldest lines first */
        int n = 0;
        for (int b = 0; b < B; b++) {
            Lane *L = &lanes[b];
            if (L->state == LANE_DECODE) ids[n] = L->c.seq[L->g.len], pos[n] = (int32_t)L->g.len, sq[n] = b, who[n++] = b;
        }
        int decode_rows = n;
        for (int64_t room = chunk; room > 0;) {
            Lane *P = NULL;
            for (int b = 0; b < B; b++)
                if (lanes[b].state == LANE_PREFILL && lanes[b].done < lanes[b].n && (!P || lanes[b].ticket < P->ticket)) P = &lanes[b];
            if (!P) break;
            int64_t m = P->n - P->done < room ? P->n - P->done : room;
            for (int64_t t = 0; t < m; t++, n++) {
                int64_t p = P->from + P->done + t;
                ids[n] = P->c.seq[p], pos[n] = (int32_t)p, sq[n] = P->c.slot, who[n] = (int)(P - lanes);
            }
            P->done += m, room -= m;
        }
        /* The rows run in the order at[] says: where only the logits decoding reads are read, the rows
         * that need theirs (a decoding sequence's, a prompt's last) last, the lm_head on them alone. */
        int64_t need = 0;
        for (int k = 0; k < n; k++) {
            const Lane *L = &lanes[who[k]];
            at[k] = !rn->last_only || k < decode_rows || ((k + 1 == n || who[k + 1] != who[k]) && L->done == L->n) || plp_asked(L);
            need += at[k];
        }
        for (int64_t k = 0, head = 0, tail = n - need; k < n; k++) {
            at[k] = at[k] ? tail++ : head++;
            run_ids[at[k]] = ids[k], run_pos[at[k]] = pos[k], run_sq[at[k]] = sq[k];
        }
        EvalResult res;
        rn->logits_rows = need;
        bool ok = runner_step(rn, run_ids, run_pos, run_sq, n, &res);
        rn->logits_rows = 0;
        const EvalTensor *logits = ok ? eval_output(&res, "logits") : NULL;
        int64_t V = ok ? logits->type.dims[1] : 0, first = ok ? n - logits->type.dims[0] : 0; /* its rows' first */
        steps++, rows += decode_rows;
        for (int k = 0; k < decode_rows; k++) {
            Lane *L = &lanes[who[k]];
            lane_print(rn, L);
            if (ok) gen_advance(&L->g, logits->data + (at[k] - first) * V), lane_logprob(rn, L, logits->data + (at[k] - first) * V, V);
            bool more = ok && gen_put(rn, &L->g);
            more = !(ok && stop_text_hit(L)) && more; /* (its last token too: the stream must not pass it) */
            if (ok) lane_stream(rn, L, L->c.seq[L->g.len]);
            if (more) {
                lane_print_end();
                continue;
            }
            bool fine = gen_end(rn, &L->g, ok);
            if (!fine) rc = 1;
            tokens += L->g.n;
            lane_finish(rn, L, &ans, fine);
            busy--;
        }
        for (int k = decode_rows; k < n;) { /* each prompt's chunk: its rows gathered */
            Lane *L = &lanes[who[k]];
            int64_t m = 1;
            while (k + m < n && who[k + m] == who[k]) m++;
            if (ok) {
                for (int64_t j = 0; plp_asked(L) && j < m; j++) /* "echo": each row's log-probability of the next prompt token */
                    if (pos[k + j] + 1 < L->c.len) lane_prompt_logprob(L, logits->data + (at[k + j] - first) * V, V, pos[k + j]);
                acc_append(&L->acc, &res, n, at + k, m, rn->last_only);
                L->acc.seconds += res.seconds * (double)m / (double)n; /* its share of the step */
            }
            k += (int)m;
            if (ok && L->done < L->n) continue;
            if (ok) lane_prefilled(rn, L, &ans, &rc, &tokens);
            else {
                rc = 1;
                ir_eval_result_free(&L->acc);
                memset(&L->acc, 0, sizeof L->acc);
                lane_finish(rn, L, &ans, false);
            }
            if (L->state == LANE_FREE) busy--;
        }
        if (ok) ir_eval_result_free(&res);
    }
    double dt = now_s() - t0;
    if (rn->r->generate > 0 || rn->r->serve) /* --serve: on standard error, the answers' stream is JSON's */
        fprintf(rn->r->serve ? stderr : say, "\n batch: %lld sequences, up to %d at once: %lld tokens generated in %.3f s (%.2f tokens/s), "
                "%lld steps, %.2f decoding sequences a step on average\n", (long long)started, B, (long long)tokens, dt,
                (double)tokens / dt, (long long)steps, steps ? (double)rows / (double)steps : 0.0);
    if (cancelled) fprintf(stderr, " %lld requests cancelled\n", (long long)cancelled);
    for (int b = 0; b < B; b++) free(lanes[b].c.seq), free(lanes[b].c.id), serve_logprobs_free(&lanes[b].c.scored);
    free(lanes), free(queue);
    free(ids), free(pos), free(sq), free(who), free(run_ids), free(run_pos), free(run_sq), free(at);
    free(ans.text);
    line_reader_free(&lr);
    if (ferror(in)) drv_err("--prompts: read error: %s\n", strerror(errno)), rc = 1;
    return rc;
}

static bool load_spec(const RunArgs *r, ModelSpec *s)
{
    Diag d = {stderr, r->spec ? r->spec : cfg->prog, 0};
    if (cfg->spec_text) return spec_load_string(cfg->spec_text, strlen(cfg->spec_text), s, &d);
    return spec_load_any(r->spec, s, &d);
}

int driver_main(int argc, char **argv, const DriverConfig *config)
{
    cfg = config;
    say = answer = stdout;
    RunArgs r;
    int rc = parse_run_args(argc, argv, &r);
    if (rc) return rc < 0 ? 0 : rc;
    const char *outs[2] = {r.logits_out, r.routes_out};
    for (int k = 0; k < 2; k++) { /* said before the model runs, not after */
        char why[512];
        if (outs[k] && !file_can_write(outs[k], why, sizeof why)) {
            drv_err("%s\n", why);
            return 1;
        }
    }
    ModelSpec s;
    if (!load_spec(&r, &s)) return 1;
    if (r.max_positions > s.max_positions) {
        char why[160];
        snprintf(why, sizeof why, "--max-positions %lld: more than the model's max_positions (%lld)",
                 (long long)r.max_positions, (long long)s.max_positions);
        return drv_usage("%s", why);
    }
    if (r.max_positions) s.max_positions = r.max_positions; /* the caches', and every check's after */
    int64_t T = 0;
    int32_t *ids = NULL, *stop_ids = NULL;
    SampleBias *bias = NULL;
    FILE *prompts = NULL;
    StopIds stop = {0};
    Tokenizer *tok = NULL;
    rc = 1;
    if (r.quiet && !(say = fopen("/dev/null", "w"))) {
        drv_err("--quiet: cannot open /dev/null: %s\n", strerror(errno));
        return 1;
    }
    if (!open_tokenizer(&r, &s, &tok)) goto out;
    if (r.prompt) {
        if (!(ids = encode_text(tok, &r, &s, "--prompt", r.prompt, strlen(r.prompt), true, r.special, &T)) || !prompt_ok(&r, "--prompt", T)) goto out;
    } else if (r.prompts) {
        prompts = strcmp(r.prompts, "-") == 0 ? stdin : fopen(r.prompts, "r");
        if (!prompts) {
            drv_err("--prompts '%s': %s\n", r.prompts, strerror(errno));
            goto out;
        }
    } else if (!(ids = parse_ids("--ids", r.ids, &s, &T)) || !prompt_ok(&r, "--ids", T)) {
        goto out;
    }
    if (r.stop && !(stop.ids = stop_ids = parse_ids("--stop", r.stop, &s, &stop.n))) goto out;
    if (r.logit_bias) {
        char why[256];
        if (!(r.sample.bias = bias = sample_bias_parse(r.logit_bias, s.vocab, &r.sample.n_bias, why, sizeof why))) {
            rc = drv_usage("--logit-bias: %s", why);
            goto out;
        }
    }
    int32_t eos = s.has_eos ? (int32_t)s.eos_token_id : tok ? tokenizer_eos(tok) : -1; /* checked against the vocabulary */
    if (!r.stop && eos >= 0 && !r.ignore_eos) stop = (StopIds){&eos, 1, s.has_eos ? "the spec's eos_token_id" : "the tokenizer's </s>"};
    else if (r.stop) stop.why = "a --stop token";
    Req q = {r.generate, r.sample, r.sample_seed, stop};
    fprintf(say, "%s: %s: %s, %lld layer%s, %lld experts per MoE layer, top-%lld; ", cfg->prog, s.name,
            dtype_name(s.dtype), (long long)s.n_layers, s.n_layers == 1 ? "" : "s", (long long)spec_n_experts(&s),
            (long long)s.top_k);
    if (prompts) fprintf(say, "prompts%s from %s; weights: ", tok ? " (text)" : "", prompts == stdin ? "standard input" : r.prompts);
    else fprintf(say, "%lld %s; weights: ", (long long)T, tokens_word(T));
    if (r.random) fprintf(say, "random (seed %llu)\n", (unsigned long long)r.seed);
    else fprintf(say, "%s\n", r.weights);
    fflush(say);
    WeightSet *w = NULL;
    Runner rn;
    if (runner_init(&rn, &r, &s) && random_room(&rn) && open_weights(&r, &s, &w) && runner_start(&rn, w)) {
        rn.tok = tok;
        if (prompts) {
            rc = r.batch > 1 || r.serve ? run_prompts_batched(&rn, prompts, &q) : run_prompts(&rn, prompts, &q);
        } else {
            Conv c = {.seq = xmalloc((size_t)(T + r.generate + 1) * sizeof *c.seq)};
            rc = run_prompt(&rn, &c, ids, T, &q);
            if (r.quiet) printf("\n");
            free(c.seq);
        }
    }
    runner_free(&rn);
    weights_close(w);
out:
    if (prompts && prompts != stdin) fclose(prompts);
    if (say != stdout) fclose(say);
    free(ids);
    free(stop_ids);
    free(bias);
    tokenizer_free(tok);
    return rc;
}
