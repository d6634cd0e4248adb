// test_mkmodel_hf.mjs — ds4-mkmodel's files read by an independent GGUF
// parser (@huggingface/gguf) and compared with the published layout as
// restated here from model-spec.md §1 (key types), §2.2 (tensor inventory)
// and §2.4 (MTP), not from our C code.
//
// For tiny models of each expert type (and one with --type f32): every
// deepseek4.* key has the GGUF type ds4 requires, the tokenizer keys are
// there, and the tensor list equals the expected inventory name by name,
// with shapes and ggml types. The inventory builder itself is checked
// against the spec's count for the real model (1328 tensors).
import { gguf, GGUFValueType as T } from "@huggingface/gguf";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";

import { check, done } from "./checks.mjs";

const root = process.env.DS4_ROOT ?? process.cwd();
const build = process.env.DS4_BUILD ?? "build";
const bin = path.resolve(root, build, "bin", "ds4-mkmodel");
const tmp = process.env.DS4_TMP ?? fs.mkdtempSync(path.join(os.tmpdir(), "mkmodel-hf-"));
if (!fs.existsSync(bin)) {
  console.error(`${bin} is missing: build it first (make BUILD=${build})`);
  process.exit(1);
}

// ggml type ids (model-spec §3).
const F32 = 0, F16 = 1, Q8_0 = 8, Q2_K = 10, Q4_K = 12, IQ2_XXS = 16, I32 = 26;

// Key types ds4 requires (model-spec §1 "Metadata typing quirk"): integer keys
// UINT32; float keys F32 (F64/U32/I32 also accepted); the bool BOOL.
const K = "deepseek4.";
const u32Keys = ["block_count", "embedding_length", "vocab_size", "attention.head_count",
  "attention.head_count_kv", "attention.key_length", "attention.value_length", "rope.dimension_count",
  "attention.q_lora_rank", "attention.output_lora_rank", "attention.output_group_count", "expert_count",
  "expert_used_count", "expert_shared_count", "expert_feed_forward_length", "hash_layer_count",
  "attention.sliding_window", "attention.indexer.head_count", "attention.indexer.key_length",
  "attention.indexer.top_k", "hyper_connection.count", "hyper_connection.sinkhorn_iterations"];
const f32Keys = ["expert_weights_scale", "hyper_connection.epsilon", "attention.layer_norm_rms_epsilon",
  "rope.freq_base", "attention.compress_rope_freq_base", "rope.scaling.factor",
  "rope.scaling.yarn_beta_fast", "rope.scaling.yarn_beta_slow"];

function checkKeys(md, label) {
  const get = (k) => md[k] ?? {};
  check(get("general.architecture").value === "deepseek4", `${label}: architecture`);
  for (const k of u32Keys) check(get(K + k).type === T.UINT32, `${label}: ${k} is ${get(K + k).type}, want UINT32`);
  for (const k of f32Keys) check([T.FLOAT32, T.FLOAT64].includes(get(K + k).type), `${label}: ${k} type ${get(K + k).type}`);
  check(get(K + "expert_weights_norm").type === T.BOOL, `${label}: expert_weights_norm BOOL`);
  const orig = get(K + "rope.scaling.original_context_length");
  check([T.UINT32, T.UINT64].includes(orig.type), `${label}: original_context_length type`);
  const n = get(K + "block_count").value;
  const ratios = get(K + "attention.compress_ratios");
  check(ratios.type === T.ARRAY && [T.UINT32, T.INT32].includes(ratios.subType) && ratios.value.length >= n,
    `${label}: compress_ratios`);
  const clamp = get(K + "swiglu_clamp_exp");
  check(clamp.type === T.ARRAY && [T.FLOAT32, T.FLOAT64].includes(clamp.subType) && clamp.value.length >= n,
    `${label}: swiglu_clamp_exp`);
  for (const k of ["expert_group_count", "expert_group_used_count"])
    check(!md[K + k] || md[K + k].value === 0, `${label}: ${k} is 0 if present`);
  // Tokenizer (model-spec §2.1, §9).
  check(get("tokenizer.ggml.model").value === "gpt2" && get("tokenizer.ggml.pre").value === "joyai-llm",
    `${label}: tokenizer model/pre`);
  const tokens = get("tokenizer.ggml.tokens"), merges = get("tokenizer.ggml.merges");
  check(tokens.type === T.ARRAY && tokens.subType === T.STRING && tokens.value.length === get(K + "vocab_size").value,
    `${label}: tokens array = vocab_size`);
  check(merges.type === T.ARRAY && merges.subType === T.STRING && merges.value.length > 0 &&
    merges.value.every((m) => m.split(" ").length === 2), `${label}: merges "a b"`);
  check(tokens.value[0] === "<｜begin▁of▁sentence｜>" && tokens.value[1] === "<｜end▁of▁sentence｜>" &&
    get("tokenizer.ggml.bos_token_id").value === 0 && get("tokenizer.ggml.eos_token_id").value === 1, `${label}: BOS/EOS`);
  for (const s of ["<｜User｜>", "<｜Assistant｜>", "<think>", "</think>", "｜DSML｜"])
    check(tokens.value.includes(s), `${label}: special ${s}`);
}

