// Drives headless Chromium through the DevTools protocol against `serve`'s web UI.
// Usage: node --experimental-websocket browser.mjs CHROMIUM BASE_URL TOKEN ENDPOINT SCREENSHOT
// Prints one line per step; "LOGGED_IN" tells the test to start the simulated client.
// Exits 0 when every step passed, 1 with the reason otherwise.
import { spawn } from 'node:child_process';
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { createInterface } from 'node:readline';

const [chromium, base, token, endpoint, screenshot] = process.argv.slice(2);
const profile = mkdtempSync(join(tmpdir(), 'lwm2m-ui-chromium-'));
const browser = spawn(chromium, [
  '--headless=new', '--no-sandbox', '--disable-gpu', '--no-first-run', '--disable-extensions',
  '--disable-background-networking', '--remote-debugging-port=0', `--user-data-dir=${profile}`,
  '--window-size=1280,1000', 'about:blank',
], { stdio: ['ignore', 'ignore', 'pipe'] });

function finish(code, message) {
  if (message) console.log(message);
  try { browser.kill('SIGKILL'); } catch { /* already gone */ }
  try { rmSync(profile, { recursive: true, force: true }); } catch { /* best effort */ }
  process.exit(code);
}
process.on('uncaughtException', (e) => finish(1, `FAIL ${e && e.stack ? e.stack : e}`));
process.on('unhandledRejection', (e) => finish(1, `FAIL ${e && e.stack ? e.stack : e}`));
browser.on('exit', (code) => finish(1, `FAIL chromium exited (${code})`));

const wsUrl = await new Promise((resolve, reject) => {
  const rl = createInterface({ input: browser.stderr });
  const t = setTimeout(() => reject(new Error('chromium did not print its DevTools address in 60 s')), 60000);
  rl.on('line', (line) => {
    const m = line.match(/DevTools listening on (ws:\/\/\S+)/);
    if (m) { clearTimeout(t); resolve(m[1]); }
  });
});
const port = new URL(wsUrl).port;
const targets = await (await fetch(`http://127.0.0.1:${port}/json/list`)).json();
const page = targets.find((t) => t.type === 'page');
if (!page) finish(1, 'FAIL no page target');

const ws = new WebSocket(page.webSocketDebuggerUrl);
await new Promise((resolve, reject) => { ws.onopen = resolve; ws.onerror = reject; });
let nextId = 1;
const waiting = new Map();
ws.onmessage = (m) => {
  const msg = JSON.parse(m.data);
  if (msg.id && waiting.has(msg.id)) {
    const { resolve, reject } = waiting.get(msg.id);
    waiting.delete(msg.id);
    if (msg.error) reject(new Error(JSON.stringify(msg.error))); else resolve(msg.result);
  } else if (msg.method === 'Runtime.exceptionThrown') {
    console.log('page exception: ' + JSON.stringify(msg.params.exceptionDetails.exception?.description ?? msg.params.exceptionDetails.text));
  }
};
const send = (method, params = {}) => new Promise((resolve, reject) => {
  const id = nextId++;
  waiting.set(id, { resolve, reject });
  ws.send(JSON.stringify({ id, method, params }));
});
async function evaluate(expression) {
  const r = await send('Runtime.evaluate', { expression, awaitPromise: true, returnByValue: true });
  if (r.exceptionDetails) throw new Error(`${expression}: ${JSON.stringify(r.exceptionDetails)}`);
  return r.result.value;
}
async function waitFor(what, expression, seconds = 30) {
  const deadline = Date.now() + seconds * 1000;
  for (;;) {
    const v = await evaluate(expression);
    if (v) { console.log(`ok ${what}`); return v; }
    if (Date.now() > deadline) {
      const body = await evaluate('document.body.innerText');
      throw new Error(`timed out waiting for ${what}; page text:\n${body}`);
    }
    await new Promise((r) => setTimeout(r, 100));
  }
}
const q = (s) => JSON.stringify(s);

await send('Page.enable');
await send('Runtime.enable');
await send('Page.navigate', { url: `${base}/` });
await waitFor('the login form', `!!document.querySelector('#login') && !document.querySelector('#login').hidden`);

