#!/usr/bin/env bash
# make_corpus.sh BUILD_DIR: (re)writes the seed corpora tests/fuzz/corpus/<target>/ from the
# repository's real inputs — the shipped and tiny specs, the bad specs of the error tests, the HF
# configs, the golden IR of every pass stage, the shipped tuning databases, tokenizer models — and small checkpoints
# written by `moeppc init-weights` for micro specs plus a few hand-made edge cases (mk_safetensors.py),
# and `run --serve` requests.
# Each seed stays under 64 KB. Run it by hand after the formats change; the fuzzers never write here.
set -euo pipefail
build=$(cd "${1:?usage: make_corpus.sh BUILD_DIR}" && pwd)
cd "$(dirname "$0")/../.."
out=tests/fuzz/corpus
rm -rf "$out"
mkdir -p "$out"/{spec,hf_config,safetensors,safetensors_index,ir,tuning,tokenizer,serve}

# spec: every shipped spec and every bad spec of the golden error tests
cp specs/*.yaml specs/tiny/*.yaml "$out/spec/"
for f in tests/frontend/errors/*.yaml; do cp "$f" "$out/spec/bad-$(basename "$f")"; done

# hf_config: the released 7B config, the tiny one, the bad ones
cp tests/frontend/hf/*.json "$out/hf_config/"
cp tests/cpu/hf-tiny/config.json "$out/hf_config/hf-tiny.json"

# ir: the dense form and every pass stage of three tiny specs, and the bad IR files
for s in tiny-moepp tiny-every2 tiny-mixtral; do
  cp "tests/ir/golden/$s.ir" "$out/ir/0-dense-$s.ir"
  for stage in tests/passes/golden/*/; do cp "$stage$s.ir" "$out/ir/$(basename "$stage")-$s.ir"; done
done
cp tests/ir/errors/*.ir "$out/ir/"

# tuning: the shipped databases, the bad ones, and one measured for tiny-moepp (whose shapes the
# target's specialize run looks up)
cp tuning/*.yaml "$out/tuning/"
for f in tests/tuning/bad/*.yaml; do cp "$f" "$out/tuning/bad-$(basename "$f")"; done
"$build/moeppc" tune specs/tiny/tiny-moepp.yaml --tokens 1,16,64 --budget 5 -o "$out/tuning/tiny-moepp.yaml" >/dev/null 2>&1

# safetensors: real checkpoints of micro specs in each dtype, and edge cases
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
for dt in f32 bf16 f16; do
  sed -e "s/vocab: 256/vocab: 16/; s/hidden: 64/hidden: 8/; s/heads: 4/heads: 2/; s/kv_heads: 4/kv_heads: 1/" \
      -e "s/intermediate: 32/intermediate: 4/; s/layers: 2$/layers: 1/; s/dtype: f32/dtype: $dt/" \
      specs/tiny/tiny-moepp.yaml > "$tmp/micro-$dt.yaml"
  "$build/moeppc" init-weights "$tmp/micro-$dt.yaml" --seed 1 -o "$out/safetensors/micro-$dt.safetensors" >/dev/null
done
/usr/bin/python3 tests/fuzz/mk_safetensors.py "$out/safetensors" "$out/safetensors_index"

# tokenizer: SentencePiece models trained by the sentencepiece library (LLaMA's settings; unused
# pieces; a small character map of its own), as the runtime_tokenizer test trains them
/usr/bin/python3 tests/runtime/tokenizer_cases.py "$tmp/tok" >/dev/null
cp "$tmp"/tok/{llama,unused,rules,unigram_llama}.model "$out/tokenizer/"

# serve: `run --serve` requests, every field used once, and bad ones
s=$out/serve
printf '%s' '{"id": "a", "ids": [1, 2, 3], "max_tokens": 4}' >"$s/ids.json"
printf '%s' '{"id": 7, "prompt": "the city\n", "stream": true, "temperature": 0.8, "top_k": 40, "top_p": 0.9, "repetition_penalty": 1.1, "seed": 3}' >"$s/prompt.json"
printf '%s' '{"id": "c", "continue": "a", "ids": [7], "stop": [2, 13]}' >"$s/continue.json"
printf '%s' '{"ids": [1], "stop": ["\n\n", 2, "User:"]}' >"$s/stop-strings.json"
printf '%s' '{"ids": [1], "stop": [""]}' >"$s/bad-stop-empty.json"
printf '%s' '{"ids": [1, 2], "logprobs": 3}' >"$s/logprobs.json"
printf '%s' '{"ids": [1, 2], "presence_penalty": 0.5, "frequency_penalty": -1, "logit_bias": {"13": -100, "2": 2.5}}' >"$s/penalties.json"
printf '%s' '{"ids": [1], "logit_bias": {"13": 1, "013": 2}}' >"$s/bad-bias-twice.json"
printf '%s' '{"cancel": "a"}' >"$s/cancel.json"
printf '%s' '{"cancel": 7, "ids": [1]}' >"$s/bad-cancel.json"
printf '%s' '{"ids": [], "stop": []}' >"$s/bad-empty-ids.json"
printf '%s' '{"id": [1], "ids": [1]}' >"$s/bad-id-array.json"
printf '%s' '{"ids": [1.5, 300]}' >"$s/bad-ids.json"
printf '%s' 'not json' >"$s/bad-not-json.json"
printf '%s' '{"prompt": "\u00e9\ud800", "ids": [1]}' >"$s/bad-both.json"
printf '%s' '{"id": "\u0000x", "ids": [1], "max_tokens": 1e300}' >"$s/bad-max.json"

find "$out" -type f -size +64k -print -delete | sed 's/^/too large, dropped: /'
du -sh "$out"
