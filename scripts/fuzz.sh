#!/usr/bin/env bash
# fuzz.sh [SECONDS] [TARGET...]: coverage-guided fuzzing of every reader of hostile input (tests/fuzz):
# builds the libFuzzer targets with clang, ASan and UBSan in build-fuzz/, runs each target (all of them
# by default: the fuzz_targets of tests/fuzz/CMakeLists.txt) for SECONDS
# (default 60), one after another at low priority, and prints executions, coverage and crashes per target.
#
# Each target starts from its seed corpus (tests/fuzz/corpus/TARGET, copied into build-fuzz/corpus/
# TARGET, where what libFuzzer finds accumulates from run to run; the repository is never written).
# Crash, leak, time-out and out-of-memory inputs go to build-fuzz/crashes/TARGET/ and make the script
# exit 1: reproduce one with `build-fuzz/tests/fuzz/fuzz_TARGET FILE`, fix it, and keep the input as
# tests/fuzz/regressions/TARGET/NAME so CTest replays it on every run.
set -euo pipefail
cd "$(dirname "$0")/.."
secs=${1:-60}
shift || true
targets=("$@")
# (all of them: tests/fuzz/CMakeLists.txt's list)
[ ${#targets[@]} -gt 0 ] ||
  read -r -a targets <<<"$(sed -n 's/^set(fuzz_targets \(.*\))$/\1/p' tests/fuzz/CMakeLists.txt)"
case "$secs" in '' | *[!0-9]*) echo "usage: scripts/fuzz.sh [SECONDS] [TARGET...]" >&2; exit 2 ;; esac

# clang and its libFuzzer runtime, installed by scripts/deps.sh with the build's own needs
missing=()
command -v clang >/dev/null || missing+=(clang)
ls /usr/lib/llvm-*/lib/clang/*/lib/linux/libclang_rt.fuzzer-x86_64.a >/dev/null 2>&1 || missing+=(libclang-rt-14-dev)
bash scripts/deps.sh "${missing[@]}"

out=build-fuzz
cmake -S . -B $out -DCMAKE_C_COMPILER=clang -DCMAKE_BUILD_TYPE=RelWithDebInfo -DMOEPPC_FUZZ=ON \
      -DMOEPPC_TESTS=OFF -DMOEPPC_LLVM=OFF -DMOEPPC_WERROR=OFF >/dev/null
cmake --build $out -j2 --target "${targets[@]/#/fuzz_}" >/dev/null

dict_of() {
  case "$1" in
    spec | tuning) echo tests/fuzz/dict/yaml.dict ;;
    ir) echo tests/fuzz/dict/ir.dict ;;
    *) echo tests/fuzz/dict/json.dict ;;
  esac
}

export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
rows=()
found=0
for t in "${targets[@]}"; do
  corpus=$out/corpus/$t crashes=$out/crashes/$t log=$out/logs/$t.log
  mkdir -p "$corpus" "$crashes" "$out/logs"
  cp -n tests/fuzz/corpus/$t/* "$corpus/"
  before=$(ls "$crashes" | wc -l)
  echo "fuzz: $t for $secs s (log: $log)"
  rc=0
  nice -n 10 $out/tests/fuzz/fuzz_$t -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 \
    -dict="$(dict_of "$t")" -artifact_prefix="$crashes/" -print_final_stats=1 "$corpus" >"$log" 2>&1 || rc=$?
  execs=$(sed -n 's/^stat::number_of_executed_units: *//p' "$log" | tail -1)
  cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 | cut -d' ' -f2)
  new=$(( $(ls "$crashes" | wc -l) - before ))
  if [ "$rc" -ne 0 ] && [ "$new" -eq 0 ]; then new=1; fi   # a failure that left no input is still one
  [ "$new" -gt 0 ] && found=1
  rows+=("$(printf '%-18s %12s %8s %8s %8s' "$t" "${execs:-?}" "${cov:-?}" "$(ls "$corpus" | wc -l)" "$new")")
done

echo
printf '%-18s %12s %8s %8s %8s\n' target executions edges corpus crashes
printf '%s\n' "${rows[@]}"
if [ "$found" -ne 0 ]; then
  echo "fuzz: crashes found; inputs in $out/crashes/, logs in $out/logs/" >&2
  exit 1
fi