// The main-model inventory (model-spec §2.2) from hyperparameters.
function expectedModel(hp, expertGate, expertDown, q8, f16, f32) {
  const t = new Map();
  const add = (name, type, shape) => t.set(name, { type, shape });
  const e = hp.embd, hc = 4 * e;
  add("token_embd.weight", f16, [e, hp.vocab]);
  add("output_hc_base.weight", f32, [4]);
  add("output_hc_fn.weight", f16, [hc, 4]);
  add("output_hc_scale.weight", f32, [1]);
  add("output_norm.weight", f32, [e]);
  add("output.weight", q8, [e, hp.vocab]);
  for (let il = 0; il < hp.layers; il++) {
    const p = `blk.${il}.`;
    block(add, p, hp, expertGate, expertDown, q8, f16, f32, il >= hp.hash);
    const r = hp.ratios[il];
    if (r !== 0) {
      const cw = (r === 4 ? 2 : 1) * hp.headDim;
      add(p + "attn_compressor_ape.weight", f16, [cw, r]);
      add(p + "attn_compressor_kv.weight", f16, [e, cw]);
      add(p + "attn_compressor_gate.weight", f16, [e, cw]);
      add(p + "attn_compressor_norm.weight", f32, [hp.headDim]);
    }
    if (r === 4) {
      add(p + "indexer.attn_q_b.weight", f16, [hp.qLora, hp.idxHeads * hp.idxDim]);
      add(p + "indexer.proj.weight", f16, [e, hp.idxHeads]);
      add(p + "indexer_compressor_ape.weight", f16, [2 * hp.idxDim, 4]);
      add(p + "indexer_compressor_kv.weight", f16, [e, 2 * hp.idxDim]);
      add(p + "indexer_compressor_gate.weight", f16, [e, 2 * hp.idxDim]);
      add(p + "indexer_compressor_norm.weight", f32, [hp.idxDim]);
    }
    if (il < hp.hash) add(p + "ffn_gate_tid2eid.weight", I32, [hp.used, hp.vocab]);
  }
  return t;
}

// The tensors of one block (per-layer table of §2.2; also the MTP block).
function block(add, p, hp, expertGate, expertDown, q8, f16, f32, withBias) {
  const e = hp.embd, hc = 4 * e, qOut = hp.heads * hp.headDim, oMid = hp.groups * hp.oLora;
  add(p + "hc_attn_fn.weight", f16, [hc, 24]);
  add(p + "hc_attn_scale.weight", f32, [3]);
  add(p + "hc_attn_base.weight", f32, [24]);
  add(p + "attn_norm.weight", f32, [e]);
  add(p + "attn_q_a.weight", q8, [e, hp.qLora]);
  add(p + "attn_q_a_norm.weight", f32, [hp.qLora]);
  add(p + "attn_q_b.weight", q8, [hp.qLora, qOut]);
  add(p + "attn_kv.weight", q8, [e, hp.headDim]);
  add(p + "attn_kv_a_norm.weight", f32, [hp.headDim]);
  add(p + "attn_sinks.weight", f32, [hp.heads]);
  add(p + "attn_output_a.weight", q8, [qOut / hp.groups, oMid]);
  add(p + "attn_output_b.weight", q8, [oMid, e]);
  add(p + "hc_ffn_fn.weight", f16, [hc, 24]);
  add(p + "hc_ffn_scale.weight", f32, [3]);
  add(p + "hc_ffn_base.weight", f32, [24]);
  add(p + "ffn_norm.weight", f32, [e]);
  add(p + "ffn_gate_inp.weight", f16, [e, hp.experts]);
  if (withBias) add(p + "exp_probs_b.bias", f32, [hp.experts]);
  add(p + "ffn_gate_exps.weight", expertGate, [e, hp.ff, hp.experts]);
  add(p + "ffn_up_exps.weight", expertGate, [e, hp.ff, hp.experts]);
  add(p + "ffn_down_exps.weight", expertDown, [hp.ff, e, hp.experts]);
  add(p + "ffn_gate_shexp.weight", q8, [e, hp.ff]);
  add(p + "ffn_up_shexp.weight", q8, [e, hp.ff]);
  add(p + "ffn_down_shexp.weight", q8, [hp.ff, e]);
}

