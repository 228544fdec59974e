#!/bin/bash
# test_panel_cache_cli.sh MOEPPC WORKDIR: `moeppc panel-cache DIR` lists the files a run kept (each ok,
# verified with --verify); a file whose panels are changed in place is still "ok" to the listing,
# which trusts them as a run does, and "damaged" to --verify (exit 1, said on stderr); `run
# --panel-cache-verify` finds it too, packs that step again and prints the logits of the first run;
# --remove-damaged removes such a file (not a temporary file whose lock a running moeppc holds),
# --max 0 every file; bad command lines exit 2, a directory that cannot be read 1.
set -u -o pipefail
MOEPPC=$1 WORK=$2
SPEC=$(cd "$(dirname "$0")/../../specs/tiny" && pwd)/tiny-every2.yaml
D=$WORK/panels
fail() { echo "FAILED: $*"; exit 1; }
rm -rf "$WORK" && mkdir -p "$WORK" || exit 2
# (stdout without the timing line: the logits' top entries)
run() { "$MOEPPC" run "$SPEC" --random-weights 3 --ids "5 1 4 1 5" --top 3 --panel-cache "$D" "$@" | grep -v '^ran '; }
run >"$WORK/ref" 2>"$WORK/ref.err" || fail "run: $(cat "$WORK/ref.err")"
n=$(ls "$D"/panels-*.bin | wc -l)
[ "$n" -ge 4 ] || fail "only $n panel files kept"
"$MOEPPC" panel-cache "$D" >"$WORK/list" 2>&1 || fail "panel-cache: $(cat "$WORK/list")"
[ "$(grep -c '  ok$' "$WORK/list")" -eq "$n" ] || fail "not every file ok: $(cat "$WORK/list")"
grep -q "^$D: $n files, .* MB: $n ok (0 verified), 0 damaged, 0 stale, 0 unfinished$" "$WORK/list" ||
  fail "totals: $(tail -1 "$WORK/list")"
"$MOEPPC" panel-cache "$D" --verify --threads 2 >"$WORK/list" 2>&1 || fail "--verify: $(cat "$WORK/list")"
[ "$(grep -c '  ok, verified$' "$WORK/list")" -eq "$n" ] || fail "not every file verified: $(cat "$WORK/list")"
# change the panels of the largest file (an expert projection's) in place: the header's u64 at 24
# says where they begin
damage() {
  f=$(ls -S "$D"/panels-*.bin | head -1)
  /usr/bin/python3 - "$f" <<'PY' || fail "damage"
import struct, sys
with open(sys.argv[1], "r+b") as f:
    data = struct.unpack("<Q", f.read(40)[24:32])[0]
    f.seek(data + 100); b = f.read(1); f.seek(data + 100); f.write(bytes([b[0] ^ 0x40]))
PY
}
damage
name=$(basename "$f")
"$MOEPPC" panel-cache "$D" >"$WORK/list" 2>&1 || fail "listing a changed file: $(cat "$WORK/list")"
grep -q "^$name .*  ok$" "$WORK/list" || fail "unverified listing: $(grep "$name" "$WORK/list")"
"$MOEPPC" panel-cache "$D" --verify >"$WORK/list" 2>"$WORK/list.err"; rc=$?
cat "$WORK/list" "$WORK/list.err"
[ $rc -eq 1 ] || fail "--verify of a damaged file: exit $rc"
grep -q "^$name .*  damaged: bytes [0-9]* to [0-9]* differ from their checksum$" "$WORK/list" || fail "not damaged"
grep -q "1 damaged or unfinished file in $D" "$WORK/list.err" || fail "stderr: $(cat "$WORK/list.err")"
run --panel-cache-verify >"$WORK/again" 2>"$WORK/again.err" || fail "run --panel-cache-verify: $(cat "$WORK/again.err")"
cat "$WORK/again.err"
grep -q "panel cache $D: $name is damaged (bytes [0-9]* to [0-9]* differ from their checksum); packing it again" \
  "$WORK/again.err" || fail "run --panel-cache-verify did not find it"
grep -q "$((n - 1)) steps' panels mapped .*, 1 packed and kept .*; 1 damaged (packed again)$" "$WORK/again.err" ||
  fail "run --panel-cache-verify's counts"
cmp -s "$WORK/ref" "$WORK/again" || fail "logits after packing again differ: $(diff "$WORK/ref" "$WORK/again")"
MOEPPC_PANEL_CACHE_VERIFY=1 run >"$WORK/again" 2>"$WORK/again.err" || fail "MOEPPC_PANEL_CACHE_VERIFY=1 run"
grep -q "$n steps' panels mapped .*, 0 packed and kept .*)$" "$WORK/again.err" ||
  fail "made again: $(cat "$WORK/again.err")"
