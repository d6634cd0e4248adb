#!/usr/bin/env bash
# run-tests.sh — runs every ds4 test and prints one summary line.
#
# A test is a compiled program $DS4_BUILD/tests/test_*, a shell script
# tests/test_*.sh, or a node script tests/node/test_*.mjs. Exit 0 = pass,
# 77 = skipped (a missing optional oracle), anything else = fail. Each test
# gets DS4_BUILD (build dir; binaries in $DS4_BUILD/bin), DS4_TMP (a scratch
# dir removed afterwards) and DS4_SAN (1 under sanitizers).
# TESTS="pattern" runs only tests whose name contains the pattern.
set -u
cd "$(dirname "$0")/.."
export DS4_BUILD="${DS4_BUILD:-build}" DS4_SAN="${DS4_SAN:-0}"
export DS4_ROOT="$PWD"
export ASAN_OPTIONS="${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0}"
export UBSAN_OPTIONS="${UBSAN_OPTIONS:-print_stacktrace=1:halt_on_error=1}"
pass=0 fail=0 skip=0 failed=""
logdir="$DS4_BUILD/test-logs"; mkdir -p "$logdir"

run_one() { # name, command...
    local name="$1"; shift
    case "$name" in *"${TESTS:-}"*) ;; *) return ;; esac
    export DS4_TMP; DS4_TMP="$(mktemp -d)"
    local t0=$SECONDS rc
    "$@" >"$logdir/$name.log" 2>&1; rc=$?
    rm -rf "$DS4_TMP"
    local dt=$((SECONDS - t0))
    if [ $rc -eq 0 ]; then pass=$((pass+1)); echo "PASS  $name (${dt}s)"
    elif [ $rc -eq 77 ]; then skip=$((skip+1)); echo "SKIP  $name: $(tail -n1 "$logdir/$name.log")"
    else fail=$((fail+1)); failed="$failed $name"; echo "FAIL  $name (exit $rc, ${dt}s) — last lines of $logdir/$name.log:"
        tail -n 25 "$logdir/$name.log" | sed 's/^/    /'
    fi
}

for t in "$DS4_BUILD"/tests/test_*; do [ -x "$t" ] && run_one "$(basename "$t")" "$t"; done
for t in tests/test_*.sh; do [ -f "$t" ] && run_one "$(basename "$t" .sh)" bash "$t"; done
for t in tests/node/test_*.mjs; do [ -f "$t" ] && run_one "$(basename "$t" .mjs)" node "$t"; done

flavour=""; [ "$DS4_SAN" = 1 ] && flavour=" (ASan+UBSan)"
[ -n "$failed" ] && echo "failed:$failed"
echo "tests$flavour: $pass passed, $fail failed, $skip skipped"
[ $fail -eq 0 ]
