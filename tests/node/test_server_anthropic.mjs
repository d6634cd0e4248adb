// test_server_anthropic.mjs — the official `@anthropic-ai/sdk` (1.14.0)
// against ds4-server on a tiny random model: messages (plain, streaming
// with thinking, thinking disabled, tool history), count_tokens, and the
// Anthropic error shape. Checks shapes, event order and usage.
import Anthropic from '@anthropic-ai/sdk';
import { check, done, readSSE, post, startServer } from './server_harness.mjs';

const srv = await startServer();
const client = new Anthropic({ baseURL: srv.url, apiKey: 'unused', maxRetries: 0, timeout: 60000 });
const messages = [{ role: 'user', content: 'Say hello.' }];
const stops = ['end_turn', 'max_tokens', 'tool_use'];

try {
  // ---- non-streaming, thinking on by default
  const m1 = await client.messages.create({ model: 'claude-x', max_tokens: 10, messages,
    system: [{ type: 'text', text: 'x-anthropic-billing-header: drop me' }, { type: 'text', text: 'Be brief.' }] });
  check(m1.type === 'message' && m1.role === 'assistant' && m1.model === 'claude-x', 'message shape', m1);
  check(/^chatcmpl-\d+$/.test(m1.id), 'message id', m1.id);
  check(stops.includes(m1.stop_reason) && m1.stop_sequence === null, 'stop_reason', m1);
  check(m1.content.length >= 1 && m1.content.some((b) => b.type === 'text'), 'a text block is always present', m1.content);
  const th = m1.content.find((b) => b.type === 'thinking');
  if (th) check(th.signature === m1.id && m1.content[0] === th, 'thinking first, signed with the id', m1.content);
  const u = m1.usage;
  check(u.output_tokens > 0 && u.output_tokens <= 10, 'output_tokens', u);
  check(u.input_tokens === 0 && u.cache_read_input_tokens + u.cache_creation_input_tokens > 0, 'ds4 usage split', u);

  // count_tokens agrees with the prompt the generation used
  const ct = await client.messages.countTokens({ model: 'claude-x', messages,
    system: [{ type: 'text', text: 'x-anthropic-billing-header: drop me' }, { type: 'text', text: 'Be brief.' }] });
  check(ct.input_tokens === u.cache_read_input_tokens + u.cache_creation_input_tokens, 'count_tokens = prompt tokens', [ct, u]);
  const ct2 = await client.messages.countTokens({ model: 'claude-x', messages: [{ role: 'user', content: 'Say hello. And more words here.' }] });
  check(ct2.input_tokens > ct.input_tokens - 5, 'count_tokens grows with text', [ct, ct2]);

  // Think Max needs --ctx >= 393216; below it a max request renders as high
  const ctMax = await client.messages.countTokens({ model: 'claude-x', messages, output_config: { effort: 'max' },
    system: [{ type: 'text', text: 'x-anthropic-billing-header: drop me' }, { type: 'text', text: 'Be brief.' }] });
  check(ctMax.input_tokens === ct.input_tokens, 'Think Max falls back to high on a small context', [ctMax, ct]);

  // ---- streaming: the event lifecycle
  const stream = client.messages.stream({ model: 'claude-x', max_tokens: 12, messages });
  const evs = [];
  for await (const ev of stream) evs.push(ev);
  const final = await stream.finalMessage();
  const types = evs.map((e) => e.type);
  check(types[0] === 'message_start' && types.at(-1) === 'message_stop' && types.at(-2) === 'message_delta',
    'message_start ... message_delta, message_stop', types);
  let open = -1;
  let next = 0;
  let ok = true;
  for (const e of evs) {
    if (e.type === 'content_block_start') ok &&= open === -1 && e.index === next, (open = e.index);
    else if (e.type === 'content_block_delta') ok &&= e.index === open;
    else if (e.type === 'content_block_stop') ok &&= e.index === open, (open = -1), next++;
  }
  check(ok && open === -1 && next >= 1, 'blocks open/close in order with increasing indexes', types);
  const thinking = evs.filter((e) => e.type === 'content_block_start' && e.content_block.type === 'thinking');
  check(thinking.length === 1, 'thinking block streamed', types);
  const sig = evs.find((e) => e.type === 'content_block_delta' && e.delta.type === 'signature_delta');
  check(sig && sig.delta.signature === evs[0].message.id, 'signature = message id', sig);
  const md = evs.at(-2);
  check(stops.includes(md.delta.stop_reason) && md.usage.output_tokens <= 12, 'message_delta', md);
  check(final.content.some((b) => b.type === 'text'), 'final message has a text block', final.content);

  // ---- thinking disabled: no thinking block
  const m2 = await client.messages.create({ model: 'claude-x', max_tokens: 6, messages, thinking: { type: 'disabled' } });
  check(!m2.content.some((b) => b.type === 'thinking'), 'thinking disabled', m2.content);

  // ---- tool history (tool_use + tool_result) renders and generates; with
  // tools offered, count_tokens sees the tools block (counting is cheap,
  // prefilling ~750 tokens of tools on the tiny vocabulary is not)
  const tools = [{ name: 'get_weather', description: 'Weather', input_schema: { type: 'object', properties: { city: { type: 'string' } } } }];
  const history = [
    { role: 'user', content: 'Weather in Paris?' },
    { role: 'assistant', content: [{ type: 'thinking', thinking: 'use the tool', signature: 's' },
      { type: 'tool_use', id: 'toolu_1', name: 'get_weather', input: { city: 'Paris' } }] },
    { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_1', content: 'sunny' }, { type: 'text', text: 'thanks' }] },
  ];
  const m3 = await client.messages.create({ model: 'claude-x', max_tokens: 4, messages: history });
  check(stops.includes(m3.stop_reason), 'tool history request', m3);
  const withTools = await client.messages.countTokens({ model: 'claude-x', tools, messages: history });
  const without = await client.messages.countTokens({ model: 'claude-x', messages: history });
  check(withTools.input_tokens > without.input_tokens + 50, 'tools block counted', [withTools, without]);
  const noneChoice = await client.messages.countTokens({ model: 'claude-x', tools, tool_choice: { type: 'none' }, messages: history });
  check(noneChoice.input_tokens === without.input_tokens, 'tool_choice none drops the tools block', [noneChoice, without]);

  // ---- raw stream framing: "event: X" lines matching data.type
  const raw = await readSSE(await post(srv.url, '/v1/messages', { max_tokens: 3, messages, stream: true }));
  check(raw.events.every((e) => e.event === e.data.type), 'event line = data.type', raw.text.slice(0, 500));

  // ---- errors come in Anthropic's shape
  let err = null;
  try {
    await client.messages.create({ model: 'claude-x', max_tokens: 5, messages: [{ role: 'tool', content: 'x' }] });
  } catch (e) {
    err = e;
  }
  check(err instanceof Anthropic.BadRequestError && err.error?.type === 'error' &&
    err.error?.error?.type === 'invalid_request_error' && /role/.test(err.error?.error?.message), 'bad role -> 400 Anthropic error', err?.error);
  err = null;
  try {
    await client.messages.create({ model: 'claude-x', max_tokens: 5, messages: [
      { role: 'user', content: [{ type: 'tool_result', tool_use_id: 'toolu_unknown', content: 'x' }] }] });
  } catch (e) {
    err = e;
  }
  check(err instanceof Anthropic.BadRequestError && /toolu_unknown/.test(err.error?.error?.message), 'orphan tool_result -> 400', err?.error);
} finally {
  await srv.stop();
}
done('test_server_anthropic');
