#!/usr/bin/env bash
# run-main.sh — `make run`: starts ds4 on ./ds4flash.gguf if present, else on a
# tiny random demo model (built once into demo/) with a banner saying so.
set -eu
cd "$(dirname "$0")/.."
model=ds4flash.gguf
if [ ! -f "$model" ]; then
    mkdir -p demo
    model=demo/tiny.gguf
    [ -f "$model" ] || ./ds4-mkmodel --preset tiny --seed 1 -o "$model"
    cat <<'BANNER'
==============================================================================
 DEMO MODE: ./ds4flash.gguf not found, so ds4 runs a tiny model with RANDOM
 weights. Its replies are random tokens, not answers. See README.md
 ("Getting the real model") to download DeepSeek V4 Flash.
==============================================================================
BANNER
fi
if [ -x ./ds4-server ]; then
    exec ./ds4-server -m "$model" "$@"
fi
exec ./ds4 -m "$model" --info
