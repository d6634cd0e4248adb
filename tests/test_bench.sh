#!/usr/bin/env bash
# test_bench.sh — ds4-bench and ds4-plot end to end on the tiny preset.
#
# ds4-bench --synthetic (a model built in memory, random token ids, and also
# a raw and a chat prompt file through the synthetic vocabulary) must write
# the CSV of server-spec §7.1: the exact header, one row per frontier of six
# numbers (frontiers and intervals as the step rules give them, gen_tokens
# as asked, positive rates, payload sizes that grow with the context) and a
# stderr summary with the bandwidth roofline; with --mtp the speculative
# decode must give the plain run's tokens (ds4-bench fails otherwise) at the
# forced acceptance asked, and report it. ds4-plot must turn the CSV
# into well-formed SVG (xmllint when present, else structural checks) with
# one line and one marker per row for each series. Bad options exit 2, bad
# input exits 1, each with a message.
set -u
B="$DS4_BUILD/bin"
T="$DS4_TMP"
fail=0
ok() { echo "ok: $1"; }
bad() { echo "FAIL: $1"; fail=1; }

HEADER="ctx_tokens,prefill_tokens,prefill_tps,gen_tokens,gen_tps,kvcache_bytes"
TINY=(--synthetic q2 --preset tiny --bw-mib 16 -t 2)

