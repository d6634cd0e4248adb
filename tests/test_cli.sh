#!/usr/bin/env bash
# test_cli.sh — the ds4 command end to end on a tiny random model.
#
# One-shot answers (greedy runs repeat, seeds reproduce, -n limits, the
# thinking modes render differently), the interactive chat driven through a
# pipe (turns, prefix reuse seen in the stats line, /new, /quit, unknown
# commands) and through a pseudo-terminal with `script` (libedit, Ctrl+C
# stopping an answer, Ctrl+D leaving), --dump-logprobs checked with node,
# --token-ids/--logits-out, --perplexity-file against the NLL computed from
# --logits-out, greedy speculative decoding with an MTP file (the same
# answers and chat turns as without it), and the documented exit codes for
# bad flags and a missing model. Small -n everywhere: the suite also runs under ASan.
set -u
B="$DS4_BUILD/bin"
T="$DS4_TMP"
fail=0
ok() { echo "ok: $1"; }
bad() { echo "FAIL: $1"; fail=1; }
check() { if eval "$2"; then ok "$1"; else bad "$1"; fi; }

M="$T/cli-tiny.gguf" MTP="$T/cli-tiny-mtp.gguf"
"$B/ds4-mkmodel" --preset tiny --seed 1 --mtp "$MTP" -o "$M" >/dev/null || { echo "FAIL: mkmodel"; exit 1; }
# One thread: the tiny model gains nothing from more, and a busy machine slows a pool down.
ds4() { "$B/ds4" -m "$M" -c 4096 -t 1 "$@"; }
# From the stats lines "ds4: prompt: N tokens (R reused), ..., generation: G tokens, ...":
# N or R of the K-th line from the end (default the last), G of the last.
prompt_tokens() { sed -n 's/^ds4: prompt: \([0-9]*\) tokens.*/\1/p' <<<"$1" | tail -n "${2:-1}" | head -n 1; }
reused_tokens() { sed -n 's/^ds4: prompt: [0-9]* tokens (\([0-9]*\) reused).*/\1/p' <<<"$1" | tail -n "${2:-1}" | head -n 1; }
generated() { sed -n 's/.*generation: \([0-9]*\) tokens.*/\1/p' <<<"$1" | tail -n 1; }

# ---- one-shot ----
a=$(ds4 -p "Hello there" --temp 0 -n 8 2>"$T/cli-e1") || bad "one-shot exit code"
b=$(ds4 -p "Hello there" --temp 0 -n 8 2>/dev/null)
check "greedy one-shot repeats" '[ -n "$a" ] && [ "$a" = "$b" ]'
check "stats line on stderr" 'grep -q "^ds4: prompt: [0-9]* tokens (0 reused), prefill: .* t/s, generation: 8 tokens, .* t/s$" "$T/cli-e1"'
check "context line on stderr" 'grep -q "^ds4: context 4096 tokens" "$T/cli-e1"'

s1=$(ds4 -p "Tell me" --temp 1 --seed 7 -n 8 2>/dev/null)
s1b=$(ds4 -p "Tell me" --temp 1 --seed 7 -n 8 2>/dev/null)
check "same seed, same answer" '[ "$s1" = "$s1b" ]'
differs=0
for seed in 8 9 10; do
    [ "$(ds4 -p "Tell me" --temp 1 --seed $seed -n 8 2>/dev/null)" != "$s1" ] && differs=1
done
check "other seeds give other answers" '[ $differs = 1 ]'
e=$(ds4 -p "Tell me" --temp 0.8 --top-p 0.9 --min-p 0.1 --top-k 5 --seed 3 -n 4 -t 1 2>&1 >/dev/null) ||
    bad "sampler flags run"

e=$(ds4 -p "Count" --temp 0 -n 3 2>&1 >/dev/null)
check "-n 3 generates 3 tokens" '[ "$(generated "$e")" = 3 ]'

think=$(ds4 -p "Hi" --think --temp 0 -n 4 2>"$T/cli-think")
nothink=$(ds4 -p "Hi" --nothink --temp 0 -n 4 2>"$T/cli-nothink")
check "--think shows the reasoning between markers" '[[ "$think" == "<think>"* ]]'
check "--nothink shows no reasoning" '[[ "$nothink" != *"<think>"* && "$nothink" != *"</think>"* ]]'
check "--nothink answers differently" '[ "$think" != "$nothink" ]'
nosys=$(ds4 -p "Hi" -sys "" --temp 0 -n 1 2>&1 >/dev/null)
check "-sys \"\" drops the system prompt" \
    '[ "$(prompt_tokens "$nosys")" -lt "$(prompt_tokens "$(cat "$T/cli-think")")" ]'