// A wrong token is refused.
await evaluate(`document.querySelector('#token').focus()`);
await send('Input.insertText', { text: 'wrong-token' });
await evaluate(`document.querySelector('#login button').click()`);
await waitFor('a wrong token refused', `document.querySelector('#login-error').textContent.includes('Login failed')`);

await evaluate(`document.querySelector('#token').focus()`);
await send('Input.insertText', { text: token });
await evaluate(`document.querySelector('#login button').click()`);
await waitFor('logged in', `!document.querySelector('#nav').hidden && !!document.querySelector('#clients-table')`);
const cookieSeen = await evaluate('document.cookie');
if (cookieSeen.includes('lwm2m_session')) throw new Error('the session cookie is visible to scripts');
await waitFor('the event stream open', `document.querySelector('#status').textContent === 'live'`);
console.log('LOGGED_IN');

// The simulated client registers now: its row appears from the event stream.
await waitFor('the client in the list', `!!document.querySelector('tr[data-endpoint="${endpoint}"]')`, 60);
await evaluate(`document.querySelector('tr[data-endpoint="${endpoint}"] a').click()`);
await waitFor('the client page with named objects', `document.querySelector('.tree') && document.querySelector('.tree').innerText.includes('Device') && document.querySelector('.tree').innerText.includes('Manufacturer')`);

// Read a resource.
await evaluate(`document.querySelector('button[data-op=read][data-path="/3/0/0"]').click()`);
const manufacturer = await waitFor('a read value', `document.querySelector('[data-value="/3/0/0"]').textContent`);
console.log(`read /3/0/0 = ${manufacturer}`);

// Observe a changing resource; its value must change by notifications.
await evaluate(`document.querySelector('button[data-op=observe][data-path="/3/0/13"]').click()`);
const first = await waitFor('the observed value', `document.querySelector('[data-value="/3/0/13"]').textContent`);
const changed = await waitFor('a notified value', `(() => { const v = document.querySelector('[data-value="/3/0/13"]'); return v.classList.contains('changed') && v.textContent !== ${q(first)} ? v.textContent : ''; })()`, 60);
console.log(`observed /3/0/13: ${first} -> ${changed}`);

const shot = await send('Page.captureScreenshot', { format: 'png', captureBeyondViewport: true });
writeFileSync(screenshot, Buffer.from(shot.data, 'base64'));
console.log(`screenshot ${screenshot}`);

// Security: credentials listed without their key; new ones added through the UI (a PUT
// with the cookie and the UI header).
await evaluate(`location.hash = '#/security'`);
await waitFor('the credentials listed', `(document.querySelector('#view')?.innerText ?? '').includes('ui-sec')`);
if (await evaluate(`document.body.innerHTML.includes('c0ffee00')`)) throw new Error('a PSK key is shown');
await evaluate(`document.querySelector('#security-json').value = JSON.stringify({endpoint: 'ui-added', credentials: {mode: 'psk', identity: 'ui-added-id', key: '0badf00d'}})`);
await evaluate(`[...document.querySelectorAll('#view button')].find((b) => b.textContent === 'Save').click()`);
await waitFor('credentials added from the UI', `(document.querySelector('#view')?.innerText ?? '').includes('ui-added-id')`);
if (await evaluate(`document.body.innerHTML.includes('0badf00d')`)) throw new Error('a PSK key is shown');
console.log('security ok');

// Bootstrap: a fallback configuration by pattern, without its key.
await evaluate(`location.hash = '#/bootstrap'`);
await waitFor('the fallback configuration', `(document.querySelector('#view')?.innerText ?? '').includes('pattern sensor-*')`);
if (await evaluate(`document.body.innerHTML.includes('a1b2c3d4')`)) throw new Error('a bootstrap key is shown');
console.log('bootstrap ok');

// The CoAP log page shows traffic; logout returns to the login form and the cookie is dead.
await evaluate(`location.hash = '#/coaplog'`);
await waitFor('the CoAP log', `(document.querySelector('#coaplog-list')?.textContent ?? '').includes('/3/0/13')`);
await evaluate(`document.querySelector('#logout').click()`);
await waitFor('logged out', `!document.querySelector('#login').hidden`);
const after = await evaluate(`fetch('/api/clients').then((r) => r.status)`);
if (after !== 401) throw new Error(`after logout /api/clients answered ${after}`);
console.log(`read=${manufacturer}`);
finish(0, 'OK');
