// test_server_queue.mjs — scheduling: the bounded queue answers 429 when
// full, keep-alive comments reach a waiting stream, a client that aborts
// (streaming, queued, or non-streaming) stops its job so the next request
// runs promptly, 64 concurrent streams with half of them aborted (running or
// queued) leave the other half to finish cleanly, and /health and /metrics
// report it.
import Anthropic from '@anthropic-ai/sdk';
import OpenAI from 'openai';
import { check, done, post, startServer } from './server_harness.mjs';

// ignore_eos: the random model would otherwise end a "long" job at a random EOS
const long = { messages: [{ role: 'user', content: 'Tell a long story.' }], max_tokens: 100000, stream: true, think: false, ignore_eos: true };
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

// Opens a stream and resolves once its first data event arrived.
async function openStream(url, body = long) {
  const ctl = new AbortController();
  const res = await fetch(url + '/v1/chat/completions', { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify(body), signal: ctl.signal });
  const reader = res.body.getReader();
  const dec = new TextDecoder();
  let text = '';
  const state = { res, ctl, text: () => text, reader };
  state.readUntil = async (pred, ms = 30000) => {
    const t0 = Date.now();
    while (!pred(text)) {
      if (Date.now() - t0 > ms) return false;
      const { value, done: end } = await reader.read();
      if (end) return pred(text);
      text += dec.decode(value, { stream: true });
    }
    return true;
  };
  state.abort = () => ctl.abort();
  return state;
}

const health = async (url) => (await fetch(url + '/health')).json();
async function waitFor(pred, ms = 20000) {
  const t0 = Date.now();
  while (Date.now() - t0 < ms) {
    if (await pred()) return true;
    await sleep(50);
  }
  return false;
}
const metric = (text, name) => {
  const line = text.split('\n').find((l) => l.startsWith(name + ' '));
  return line ? Number(line.slice(name.length + 1)) : NaN;
};