max=$(ds4 -p "Hi" --think-max --temp 0 -n 1 2>&1 >/dev/null)
check "--think-max below its context warns" 'grep -q "Think Max needs a context of at least 393216" <<<"$max"'
check "... and renders as --think" '[ "$(prompt_tokens "$max")" = "$(prompt_tokens "$(cat "$T/cli-think")")" ]'
if [ "${DS4_SAN:-0}" != 1 ]; then # a 393216-token context: skipped under sanitizers for speed
    max=$("$B/ds4" -m "$M" -c 393216 -t 1 -p "Hi" --think-max --temp 0 -n 1 2>&1 >/dev/null)
    check "--think-max adds the reasoning-effort paragraph" \
        '[ "$(prompt_tokens "$max")" -gt $(( $(prompt_tokens "$(cat "$T/cli-think")") + 50 )) ]'
fi
printf 'Hello there' >"$T/cli-prompt.txt"
c=$(ds4 --prompt-file "$T/cli-prompt.txt" --temp 0 -n 8 2>/dev/null)
check "--prompt-file equals -p" '[ "$c" = "$a" ]'
raw=$(ds4 -p "<｜begin▁of▁sentence｜>You are a helpful assistant<｜User｜>Hello there<｜Assistant｜><think>" \
    --temp 0 -n 8 2>/dev/null)
check "a prompt starting with BOS is used as rendered" '[ "$raw" = "$a" ]'

# ---- the chat through a pipe ----
out=$(printf 'Hello\nHow are you\n/bogus\n/new\nHello\n/quit\nnever read\n' |
      ds4 --nothink --temp 0 -n 4 2>"$T/cli-repl")
rc=$?
e=$(cat "$T/cli-repl")
check "chat: /quit exits 0" '[ $rc = 0 ]'
check "chat: three turns ran" '[ "$(grep -c "^ds4: prompt:" <<<"$e")" = 3 ]'
p1=$(prompt_tokens "$e" 3)
check "chat: turn 2 keeps turn 1 (prompt + 3 evaluated replies)" '[ "$(reused_tokens "$e" 2)" = $((p1 + 3)) ]'
check "chat: unknown command" 'grep -q "unknown command /bogus" <<<"$e"'
check "chat: /new starts over" '[ "$(reused_tokens "$e" 1)" = 0 ] && [ "$(prompt_tokens "$e" 1)" = "$p1" ]'
check "chat: help printed" 'grep -q "/think-max" <<<"$out"'
turn1=$(ds4 -p "Hello" --nothink --temp 0 -n 4 2>/dev/null)
check "chat: first answer equals the one-shot answer" 'grep -qF -- "$turn1" <<<"$out"'
printf 'Hi\n' | ds4 -n 2 --temp 0 >/dev/null 2>&1
rc=$?
check "chat: end of input exits 0" '[ $rc = 0 ]'
e=$(printf '/ctx 2048\nHi\n/ctx x\n/read %s\n' "$T/cli-prompt.txt" | ds4 --nothink -n 2 --temp 0 2>&1 >/dev/null)
check "chat: /ctx reopens with the new context" 'grep -q "^ds4: context 2048 tokens" <<<"$e"'
check "chat: /ctx x is refused" 'grep -q "/ctx needs a positive integer" <<<"$e"'
check "chat: /read sends the file" '[ "$(grep -c "^ds4: prompt:" <<<"$e")" = 2 ]'

# ---- MTP speculation: greedy answers and chat turns as without it ----
# margin 0 verifies every draft; -n 1 and -n 2 stop on a token a step may have evaluated ahead
for n in 1 2 24; do
    plain=$(ds4 -p "Hello there" --nothink --temp 0 -n $n 2>/dev/null)
    spec=$(ds4 --mtp "$MTP" --mtp-draft 2 --mtp-margin 0 -p "Hello there" --nothink --temp 0 -n $n 2>"$T/cli-mtp")
    check "mtp: greedy -n $n answer as without MTP" '[ -n "$plain" ] && [ "$spec" = "$plain" ]'
