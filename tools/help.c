/* help.c — every command's help page (help.h). A page is its synopsis, a paragraph on what the
 * command does, its options (each with its default), the environment it reads and its exit status;
 * the pass list of `compile` comes from the pipeline itself. */
#include "tools/help.h"
#include "tools/commands.h"

#include "passes/passes.h"
#include "support/support.h"

#include <string.h>

typedef struct {
    const char *name;
    const char *summary; /* one line in `moeppc --help` */
    const char *usage;   /* the synopsis, after "moeppc " (NULL: the command prints its own page) */
    const char *body;
} HelpPage;

#define EXIT_STATUS "exit status: 0 done; 1 bad input (with a message naming where) or a failure; 2 a wrong\n" \
                    "command line.\n"
#define TARGETS "cpu (this machine's CPU, the default), sm_80, sm_86, sm_89 or sm_90"

static const HelpPage pages[] = {
    {"check", "validate a spec; print parameters, FLOPs/token, expert mix", "check SPEC",
     "Validates SPEC, a YAML model spec (format 1: SEMANTICS.md's fields; each error with\n"
     "file:line:col), and prints its parameters (total and active per token), its FLOPs per token and\n"
     "its expert mix (FFN, constant, copy and zero experts). Wherever a command takes SPEC it also\n"
     "takes a Hugging Face config.json (MoE++ or Mixtral, read as import-hf reads it) or a model\n"
     "folder holding one.\n\n" EXIT_STATUS},
    {"import-hf", "convert a Hugging Face MoE++ or Mixtral config.json to a spec", "import-hf CONFIG.json -o SPEC.yaml",
     "Converts a Hugging Face config.json into a model spec, checked as `check` does: MoE++'s\n"
     "(Chat-UniVi/MoE-Plus-Plus-7B's, or one of its form; model_type \"moe++\" or none) or Mixtral's\n"
     "(model_type \"mixtral\": a vanilla MoE spec, every layer num_local_experts SwiGLU experts, top\n"
     "num_experts_per_tok). A sliding_window shorter than max_position_embeddings caps the spec's\n"
     "positions at it (a note says so). `run --weights` reads a Mixtral checkpoint's own tensor names.\n\n"
     "  -o SPEC.yaml        the spec to write (required; written whole or not at all)\n\n" EXIT_STATUS},
    {"compile", "lower a spec (or IR text) to IR, run the passes, print or write it", COMPILE_USAGE,
     "Lowers SPEC to the IR (or parses IR text), runs the optimisation passes and prints or writes\n"
     "the result. Nothing is printed unless asked.\n\n"
     "  --ir FILE           IR text instead of a spec (moeppc compile -o writes it)\n"
     "  -O0 | -O1           -O0: the dense form (every expert for every token, as lowered);\n"
     "                      -O1 (default): every pass\n"
     "  --target T          whose tiles specialize chooses: cpu (the default: AVX-512's register\n"
     "                      tile, so the output does not depend on the machine; with --tuning\n"
     "                      this machine's ISA's, as run and build use), sm_80, sm_86, sm_89 or sm_90\n"
     "  --print-ir          the IR the passes leave, on stdout\n"
     "  --print-after=PASS  the IR after PASS (or after every pass: all); also --print-after PASS\n"
     "  --pass NAME         run only the pass NAME\n"
     "  --stats             op counts before and after, and the activation arena at T = 1, 512, 4096\n"
     "  --tuning DB         kernel configurations from a tuning database (each op shows its choice\n"
     "                      and where it came from: database or rule)\n"
     "  -o FILE.ir          write the IR text to FILE.ir\n\n"
     "passes, in pipeline order: %PASSES%\n\n" EXIT_STATUS},
    {"init-weights", "write seeded random weights for a spec", "init-weights SPEC --seed N -o FILE.safetensors",
     "Writes seeded random weights for every tensor of SPEC, named, shaped and typed as SEMANTICS.md\n"
     "section 6 says, as one safetensors file: the same file for the same spec and seed.\n\n"
     "  --seed N            the seed, an integer in [0, 2^64) (also --seed=N; required)\n"
     "  -o | --output FILE  the .safetensors file to write (required; written whole or not at all)\n\n" EXIT_STATUS},
    {"run", "run a whole model on token ids (interpreter, CPU kernels or the GPU)", NULL, NULL},
    {"bench", "time one layer, the whole model or the expert part (CPU or GPU)", BENCH_USAGE,
     "Times SPEC on random weights: the median of repeated runs after a warm-up, with tokens/s,\n"
     "GFLOP/s and the fraction of this machine's f32 FMA peak, which it measures first and again\n"
     "before each line (the best so far: a shared machine has slow phases), and the bytes of weights\n"
     "the grouped (and the dense) GEMMs read, at what rate and what fraction of the memory read\n"
     "bandwidth it measures first: the ceiling of a decode step.\n\n"
     "  --layer             one MoE layer: router, experts and combine (default with --model)\n"
     "  --model             the whole model's forward pass (default with --layer), attention's\n"
     "                      and the dense GEMMs' time on a second line\n"
     "  --context P         with --model (the default then): the T tokens at positions P.. after\n"
     "                      a P-token prefill, a decode step at a long context; the KV caches'\n"
     "                      size and the rate attention reads them at are said\n"
     "  --batch             with --model: T sequences, one token each at position P of its own\n"
     "                      (after a P-token prefill of each): the decode step of a serving batch\n"
     "                      (moeppc run --batch), not T tokens of one sequence\n"
     "  --rows R            with --batch: T / R sequences of R tokens each, at positions P..P+R-1\n"
     "                      (a step of R-token prompt chunks; each T a multiple of R; default 1)\n"
     "  --experts           the expert part of one layer under set routing (the paper's expert\n"
     "                      throughput): --zc-share P of the picks go to zero-computation experts\n"
     "  --tokens LIST       token counts T (default 1,64,512; up to 16, each 1..65536)\n"
     "  --threads N         CPU threads (1..256; default: one a core this process may use, as\n"
     "                      its affinity and its cgroup's CPU quota allow)\n"
     "  --random-weights S  the weights' seed (default 1)\n"
     "  --dtype D           the weights' type instead of the spec's: f32, bf16 or f16\n"
     "  --reps N            timed runs per figure (default 7)\n"
     "  --tuning DB         kernel configurations from a tuning database (moeppc tune)\n"
     "  --panel-cache DIR   --layer's and --model's packed weights kept in DIR's files and mapped\n"
     "                      from them by a later bench or run of the same weights (as run's;\n"
     "                      MOEPPC_PANEL_CACHE is not read here: a figure's panels are its own\n"
     "                      memory unless asked); what was mapped and kept is said on stderr\n"
     "  --json              a JSON object a line per figure instead of the table\n"
     "  --device cuda       one layer on the GPU (CUDA events; a table with the MoE block, the\n"
     "                      grouped GEMMs and attention apart; cuda:N on GPU N, the CUDA driver's\n"
     "                      ordinal after CUDA_VISIBLE_DEVICES); then:\n\n"
     "usage: moeppc " BENCH_CUDA_USAGE "\n\n"
     "  --tokens LIST       token counts (default 1,64,512,4096)\n"
     "  --reps N            timed runs per figure (default 20)\n"
     "  --context P         the tokens at positions P.. after a P-token prefill (a decode step at a\n"
     "                      long context; attention's KV-cache bytes/s said)\n"
     "  --batch             T sequences, one token each at position P of its own (the prefill's\n"
     "                      caches copied to each): a serving batch's decode step (run --batch)\n"
     "  --rows R            with --batch: T / R sequences of R tokens each, at positions P..P+R-1\n"
     "                      (a step of R-token prompt chunks; each T a multiple of R; default 1)\n"
     "  --zc-share P        set routing: a share P of the picks to zero-computation experts\n"
     "  --peak-tflops X     the GPU's measured dense 16-bit peak: the table gives fractions of it\n"
     "  --bandwidth-gbs Y   its measured copy bandwidth (GB/s): fractions of it too\n"
     "  --tile UP[/DOWN]    the grouped GEMMs' block tiles MxNxK (up-projection[/down-projection])\n"
     "  --tuning GPU-DB     a GPU tuning database (moeppc tune --target sm_XX)\n\n"
     "environment: MOEPPC_ISA (avx512, avx2 or sse: the widest the JIT may use), MOEPPC_PERF_MAP=1\n"
     "(the JIT's kernels named in /tmp/perf-PID.map, for perf report), MOEPPC_JIT_CACHE (a folder\n"
     "keeping the JIT's compiled kernels between runs), MOEPPC_CUDA_DRIVER\n"
     "(the CUDA driver library, default libcuda.so.1), MOEPPC_NVRTC_CACHE (a folder keeping NVRTC's\n"
     "results between runs).\n\n" EXIT_STATUS},
    {"tune", "measure kernel configurations for this CPU or a GPU; write a tuning database", TUNE_USAGE,
     "Searches every tunable kernel of SPEC's optimised IR (the GEMMs, the grouped expert GEMMs, the\n"
     "router's and attention) per token bucket: each candidate is measured on random data (median of\n"
     "repeated runs after a warm-up) and checked against the rule's output; configurations that cannot\n"
     "fit (registers, shared memory) are never run. The rule's own choice is always a candidate. A\n"
     "progress line on stderr shows configurations tried, the best so far and the time left.\n\n"
     "  -o DB               the tuning database to write (YAML; required). build, run, bench and\n"
     "                      compile take it with --tuning DB\n"
     "  --target T          " TARGETS ";\n"
     "                      a GPU target measures on that GPU (block tiles, pipeline stages,\n"
     "                      split-K, the GEMV's forms, attention's and the router's)\n"
     "  --device cuda:N     with a GPU target, measure on GPU N (the CUDA driver's ordinal, after\n"
     "                      CUDA_VISIBLE_DEVICES; default 0)\n"
     "  --tokens LIST       the token buckets (default 1,16,64,512,4096)\n"
     "  --budget SECONDS    the time to spend (default 60), shared by the shapes and buckets; too\n"
     "                      little to try anything keeps the rule's choices, and says so. On a GPU\n"
     "                      a grouped GEMM's share is twice attention's or the router's, and every\n"
     "                      kernel's rule is measured at each bucket, past the budget if need be\n"
     "  --threads N         CPU threads (1..256; default: one a core this process may use, as\n"
     "                      its affinity and its cgroup's CPU quota allow)\n"
     "  --dtype D           tune for weights of this type instead of the spec's: f32, bf16 or f16\n"
     "  --check             CPU: then time the model (its first layer where both configurations'\n"
     "                      models, on random weights, would not fit in 90 % of the memory\n"
     "                      available) at each bucket on the database and on the rule,\n"
     "                      three rounds each, and keep the rule's configurations for a bucket\n"
     "                      where the database's ran more than 2 % slower (kernels measured alone\n"
     "                      need not add up to the model's time); past the budget\n"
     "  --check-margin PCT  --check with this margin instead of 2 % (-100 to 1000; -100 keeps\n"
     "                      the rule's configurations everywhere)\n\n"
     "A database is keyed by target (CPU name and vector features, or GPU name and sm), compiler\n"
     "and LLVM/NVRTC versions: entries from another are ignored with a warning.\n\n" EXIT_STATUS},
    {"emit", "write the kernels as files: LLVM IR, objects, CUDA C, PTX, cubin, or a layer library", EMIT_USAGE,
     "Writes SPEC's kernels to the folder DIR.\n\n"
     "  --emit llvm         the CPU kernels as optimised LLVM IR (.ll), one file per kernel\n"
     "  --emit obj          the CPU kernels as objects (.o); kernels.txt lists their symbols\n"
     "  --emit lib          one MoE layer behind the C ABI of moepp_layer.h: the header, a static and\n"
     "                      a shared library and a pkg-config file (README: Embedding a layer)\n"
     "  --emit cuda         the CUDA kernels as .cu files with a header and a README (argument order)\n"
     "  --emit ptx | cubin  the CUDA kernels compiled by NVRTC (no GPU needed)\n"
     "  -o DIR              the folder (made if missing; required)\n"
     "  --target T          cpu for llvm, obj and lib (the default); sm_80, sm_86, sm_89 or sm_90 for\n"
     "                      cuda, ptx and cubin (default sm_90) and for a CUDA build of lib; emu: lib\n"
     "                      for the CUDA emulator (tests)\n"
     "  --tuning DB         kernel configurations from a tuning database\n\n"
     "environment: MOEPPC_ISA (avx512, avx2 or sse: the widest the CPU kernels may use);\n"
     "MOEPPC_JIT_SERIAL=1 (the CPU kernels compiled one by one; default: on every CPU, the same bytes).\n\n" EXIT_STATUS},
    {"build", "compile a spec to one executable: kernels, plan and runtime (CPU, or CPU and GPU)", BUILD_USAGE,
     "Compiles SPEC into one executable MODEL: the kernels (CPU, and with a GPU target the CUDA\n"
     "kernels as cubin and PTX), the planned IR and the runtime. MODEL takes the options of\n"
     "`moeppc run` without SPEC (MODEL --help); it needs no compiler at run time.\n\n"
     "  -o MODEL            the executable to write (required; written whole or not at all)\n"
     "  --target T          " TARGETS ";\n"
     "                      a GPU target adds its kernels to the CPU's: MODEL --device cuda runs on\n"
     "                      that GPU (a newer one JIT-compiles the PTX)\n"
     "  --tuning DB         kernel configurations from a tuning database (a CPU or a GPU one)\n"
     "  --keep-temps        keep the generated C and objects (their folder is printed)\n\n"
     "environment: MOEPPC_ISA (avx512, avx2 or sse: the widest the CPU kernels may use; MODEL checks\n"
     "the CPU it runs on has what its kernels use); MOEPPC_JIT_SERIAL=1 (the CPU kernels compiled one\n"
     "by one; default: on every CPU, the same bytes).\n\n" EXIT_STATUS},
    {"tokenize", "text to token ids and back with a checkpoint's tokenizer.model", TOKENIZE_USAGE,
     "Encodes each TEXT (or each line of F, - for standard input) with TOKENIZER, a SentencePiece\n"
     "BPE or unigram model (the tokenizer.model beside a LLaMA-family checkpoint, the released MoE++\n"
     "one included), exactly as the sentencepiece library does, and prints its ids a line each: what\n"
     "`run --ids` takes, and what `run --prompt TEXT` feeds the model.\n\n"
     "  --no-bos            without the beginning-of-sequence id first (default: with it, as\n"
     "                      Hugging Face's LlamaTokenizer adds it)\n"
     "  --special           the text of a control piece (<s>, </s>) or the unknown piece in TEXT is\n"
     "                      that token, the text between them encoded on its own, and no\n"
     "                      beginning-of-sequence id is added: a chat template's text, tokenized as\n"
     "                      Hugging Face's apply_chat_template does it (`run --serve`'s \"special\")\n"
     "  --pieces            the pieces instead of the ids (\\n, \\t, \\\\, \\xHH for their bytes)\n"
     "  --decode            the other way: each input is ids (spaces or commas), each printed as text\n"
     "  --escape            with --decode, the text on one line: \\n, \\t, \\r, \\\\, \\xHH for their bytes\n"
     "  --file F            the inputs are the lines of F instead of TEXT arguments; a bad line is\n"
     "                      reported by its number and answered by an empty line\n\n" EXIT_STATUS},
    {"panel-cache", "list and check a panel cache's files (run --panel-cache); remove the damaged, trim",
     PANEL_CACHE_USAGE,
     "Lists the files of DIR, a panel cache (`run --panel-cache DIR`: the CPU backend's packed weights,\n"
     "a file a packing step), a line each: its name, size, when a run last mapped or wrote it, the\n"
     "weights it holds, and what it is: ok; damaged (cut short, a header or description not its own,\n"
     "or with --verify panels that differ from the checksums they were written with: a run that\n"
     "maps it reads wrong weights unless it verifies); stale (another moeppc's file format or panel\n"
     "layout: never mapped by this one); unfinished (a temporary file a run stopped while packing\n"
     "left); writing (a temporary file a running moeppc is packing into: it holds the file's lock;\n"
     "never removed). Then a line of totals. Nothing is changed unless asked. A file is removed only\n"
     "if its name still holds the file examined: one a run has packed again meanwhile is kept.\n\n"
     "  --verify            read each file whole and check its panels against their checksums (an\n"
     "                      XXH64 of each 4 MiB; what `run --panel-cache-verify` checks before use)\n"
     "  --remove-damaged    remove the damaged and unfinished files (runs pack those steps again)\n"
     "  --remove-stale      remove the stale files (another moeppc's, which this one never maps)\n"
     "  --max MB            then remove the least recently used files until the rest take MB at most,\n"
     "                      as `run --panel-cache-max` does (0: all of them)\n"
     "  --threads N         threads that compute the checksums (default: one a core this process\n"
     "                      may use)\n\n"
     "exit status: 0 every file left is ok or stale; 1 a damaged or unfinished file is left (said\n"
     "on stderr), or DIR cannot be read; 2 a wrong command line.\n"},
};

