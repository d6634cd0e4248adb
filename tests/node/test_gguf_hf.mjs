// test_gguf_hf.mjs — ds4's GGUF reader and writer against @huggingface/gguf.
//
// 1. `ds4-gguf --write-sample` writes a file with every metadata type and
//    tensors of every ds4 type (at several alignments); @huggingface/gguf
//    parses it and every key, GGUF type, value, tensor name, shape, dtype and
//    offset, and the data offset, must equal what `ds4-gguf FILE` prints.
// 2. @huggingface/gguf's own serializer writes a header with every scalar
//    and array type; ds4's reader must print exactly those values.
import { gguf, serializeGgufMetadata, GGUFValueType } from "@huggingface/gguf";
import { execFileSync } from "node:child_process";
import fs from "node:fs";
import path from "node:path";
import os from "node:os";

import { check, done } from "./checks.mjs";

const root = process.env.DS4_ROOT ?? process.cwd();
const build = process.env.DS4_BUILD ?? "build";
const bin = path.resolve(root, build, "bin", "ds4-gguf");
const tmp = process.env.DS4_TMP ?? fs.mkdtempSync(path.join(os.tmpdir(), "gguf-hf-"));

if (!fs.existsSync(bin)) {
  console.error(`${bin} is missing: build it first (make BUILD=${build})`);
  process.exit(1);
}

const dump = (file) => JSON.parse(execFileSync(bin, [file], { encoding: "utf8", maxBuffer: 1 << 28 }));

// Our JSON value (see tools/ds4-gguf.c) against @huggingface/gguf's decoded value.
function same(ours, theirs, type, where) {
  switch (type) {
    case "UINT64":
    case "INT64":
      check(typeof theirs === "bigint" && BigInt(ours) === theirs, `${where}: ${ours} vs ${theirs}`);
      return;
    case "FLOAT32":
    case "FLOAT64": {
      const o = typeof ours === "string" ? Number(ours.replace("inf", "Infinity")) : ours;
      check(Object.is(o, theirs), `${where}: ${ours} vs ${theirs}`);
      return;
    }
    case "ARRAY":
      check(Array.isArray(theirs) && theirs.length === ours.count && ours.value.length === ours.count,
        `${where}: array of ${ours.count} vs ${theirs?.length}`);
      if (!Array.isArray(theirs)) return;
      ours.value.forEach((item, i) => same(item, theirs[i], ours.item_type, `${where}[${i}]`));
      return;
    default:
      check(ours === theirs, `${where}: ${JSON.stringify(ours)} vs ${JSON.stringify(String(theirs))}`);
  }
}

// Every key of `typed` (beyond the three header fields) against our metadata, in order.
function compareMetadata(ours, typed, label) {
  const theirKeys = Object.keys(typed).filter((k) => !["version", "tensor_count", "kv_count"].includes(k));
  check(JSON.stringify(theirKeys) === JSON.stringify(ours.metadata.map((e) => e.key)),
    `${label}: keys differ:\n  ours   ${ours.metadata.map((e) => e.key)}\n  theirs ${theirKeys}`);
  for (const e of ours.metadata) {
    const t = typed[e.key];
    if (!t) continue;
    check(t.type === GGUFValueType[e.type], `${label}: ${e.key}: type ${e.type} vs ${t.type}`);
    if (e.type === "ARRAY") {
      check(t.subType === GGUFValueType[e.item_type], `${label}: ${e.key}: item type ${e.item_type} vs ${t.subType}`);
      same(e, t.value, "ARRAY", `${label}: ${e.key}`);
    } else {
      same(e.value, t.value, e.type, `${label}: ${e.key}`);
    }
  }
}