done
check "mtp: speculation announced" 'grep -q "MTP speculative decoding on (margin 0.0)" "$T/cli-mtp"'
e=$(ds4 --mtp "$MTP" -p "Hi" --temp 0 -n 2 2>&1 >/dev/null)
check "mtp: --mtp-draft 1 leaves it off, and says so" 'grep -q "speculation needs --temp 0 and --mtp-draft 2" <<<"$e"'
e=$(DS4_MTP_SPEC_DISABLE=1 ds4 --mtp "$MTP" --mtp-draft 2 -p "Hi" --temp 0 -n 2 2>&1 >/dev/null)
check "mtp: DS4_MTP_SPEC_DISABLE turns it off" 'grep -q "speculation needs" <<<"$e"'
chat_in='Hello\nHow are you\nAnd then\n/quit\n'
plain=$(printf "$chat_in" | ds4 --nothink --temp 0 -n 6 2>"$T/cli-chat-plain")
spec=$(printf "$chat_in" | ds4 --mtp "$MTP" --mtp-draft 2 --mtp-margin 0 --nothink --temp 0 -n 6 2>"$T/cli-chat-mtp")
check "mtp: chat turns as without MTP" '[ "$spec" = "$plain" ]'
check "mtp: chat turns reuse the same prefixes" \
    '[ "$(grep -o "([0-9]* reused)" "$T/cli-chat-mtp")" = "$(grep -o "([0-9]* reused)" "$T/cli-chat-plain")" ]'
