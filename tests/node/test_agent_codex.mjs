// test_agent_codex.mjs — the real Codex CLI (@openai/codex, Responses API
// over SSE) completes turns against ds4-server, non-interactively
// (`codex exec --json`), on forced output:
//   1. a text reply: Codex prints exactly the forced text and exits 0;
//   2. a tool call: turn 1 is a DSML call of Codex's exec_command tool,
//      which Codex runs (it creates a file in $DS4_TMP), sends the result
//      back, and turn 2's text closes the session; the second request
//      continues the live state (cached input tokens).
// The configuration is what the server README recommends, plus what keeps
// the prompt small (short instructions, optional tools and context off: a
// full Codex prompt is 25k tokens) and Codex quiet (no update check, no
// analytics, no plugin sync). The sandbox is bypassed: the command only
// writes into the test's scratch directory, and bubblewrap may not run in
// containers.
//   3. Codex's full default request (all its tools, namespaces, web_search,
//      its long instructions): prefilling 25k tokens would take minutes, so
//      the server gets a small --ctx, and the answer must be the 400
//      context_length_exceeded that comes after parsing, rendering and
//      tokenizing succeeded (Codex reports it as running out of room).
import { readFileSync, existsSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { clientBinary, freshDir, run, tmp } from './agent_harness.mjs';
import { check, done, startServer } from './server_harness.mjs';

const codex = clientBinary('@openai/codex-linux-x64/vendor/x86_64-unknown-linux-musl/bin/codex', '@openai/codex');

// full: Codex's own prompt and tool set; otherwise cut down. Either way no
// update check, analytics, plugin or app sync (the only network it would use).
function config(url, full = false) {
  const small = `model_context_window = 16384
model_instructions_file = "${join(tmp, 'instructions.md')}"
include_permissions_instructions = false
include_apps_instructions = false
include_environment_context = false
web_search = "disabled"

[skills]
include_instructions = false

[agents]
enabled = false
`;
  return `model = "deepseek-v4-flash"
model_provider = "ds4"
check_for_update_on_startup = false
${full ? '' : small}
[model_providers.ds4]
name = "ds4"
base_url = "${url}/v1"
wire_api = "responses"
stream_idle_timeout_ms = 1000000
request_max_retries = 0
stream_max_retries = 0

[analytics]
enabled = false

[features]
plugins = false
apps = false
memories = false
${full ? '' : `goals = false
view_image = false
shell_snapshot = false
image_generation = false
browser_use = false
computer_use = false
tool_suggest = false
`}`;
}
writeFileSync(join(tmp, 'instructions.md'), 'You are a coding agent. Answer briefly.\n');

// One `codex exec` against a server forced to `outputs`; resolves to the
// parsed JSONL events and the run.
async function session(name, outputs, prompt, { ctx = 16384, full = false } = {}) {
  const force = join(tmp, `${name}.force.txt`);
  writeFileSync(force, outputs.join('\n<<<ds4-next-output>>>\n'));
  const srv = await startServer(['--force-output', force], { ctx, layers: 2 });
  try {
    const home = freshDir(`${name}-home`);
    freshDir(`${name}-home/.codex`);
    writeFileSync(join(home, '.codex/config.toml'), config(srv.url, full));
    const r = await run(codex, ['exec', '--strict-config', '--ephemeral', '--skip-git-repo-check',
      '--dangerously-bypass-approvals-and-sandbox', '--json', prompt],
    { home, cwd: freshDir(`${name}-work`), env: { CODEX_HOME: join(home, '.codex') } });
    const events = r.stdout.split('\n').filter((l) => l.startsWith('{')).map((l) => JSON.parse(l));
    if (!full) check(r.code === 0, `${name}: codex exits 0 (got ${r.code} after ${r.ms} ms)`, r.stderr.slice(-3000) + r.stdout.slice(-2000));
    const metrics = await (await fetch(srv.url + '/metrics')).text();
    return { events, r, log: srv.log(), metrics };
  } finally {
    await srv.stop();
  }
}
const items = (events, type) => events.filter((e) => e.type === 'item.completed' && e.item.type === type).map((e) => e.item);

// ---- 1. a text reply ----
{
  const text = 'Hello from ds4, forced.';
  const { events } = await session('text', [text], 'Say hello');
  const msgs = items(events, 'agent_message');
  check(msgs.length === 1 && msgs[0].text === text, 'text: the agent message is the forced reply', events);
  check(events.at(-1)?.type === 'turn.completed' && events.at(-1).usage.output_tokens > 0, 'text: turn completed with usage', events.at(-1));
}

// ---- 2. a tool call Codex executes, then a text reply ----
{
  const out = join(tmp, 'made-by-codex.txt');
  const call = 'I will create the file.\n\n<｜DSML｜tool_calls>\n<｜DSML｜invoke name="exec_command">\n' +
    `<｜DSML｜parameter name="cmd" string="true">echo made-by-codex > ${out}</｜DSML｜parameter>\n` +
    '</｜DSML｜invoke>\n</｜DSML｜tool_calls>';
  const { events, log } = await session('tool', [call, 'The file is created.'], 'Create the file');
  const cmds = items(events, 'command_execution');
  check(cmds.length === 1 && cmds[0].command.includes(`echo made-by-codex > ${out}`) && cmds[0].exit_code === 0,
    'tool: Codex ran the forced exec_command call', cmds);
  check(existsSync(out) && readFileSync(out, 'utf8') === 'made-by-codex\n', 'tool: the file exists');
  const msgs = items(events, 'agent_message').map((m) => m.text);
  check(JSON.stringify(msgs) === JSON.stringify(['I will create the file.', 'The file is created.']), 'tool: text before the call, then the reply', msgs);
  const usage = events.at(-1)?.usage;
  check(usage?.cached_input_tokens > 0, 'tool: the second request continued the live state', usage);
  check((log.match(/finish=tool_calls/g) || []).length === 1 && (log.match(/finish=stop/g) || []).length === 1,
    'tool: two requests, a tool call then a stop', log);
}

// ---- 3. the full default request parses and renders ----
{
  const { events, r, metrics } = await session('full', ['unused'], 'Say hello', { ctx: 4096, full: true });
  check(r.code !== 0 && events.some((e) => /context window/.test(e.message ?? e.error?.message ?? '')),
    'full: Codex reports the context limit', r.stdout.slice(-2000));
  const m = /ds4_requests_total\{endpoint="\/v1\/responses",status="(\d+)"\} (\d+)/g;
  const statuses = [...metrics.matchAll(m)].map((x) => x[1]);
  check(statuses.length === 1 && statuses[0] === '400', 'full: the only answer was the context 400', metrics);
}
done('test_agent_codex');