static const HelpPage *find(const char *cmd)
{
    for (size_t k = 0; k < MOE_ARRAY_LEN(pages); k++)
        if (strcmp(cmd, pages[k].name) == 0) return &pages[k];
    return NULL;
}

const char *help_summary(const char *cmd)
{
    const HelpPage *p = find(cmd);
    return p ? p->summary : NULL;
}

bool help_print(FILE *f, const char *cmd)
{
    const HelpPage *p = find(cmd);
    if (!p || !p->usage) return false;
    fprintf(f, "usage: moeppc %s\n\n", p->usage);
    const char *mark = strstr(p->body, "%PASSES%");
    if (!mark) {
        fputs(p->body, f);
        return true;
    }
    fwrite(p->body, 1, (size_t)(mark - p->body), f);
    const char *line = mark;
    while (line > p->body && line[-1] != '\n') line--;
    int col = (int)(mark - line);
    for (const char *const *n = passes_names(); *n; n++) { /* wrapped at 96 columns */
        int w = (int)strlen(*n);
        if (n != passes_names()) {
            bool wrap = col + 2 + w > 96;
            fputs(wrap ? ",\n  " : ", ", f);
            col = wrap ? 2 : col + 2;
        }
        fputs(*n, f);
        col += w;
    }
    fputs(mark + strlen("%PASSES%"), f);
    return true;
}