# The accept path: with output.weight zeroed every logit is 0, so greedy
# decoding picks token 0 each step and so does the MTP head (the same
# matrix): every draft is right (ds4-bench shows it), and answers that stop
# on a token a step evaluated ahead (-n 2; chat turns of -n 4) must still
# be plain decoding's.
# zero_tensor FILE NAME: the tensor's bytes set to 0 in place, located by
# ds4-gguf's JSON (data_offset + the tensor's offset, nbytes).
zero_tensor() {
    local at
    at=$("$B/ds4-gguf" "$1" | awk -v name="\"$2\"," '
        /"data_offset":/ { gsub(/[^0-9]/, "", $2); base = $2 }
        $1 == "\"name\":" && $2 == name { hit = 1 }
        hit && /"offset":/ { gsub(/[^0-9]/, "", $2); off = $2 }
        hit && /"nbytes":/ { gsub(/[^0-9]/, "", $2); print base + off, $2; exit }')
    [ -n "$at" ] || return 1
    set -- "$1" $at
    head -c "$3" /dev/zero | dd of="$1" bs=65536 seek="$2" oflag=seek_bytes conv=notrunc status=none
}
Z="$T/cli-zero.gguf"
cp "$M" "$Z" && zero_tensor "$Z" output.weight || bad "zeroing output.weight"
zds4() { "$B/ds4" -m "$Z" -c 4096 -t 1 "$@"; }
for i in $(seq 1 40); do echo "Line $i: the quick brown fox jumps over the lazy dog."; done >"$T/cli-zero-prompt.txt"
e=$("$B/ds4-bench" -m "$Z" --prompt-file "$T/cli-zero-prompt.txt" --bw-mib 0 -t 1 --ctx-start 64 --ctx-max 64 -n 9 \
    --mtp "$MTP" --mtp-margin 0 2>&1 >/dev/null)
check "mtp: on the zeroed model every draft is accepted" 'grep -q "drafts accepted (100% of those verified)" <<<"$e"'
for n in 1 2 7; do
    plain=$(zds4 -p "Hello there" --nothink --temp 0 -n $n 2>/dev/null)
    spec=$(zds4 --mtp "$MTP" --mtp-draft 2 --mtp-margin 0 -p "Hello there" --nothink --temp 0 -n $n 2>/dev/null)
    check "mtp accepting: -n $n answer as without MTP" '[ -n "$plain" ] && [ "$spec" = "$plain" ]'
done
plain=$(printf "$chat_in" | zds4 --nothink --temp 0 -n 4 2>"$T/cli-zchat-plain")
spec=$(printf "$chat_in" | zds4 --mtp "$MTP" --mtp-draft 2 --mtp-margin 0 --nothink --temp 0 -n 4 2>"$T/cli-zchat-mtp")
check "mtp accepting: chat turns as without MTP" '[ "$spec" = "$plain" ]'
check "mtp accepting: chat turns reuse the same prefixes" \
    '[ "$(grep -o "([0-9]* reused)" "$T/cli-zchat-mtp")" = "$(grep -o "([0-9]* reused)" "$T/cli-zchat-plain")" ]'
e=$(ds4 --mtp "$T/does-not-exist-mtp.gguf" -p "Hi" -n 1 2>&1 >/dev/null)
rc=$?
check "mtp: a missing MTP file: exit 1 naming it" '[ $rc = 1 ] && grep -q "does-not-exist-mtp.gguf" <<<"$e"'

# ---- the chat on a terminal: libedit, Ctrl+C stops an answer, Ctrl+D leaves ----
if command -v script >/dev/null; then
    fifo="$T/cli-fifo"
    rm -f "$fifo" && mkfifo "$fifo"
    HOME="$T" script -qfec "'$B/ds4' -m '$M' -c 4096 -t 1 --nothink --temp 1 --seed 1 -n 3000" /dev/null \
        <"$fifo" >"$T/cli-tty" 2>&1 &
    pid=$!
    exec 3>"$fifo"
    printf 'Hello\r' >&3
    for _ in $(seq 100); do grep -q "ds4> Hello" "$T/cli-tty" && [ "$(wc -c <"$T/cli-tty")" -gt 1000 ] && break; sleep 0.1; done
    printf '\003' >&3
    for _ in $(seq 100); do grep -q "interrupted" "$T/cli-tty" && break; sleep 0.1; done
    printf '\004' >&3
    exec 3>&-
    for _ in $(seq 50); do kill -0 $pid 2>/dev/null || break; sleep 0.1; done
    if kill -0 $pid 2>/dev/null; then kill $pid; bad "tty: ds4 did not exit on Ctrl+D"; fi
    wait $pid
    check "tty: Ctrl+C stopped the answer" 'grep -q "^ds4: interrupted" "$T/cli-tty"'
    n=$(generated "$(tr -d '\r' <"$T/cli-tty")")
    check "tty: ... before -n ($n tokens)" '[ -n "$n" ] && [ "$n" -lt 3000 ]'
    check "tty: history saved" 'grep -qx "Hello" "$T/.ds4_history"'
    rm -f "$fifo"
fi

# ---- --dump-logprobs ----
e=$(ds4 -p "Hi" --nothink -sys "" --temp 0 -n 5 --logprobs-top-k 4 --dump-logprobs "$T/cli-lp.json" 2>&1 >/dev/null) ||
    bad "--dump-logprobs exit code"
greedy=$(ds4 -p "Hi" --nothink -sys "" --temp 0 -n 5 2>/dev/null)
node -e '
const fs = require("fs");
const d = JSON.parse(fs.readFileSync(process.argv[1], "utf8"));
const fail = (m) => { console.log("FAIL: logprobs: " + m); process.exitCode = 1; };
if (d.source !== "ds4" || d.top_k !== 4 || d.ctx !== 4096) fail("header " + JSON.stringify(d).slice(0, 80));
if (d.prompt_tokens !== Number(process.argv[2])) fail("prompt_tokens " + d.prompt_tokens);
if (d.steps.length !== 5) fail("steps " + d.steps.length);
let text = Buffer.alloc(0);
d.steps.forEach((s, i) => {
  const top = s.top_logprobs;
  if (s.step !== i || top.length !== 4) fail("step " + i);
  if (top[0].token.id !== s.selected.id) fail("step " + i + ": selected is not the top token");
  for (let k = 1; k < top.length; k++) if (top[k].logit > top[k - 1].logit) fail("step " + i + ": not sorted");
  let sum = 0;
  for (const t of top) {
    if (!(t.logprob <= 0)) fail("step " + i + ": logprob > 0");
    if (Math.abs((t.logit - top[0].logit) - (t.logprob - top[0].logprob)) > 1e-4) fail("step " + i + ": logprob offset");
    sum += Math.exp(t.logprob);
  }
  if (sum > 1 + 1e-6) fail("step " + i + ": probabilities sum to " + sum);
  const b = Buffer.from(s.selected.bytes);
  let valid = true;
  try { new TextDecoder("utf-8", { fatal: true }).decode(b); } catch { valid = false; }
  if (s.selected.text !== b.toString(valid ? "utf8" : "latin1")) fail("step " + i + ": text and bytes differ");
  text = Buffer.concat([text, b]);
});
/* the answer on stdout shows bytes that are not UTF-8 as U+FFFD, as Node decodes them */
if (text.toString("utf8").replace(/\n+$/, "") !== process.argv[3]) fail("greedy text differs");
' "$T/cli-lp.json" "$(prompt_tokens "$e")" "$greedy" && ok "--dump-logprobs JSON" || fail=1

# ---- --token-ids / --logits-out ----
echo "5 17 200 3 9" >"$T/cli-ids5"
echo "5 17 200" >"$T/cli-ids3"
ds4 --token-ids "$T/cli-ids5" --logits-out "$T/cli-l5" 2>/dev/null || bad "--logits-out exit code"
ds4 --token-ids "$T/cli-ids3" --logits-out "$T/cli-l3" 2>/dev/null
vocab=$(( $(stat -c %s "$T/cli-l3") / 12 ))
check "--logits-out writes n x vocab floats" '[ "$(stat -c %s "$T/cli-l5")" = $((5 * vocab * 4)) ] && [ $vocab -gt 0 ]'
check "--logits-out rows do not depend on later tokens" 'cmp -s -n $((3 * vocab * 4)) "$T/cli-l3" "$T/cli-l5"'
echo "5 x" >"$T/cli-idsbad"
e=$(ds4 --token-ids "$T/cli-idsbad" --logits-out "$T/cli-lbad" 2>&1)
rc=$?
check "--token-ids with a bad id fails clearly" '[ $rc = 1 ] && grep -q "token 2 is not an id" <<<"$e"'

# ---- --perplexity-file: its NLL from the logits of the same tokens ----
head -c 400 "$DS4_ROOT/Makefile" >"$T/cli-ppl.txt"
ppl=$(ds4 --perplexity-file "$T/cli-ppl.txt" 2>/dev/null) || bad "--perplexity-file exit code"
bos=$(ds4 --dump-tokens -p "<｜begin▁of▁sentence｜>" 2>/dev/null | cut -f1)
{ echo "$bos"; ds4 --dump-tokens --prompt-file "$T/cli-ppl.txt" 2>/dev/null | cut -f1; } >"$T/cli-ppl-ids"
ds4 --token-ids "$T/cli-ppl-ids" --logits-out "$T/cli-ppl-logits" 2>/dev/null
node -e '
const fs = require("fs");
const ids = fs.readFileSync(process.argv[1], "utf8").trim().split(/\s+/).map(Number);
const buf = fs.readFileSync(process.argv[2]);
const L = new Float32Array(buf.buffer, buf.byteOffset, buf.length / 4), V = L.length / ids.length;
let nll = 0, scored = 0;
for (let p = 31; p + 1 < ids.length; p++) {
  const row = L.subarray(p * V, (p + 1) * V);
  let max = -Infinity; for (const x of row) max = Math.max(max, x);
  let sum = 0; for (const x of row) sum += Math.exp(x - max);
  nll += max + Math.log(sum) - row[ids[p + 1]]; scored++;
}
const m = /^tokens=(\d+) scored=(\d+) nll=([\d.]+) avg_nll=([\d.]+) ppl=([\d.]+)$/.exec(process.argv[3]);
if (!m) { console.log("FAIL: perplexity line: " + process.argv[3]); process.exit(1); }
if (+m[1] !== ids.length || +m[2] !== scored || Math.abs(+m[3] - nll) > 1e-3 * nll ||
    Math.abs(+m[5] - Math.exp(nll / scored)) > 1e-3 * +m[5]) {
  console.log("FAIL: perplexity " + process.argv[3] + " vs tokens=" + ids.length + " scored=" + scored + " nll=" + nll);
  process.exit(1);
}' "$T/cli-ppl-ids" "$T/cli-ppl-logits" "$ppl" && ok "--perplexity-file: $ppl" || fail=1

# ---- exit codes ----
for args in "--bogus" "-n 0" "-n x" "--temp -1" "--top-p 2" "--min-p 1.5" "--top-k 2000" "--seed 0" "-c 0" \
            "-p a --prompt-file b" "--dump-logprobs x" "--perplexity-file x -p a" "--token-ids x" "--logits-out x" "-p" "--backend metal" \
            "--mtp-draft 0" "--mtp-draft 17" "--mtp-margin -1" "--mtp-margin 1001"; do
    # shellcheck disable=SC2086
    "$B/ds4" -m "$M" $args >/dev/null 2>&1
    rc=$?
    check "exit 2 for: $args" '[ $rc = 2 ]'
done
e=$("$B/ds4" -m "$T/does-not-exist.gguf" -p hi 2>&1 >/dev/null)
rc=$?
check "missing model: exit 1" '[ $rc = 1 ]'
check "missing model: one error line naming the file" \
    '[ "$(wc -l <<<"$e")" = 1 ] && grep -q "does-not-exist.gguf" <<<"$e"'
e=$(printf '/quit\n' | "$B/ds4" -m "$T/does-not-exist.gguf" 2>&1 >/dev/null)
rc=$?
check "missing model in chat mode: exit 1, one line" '[ $rc = 1 ] && [ "$(wc -l <<<"$e")" = 1 ]'
"$B/ds4" --help | grep -q -- "--dump-logprobs" && ok "--help" || bad "--help"

exit $fail