// 1. ds4 writes, both read.
for (const alignment of [32, 1, 64, 4096]) {
  const file = path.join(tmp, `sample-${alignment}.gguf`);
  execFileSync(bin, ["--write-sample", file, "--alignment", String(alignment)]);
  const ours = dump(file);
  const hf = await gguf(file, { allowLocalFile: true, typedMetadata: true });
  const label = `sample (alignment ${alignment})`;
  check(hf.metadata.version === 3 && ours.version === 3, `${label}: version`);
  check(ours.alignment === alignment, `${label}: alignment ${ours.alignment}`);
  check(hf.metadata.kv_count === BigInt(ours.metadata.length), `${label}: kv_count`);
  check(hf.metadata.tensor_count === BigInt(ours.tensors.length), `${label}: tensor_count`);
  check(ours.metadata.length >= 29 && ours.tensors.length === 8, `${label}: sample is complete`);
  check(hf.tensorDataOffset === BigInt(ours.data_offset), `${label}: data offset ${hf.tensorDataOffset} vs ${ours.data_offset}`);
  compareMetadata(ours, hf.typedMetadata, label);
  check(hf.tensorInfos.length === ours.tensors.length, `${label}: tensor count`);
  ours.tensors.forEach((t, i) => {
    const h = hf.tensorInfos[i];
    if (!h) return;
    check(h.name === t.name, `${label}: tensor ${i} name ${t.name} vs ${h.name}`);
    check(h.n_dims === t.shape.length, `${label}: ${t.name} n_dims`);
    check(h.shape.length === t.shape.length && h.shape.every((d, k) => d === BigInt(t.shape[k])),
      `${label}: ${t.name} shape ${t.shape} vs ${h.shape}`);
    check(h.dtype === t.type_id, `${label}: ${t.name} dtype ${t.type_id} vs ${h.dtype}`);
    check(h.offset === BigInt(t.offset), `${label}: ${t.name} offset ${t.offset} vs ${h.offset}`);
    check(t.offset % alignment === 0, `${label}: ${t.name} offset unaligned`);
  });
  const last = ours.tensors[ours.tensors.length - 1];
  check(ours.data_offset + last.offset + last.nbytes === fs.statSync(file).size, `${label}: file size`);
}

// 2. @huggingface/gguf writes, ds4 reads.
const T = GGUFValueType;
const typed = {
  version: { value: 3, type: T.UINT32 },
  tensor_count: { value: 0n, type: T.UINT64 },
  kv_count: { value: 0n, type: T.UINT64 },
  "general.alignment": { value: 64, type: T.UINT32 },
  "hf.u8": { value: 255, type: T.UINT8 },
  "hf.i8": { value: -128, type: T.INT8 },
  "hf.u16": { value: 65535, type: T.UINT16 },
  "hf.i16": { value: -32768, type: T.INT16 },
  "hf.u32": { value: 4294967295, type: T.UINT32 },
  "hf.i32": { value: -2147483648, type: T.INT32 },
  "hf.f32": { value: Math.fround(0.1), type: T.FLOAT32 },
  "hf.f32.inf": { value: -Infinity, type: T.FLOAT32 },
  "hf.bool": { value: true, type: T.BOOL },
  "hf.str": { value: "ünïcödé ✓ 🙂 \u0001", type: T.STRING },
  "hf.u64": { value: 18446744073709551615n, type: T.UINT64 },
  "hf.i64": { value: -9223372036854775808n, type: T.INT64 },
  "hf.f64": { value: -1.5e-300, type: T.FLOAT64 },
  // (no UINT8 array here: its subType 0 is falsy and @huggingface/gguf 0.4.6
  // refuses it as "Array type requires subType"; part 1 covers UINT8 arrays)
  "hf.arr.i8": { value: [1, -2, 120], type: T.ARRAY, subType: T.INT8 },
  "hf.arr.i16": { value: [-1, 300], type: T.ARRAY, subType: T.INT16 },
  "hf.arr.u32": { value: [7, 4000000000], type: T.ARRAY, subType: T.UINT32 },
  "hf.arr.i32": { value: [-7], type: T.ARRAY, subType: T.INT32 },
  "hf.arr.f32": { value: [0.5, -2], type: T.ARRAY, subType: T.FLOAT32 },
  "hf.arr.bool": { value: [false, true], type: T.ARRAY, subType: T.BOOL },
  "hf.arr.str": { value: ["a", "", "日本語"], type: T.ARRAY, subType: T.STRING },
  "hf.arr.u64": { value: [1n, 2n ** 63n], type: T.ARRAY, subType: T.UINT64 },
  "hf.arr.i64": { value: [-(2n ** 40n)], type: T.ARRAY, subType: T.INT64 },
  "hf.arr.f64": { value: [Math.PI, 0], type: T.ARRAY, subType: T.FLOAT64 },
  "hf.arr.empty": { value: [], type: T.ARRAY, subType: T.STRING },
};
const hfFile = path.join(tmp, "hf-written.gguf");
fs.writeFileSync(hfFile, serializeGgufMetadata(typed, { alignment: 64 }));
const fromHf = dump(hfFile);
check(fromHf.version === 3 && fromHf.alignment === 64 && fromHf.tensors.length === 0, "hf file header");
compareMetadata(fromHf, typed, "hf-written");

done("test_gguf_hf");