cmp -s "$WORK/ref" "$WORK/again" || fail "logits of the file made again differ"
damage
"$MOEPPC" panel-cache "$D" --verify --remove-damaged >"$WORK/list" 2>&1 || fail "--remove-damaged: $(cat "$WORK/list")"
grep -q "^$name .*  damaged: .*; removed$" "$WORK/list" && grep -q "; 1 removed (" "$WORK/list" ||
  fail "--remove-damaged: $(cat "$WORK/list")"
[ ! -e "$f" ] || fail "$f still there"
: >"$D/panels-0000000000000000.bin.tmpXyZ123"
touch -d '-1 hour' "$D/panels-0000000000000000.bin.tmpXyZ123" # (a stopped run's: unchanged since)
: >"$D/panels-x$(printf '\033')y.bin" # (not a run's: an escape byte in its name, printed as '?')
"$MOEPPC" panel-cache "$D" >"$WORK/list" 2>&1; rc=$?
[ $rc -eq 1 ] && grep -q "^panels-0000000000000000.bin.tmpXyZ123 .*unfinished: " "$WORK/list" &&
  grep -q "^panels-x?y.bin .*damaged: not a panel file" "$WORK/list" ||
  fail "unfinished file: exit $rc: $(cat "$WORK/list")"
# a temporary file whose lock is held (a running moeppc packing into it): writing, kept, exit 0
w="$D/panels-0000000000000001.bin.tmpAbC987"
exec 9>"$w" && flock -x 9 || fail "cannot lock $w"
"$MOEPPC" panel-cache "$D" --remove-damaged >"$WORK/list" 2>&1 || fail "a file being written: $(cat "$WORK/list")"
grep -q "^panels-0000000000000001.bin.tmpAbC987 .*writing: a running moeppc is packing into it$" "$WORK/list" &&
  grep -q ", 1 being written; 2 removed " "$WORK/list" && [ -e "$w" ] ||
  fail "a file being written: $(cat "$WORK/list")"
exec 9>&-
# unlocked, but changed within the last 300 s (a run between making its file and locking it, or a
# file system without locks): writing, kept; once older, unfinished and removed (below)
"$MOEPPC" panel-cache "$D" --remove-damaged >"$WORK/list" 2>&1 || fail "a file just changed: $(cat "$WORK/list")"
grep -q "^panels-0000000000000001.bin.tmpAbC987 .*writing: changed [0-9]* s ago, unlocked: " "$WORK/list" &&
  grep -q ", 1 being written$" "$WORK/list" && [ -e "$w" ] || fail "a file just changed: $(cat "$WORK/list")"
touch -d '-301 seconds' "$w"
"$MOEPPC" panel-cache "$D" --remove-damaged --max 0 >"$WORK/list" 2>&1 || fail "--max 0: $(cat "$WORK/list")"
grep -q "^panels-0000000000000001.bin.tmpAbC987 .*unfinished: .*; removed$" "$WORK/list" ||
  fail "an old unlocked file: $(cat "$WORK/list")"
grep -q "past 0 MB: $((n - 1)) least recently used removed" "$WORK/list" || fail "--max 0: $(tail -1 "$WORK/list")"
[ -z "$(ls -A "$D")" ] || fail "files left: $(ls "$D")"
out=$("$MOEPPC" panel-cache "$D" --verify --max 0 2>&1) || fail "an empty directory: $out"
want="$D: 0 files, 0.0 MB: 0 ok (0 verified), 0 damaged, 0 stale, 0 unfinished; past 0 MB: 0 least recently used"
[ "$out" = "$want removed (0.0 MB)" ] || fail "an empty directory: $out"
# bad command lines, a directory that cannot be read
for bad in "" "$D --threads 0" "$D --max x" "$D --max -1" "$D --frob" "$D $D" "$D --max"; do
  err=$("$MOEPPC" panel-cache $bad 2>&1); rc=$?
  [ $rc -eq 2 ] && echo "$err" | grep -q "^moeppc panel-cache: error: " || fail "'$bad': exit $rc: $err"
done
err=$("$MOEPPC" panel-cache "$WORK/none" 2>&1); rc=$?
[ $rc -eq 1 ] && echo "$err" | grep -q "cannot read the directory '$WORK/none'" || fail "no directory: exit $rc: $err"
err=$("$MOEPPC" run "$SPEC" --random-weights 3 --ids "1" --panel-cache-verify 2>&1); rc=$?
[ $rc -eq 2 ] && echo "$err" | grep -q -- "--panel-cache-verify: only with --panel-cache" || fail "verify alone: $err"
err=$(MOEPPC_PANEL_CACHE_VERIFY=yes "$MOEPPC" run "$SPEC" --random-weights 3 --ids "1" --panel-cache "$D" 2>&1); rc=$?
[ $rc -eq 2 ] && echo "$err" | grep -q "MOEPPC_PANEL_CACHE_VERIFY: expected 0 or 1" || fail "env 'yes': $err"
echo "ok: moeppc panel-cache"