# check_csv FILE "ctx1 ctx2 ..." GEN: header, rows with the given frontiers.
check_csv() {
    local file=$1 want=$2 gen=$3
    if [ "$(head -n1 "$file")" != "$HEADER" ]; then bad "$file: header is '$(head -n1 "$file")'"; return; fi
    local got
    got=$(awk -F, -v gen="$gen" '
        NR == 1 { next }
        NF != 6 { print "bad-fields"; next }
        {
            for (i = 1; i <= 6; i++) if ($i !~ /^[0-9]+(\.[0-9][0-9])?$/) { print "bad-number:" $i; next }
            if ($3 !~ /\.[0-9][0-9]$/ || $5 !~ /\.[0-9][0-9]$/) { print "rates-not-%.2f"; next }
            if ($1 - $2 != prev) { print "interval:" $1 "-" $2 "!=" prev; next }
            if ($4 != gen) { print "gen:" $4; next }
            if ($3 <= 0 || $5 <= 0) { print "rate<=0"; next }
            if ($6 <= kv) { print "kv-not-growing:" $6; next }
            prev = $1; kv = $6; printf "%s ", $1
        }' "$file")
    if [ "$got" = "$want " ]; then ok "$file: frontiers $want"; else bad "$file: got '$got', want '$want '"; cat "$file"; fi
}

# Linear steps, CSV to a file, summary on stderr.
if "$B/ds4-bench" "${TINY[@]}" --ctx-start 32 --ctx-max 96 --step-incr 32 -n 4 --csv "$T/lin.csv" 2>"$T/lin.err"; then
    check_csv "$T/lin.csv" "32 64 96" 4
    for s in "memory read bandwidth probed" "weights read per decode token:" "per CPU-second:" "cpu share" "read bandwidth probes (wall time):" \
             "model: synthetic tiny q2, 6 layers"; do
        if grep -qF "$s" "$T/lin.err"; then ok "summary has '$s'"; else bad "summary lacks '$s'"; cat "$T/lin.err"; fi
    done
else
    bad "linear sweep failed"; cat "$T/lin.err"
fi

# Geometric steps (ceil(cur * F), capped at ctx-max), CSV on stdout, no bandwidth probe.
if "$B/ds4-bench" "${TINY[@]}" --bw-mib 0 --ctx-start 24 --ctx-max 100 --step-mul 2 --tokens 2 >"$T/geo.csv" 2>"$T/geo.err"; then
    check_csv "$T/geo.csv" "24 48 96 100" 2
    if grep -q "probe" "$T/geo.err"; then bad "--bw-mib 0 still probes"; else ok "--bw-mib 0"; fi
else
    bad "geometric sweep failed"; cat "$T/geo.err"
fi
if "$B/ds4-bench" "${TINY[@]}" --ctx-start 10 --ctx-max 30 --step-mul 1.5 -n 1 >"$T/mul.csv" 2>"$T/mul.err"; then
    check_csv "$T/mul.csv" "10 15 23 30" 1
else
    bad "step-mul 1.5 failed"; cat "$T/mul.err"
fi

# Prompt files through the synthetic vocabulary.
for i in $(seq 1 40); do echo "Line $i: the quick brown fox jumps over the lazy dog, again and again."; done >"$T/prompt.txt"
if "$B/ds4-bench" "${TINY[@]}" --prompt-file "$T/prompt.txt" --ctx-start 40 --ctx-max 80 --step-incr 40 -n 2 \
        --csv "$T/raw.csv" 2>"$T/raw.err"; then
    check_csv "$T/raw.csv" "40 80" 2
else
    bad "--prompt-file failed"; cat "$T/raw.err"
fi
if "$B/ds4-bench" "${TINY[@]}" --chat-prompt-file "$T/prompt.txt" -sys "Be brief." --ctx-start 50 --ctx-max 50 -n 2 \
        --csv "$T/chat.csv" 2>"$T/chat.err"; then
    check_csv "$T/chat.csv" "50" 2
else
    bad "--chat-prompt-file failed"; cat "$T/chat.err"
fi

# MTP speculation: forced acceptance 1, 0.5 and 0 (the drafts the plain run's
# tokens or others), and the MTP's own drafts.
"$B/ds4-mkmodel" --preset tiny --seed 5 --mtp "$T/bench-mtp.gguf" -o "$T/bench-mtp-model.gguf" >/dev/null
for acc in 1 0.5 0; do
    if "$B/ds4-bench" "${TINY[@]}" --bw-mib 0 --ctx-start 32 --ctx-max 48 --step-incr 16 -n 12 --mtp "$T/bench-mtp.gguf" \
            --mtp-accept $acc >"$T/mtp.csv" 2>"$T/mtp.err"; then
        lines=$(grep -c "speculative decode 12 tok" "$T/mtp.err")
        pct=$(sed -n 's/.* drafts accepted (\([0-9]*\)% of those verified, forced).*/\1/p' "$T/mtp.err" | head -n1)
        # floor((i+1)·P) > floor(i·P) over a few drafts: exactly P at 0 and 1, within ±10% at 0.5
        if [ "$lines" = 2 ] && [ -n "$pct" ] && awk -v p="$pct" -v a=$acc 'BEGIN { exit !(p >= a * 100 - 10 && p <= a * 100 + 10 && (a == 0.5 || p == a * 100)) }'
        then ok "--mtp-accept $acc: two frontiers, $pct% accepted"
        else bad "--mtp-accept $acc: $lines lines, $pct% accepted"; cat "$T/mtp.err"; fi
        check_csv "$T/mtp.csv" "32 48" 12
    else
        bad "--mtp-accept $acc failed"; cat "$T/mtp.err"
    fi
done
if "$B/ds4-bench" "${TINY[@]}" --bw-mib 0 --ctx-start 32 --ctx-max 32 -n 8 --mtp "$T/bench-mtp.gguf" --mtp-margin 0 \
        >/dev/null 2>"$T/mtp-own.err" && grep -q "speculative decode 8 tok" "$T/mtp-own.err"; then ok "--mtp: the MTP's own drafts"
else bad "--mtp with its own drafts"; cat "$T/mtp-own.err"; fi

# expect_exit CODE TEXT ARGS...: exit code and a message containing TEXT.
expect_exit() {
    local code=$1 text=$2; shift 2
    "$@" >"$T/out" 2>"$T/err"; local rc=$?
    if [ $rc -eq "$code" ] && grep -qF -- "$text" "$T/err"; then ok "exit $code: $(head -n1 "$T/err")"
    else bad "$* -> rc $rc (want $code), stderr: $(head -n3 "$T/err")"; fi
}

echo "too short" >"$T/short.txt"
expect_exit 1 "fewer than --ctx-max" "$B/ds4-bench" "${TINY[@]}" --prompt-file "$T/short.txt" --ctx-start 8 --ctx-max 64
expect_exit 1 "cannot open" "$B/ds4-bench" "${TINY[@]}" --prompt-file "$T/missing.txt" --ctx-start 8 --ctx-max 16
expect_exit 1 "does-not-exist.gguf" "$B/ds4-bench" -m "$T/does-not-exist.gguf" --prompt-file "$T/prompt.txt" --ctx-start 8 --ctx-max 16
expect_exit 1 "cuda" "$B/ds4-bench" "${TINY[@]}" --cuda --ctx-start 8 --ctx-max 16
expect_exit 1 "cannot create" "$B/ds4-bench" "${TINY[@]}" --ctx-start 8 --ctx-max 8 -n 1 --csv "$T/no-such-dir/x.csv"

expect_exit 2 "unknown option" "$B/ds4-bench" "${TINY[@]}" --bogus
expect_exit 2 "needs a value" "$B/ds4-bench" "${TINY[@]}" --ctx-max
expect_exit 2 "is required" "$B/ds4-bench" --ctx-max 16
expect_exit 2 "only one of" "$B/ds4-bench" --prompt-file a --chat-prompt-file b
expect_exit 2 "larger than --ctx-max" "$B/ds4-bench" "${TINY[@]}" --ctx-start 64 --ctx-max 32
expect_exit 2 "--step-mul" "$B/ds4-bench" "${TINY[@]}" --step-mul 0.5
expect_exit 2 "--step-mul" "$B/ds4-bench" "${TINY[@]}" --step-mul nan
expect_exit 2 "--gen-tokens" "$B/ds4-bench" "${TINY[@]}" --gen-tokens 0
expect_exit 2 "--ctx-max" "$B/ds4-bench" "${TINY[@]}" --ctx-max 12x
expect_exit 2 "--ctx-alloc" "$B/ds4-bench" "${TINY[@]}" --ctx-start 8 --ctx-max 64 -n 8 --ctx-alloc 72
expect_exit 2 "q2 or q4" "$B/ds4-bench" --synthetic q3
expect_exit 2 "flash or tiny" "$B/ds4-bench" --synthetic q2 --preset huge
expect_exit 2 "go with --synthetic" "$B/ds4-bench" --prompt-file "$T/prompt.txt" --layers 2
expect_exit 2 "drop -m" "$B/ds4-bench" --synthetic q2 -m x.gguf
expect_exit 2 "cpu or cuda" "$B/ds4-bench" "${TINY[@]}" --backend metal
expect_exit 2 "goes with --mtp" "$B/ds4-bench" "${TINY[@]}" --mtp-accept 1
expect_exit 2 "--mtp-accept" "$B/ds4-bench" "${TINY[@]}" --mtp "$T/bench-mtp.gguf" --mtp-accept 1.5
expect_exit 1 "no-mtp.gguf" "$B/ds4-bench" "${TINY[@]}" --ctx-start 8 --ctx-max 8 -n 1 --mtp "$T/no-mtp.gguf"
if "$B/ds4-bench" --help | grep -q -- "--ctx-start"; then ok "--help"; else bad "--help"; fi

# ds4-plot on the linear sweep (3 rows) and the geometric one (4 rows).
for name in lin geo; do
    rows=$(($(wc -l <"$T/$name.csv") - 1))
    if ! "$B/ds4-plot" "$T/$name.csv" -o "$T/$name.svg" --title "tiny & <co>"; then bad "ds4-plot $name"; continue; fi
    if command -v xmllint >/dev/null; then
        if xmllint --noout "$T/$name.svg"; then ok "$name.svg is well-formed XML"; else bad "$name.svg: xmllint"; fi
    fi
    svg=$(cat "$T/$name.svg")
    [[ $svg == "<?xml"* ]] && [[ $svg == *"</svg>" ]] || bad "$name.svg: not an SVG document"
    n_lines=$(grep -c "<polyline" "$T/$name.svg"); n_dots=$(grep -c "<circle" "$T/$name.svg")
    if [ "$n_lines" -eq 2 ] && [ "$n_dots" -eq $((2 * rows)) ]; then ok "$name.svg: 2 series of $rows points"
    else bad "$name.svg: $n_lines polylines, $n_dots markers for $rows rows"; fi
    for s in "tiny &amp; &lt;co&gt;" "context (tokens)" "prefill (tok/s)" "decode (tok/s)"; do
        grep -qF "$s" "$T/$name.svg" || bad "$name.svg lacks '$s'"
    done
done

printf 'a,b\n1,2\n' >"$T/wrong-header.csv"
printf '%s\n1,1,1.00,1,1.00\n' "$HEADER" >"$T/five-fields.csv"
printf '%s\n8,8,1.00,1,1.00,10\n4,4,1.00,1,1.00,10\n' "$HEADER" >"$T/decreasing.csv"
printf '%s\n' "$HEADER" >"$T/no-rows.csv"
: >"$T/empty.csv"
expect_exit 1 "expected the ds4-bench header" "$B/ds4-plot" "$T/wrong-header.csv" -o "$T/x.svg"
expect_exit 1 ":2: expected six" "$B/ds4-plot" "$T/five-fields.csv" -o "$T/x.svg"
expect_exit 1 "does not increase" "$B/ds4-plot" "$T/decreasing.csv" -o "$T/x.svg"
expect_exit 1 "no data rows" "$B/ds4-plot" "$T/no-rows.csv" -o "$T/x.svg"
expect_exit 1 "is empty" "$B/ds4-plot" "$T/empty.csv" -o "$T/x.svg"
expect_exit 1 "cannot open" "$B/ds4-plot" "$T/missing.csv" -o "$T/x.svg"
expect_exit 2 "-o OUT.svg" "$B/ds4-plot" "$T/lin.csv"
expect_exit 2 "unknown option" "$B/ds4-plot" "$T/lin.csv" -o "$T/x.svg" --width 3
expect_exit 2 "needs a value" "$B/ds4-plot" "$T/lin.csv" -o

exit $fail
