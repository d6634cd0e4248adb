// test_server_queue.mjs — scheduling: the bounded queue answers 429 when
// full, keep-alive comments reach a waiting stream, a client that aborts
// (streaming, queued, or non-streaming) stops its job so the next request
// runs promptly, concurrent streams with half of them aborted all finish
// cleanly, and /health and /metrics report it.
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

// many concurrent streams, half aborted midway: the rest finish correctly
srv = await startServer(['--max-queue', '64']);
try {
  const N = 16;
  const body = { messages: [{ role: 'user', content: 'Hi' }], max_tokens: 12, stream: true, think: false };
  const streams = await Promise.all(Array.from({ length: N }, () => openStream(srv.url, body)));
  const results = await Promise.all(streams.map(async (s, i) => {
    if (i % 2) {
      await s.readUntil((t) => t.includes('"role"'), 60000);
      s.abort();
      return null;
    }
    await s.readUntil((t) => t.includes('[DONE]'), 60000);
    return s.text();
  }));
  const kept = results.filter((r) => r !== null);
  check(kept.every((t) => t.includes('"finish_reason":"length"') || t.includes('"finish_reason":"stop"')),
    'kept streams finish normally', kept.map((t) => t.slice(-200)));
  check(await waitFor(async () => { const h = await health(srv.url); return h.queue_depth === 0 && !h.busy; }), 'queue drains');
  const ok = await post(srv.url, '/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], max_tokens: 2 });
  check(ok.status === 200, 'server still serving');
} finally {
  await srv.stop();
}
done('test_server_queue');