function expectedMtp(hp, expertGate, expertDown, q8, f16, f32) {
  const t = new Map();
  const add = (name, type, shape) => t.set(name, { type, shape });
  const e = hp.embd;
  add("mtp.0.hc_head_base.weight", f32, [4]);
  add("mtp.0.hc_head_fn.weight", f16, [4 * e, 4]);
  add("mtp.0.hc_head_scale.weight", f32, [1]);
  add("mtp.0.e_proj.weight", q8, [e, e]);
  add("mtp.0.h_proj.weight", q8, [e, e]);
  for (const n of ["enorm", "hnorm", "norm"]) add(`mtp.0.${n}.weight`, f32, [e]);
  block(add, "mtp.0.", hp, expertGate, expertDown, q8, f16, f32, true);
  return t;
}

function hpFrom(md) {
  const v = (k) => md[K + k].value;
  return {
    layers: v("block_count"), embd: v("embedding_length"), vocab: v("vocab_size"), heads: v("attention.head_count"),
    headDim: v("attention.key_length"), qLora: v("attention.q_lora_rank"), oLora: v("attention.output_lora_rank"),
    groups: v("attention.output_group_count"), experts: v("expert_count"), used: v("expert_used_count"),
    ff: v("expert_feed_forward_length"), hash: v("hash_layer_count"), idxHeads: v("attention.indexer.head_count"),
    idxDim: v("attention.indexer.key_length"), ratios: v("attention.compress_ratios").map(Number),
  };
}

function compareTensors(expected, infos, label) {
  check(infos.length === expected.size, `${label}: ${infos.length} tensors, expected ${expected.size}`);
  for (const ti of infos) {
    const want = expected.get(ti.name);
    if (!want) { check(false, `${label}: unexpected tensor ${ti.name}`); continue; }
    const shape = ti.shape.map(Number);
    check(ti.dtype === want.type && JSON.stringify(shape) === JSON.stringify(want.shape),
      `${label}: ${ti.name}: type ${ti.dtype} ${JSON.stringify(shape)}, expected ${want.type} ${JSON.stringify(want.shape)}`);
  }
}

// The inventory builder against the spec's count for the real model: 6 global +
// 43·23 + 41·4 + 21·6 + 3 + 40 = 1328.
{
  const ratios = Array.from({ length: 43 }, (_, il) => (il < 2 ? 0 : il % 2 === 0 ? 4 : 128));
  const flash = { layers: 43, embd: 4096, vocab: 129280, heads: 64, headDim: 512, qLora: 1024, oLora: 1024,
    groups: 8, experts: 256, used: 6, ff: 2048, hash: 3, idxHeads: 64, idxDim: 128, ratios };
  const inv = expectedModel(flash, IQ2_XXS, Q2_K, Q8_0, F16, F32);
  check(inv.size === 1328, `flash inventory has ${inv.size} tensors, spec says 1328`);
  check(JSON.stringify(inv.get("blk.7.attn_output_a.weight").shape) === "[4096,8192]", "attn_output_a shape");
}

const cases = [
  { experts: "q2", gate: IQ2_XXS, down: Q2_K, type: "q8" },
  { experts: "q4", gate: Q4_K, down: Q4_K, type: "q8" },
  { experts: "f16", gate: F16, down: F16, type: "f16" },
  { experts: "f32", gate: F32, down: F32, type: "f32" },
];
for (const c of cases) {
  const file = path.join(tmp, `hf-${c.experts}.gguf`), mtp = path.join(tmp, `hf-${c.experts}-mtp.gguf`);
  execFileSync(bin, ["--preset", "tiny", "--experts", c.experts, "--type", c.type, "--mtp", mtp, "-o", file]);
  const label = `tiny ${c.experts}/${c.type}`;
  const hf = await gguf(file, { allowLocalFile: true, typedMetadata: true });
  checkKeys(hf.typedMetadata, label);
  const hp = hpFrom(hf.typedMetadata);
  check(JSON.stringify(hp.ratios) === "[0,0,4,16,4,16]" && hp.embd === 256 && hp.vocab === 1024, `${label}: preset dims`);
  const q8 = c.type === "q8" ? Q8_0 : c.type === "f16" ? F16 : F32;
  const f16 = c.type === "f32" ? F32 : F16, f32 = F32;
  compareTensors(expectedModel(hp, c.gate, c.down, q8, f16, f32), hf.tensorInfos, label);
  const hm = await gguf(mtp, { allowLocalFile: true, typedMetadata: true });
  const mtpGate = c.gate === IQ2_XXS ? Q4_K : c.gate, mtpDown = c.gate === IQ2_XXS ? Q4_K : c.down;
  compareTensors(expectedMtp(hp, mtpGate, mtpDown, q8, f16, f32), hm.tensorInfos, `${label} mtp`);
  fs.rmSync(file);
  fs.rmSync(mtp);
}

done("test_mkmodel_hf");
