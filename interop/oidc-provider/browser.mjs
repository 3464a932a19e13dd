// A stand-in for a user's browser, for `mcp-auth login` without --headless: the CLI opens the
// authorization URL with the program in $BROWSER (the `webbrowser` crate appends the URL), e.g.
//
//   BROWSER="/path/to/node /path/to/browser.mjs" mcp-auth login http://127.0.0.1:PORT/mcp
//
// It GETs the URL and follows every redirect (up to 10) like a browser: with a cookie jar, so the
// provider's interaction and resume cookies come back as they would from a real browser (no
// server-side help), until a page answers without redirecting — normally the CLI's loopback
// redirect URI. One JSON line per hop goes to $MCP_AUTH_TEST_BROWSER_LOG when set (the CLI runs
// this program with its output discarded). Only loopback URLs are fetched.

import { appendFileSync } from 'node:fs';

const start = process.argv[2];
const logFile = process.env.MCP_AUTH_TEST_BROWSER_LOG;
function log(entry) {
  if (logFile) appendFileSync(logFile, `${JSON.stringify(entry)}\n`);
}

/** Cookies by origin: name → value (paths ignored: a superset of what a browser sends). */
const jar = new Map();

let url = new URL(start);
try {
  for (let hop = 1; hop <= 10; hop += 1) {
    if (!['127.0.0.1', 'localhost', '[::1]'].includes(url.hostname)) {
      throw new Error(`refusing to leave loopback: ${url.origin}`);
    }
    const cookies = jar.get(url.origin) ?? new Map();
    const cookie = [...cookies].map(([k, v]) => `${k}=${v}`).join('; ');
    const response = await fetch(url, {
      redirect: 'manual',
      headers: { accept: 'text/html', ...(cookie ? { cookie } : {}) },
    });
    for (const line of response.headers.getSetCookie()) {
      const [pair] = line.split(';');
      const eq = pair.indexOf('=');
      const name = pair.slice(0, eq).trim();
      const value = pair.slice(eq + 1).trim();
      if (/max-age=0|expires=thu, 01 jan 1970/i.test(line) || value === '') cookies.delete(name);
      else cookies.set(name, value);
    }
    jar.set(url.origin, cookies);
    const location = response.headers.get('location');
    log({ hop, path: url.pathname, status: response.status, sent_cookies: cookie !== '' });
    await response.arrayBuffer();
    if (response.status < 300 || response.status >= 400 || !location) break;
    url = new URL(location, url);
  }
} catch (err) {
  log({ error: String(err?.message ?? err) });
  process.exitCode = 1;
}
