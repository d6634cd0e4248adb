#!/usr/bin/env python3
"""Writes the oracle fixtures for tests/test_chat.c.

usage: gen_oracle.py PATH/TO/encoding_dsv4.py

Renders every case of cases.json with DeepSeek's official V4 encoder
(encoding/encoding_dsv4.py from the DeepSeek-V4-Flash release; pure Python,
not part of this repository) into expected/NAME.txt; writes parsed.json,
what the official parser (parse_message_from_completion_text) makes of each
assistant turn of those prompts (as the encoder's own tests do); and writes
floats.txt, Python's repr of random doubles (the number format json.dumps
uses).

A request maps onto the official encoder the way vLLM's DeepSeek-V4 adapter
maps it: tools (and response_format) go on the first message if it is a
system or developer message, else on a new system message put first;
reasoning_effort "max" only when the context is at least 393216 tokens."""
import importlib.util
import json
import os
import random
import struct
import sys

HERE = os.path.dirname(os.path.abspath(__file__))
THINK_MAX_MIN_CTX = 393216


def load_encoder(path):
    spec = importlib.util.spec_from_file_location("encoding_dsv4", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def official_messages(case):
    msgs = [dict(m) for m in case["messages"]]
    header = {}
    if case.get("tools"):
        header["tools"] = case["tools"]
    if case.get("response_format"):
        header["response_format"] = case["response_format"]
    if header:
        if msgs and msgs[0].get("role") in ("system", "developer"):
            msgs[0].update(header)
        else:
            msgs.insert(0, dict({"role": "system"}, **header))
    return msgs


def render(enc, case):
    mode = case["mode"]
    ctx = case.get("ctx", 1048576)
    effort = None
    if mode == "max" and ctx >= THINK_MAX_MIN_CTX:
        effort = "max"
    thinking_mode = "chat" if mode == "none" else "thinking"
    return enc.encode_messages(official_messages(case), thinking_mode=thinking_mode,
                               reasoning_effort=effort)


def assistant_turns(enc, prompt):
    """Each assistant turn of a rendered prompt, from the text after the
    Assistant marker and its think token to the EOS, as the model wrote it."""
    turns = []
    marker = enc.ASSISTANT_SP_TOKEN
    at = prompt.find(marker)
    while at != -1:
        start = at + len(marker)
        thinking = prompt.startswith(enc.thinking_start_token, start)
        start += len(enc.thinking_start_token if thinking else enc.thinking_end_token)
        end = prompt.find(enc.eos_token, start)
        nxt = prompt.find(marker, start)
        if end != -1 and (nxt == -1 or end < nxt):
            turns.append((prompt[start:end + len(enc.eos_token)], thinking))
        at = nxt
    return turns


def parse_oracle(enc, cases):
    out = []
    for case in cases:
        for text, thinking in assistant_turns(enc, render(enc, case)):
            msg = enc.parse_message_from_completion_text(
                text, thinking_mode="thinking" if thinking else "chat")
            out.append({
                "case": case["name"],
                "text": text,
                "thinking": thinking,
                "reasoning": msg["reasoning_content"],
                "content": msg["content"],
                "calls": [{"name": c["function"]["name"], "arguments": c["function"]["arguments"]}
                          for c in msg["tool_calls"]],
            })
    return out


def main():
    if len(sys.argv) != 2:
        sys.exit(__doc__)
    enc = load_encoder(sys.argv[1])
    cases = json.load(open(os.path.join(HERE, "cases.json"), encoding="utf-8"))
    out_dir = os.path.join(HERE, "expected")
    os.makedirs(out_dir, exist_ok=True)
    for case in cases:
        with open(os.path.join(out_dir, case["name"] + ".txt"), "wb") as f:
            f.write(render(enc, case).encode("utf-8"))
    with open(os.path.join(HERE, "parsed.json"), "w", encoding="utf-8") as f:
        json.dump(parse_oracle(enc, cases), f, ensure_ascii=False, indent=1)
    rng = random.Random(4)
    with open(os.path.join(HERE, "floats.txt"), "w") as f:
        f.write("# IEEE-754 bits (hex) and Python repr(), written by gen_oracle.py\n")
        for i in range(3000):
            kind = i % 3
            if kind == 0:
                x = struct.unpack("<d", struct.pack("<Q", rng.getrandbits(64)))[0]
            elif kind == 1:
                x = rng.uniform(-1e6, 1e6)
            else:
                x = round(rng.uniform(-100, 100), rng.randint(0, 6)) * 10.0 ** rng.randint(-9, 22)
            if x != x or x in (float("inf"), float("-inf")):
                continue
            bits = struct.unpack("<Q", struct.pack("<d", x))[0]
            f.write("%016x %r\n" % (bits, x))
    print("wrote %d cases and floats.txt" % len(cases))


if __name__ == "__main__":
    main()
