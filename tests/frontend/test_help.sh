#!/bin/bash
# test_help.sh MOEPPC SRC: the command line's documentation against its parsers (tools/help.h).
# For every command `moeppc --help` lists: `moeppc CMD --help` and `moeppc help CMD` print the same
# page, more than its usage line; a usage error prints that page's first line; and every option
# literal in the command's argument parser (its functions in SRC, found by name below) is on the
# page, outside its synopses. An option added to a parser without a word in the help fails here, as
# does one of run's that parse_run_args would call unknown.
set -u
M=$1 SRC=$2
status=0
fail() { echo "FAILED: $*"; status=1; }

# command → "file:function ..." whose option literals ("--x", "-o") the page must name
declare -A parsers=(
  [check]="frontend/check.c:cmd_check"
  [import-hf]="frontend/check.c:cmd_import_hf"
  [compile]="tools/compile.c:parse_compile_args"
  [init-weights]="runtime/init_weights.c:init_parse_args"
  [run]="runtime/cpu/driver.c:parse_option runtime/cpu/driver.c:sample_option runtime/cpu/driver.c:parse_run_args"
  [bench]="tools/bench.c:parse_bench_args tools/bench_cuda.c:parse_args"
  [tune]="tools/common.c:tune_parse_args"
  [emit]="tools/build.c:cmd_emit"
  [build]="tools/build.c:cmd_build"
  [tokenize]="tools/tokenize.c:cmd_tokenize"
  [panel-cache]="tools/panel_cache.c:parse_args"
)
# The option literals of function fn in file (from its definition to the first "}" in column 1).
options_of() {
  awk -v fn="$2" '$0 ~ "^[a-z].*[ *]" fn "\\(" && $0 !~ /;$/ {on = 1} on {print} on && /^}/ {exit}' "$SRC/$1" |
    grep -oE '"--?[a-zA-Z][a-zA-Z0-9-]*=?"' | tr -d '"=' | sort -u
}

cmds=$("$M" --help | awk '/^commands:/ {on = 1; next} on && /^  [a-z]/ {print $1} on && /^$/ {exit}')
[ "$(echo $cmds | wc -w)" = "${#parsers[@]}" ] || fail "moeppc --help lists '$(echo $cmds)'; this test knows ${!parsers[*]}"
for c in $cmds; do
  [ -n "${parsers[$c]:-}" ] || { fail "no parser named for $c"; continue; }
  page=$("$M" "$c" --help) || fail "moeppc $c --help: exit status $?"
  [ "$("$M" help "$c")" = "$page" ] || fail "moeppc help $c differs from moeppc $c --help"
  first=$(head -1 <<< "$page")
  case "$first" in "usage: moeppc $c"*) ;; *) fail "moeppc $c --help begins '$first'" ;; esac
  [ "$(wc -l <<< "$page")" -ge 8 ] || fail "moeppc $c --help is $(wc -l <<< "$page") lines"
  err=$("$M" "$c" --no-such-option 2>&1 >/dev/null); rc=$?
  [ $rc = 2 ] || fail "moeppc $c --no-such-option: exit status $rc, expected 2"
  grep -qxF -- "$first" <<< "$err" || fail "moeppc $c: a usage error's synopsis is not --help's: $(grep usage: <<< "$err")"
  body=$(grep -v '^usage: ' <<< "$page") # described, not only in a synopsis
  n=0
  for p in ${parsers[$c]}; do
    opts=$(options_of "${p%%:*}" "${p#*:}")
    [ -n "$opts" ] || [ "$c" = check ] || fail "no option literal found in ${p#*:} of ${p%%:*}"
    for o in $opts; do
      [ "$o" = --help ] || [ "$o" = -h ] && continue
      n=$((n + 1))
      grep -qE -- "(^|[^a-zA-Z0-9-])$o([^a-zA-Z0-9-]|$)" <<< "$body" || fail "moeppc $c --help does not mention $o (${p%%:*})"
    done
  done
  echo "$c: $n options documented"
done
# run: each option parse_option takes is in parse_run_args' list of options with a value (given
# without one, it is said to need one, not to be unknown)
for o in $(options_of runtime/cpu/driver.c parse_option); do
  "$M" run x.yaml "$o" 2>&1 | grep -q "option '$o' needs a value" ||
    fail "moeppc run x.yaml $o: not 'needs a value' (missing from parse_run_args' valued list?)"
done
exit $status
