// server_harness.mjs — starts ds4-server on a tiny random model for the
// test_server_*.mjs tests (not a test itself).
//
// The model comes from `ds4-mkmodel --preset tiny --seed 1` (written once
// per test into $DS4_TMP); `layers` makes a shallower one (2 layers prefill
// several times faster: for clients whose prompts run to thousands of tokens). The server binds 127.0.0.1 with --port 0 and
// the harness reads the real port from its "listening on" log line, so tests
// never race for ports. A test whose tools are missing exits 77 (skip).
import { spawn, spawnSync } from 'node:child_process';
import { existsSync, mkdtempSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join, resolve } from 'node:path';

import { check } from './checks.mjs';

export { check, done } from './checks.mjs';

const root = process.env.DS4_ROOT || resolve(import.meta.dirname, '../..');
const build = resolve(root, process.env.DS4_BUILD || 'build');
const bin = (name) => join(build, 'bin', name);
const tmp = process.env.DS4_TMP || mkdtempSync(join(tmpdir(), 'ds4-server-test-'));

export function skip(msg) {
  console.log(`skipped: ${msg}`);
  process.exit(77);
}

export function tinyModel(layers = 0) {
  if (!existsSync(bin('ds4-mkmodel'))) skip('ds4-mkmodel not built');
  if (!existsSync(bin('ds4-server'))) skip('ds4-server not built');
  const out = join(tmp, layers ? `tiny-${layers}l.gguf` : 'tiny.gguf');
  if (!existsSync(out)) {
    const extra = layers ? ['--layers', String(layers)] : [];
    const r = spawnSync(bin('ds4-mkmodel'), ['--preset', 'tiny', '--seed', '1', ...extra, '-o', out], { encoding: 'utf8' });
    if (r.status !== 0) throw new Error(`ds4-mkmodel failed: ${r.stderr}`);
  }
  return out;
}

// Starts a server; resolves to { url, port, log(), stop() }.
export async function startServer(args = [], { ctx = 8192, layers = 0 } = {}) {
  const model = tinyModel(layers);
  const proc = spawn(bin('ds4-server'), ['-m', model, '--port', '0', '--ctx', String(ctx), '-t', '2', ...args], {
    stdio: ['ignore', 'ignore', 'pipe'],
  });
  let log = '';
  const port = await new Promise((ok, fail) => {
    const timer = setTimeout(() => fail(new Error(`server did not start:\n${log}`)), 60000);
    proc.stderr.on('data', (d) => {
      log += d;
      const m = /listening on http:\/\/127\.0\.0\.1:(\d+)/.exec(log);
      if (m) {
        clearTimeout(timer);
        ok(Number(m[1]));
      }
    });
    proc.on('exit', (code) => fail(new Error(`server exited with ${code}:\n${log}`)));
  });
  proc.removeAllListeners('exit');
  return {
    url: `http://127.0.0.1:${port}`,
    port,
    pid: proc.pid,
    log: () => log,
    // SIGKILL (a crash); resolves once the process is gone.
    async kill() {
      if (proc.exitCode !== null || proc.signalCode !== null) return;
      const gone = new Promise((ok) => proc.on('exit', ok));
      proc.kill('SIGKILL');
      await gone;
    },
    // SIGTERM; the server must exit 0 (under ASan: no leaks, no errors).
    async stop() {
      let code = proc.exitCode;
      if (code === null) {
        proc.kill('SIGTERM');
        code = await new Promise((ok) => proc.on('exit', (c, sig) => ok(c ?? sig)));
      }
      check(code === 0, `server exits cleanly (got ${code})`, log.slice(-4000));
      return code;
    },
  };
}

// Raw SSE events of a response body: [{event, data}] (data parsed as JSON
// when it is JSON), plus the comment lines seen.
export async function readSSE(res) {
  const text = await res.text();
  const events = [];
  const comments = [];
  for (const block of text.split('\n\n')) {
    if (!block.trim()) continue;
    let event = null;
    const data = [];
    for (const line of block.split('\n')) {
      if (line.startsWith(':')) comments.push(line);
      else if (line.startsWith('event: ')) event = line.slice(7);
      else if (line.startsWith('data: ')) data.push(line.slice(6));
    }
    if (!data.length) continue;
    const raw = data.join('\n');
    let parsed = raw;
    try {
      parsed = JSON.parse(raw);
    } catch {}
    events.push({ event, data: parsed });
  }
  return { events, comments, text };
}

export const post = (url, path, body, headers = {}) =>
  fetch(url + path, {
    method: 'POST',
    headers: { 'content-type': 'application/json', ...headers },
    body: typeof body === 'string' || body instanceof Uint8Array ? body : JSON.stringify(body),
  });