// --io-timeout 3: waiting streams must survive on keep-alives alone
let srv = await startServer(['--max-queue', '1', '--keepalive', '1', '--io-timeout', '3']);
try {
  // A runs, B waits in the queue, C is refused
  const a = await openStream(srv.url);
  check(await a.readUntil((t) => t.includes('"content"') || t.includes('"role"')), 'A streams');
  const b = await openStream(srv.url);
  check(await waitFor(async () => (await health(srv.url)).queue_depth === 1), 'B queued');
  const oa = new OpenAI({ baseURL: srv.url + '/v1', apiKey: 'x', maxRetries: 0 });
  let e429 = null;
  try {
    await oa.chat.completions.create({ messages: [{ role: 'user', content: 'x' }], max_tokens: 2 });
  } catch (e) {
    e429 = e;
  }
  check(e429 instanceof OpenAI.RateLimitError && /max-queue/.test(e429.message), '429 OpenAI RateLimitError', String(e429));
  const an = new Anthropic({ baseURL: srv.url, apiKey: 'x', maxRetries: 0 });
  e429 = null;
  try {
    await an.messages.create({ model: 'm', messages: [{ role: 'user', content: 'x' }], max_tokens: 2 });
  } catch (e) {
    e429 = e;
  }
  check(e429 instanceof Anthropic.RateLimitError && e429.error?.error?.type === 'rate_limit_error', '429 Anthropic shape', e429?.error);

  // B, waiting, gets keep-alive comments (headers went out at enqueue)
  check(await b.readUntil((t) => t.includes(': keep-alive'), 5000), 'queued stream gets keep-alive comments', b.text());

  // B keeps waiting longer than --io-timeout, alive on keep-alives; then
  // abort A: B starts promptly
  await sleep(3500);
  a.abort();
  const t0 = Date.now();
  check(await b.readUntil((t) => t.includes('"role"'), 10000), 'B starts after A is aborted');
  check(Date.now() - t0 < 5000, `B started ${Date.now() - t0} ms after the abort`);
  b.abort();

  // a queued job whose client left is skipped; a non-streaming abort stops too
  const a2 = await openStream(srv.url);
  await a2.readUntil((t) => t.includes('"role"'));
  const b2 = await openStream(srv.url);
  check(await waitFor(async () => (await health(srv.url)).queue_depth === 1), 'B2 queued');
  b2.abort();
  a2.abort();
  check(await waitFor(async () => { const h = await health(srv.url); return h.queue_depth === 0 && !h.busy; }), 'aborted jobs leave the queue');
  const ctl = new AbortController();
  const ns = fetch(srv.url + '/v1/chat/completions', { method: 'POST', headers: { 'content-type': 'application/json' },
    body: JSON.stringify({ ...long, stream: false }), signal: ctl.signal }).catch((e) => e);
  check(await waitFor(async () => (await health(srv.url)).busy), 'non-streaming job running');
  await sleep(300);
  ctl.abort();
  await ns;
  const t1 = Date.now();
  const quick = await oa.chat.completions.create({ messages: [{ role: 'user', content: 'x' }], max_tokens: 3 });
  check(quick.choices.length === 1 && Date.now() - t1 < 5000, `request after aborts completes promptly (${Date.now() - t1} ms)`);
  check(await waitFor(async () => { const h = await health(srv.url); return h.queue_depth === 0 && !h.busy; }), 'queue drained');
  const mt = await (await fetch(srv.url + '/metrics')).text();
  check(metric(mt, 'ds4_cancelled_total') >= 4, 'metrics: cancelled jobs', mt);
  check(metric(mt, 'ds4_requests_total{endpoint="/v1/chat/completions",status="429"}') === 1, 'metrics: 429 counted', mt);
  check(metric(mt, 'ds4_completion_tokens_total') > 0 && metric(mt, 'ds4_queue_depth') === 0, 'metrics: tokens, depth', mt);
  check(/# TYPE ds4_decode_tokens_per_second gauge/.test(mt), 'metrics: prometheus TYPE lines', mt);
} finally {
  await srv.stop();
}

// 64 concurrent streams (the default --max-queue holds them: one runs, 63
// wait), half of them disconnected midway: every other one finishes
// correctly, the queue drains, and /metrics adds up. The disconnected half
// mixes long jobs dropped while generating with jobs dropped while still
// queued. Two layers: this is about scheduling, not the model.
srv = await startServer([], { layers: 2 });
try {
  const N = 64, K = 12;
  const before = await (await fetch(srv.url + '/metrics')).text();
  const kept = { messages: [{ role: 'user', content: 'Hi' }], max_tokens: K, stream: true, think: false, ignore_eos: true,
    stream_options: { include_usage: true } };
  const t0 = Date.now();
  const streams = await Promise.all(Array.from({ length: N }, (_, i) => openStream(srv.url, i % 2 ? long : kept)));
  check(streams.every((s) => s.res.status === 200), 'all 64 streams accepted (default --max-queue)', streams.map((s) => s.res.status));
  const outcome = await Promise.all(streams.map(async (s, i) => {
    if (i % 4 === 1) { // running: dropped after some output
      const got = await s.readUntil((t) => (t.match(/"content"/g) || []).length >= 3, 120000);
      s.abort();
      return got ? 'dropped-running' : 'never-ran';
    }
    if (i % 4 === 3) { // queued: dropped before it runs
      s.abort();
      return 'dropped-queued';
    }
    await s.readUntil((t) => t.includes('data: [DONE]'), 120000);
    return s.text();
  }));
  check(outcome.filter((o) => o === 'dropped-running').length === N / 4, 'long jobs ran and were dropped midway', outcome.filter((o) => o.length < 20));
  const done = outcome.filter((o, i) => i % 2 === 0);
  const chunks = done.map((t) => t.split('\n\n').filter((e) => e.startsWith('data: {')).map((e) => JSON.parse(e.slice(6))));
  check(done.every((t) => t.trimEnd().endsWith('data: [DONE]')), 'kept streams end with [DONE]', done.map((t) => t.slice(-80)));
  check(chunks.every((cs) => cs[0]?.choices[0]?.delta?.role === 'assistant' && cs.at(-2)?.choices[0]?.finish_reason === 'length' &&
    cs.at(-1)?.usage?.completion_tokens === K && new Set(cs.map((c) => c.id)).size === 1),
    `kept streams: role, content, finish length after ${K} tokens, usage`, chunks.map((cs) => cs.slice(-2)));
  check(new Set(chunks.map((cs) => cs[0]?.id)).size === N / 2, 'kept streams have distinct ids');
  check(await waitFor(async () => { const h = await health(srv.url); return h.queue_depth === 0 && !h.busy; }, 60000), 'queue drains');
  const after = await (await fetch(srv.url + '/metrics')).text();
  const delta = (name) => metric(after, name) - (metric(before, name) || 0);
  check(delta('ds4_cancelled_total') === N / 2, `metrics: ${N / 2} jobs cancelled (got ${delta('ds4_cancelled_total')})`, after);
  check(delta('ds4_requests_total{endpoint="/v1/chat/completions",status="200"}') === N, 'metrics: 64 streams counted', after);
  check(delta('ds4_completion_tokens_total') >= (N / 2) * K, 'metrics: completion tokens of the kept streams', after);
  check(metric(after, 'ds4_queue_depth') === 0 && metric(after, 'ds4_busy') === 0, 'metrics: depth 0, idle', after);
  const ok = await post(srv.url, '/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], max_tokens: 2 });
  check(ok.status === 200, 'server still serving');
  console.log(`64 streams: ${Date.now() - t0} ms`);
} finally {
  await srv.stop();
}
done('test_server_queue');
