// test_server_force.mjs — tool calls end to end through the official SDKs,
// made possible on a random-weight model by --force-output (the model runs,
// its tokens come from a file).
//
// Turn 1 of every protocol is forced to reasoning + text + a DSML block of
// two calls; each client must get proper tool calls (OpenAI chat tool_calls,
// whole and as streamed deltas; Anthropic tool_use blocks, whole and as
// input_json_delta; Responses function_call items and events). Turn 2 sends
// the calls back with their results: the rendered prompt (seen in --trace)
// must hold the exact sampled DSML bytes (the forced block has a compact JSON
// value, where the canonical rendering writes Python's json.dumps spacing as
// the official encoder does), and the prompt must
// continue the live KV state: cached tokens = turn 1's prompt + its output
// minus the last token, which ends a turn and is never evaluated. Changing
// the call ids makes the server render the calls canonically instead, which
// the same checks tell apart.
import { readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { check, done, post, startServer } from './server_harness.mjs';

const tmp = process.env.DS4_TMP;
const REASONING = 'I should look up the weather.';
const CONTENT = 'Let me check.';
const DSML =
  '\n\n<｜DSML｜tool_calls>\n' +
  '<｜DSML｜invoke name="get_weather">\n' +
  '<｜DSML｜parameter name="city" string="true">Paris & <Lyon> "old town"</｜DSML｜parameter>\n' +
  '<｜DSML｜parameter name="options" string="false">{"days":3,"units":["C"]}</｜DSML｜parameter>\n' +
  '</｜DSML｜invoke>\n' +
  '<｜DSML｜invoke name="get_time">\n' +
  '<｜DSML｜parameter name="tz" string="true">Europe/Paris</｜DSML｜parameter>\n' +
  '</｜DSML｜invoke>\n' +
  '</｜DSML｜tool_calls>';
const TURN1 = `${REASONING}</think>${CONTENT}${DSML}`;
const TURN2 = 'It is sunny in Paris.';
const CALLS = [
  { name: 'get_weather', args: { city: 'Paris & <Lyon> "old town"', options: { days: 3, units: ['C'] } } },
  { name: 'get_time', args: { tz: 'Europe/Paris' } },
];
const forceFile = join(tmp, 'force.txt');
writeFileSync(forceFile, `${TURN1}\n<<<ds4-next-output>>>\n${TURN2}`);
const traceFile = join(tmp, 'trace.txt');

const schemas = {
  get_weather: { type: 'object', properties: { city: { type: 'string' }, options: { type: 'object' } }, required: ['city'] },
  get_time: { type: 'object', properties: { tz: { type: 'string' } } },
};
const openaiTools = Object.entries(schemas).map(([name, parameters]) => ({ type: 'function', function: { name, description: `${name} tool`, parameters } }));
const anthropicTools = Object.entries(schemas).map(([name, input_schema]) => ({ name, description: `${name} tool`, input_schema }));
const responsesTools = Object.entries(schemas).map(([name, parameters]) => ({ type: 'function', name, description: `${name} tool`, parameters }));
const user = 'What is the weather in Paris?';
const same = (a, b) => JSON.stringify(a) === JSON.stringify(b);

// The trace's record of the last finished request: { prompt, generated }
// (requests here run one after another).
function traced() {
  const t = readFileSync(traceFile, 'utf8');
  const end = t.lastIndexOf('===== end request ');
  const start = t.lastIndexOf('===== request ', end);
  if (start < 0 || end < 0) return { prompt: '', generated: '' };
  const r = t.slice(start, end);
  const section = (name, next) => {
    const a = r.indexOf(`--- ${name} ---\n`);
    const b = r.indexOf(`\n--- ${next} ---`, a);
    return a < 0 || b < 0 ? '' : r.slice(a + name.length + 9, b);
  };
  return { prompt: section('rendered prompt', 'cache decision'), generated: section('generated text', 'parsed message') };
}
// Turn 2's shared checks: exact bytes in the prompt, the live state continued.
function checkReplay(what, u1, u2Cached, exact = true) {
  const { prompt } = traced();
  if (exact) {
    check(prompt.includes(CONTENT + DSML + '<｜end▁of▁sentence｜>'), `${what}: turn 2 renders the exact sampled DSML`, prompt.slice(-1500));
    check(u2Cached === u1.prompt + u1.completion - 1, `${what}: turn 2 continues the live state (cached ${u2Cached}, ` +
      `turn 1 ${u1.prompt}+${u1.completion})`);
  } else {
    check(!prompt.includes(DSML) && prompt.includes('<｜DSML｜parameter name="options" string="false">{"days": 3, "units": ["C"]}'),
      `${what}: unknown ids render canonically`, prompt.slice(-1500));
    check(u2Cached < u1.prompt + u1.completion - 1, `${what}: canonical render leaves the live state (cached ${u2Cached})`);
  }
}

// 2 layers: the tool prompts run to a thousand tokens, prefilled several times
const srv = await startServer(['--force-output', forceFile, '--trace', traceFile], { layers: 2 });
try {
  const oa = new OpenAI({ baseURL: srv.url + '/v1', apiKey: 'x', maxRetries: 0 });
  const an = new Anthropic({ baseURL: srv.url, apiKey: 'x', maxRetries: 0 });

  // ---- /v1/completions: the raw text is exactly the forced output ----
  const cp = await oa.completions.create({ model: 'm', prompt: 'x', max_tokens: 1000 });
  check(cp.choices[0].text === TURN1 && cp.choices[0].finish_reason === 'stop', 'completions text = forced output', cp.choices[0]);
  check(traced().generated === TURN1, 'trace: generated text = forced output');
  const cut = await oa.completions.create({ model: 'm', prompt: 'x', max_tokens: 5 });
  check(cut.choices[0].finish_reason === 'length' && TURN1.startsWith(cut.choices[0].text) && cut.usage.completion_tokens === 5,
    'max_tokens still cuts a forced output', cut.choices[0]);

  // ---- OpenAI chat, non-streaming ----
  const messages = [{ role: 'user', content: user }];
  const r1 = await oa.chat.completions.create({ model: 'm', messages, tools: openaiTools });
  const m1 = r1.choices[0].message;
  check(r1.choices[0].finish_reason === 'tool_calls', 'chat: finish tool_calls', r1.choices[0]);
  check(m1.content === CONTENT && m1.reasoning_content === REASONING, 'chat: content and reasoning', m1);
  check(m1.tool_calls?.length === 2 && m1.tool_calls.every((c, i) => c.type === 'function' && /^call_[0-9a-f]{32}$/.test(c.id) &&
    c.function.name === CALLS[i].name && same(JSON.parse(c.function.arguments), CALLS[i].args)), 'chat: tool_calls', m1.tool_calls);
  const u1 = { prompt: r1.usage.prompt_tokens, completion: r1.usage.completion_tokens };
  const results = (calls) => calls.map((c, i) => ({ role: 'tool', tool_call_id: c.id, content: i ? '12:00' : 'sunny, 21 C' }));
  const turn2 = (msg) => [...messages, msg, ...results(msg.tool_calls)];
  const r2 = await oa.chat.completions.create({ model: 'm', messages: turn2(m1), tools: openaiTools });
  check(r2.choices[0].message.content === TURN2 && r2.choices[0].finish_reason === 'stop', 'chat turn 2: text answer', r2.choices[0]);
  checkReplay('chat', u1, r2.usage.prompt_tokens_details.cached_tokens);
  // the same calls under other ids: canonical rendering, the live state is lost
  const renamed = { ...m1, tool_calls: m1.tool_calls.map((c, i) => ({ ...c, id: `call_other${i}` })) };
  const r2b = await oa.chat.completions.create({ model: 'm', messages: [...messages], tools: openaiTools });
  const u1b = { prompt: r2b.usage.prompt_tokens, completion: r2b.usage.completion_tokens };
  const r2c = await oa.chat.completions.create({ model: 'm', messages: turn2(renamed), tools: openaiTools });
  checkReplay('chat (other ids)', u1b, r2c.usage.prompt_tokens_details.cached_tokens, false);

  // ---- OpenAI chat, streaming: reasoning, content, tool call deltas ----
  const stream = await oa.chat.completions.create({ model: 'm', messages, tools: openaiTools, stream: true, stream_options: { include_usage: true } });
  let reasoning = '', content = '', finish = null, usage = null, order = [];
  const calls = [];
  for await (const ch of stream) {
    if (ch.usage) usage = ch.usage;
    const c = ch.choices[0];
    if (!c) continue;
    if (c.finish_reason) finish = c.finish_reason;
    const d = c.delta;
    if (d.reasoning_content) { reasoning += d.reasoning_content; order.push('r'); }
    if (d.content) { content += d.content; order.push('c'); }
    for (const t of d.tool_calls || []) {
      order.push('t');
      if (t.id) calls[t.index] = { id: t.id, name: t.function.name, args: t.function.arguments ?? '', deltas: 0 };
      else if (calls[t.index]) { calls[t.index].args += t.function.arguments; calls[t.index].deltas++; }
    }
  }
  check(reasoning === REASONING && content === CONTENT && finish === 'tool_calls', 'chat stream: reasoning, content, finish', { reasoning, content, finish });
  check(order.join('').replace(/(.)\1+/g, '$1') === 'rct', `chat stream: reasoning, then content, then calls (${order.join('')})`);
  check(calls.length === 2 && calls.every((c, i) => /^call_/.test(c.id) && c.name === CALLS[i].name && c.deltas >= 1 &&
    same(JSON.parse(c.args), CALLS[i].args)), 'chat stream: tool call header, then argument deltas', calls);
  check(usage && usage.completion_tokens > 0, 'chat stream: usage chunk', usage);
  const sm = { role: 'assistant', content, reasoning_content: reasoning,
    tool_calls: calls.map((c) => ({ id: c.id, type: 'function', function: { name: c.name, arguments: c.args } })) };
  const s2 = await oa.chat.completions.create({ model: 'm', messages: turn2(sm), tools: openaiTools, stream: true, stream_options: { include_usage: true } });
  let text2 = '', usage2 = null;
  for await (const ch of s2) {
    if (ch.usage) usage2 = ch.usage;
    text2 += ch.choices[0]?.delta?.content ?? '';
  }
  check(text2 === TURN2, 'chat stream turn 2: text', text2);
  checkReplay('chat stream', { prompt: usage.prompt_tokens, completion: usage.completion_tokens }, usage2.prompt_tokens_details.cached_tokens);

  // ---- Anthropic, non-streaming ----
  const amsgs = [{ role: 'user', content: user }];
  const a1 = await an.messages.create({ model: 'm', max_tokens: 4000, messages: amsgs, tools: anthropicTools });
  check(a1.stop_reason === 'tool_use', 'anthropic: stop_reason tool_use', a1);
  check(same(a1.content.map((b) => b.type), ['thinking', 'text', 'tool_use', 'tool_use']), 'anthropic: block types', a1.content);
  check(a1.content[0].thinking === REASONING && a1.content[1].text === CONTENT, 'anthropic: thinking and text', a1.content);
  const uses = a1.content.filter((b) => b.type === 'tool_use');
  check(uses.every((b, i) => /^toolu_[0-9a-f]{32}$/.test(b.id) && b.name === CALLS[i].name && same(b.input, CALLS[i].args)),
    'anthropic: tool_use blocks', uses);
  const au1 = { prompt: a1.usage.cache_read_input_tokens + a1.usage.cache_creation_input_tokens + a1.usage.input_tokens, completion: a1.usage.output_tokens };
  const aturn2 = (content) => [...amsgs, { role: 'assistant', content },
    { role: 'user', content: content.filter((b) => b.type === 'tool_use').map((b) => ({ type: 'tool_result', tool_use_id: b.id, content: 'sunny' })) }];
  const a2 = await an.messages.create({ model: 'm', max_tokens: 4000, messages: aturn2(a1.content), tools: anthropicTools });
  check(a2.stop_reason === 'end_turn' && a2.content.at(-1).text === TURN2, 'anthropic turn 2: text answer', a2.content);
  checkReplay('anthropic', au1, a2.usage.cache_read_input_tokens);

  // ---- Anthropic, streaming: thinking, text, tool_use with input_json_delta ----
  const as = an.messages.stream({ model: 'm', max_tokens: 4000, messages: amsgs, tools: anthropicTools });
  const events = [];
  const json = {};
  as.on('streamEvent', (e) => {
    events.push(e.type === 'content_block_delta' ? e.delta.type : e.type === 'content_block_start' ? `start:${e.content_block.type}` : e.type);
    if (e.type === 'content_block_delta' && e.delta.type === 'input_json_delta') json[e.index] = (json[e.index] ?? '') + e.delta.partial_json;
  });
  const af = await as.finalMessage();
  const squeezed = events.filter((e, i) => e !== events[i - 1]);
  check(same(squeezed, ['message_start', 'start:thinking', 'thinking_delta', 'signature_delta', 'content_block_stop',
    'start:text', 'text_delta', 'content_block_stop', 'start:tool_use', 'input_json_delta', 'content_block_stop',
    'start:tool_use', 'input_json_delta', 'content_block_stop', 'message_delta', 'message_stop']), 'anthropic stream: event order', squeezed);
  const jsonBlocks = Object.values(json).map((s) => JSON.parse(s));
  check(same(jsonBlocks, CALLS.map((c) => c.args)), 'anthropic stream: input_json_delta fragments parse to the inputs', json);
  check(af.stop_reason === 'tool_use' && same(af.content.filter((b) => b.type === 'tool_use').map((b) => b.input), CALLS.map((c) => c.args)),
    'anthropic stream: final message', af);
  const as2 = await an.messages.stream({ model: 'm', max_tokens: 4000, messages: aturn2(af.content), tools: anthropicTools }).finalMessage();
  check(as2.content.at(-1).text === TURN2, 'anthropic stream turn 2: text', as2.content);
  checkReplay('anthropic stream', { prompt: af.usage.cache_read_input_tokens + af.usage.cache_creation_input_tokens, completion: af.usage.output_tokens },
    as2.usage.cache_read_input_tokens);

  // ---- Responses, streaming: function_call items and events ----
  const rs = await oa.responses.create({ model: 'm', input: user, tools: responsesTools, stream: true, reasoning: { summary: 'auto' } });
  const rev = [];
  const argDeltas = {};
  let final = null;
  for await (const e of rs) {
    rev.push(e.type === 'response.output_item.added' || e.type === 'response.output_item.done' ? `${e.type}:${e.item.type}` : e.type);
    if (e.type === 'response.function_call_arguments.delta') argDeltas[e.item_id] = (argDeltas[e.item_id] ?? '') + e.delta;
    if (e.type === 'response.completed') final = e.response;
  }
  const fcs = final?.output.filter((o) => o.type === 'function_call') ?? [];
  check(fcs.length === 2 && fcs.every((f, i) => f.name === CALLS[i].name && /^call_/.test(f.call_id) && f.status === 'completed' &&
    same(JSON.parse(f.arguments), CALLS[i].args) && argDeltas[f.id] === f.arguments), 'responses: function_call items and argument deltas', { fcs, argDeltas });
  for (const t of ['response.created', 'response.output_item.added:function_call', 'response.function_call_arguments.done',
    'response.output_item.done:function_call', 'response.completed'])
    check(rev.includes(t), `responses stream has ${t}`, rev);
  check(rev.indexOf('response.output_item.added:function_call') < rev.indexOf('response.function_call_arguments.delta') &&
    rev.indexOf('response.function_call_arguments.done') < rev.lastIndexOf('response.output_item.done:function_call') &&
    rev.at(-1) === 'response.completed', 'responses: event order', rev);
  const msgItem = final.output.find((o) => o.type === 'message');
  check(msgItem?.content?.[0]?.text === CONTENT, 'responses: message item', final.output);
  const input2 = [{ role: 'user', content: user }, ...final.output,
    ...fcs.map((f) => ({ type: 'function_call_output', call_id: f.call_id, output: 'sunny' }))];
  const rr2 = await oa.responses.create({ model: 'm', input: input2, tools: responsesTools, reasoning: { summary: 'auto' } });
  check(rr2.output_text === TURN2 && rr2.status === 'completed', 'responses turn 2: text', rr2.output);
  checkReplay('responses', { prompt: final.usage.input_tokens, completion: final.usage.output_tokens }, rr2.usage.input_tokens_details.cached_tokens);

  // a raw request: thinking off and an output without </think> is used as is
  const raw = await post(srv.url, '/v1/chat/completions', { messages: [...messages, { role: 'assistant', content: 'x' }, { role: 'user', content: 'y' }], think: false });
  const rj = await raw.json();
  check(rj.choices?.[0]?.message?.content === TURN2, 'second output for a conversation with one assistant turn (thinking off)', rj);
} finally {
  await srv.stop();
}

// a file that cannot be read is a clear startup error
const bad = await startServer(['--force-output', join(tmp, 'missing.txt')]).then(() => null, (e) => String(e));
check(bad && /--force-output .*missing\.txt: No such file/.test(bad), 'missing --force-output file: clear error', bad);
done('test_server_force');
