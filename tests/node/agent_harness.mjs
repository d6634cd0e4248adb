// agent_harness.mjs — runs a real coding-agent CLI (Codex, Claude Code)
// against ds4-server for the test_agent_*.mjs tests (not a test itself).
//
// The clients are npm packages whose native binaries come in per-platform
// packages (tests/node/package.json lists the linux-x64 ones explicitly,
// as `npm ci --omit=optional` would leave them out). They run with a
// minimal environment: HOME in $DS4_TMP, no inherited API keys or proxies,
// and every phone-home switch the client has turned off, so the only
// network they touch is the server on 127.0.0.1.
import { spawn } from 'node:child_process';
import { existsSync, mkdirSync } from 'node:fs';
import { join, resolve } from 'node:path';
import { skip } from './server_harness.mjs';

const modules = resolve(import.meta.dirname, 'node_modules');
export const tmp = process.env.DS4_TMP;

// The client's binary, or a skip naming the missing package.
export function clientBinary(relPath, pkg) {
  const p = join(modules, relPath);
  if (!existsSync(p)) skip(`${pkg} is not installed in tests/node/node_modules (scripts/deps.sh --test)`);
  if (process.platform !== 'linux' || process.arch !== 'x64') skip(`${pkg}: only its linux-x64 binary is installed`);
  return p;
}

export function freshDir(name) {
  const d = join(tmp, name);
  mkdirSync(d, { recursive: true });
  return d;
}

// Runs a command with exactly `env` (plus PATH and a HOME); resolves to
// { code, stdout, stderr, ms }. Killed after timeoutMs.
export function run(cmd, args, { env = {}, cwd, home, timeoutMs = 240000 } = {}) {
  return new Promise((ok) => {
    const t0 = Date.now();
    const p = spawn(cmd, args, {
      cwd,
      env: { PATH: process.env.PATH, HOME: home, LANG: 'C.UTF-8', TERM: 'dumb', NO_COLOR: '1', ...env },
      stdio: ['ignore', 'pipe', 'pipe'],
    });
    let stdout = '', stderr = '';
    p.stdout.on('data', (d) => (stdout += d));
    p.stderr.on('data', (d) => (stderr += d));
    const timer = setTimeout(() => p.kill('SIGKILL'), timeoutMs);
    p.on('close', (code, sig) => {
      clearTimeout(timer);
      ok({ code: code ?? sig, stdout, stderr, ms: Date.now() - t0 });
    });
  });
}
