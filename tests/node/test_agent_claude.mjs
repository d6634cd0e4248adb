// test_agent_claude.mjs — the real Claude Code CLI
// (@anthropic-ai/claude-code, Messages API with streaming) completes turns
// against ds4-server, non-interactively (`claude -p --output-format json`),
// on forced output:
//   1. a text reply: the result is exactly the forced text, exit 0;
//   2. a tool call: turn 1 is a DSML call of Claude Code's Bash tool, which
//      it runs (creating a file in $DS4_TMP), sends the tool_result back,
//      and turn 2's text ends the session; the second request continues the
//      live state (cache_read_input_tokens);
//   3. Claude Code's full default request (its ~30k-token system prompt and
//      tool set, system-role messages): with a small --ctx the answer must be
//      the 400 context_length_exceeded that comes after parsing, rendering
//      and tokenizing succeeded.
// Configured as the server README says (ANTHROPIC_BASE_URL without /v1,
// any key), with the tools cut to Bash and a one-line system prompt (its
// own prompt and tool set run to ~30k tokens) and every non-essential
// connection off. Bash is allowed up front: -p has nobody to ask.
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { clientBinary, freshDir, run, tmp } from './agent_harness.mjs';
import { check, done, startServer } from './server_harness.mjs';

const claude = clientBinary('@anthropic-ai/claude-code-linux-x64/claude', '@anthropic-ai/claude-code');

async function session(name, outputs, prompt, { ctx = 16384, full = false } = {}) {
  const force = join(tmp, `${name}.force.txt`);
  writeFileSync(force, outputs.join('\n<<<ds4-next-output>>>\n'));
  const srv = await startServer(['--force-output', force], { ctx, layers: 2 });
  try {
    const small = full ? [] : ['--tools', 'Bash', '--allowedTools', 'Bash', '--system-prompt', 'You are a coding agent. Answer briefly.'];
    const r = await run(claude, ['-p', prompt, '--model', 'deepseek-v4-flash', ...small, '--output-format', 'json',
      '--no-session-persistence'], {
      home: freshDir(`${name}-home`),
      cwd: freshDir(`${name}-work`),
      env: {
        ANTHROPIC_BASE_URL: srv.url,
        ANTHROPIC_API_KEY: 'local',
        CLAUDE_CODE_DISABLE_NONESSENTIAL_TRAFFIC: '1',
        DISABLE_AUTOUPDATER: '1',
        DISABLE_TELEMETRY: '1',
        DISABLE_ERROR_REPORTING: '1',
        CLAUDE_STREAM_IDLE_TIMEOUT_MS: '600000',
      },
    });
    let result = null;
    try {
      result = JSON.parse(r.stdout);
    } catch {}
    if (!full) {
      check(r.code === 0, `${name}: claude exits 0 (got ${r.code} after ${r.ms} ms)`, r.stderr.slice(-3000) + r.stdout.slice(-2000));
      check(result && result.type === 'result' && result.is_error === false, `${name}: a successful result`, r.stdout.slice(-2000));
    }
    const metrics = await (await fetch(srv.url + '/metrics')).text();
    return { result: result ?? {}, log: srv.log(), metrics, r };
  } finally {
    await srv.stop();
  }
}

// ---- 1. a text reply ----
{
  const text = 'Hello from ds4, forced.';
  const { result } = await session('text', [text], 'Say hello');
  check(result.result === text && result.num_turns === 1 && result.stop_reason === 'end_turn', 'text: the forced reply', result);
}

// ---- 2. a Bash tool call Claude Code executes, then a text reply ----
{
  const out = join(tmp, 'made-by-claude.txt');
  const call = 'I will create the file.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="Bash">\n' +
    `<｜DSML｜parameter name="command" string="true">echo made-by-claude > ${out}</｜DSML｜parameter>\n` +
    '<｜DSML｜parameter name="description" string="true">Create the file</｜DSML｜parameter>\n' +
    '</｜DSML｜invoke>\n</｜DSML｜tool_calls>';
  const { result, log } = await session('tool', [call, 'The file is created.'], 'Create the file');
  check(existsSync(out) && readFileSync(out, 'utf8') === 'made-by-claude\n', 'tool: Claude Code ran the forced Bash call');
  check(result.result === 'The file is created.' && result.num_turns === 2, 'tool: the reply after the tool result', result);
  check(result.usage?.cache_read_input_tokens > 0, 'tool: the second request continued the live state', result.usage);
  check((log.match(/finish=tool_calls/g) || []).length === 1 && (log.match(/finish=stop/g) || []).length === 1,
    'tool: two requests, a tool call then a stop', log);
}

// ---- 3. the full default request parses and renders ----
{
  const { result, metrics, r } = await session('full', ['unused'], 'Say hello', { ctx: 4096, full: true });
  check(result.is_error === true && result.api_error_status === 400 && /context size is 4096 tokens/.test(result.result),
    'full: Claude Code reports the context 400', r.stdout.slice(-2000) + r.stderr.slice(-1000));
  const statuses = [...metrics.matchAll(/ds4_requests_total\{endpoint="\/v1\/messages",status="(\d+)"\} (\d+)/g)].map((x) => x[1]);
  check(statuses.length >= 1 && statuses.every((st) => st === '400'), 'full: context 400s only', metrics);
}
done('test_agent_claude');
