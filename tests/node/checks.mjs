// checks.mjs — the check()/done() pair of the node tests (not a test
// itself): count checks, print each failure to stderr, and at the end print
// the totals and exit 1 if any check failed.
let failures = 0;
let checks = 0;

export function check(cond, msg, extra) {
  checks++;
  if (!cond) {
    failures++;
    console.error(`FAIL: ${msg}`);
    if (extra !== undefined) console.error(typeof extra === 'string' ? extra : JSON.stringify(extra, null, 1).slice(0, 2000));
  }
}

export function done(name) {
  console.log(`${name}: ${checks} checks, ${failures} failed`);
  process.exit(failures ? 1 : 0);
}
