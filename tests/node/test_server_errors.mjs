// test_server_errors.mjs — bad input gets the endpoint's native error shape
// with a useful message, and the server keeps serving: malformed JSON,
// wrong types, unknown roles, missing or empty fields, unsupported content
// parts, invalid UTF-8, oversized bodies (413), prompts over the context
// (400 with the limit), unknown endpoints (404), auth (401), and CORS.
import { connect } from 'node:net';
import OpenAI from 'openai';
import { check, done, post, startServer } from './server_harness.mjs';

const KEY = 'sekret-key';
const srv = await startServer(['--api-key', KEY, '--max-body-mb', '1', '--cors', '--io-timeout', '2'], { ctx: 256 });
const auth = { authorization: `Bearer ${KEY}` };

// [path, body, expected status, regexp the message must match]
const openaiCases = [
  ['/v1/chat/completions', '{"messages": [', 400, /invalid JSON/],
  ['/v1/chat/completions', '[1,2]', 400, /JSON object/],
  ['/v1/chat/completions', '', 400, /empty/],
  ['/v1/chat/completions', {}, 400, /missing messages/],
  ['/v1/chat/completions', { messages: [] }, 400, /at least one/],
  ['/v1/chat/completions', { messages: 'hi' }, 400, /messages.*array/],
  ['/v1/chat/completions', { messages: [{ role: 'wizard', content: 'x' }] }, 400, /role.*wizard/],
  ['/v1/chat/completions', { messages: [{ role: 'user', content: 5 }] }, 400, /content/],
  ['/v1/chat/completions', { messages: [{ role: 'user', content: [{ type: 'image_url', image_url: { url: 'x' } }] }] }, 400, /image_url.*not supported/],
  ['/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], max_tokens: 'ten' }, 400, /max_tokens/],
  ['/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], max_tokens: -1 }, 400, /max_tokens/],
  ['/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], temperature: 'hot' }, 400, /temperature/],
  ['/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], top_p: 3 }, 400, /top_p/],
  ['/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], reasoning_effort: 'extreme' }, 400, /reasoning_effort/],
  ['/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], stream: 'yes' }, 400, /stream/],
  ['/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }], tools: [{ type: 'function' }] }, 400, /tools\[0\]/],
  ['/v1/chat/completions', { messages: [{ role: 'user', content: 'word '.repeat(400) }] }, 400, /Prompt has \d+ tokens.*context size is 256/],
  ['/v1/completions', { max_tokens: 3 }, 400, /missing prompt/],
  ['/v1/completions', { prompt: [1, 2, 3] }, 400, /token-id/],
  ['/v1/responses', { model: 'x' }, 400, /missing input/],
  ['/v1/responses', { input: 'x', previous_response_id: 'resp_1' }, 400, /previous_response_id is not supported/],
  ['/v1/responses', { input: 'x', tool_choice: 'required' }, 400, /tool_choice=required not supported/],
  ['/v1/responses', { input: [{ type: 'message', role: 'user', content: [{ type: 'input_image', image_url: 'x' }] }] }, 400, /input_image/],
  ['/v1/responses', { input: [{ type: 'function_call_output', call_id: 'call_nope', output: 'x' }] }, 400, /call_nope/],
  ['/v1/responses', { input: [{ type: 'bogus_item' }] }, 400, /bogus_item/],
];
const anthropicCases = [
  ['/v1/messages', '{"messages": [', 400, /invalid JSON/],
  ['/v1/messages', { max_tokens: 5 }, 400, /missing messages/],
  ['/v1/messages', { messages: [{ role: 'tool', content: 'x' }] }, 400, /role/],
  ['/v1/messages', { messages: [{ role: 'user', content: [{ type: 'document', source: {} }] }] }, 400, /document/],
  ['/v1/messages', { messages: [{ role: 'user', content: 'x' }], thinking: 'on' }, 400, /thinking/],
  ['/v1/messages', { messages: [{ role: 'user', content: 'word '.repeat(400) }] }, 400, /context size is 256/],
  ['/v1/messages/count_tokens', { messages: 7 }, 400, /messages/],
];

try {
  for (const [path, body, status, re] of openaiCases) {
    const r = await post(srv.url, path, body, auth);
    const j = await r.json().catch(() => null);
    check(r.status === status && j?.error && typeof j.error.message === 'string' && re.test(j.error.message) &&
      j.error.type === 'invalid_request_error', `${path} ${JSON.stringify(body).slice(0, 80)} -> ${status} OpenAI shape`, [r.status, j]);
  }
  for (const [path, body, status, re] of anthropicCases) {
    const r = await post(srv.url, path, body, auth);
    const j = await r.json().catch(() => null);
    check(r.status === status && j?.type === 'error' && j.error?.type === 'invalid_request_error' && re.test(j.error.message),
      `${path} ${JSON.stringify(body).slice(0, 80)} -> ${status} Anthropic shape`, [r.status, j]);
  }

  // the context error carries the numbers
  const ctxErr = await (await post(srv.url, '/v1/chat/completions', { messages: [{ role: 'user', content: 'word '.repeat(400) }] }, auth)).json();
  check(ctxErr.error.code === 'context_length_exceeded' && ctxErr.error.n_ctx === 256 && ctxErr.error.n_prompt_tokens > 256 &&
    ctxErr.error.param === 'messages', 'context error fields', ctxErr);

  // invalid UTF-8 inside a JSON string
  const bad = new Uint8Array([...Buffer.from('{"messages":[{"role":"user","content":"'), 0xff, 0xfe, ...Buffer.from('"}]}')]);
  const ru = await post(srv.url, '/v1/chat/completions', bad, auth);
  const ju = await ru.json();
  check(ru.status === 400 && /UTF-8/i.test(ju.error.message), 'invalid UTF-8 -> 400', ju);

  // 413: a body a bit over --max-body-mb 1 (within the server's drain cap of
  // 4x the limit) is read to the end and answered 413, so the client always
  // gets to read the answer
  const big = JSON.stringify({ messages: [{ role: 'user', content: 'x'.repeat(1.5 * 1024 * 1024) }] });
  const r413 = await post(srv.url, '/v1/chat/completions', big, auth);
  const j413 = await r413.json();
  check(r413.status === 413 && /1 MiB/.test(j413.error.message), '413 with the limit', [r413.status, j413]);
  const r413a = await post(srv.url, '/v1/messages', big, auth);
  const j413a = await r413a.json();
  check(r413a.status === 413 && j413a.type === 'error' && j413a.error.type === 'request_too_large', '413 Anthropic shape', j413a);

  // A body far over the limit (6 MiB, past the 4 MiB drain cap) is answered
  // 413 from its Content-Length and the connection closed without reading
  // it. Whether the client sees the 413 is a race it cannot win every time:
  // closing a socket with unread data makes the kernel send a reset (RFC
  // 2525 §2.17), which may hit the client mid-write (EPIPE) or before it
  // reads (ECONNRESET). Both are the server refusing the body, so they count
  // as correct; what must never happen is any other status (the body
  // accepted or parsed), a hang, or a server that stops answering (checked
  // right after with /health).
  const huge = JSON.stringify({ messages: [{ role: 'user', content: 'x'.repeat(6 * 1024 * 1024) }] });
  let hugeOutcome;
  try {
    const rh = await post(srv.url, '/v1/chat/completions', huge, auth);
    const jh = await rh.json().catch(() => null);
    hugeOutcome = rh.status === 413 && /1 MiB/.test(jh?.error?.message) ? '413' : `status ${rh.status} ${JSON.stringify(jh)}`;
  } catch (e) {
    const code = e.cause?.code ?? e.code;
    hugeOutcome = ['EPIPE', 'ECONNRESET', 'UND_ERR_SOCKET'].includes(code) ? 'closed' : `error ${code} ${e}`;
  }
  console.log(`huge body outcome: ${hugeOutcome}`);
  check(hugeOutcome === '413' || hugeOutcome === 'closed', 'huge body: 413 or closed by the server, never accepted', hugeOutcome);

  // Chunked bodies (no Content-Length): one a bit over the limit is drained
  // and answered 413; one streaming past the drain cap is cut off, with no
  // response at all (libmicrohttpd cannot answer mid-body), so only a
  // connection closed by the server is correct there.
  const chunked = (bytes) => new ReadableStream({
    start(ctl) {
      const piece = new TextEncoder().encode('x'.repeat(64 * 1024));
      for (let n = 0; n < bytes; n += piece.length) ctl.enqueue(piece);
      ctl.close();
    },
  });
  const postChunked = async (bytes) => {
    try {
      const r = await fetch(srv.url + '/v1/chat/completions', { method: 'POST', body: chunked(bytes), duplex: 'half', headers: auth });
      const j = await r.json().catch(() => null);
      return r.status === 413 && /1 MiB/.test(j?.error?.message) ? '413' : `status ${r.status} ${JSON.stringify(j)}`;
    } catch (e) {
      const code = e.cause?.code ?? e.code;
      return ['EPIPE', 'ECONNRESET', 'UND_ERR_SOCKET'].includes(code) ? 'closed' : `error ${code} ${e}`;
    }
  };
  const chunkedSmall = await postChunked(1.5 * 1024 * 1024);
  check(chunkedSmall === '413', 'chunked body a bit over the limit -> 413', chunkedSmall);
  const chunkedHuge = await postChunked(6 * 1024 * 1024);
  check(chunkedHuge === 'closed', 'chunked body past the drain cap -> closed', chunkedHuge);
  const hAfter = await fetch(srv.url + '/health');
  check(hAfter.status === 200, 'server still answers after a huge body', hAfter.status);

  // 401: missing or wrong key, in each protocol's shape; x-api-key works
  const r401 = await post(srv.url, '/v1/chat/completions', { messages: [{ role: 'user', content: 'x' }] });
  const j401 = await r401.json();
  check(r401.status === 401 && j401.error?.type === 'authentication_error', '401 OpenAI', j401);
  const r401b = await post(srv.url, '/v1/messages', { messages: [{ role: 'user', content: 'x' }] }, { 'x-api-key': 'wrong' });
  const j401b = await r401b.json();
  check(r401b.status === 401 && j401b.type === 'error' && j401b.error.type === 'authentication_error', '401 Anthropic', j401b);
  const sdkBad = new OpenAI({ baseURL: srv.url + '/v1', apiKey: 'nope', maxRetries: 0 });
  let e401 = null;
  try {
    await sdkBad.models.list();
  } catch (e) {
    e401 = e;
  }
  check(e401 instanceof OpenAI.AuthenticationError, 'SDK raises AuthenticationError', String(e401));
  const rx = await post(srv.url, '/v1/messages', { max_tokens: 2, messages: [{ role: 'user', content: 'x' }] }, { 'x-api-key': KEY });
  check(rx.status === 200, 'x-api-key accepted', rx.status);
  const rh = await fetch(srv.url + '/health');
  check(rh.status === 200 && (await rh.json()).model_loaded === true, '/health needs no key');

  // 404 and CORS
  const r404 = await fetch(srv.url + '/v2/nothing', { headers: auth });
  check(r404.status === 404 && /unknown endpoint/.test((await r404.json()).error.message), '404 unknown endpoint');
  const ro = await fetch(srv.url + '/v1/chat/completions', { method: 'OPTIONS' });
  check(ro.status === 204 && ro.headers.get('access-control-allow-origin') === '*', 'OPTIONS 204 with CORS', [...ro.headers]);

  // a stalled client (half a request, then silence) does not block others
  // and is dropped after --io-timeout
  const stalled = connect(srv.port, '127.0.0.1');
  const closed = new Promise((ok) => stalled.on('close', () => ok(Date.now())));
  stalled.on('error', () => {});
  await new Promise((ok) => stalled.on('connect', ok));
  const t0 = Date.now();
  stalled.write('POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{"mess');
  const meanwhile = await post(srv.url, '/v1/chat/completions', { messages: [{ role: 'user', content: 'hi' }], max_tokens: 2 }, auth);
  check(meanwhile.status === 200, 'others are served while a client stalls', meanwhile.status);
  const tClosed = await Promise.race([closed, new Promise((ok) => setTimeout(() => ok(null), 10000))]);
  check(tClosed !== null && tClosed - t0 < 8000, `stalled connection dropped (${tClosed && tClosed - t0} ms)`);

  // garbage instead of HTTP: an error status or a closed socket, nothing else
  const garbage = await new Promise((ok) => {
    const sock = connect(srv.port, '127.0.0.1', () => sock.write('\x00\xffNOT HTTP AT ALL\r\n\r\n'));
    let got = '';
    sock.on('data', (d) => (got += d));
    sock.on('error', () => {});
    sock.on('close', () => ok(got));
  });
  check(garbage === '' || /^HTTP\/1\.[01] 4\d\d/.test(garbage), 'garbage request line -> 4xx or close', garbage.slice(0, 200));

  // after all that, a good request still works
  const good = new OpenAI({ baseURL: srv.url + '/v1', apiKey: KEY, maxRetries: 0 });
  const ok = await good.chat.completions.create({ messages: [{ role: 'user', content: 'hi' }], max_tokens: 3 });
  check(ok.choices[0].message.role === 'assistant', 'good request after bad ones', ok);

  // a second server on the same port fails to start instead of sharing it
  const second = await startServer(['--port', String(srv.port)]).then((s2) => s2.stop().then(() => 'started'), (e) => String(e));
  check(/cannot listen on 127\.0\.0\.1:\d+: Address already in use/.test(second), 'busy port: a clear startup error', second);
} finally {
  await srv.stop();
}
done('test_server_errors');
