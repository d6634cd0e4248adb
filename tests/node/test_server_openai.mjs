// test_server_openai.mjs — the official `openai` SDK (6.49.0) against
// ds4-server on a tiny random model: models, chat completions (plain,
// streaming with usage, thinking on/off, with tools), completions, and the
// Responses API (plain and streaming). The model's words are random, so the
// checks are about shapes, event order and usage arithmetic.
import OpenAI from 'openai';
import { check, done, readSSE, post, startServer } from './server_harness.mjs';

const srv = await startServer();
const client = new OpenAI({ baseURL: srv.url + '/v1', apiKey: 'unused', maxRetries: 0, timeout: 60000 });
const user = [{ role: 'user', content: 'Say hello.' }];
const finishes = ['stop', 'length', 'tool_calls', 'error'];

try {
  // ---- models
  const models = await client.models.list();
  check(models.data.length === 1 && models.data[0].id === 'deepseek-v4-flash', 'models.list', models.data);
  const m = await client.models.retrieve('deepseek-v4-flash');
  check(m.context_length === 8192 && m.owned_by === 'ds4.c', 'models.retrieve', m);
  let notFound = null;
  try {
    await client.models.retrieve('gpt-17');
  } catch (e) {
    notFound = e;
  }
  check(notFound instanceof OpenAI.NotFoundError, 'unknown model id -> 404 NotFoundError', String(notFound));

  // ---- chat, non-streaming, thinking on (default)
  const c1 = await client.chat.completions.create({ model: 'deepseek-v4-flash', messages: user, max_tokens: 12 });
  check(/^chatcmpl-\d+$/.test(c1.id) && c1.object === 'chat.completion', 'chat id/object', c1);
  check(c1.choices.length === 1 && c1.choices[0].message.role === 'assistant', 'chat choice', c1.choices);
  check(typeof c1.choices[0].message.content === 'string', 'content is never null', c1.choices[0].message);
  check(finishes.includes(c1.choices[0].finish_reason), 'finish_reason', c1.choices[0]);
  const u1 = c1.usage;
  check(u1.prompt_tokens > 0 && u1.completion_tokens > 0 && u1.completion_tokens <= 12, 'usage counts', u1);
  check(u1.total_tokens === u1.prompt_tokens + u1.completion_tokens, 'usage total', u1);
  check(u1.prompt_tokens_details.cached_tokens + u1.prompt_tokens_details.cache_write_tokens === u1.prompt_tokens,
    'cached + written = prompt', u1);
  check(c1.choices[0].finish_reason !== 'length' || u1.completion_tokens === 12, 'length means max_tokens used', c1);

  // ---- thinking off through the deepseek-chat alias: no reasoning_content
  const c2 = await client.chat.completions.create({ model: 'deepseek-chat', messages: user, max_tokens: 6, temperature: 0 });
  check(c2.model === 'deepseek-chat', 'model echoed', c2.model);
  check(c2.choices[0].message.reasoning_content === undefined, 'deepseek-chat: no reasoning', c2.choices[0].message);
  // greedy is deterministic: the same request gives the same text
  const c2b = await client.chat.completions.create({ model: 'deepseek-chat', messages: user, max_tokens: 6, temperature: 0 });
  check(c2b.choices[0].message.content === c2.choices[0].message.content, 'temperature 0 is deterministic',
    [c2.choices[0].message.content, c2b.choices[0].message.content]);
  // the prompt of the non-thinking turn differs by one token (</think> vs <think>)
  check(c2.usage.prompt_tokens === u1.prompt_tokens, 'thinking mode does not change the prompt length', [c2.usage, u1]);

  // ---- chat streaming with usage
  const stream = await client.chat.completions.create({
    messages: user, max_tokens: 10, stream: true, stream_options: { include_usage: true },
  });
  const chunks = [];
  for await (const ch of stream) chunks.push(ch);
  check(chunks.length >= 3, 'stream has chunks', chunks.length);
  check(chunks[0].choices[0].delta.role === 'assistant', 'first chunk: role', chunks[0]);
  check(chunks.every((c) => c.object === 'chat.completion.chunk' && c.id === chunks[0].id), 'chunk ids/objects');
  const last = chunks[chunks.length - 1];
  const fin = chunks[chunks.length - 2];
  check(last.choices.length === 0 && last.usage && last.usage.completion_tokens <= 10, 'usage chunk last', last);
  check(finishes.includes(fin.choices[0].finish_reason), 'finish chunk before usage', fin);
  const streamed = chunks.slice(1, -2).map((c) => c.choices[0].delta);
  check(streamed.every((d) => 'reasoning_content' in d || 'content' in d || 'tool_calls' in d), 'deltas carry text', streamed);
  check(streamed.some((d) => 'reasoning_content' in d), 'thinking streams reasoning_content', streamed);

  // without include_usage there is no usage chunk; the SDK still sees [DONE]
  const raw = await readSSE(await post(srv.url, '/v1/chat/completions', { messages: user, max_tokens: 3, stream: true }));
  check(raw.events[raw.events.length - 1].data === '[DONE]', 'stream ends with [DONE]', raw.text.slice(-300));
  check(!raw.events.some((e) => e.data && e.data.usage), 'no usage chunk unless asked');

  // ---- tools: the request renders and the response has the right shape
  const tools = [{ type: 'function', function: { name: 'get_weather', description: 'Weather for a city',
    parameters: { type: 'object', properties: { city: { type: 'string' } }, required: ['city'] } } }];
  // (one request only: the tools block is ~750 tokens on the tiny model's small vocabulary)
  // a whole tool round trip in the request: tools offered, assistant call, tool result
  const c4 = await client.chat.completions.create({
    messages: [...user,
      { role: 'assistant', content: '', tool_calls: [{ id: 'call_1', type: 'function', function: { name: 'get_weather', arguments: '{"city":"Paris"}' } }] },
      { role: 'tool', tool_call_id: 'call_1', content: 'sunny' }],
    tools, max_tokens: 3,
  });
  check(finishes.includes(c4.choices[0].finish_reason), 'tools: finish', c4.choices[0]);
  check(c4.usage.prompt_tokens > u1.prompt_tokens + 50, 'tools block and tool history are in the prompt', [c4.usage, u1]);

  // ---- completions
  const k1 = await client.completions.create({ model: 'deepseek-v4-flash', prompt: 'Once upon a time', max_tokens: 7 });
  check(/^cmpl-\d+$/.test(k1.id) && k1.object === 'text_completion', 'completion id/object', k1);
  check(typeof k1.choices[0].text === 'string' && finishes.includes(k1.choices[0].finish_reason), 'completion choice', k1);
  check(k1.usage.completion_tokens <= 7 && k1.usage.total_tokens === k1.usage.prompt_tokens + k1.usage.completion_tokens,
    'completion usage', k1.usage);
  const ks = await client.completions.create({ prompt: 'Once', max_tokens: 5, stream: true, stream_options: { include_usage: true } });
  const kchunks = [];
  for await (const ch of ks) kchunks.push(ch);
  check(kchunks.every((c) => c.object === 'text_completion'), 'completion chunks', kchunks);
  check(kchunks[kchunks.length - 1].usage?.completion_tokens <= 5, 'completion usage chunk', kchunks[kchunks.length - 1]);

  // ---- Responses, non-streaming
  const r1 = await client.responses.create({ model: 'deepseek-v4-flash', input: 'Say hello.', max_output_tokens: 9,
    reasoning: { summary: 'auto' } });
  check(/^resp_[0-9a-f]{24}$/.test(r1.id) && r1.object === 'response', 'response id/object', r1);
  check(['completed', 'incomplete'].includes(r1.status), 'response status', r1.status);
  check(r1.usage.output_tokens <= 9 && r1.usage.total_tokens === r1.usage.input_tokens + r1.usage.output_tokens,
    'response usage', r1.usage);
  check(r1.output.every((it) => ['reasoning', 'message', 'function_call'].includes(it.type)), 'response output items', r1.output);

  // ---- Responses, streaming: lifecycle and sequence numbers
  const rs = await client.responses.create({ input: [{ role: 'user', content: [{ type: 'input_text', text: 'Hi' }] }],
    instructions: 'Be brief.', max_output_tokens: 8, stream: true, reasoning: { effort: 'none' } });
  const evs = [];
  for await (const ev of rs) evs.push(ev);
  check(evs[0].type === 'response.created', 'created first', evs[0]);
  check(evs.every((e, i) => e.sequence_number === i), 'sequence numbers 0..n', evs.map((e) => e.sequence_number));
  const term = evs[evs.length - 1];
  check(['response.completed', 'response.incomplete'].includes(term.type), 'terminal event', term.type);
  check(term.response.usage.output_tokens <= 8, 'terminal usage', term.response.usage);
  const types = evs.map((e) => e.type);
  if (types.includes('response.output_text.delta')) {
    const order = ['response.output_item.added', 'response.content_part.added', 'response.output_text.delta',
      'response.output_text.done', 'response.content_part.done', 'response.output_item.done'];
    const idx = order.map((t) => types.indexOf(t));
    check(idx.every((v, i) => v >= 0 && (i === 0 || v > idx[i - 1])), 'message event order', types);
    const text = evs.filter((e) => e.type === 'response.output_text.delta').map((e) => e.delta).join('');
    check(evs.find((e) => e.type === 'response.output_text.done').text === text, 'done text = deltas', text);
  }
  check(!types.some((t) => t.startsWith('response.reasoning')), 'effort none: no reasoning events', types);
} finally {
  await srv.stop();
}
done('test_server_openai');
