// The web UI of `serve`: plain ES module, no build step. It talks to the REST API
// (/api/...) with the session cookie; state-changing requests carry X-Lwm2m-Ui: 1.

const $ = (sel, root = document) => root.querySelector(sel);
const el = (tag, attrs = {}, ...children) => {
  const e = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs)) {
    if (k.startsWith('on')) e.addEventListener(k.slice(2), v);
    else if (v !== undefined && v !== null && v !== false) e.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) if (c !== null && c !== undefined) e.append(c);
  return e;
};
const FORMATS = ['', 'text', 'tlv', 'json', 'senml-json', 'senml-cbor', 'lwm2m-cbor', 'cbor', 'opaque'];

class ApiError extends Error {}

async function api(method, path, body) {
  const init = { method, headers: {}, credentials: 'same-origin' };
  if (method !== 'GET') init.headers['X-Lwm2m-Ui'] = '1';
  if (body !== undefined) {
    init.headers['Content-Type'] = typeof body === 'string' ? 'text/plain' : 'application/json';
    init.body = typeof body === 'string' ? body : JSON.stringify(body);
  }
  const r = await fetch(path, init);
  if (r.status === 401) { showLogin(); throw new ApiError('not logged in'); }
  const text = await r.text();
  let json = null;
  try { json = text ? JSON.parse(text) : null; } catch { json = text; }
  if (!r.ok) throw new ApiError(`${r.status}: ${json && json.error ? json.error : text}` +
    (json && json.coap_code ? ` (CoAP ${json.coap_code})` : ''));
  return json;
}

// ---- state -------------------------------------------------------------------------

const state = {
  clients: new Map(),     // endpoint -> registration JSON
  specs: new Map(),       // object id -> ObjectDef JSON
  events: null,           // EventSource of /api/event
  coaplog: [],            // COAPLOG lines while the log page is open
  page: null,
  observed: new Map(),    // "ep path" -> true
};

function setStatus(text, cls = '') {
  const s = $('#status');
  s.textContent = text;
  s.className = cls;
}

// ---- login ---------------------------------------------------------------------------

function showLogin() {
  if (state.events) { state.events.close(); state.events = null; }
  $('#nav').hidden = true;
  $('#view').replaceChildren();
  $('#login').hidden = false;
}

$('#login').addEventListener('submit', async (ev) => {
  ev.preventDefault();
  $('#login-error').textContent = '';
  const r = await fetch('/ui/login', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-Lwm2m-Ui': '1' },
    body: JSON.stringify({ token: $('#token').value }),
  });
  $('#token').value = '';
  if (r.ok) start();
  else $('#login-error').textContent = 'Login failed: ' + (await r.text());
});

$('#logout').addEventListener('click', async () => {
  await fetch('/ui/logout', { method: 'POST', headers: { 'X-Lwm2m-Ui': '1' } });
  showLogin();
});

async function start() {
  try {
    const [clients, specs] = await Promise.all([api('GET', '/api/clients'), api('GET', '/api/objectspecs')]);
    state.clients = new Map(clients.map((c) => [c.endpoint, c]));
    state.specs = new Map(specs.map((s) => [Number(s.id), s]));
  } catch (e) {
    if (!(e instanceof ApiError) || e.message !== 'not logged in') setStatus(e.message, 'error');
    return;
  }
  $('#login').hidden = true;
  $('#nav').hidden = false;
  openEvents();
  route();
}

// ---- events --------------------------------------------------------------------------

function openEvents() {
  if (state.events) state.events.close();
  const es = new EventSource('/api/event?coaplog=true');
  state.events = es;
  const on = (name, f) => es.addEventListener(name, (m) => {
    let data = null;
    try { data = JSON.parse(m.data); } catch { return; }
    f(data);
  });
  const upsert = (d) => {
    const r = d.registration;
    if (r) state.clients.set(r.endpoint, r);
    refreshClients();
  };
  on('REGISTRATION', upsert);
  on('UPDATED', upsert);
  on('DEREGISTRATION', (d) => {
    if (d.registration) state.clients.delete(d.registration.endpoint);
    refreshClients();
  });
  const sleep = (flag) => (d) => {
    const c = state.clients.get(d.endpoint);
    if (c) { c.sleeping = flag; refreshClients(); }
  };
  on('SLEEPING', sleep(true));
  on('AWAKE', sleep(false));
  on('NOTIFICATION', (d) => {
    const nodes = d.response && d.response.nodes ? d.response.nodes : [];
    if (state.page && state.page.ep === d.endpoint) showNodes(nodes, true);
    appendLog(`NOTIFICATION ${d.endpoint} ${d.path} #${d.seq}: ` +
      nodes.map((n) => `${n.path}=${JSON.stringify(n.value)}`).join(' '));
  });
  on('COAPLOG', (d) => appendLog(`${new Date(d.at).toISOString()} ${d.role} ${d.direction === 'in' ? '<-' : '->'} ${d.peer} ${d.summary}`));
  on('LAGGED', (d) => appendLog(`(missed ${d.missed} events)`));
  es.onerror = () => setStatus('event stream interrupted; reconnecting', 'error');
  es.onopen = () => setStatus('live', 'ok');
}

function appendLog(line) {
  state.coaplog.push(line);
  if (state.coaplog.length > 500) state.coaplog.shift();
  const list = $('#coaplog-list');
  if (list) list.textContent = state.coaplog.join('\n');
}

// ---- routing -------------------------------------------------------------------------

window.addEventListener('hashchange', route);

function route() {
  if ($('#nav').hidden) return;
  const h = location.hash.slice(1) || '/clients';
  state.page = null;
  const m = h.match(/^\/clients\/(.+)$/);
  if (m) return clientPage(decodeURIComponent(m[1]));
  if (h === '/security') return securityPage();
  if (h === '/bootstrap') return bootstrapPage();
  if (h === '/coaplog') return coaplogPage();
  return clientsPage();
}

// ---- clients -------------------------------------------------------------------------

function refreshClients() {
  if ($('#clients-table')) clientsPage();
  if (state.page) {
    const c = state.clients.get(state.page.ep);
    const s = $('#client-state');
    if (s) s.textContent = c ? (c.sleeping ? 'sleeping' : 'registered') : 'not registered';
  }
}

function clientsPage() {
  const rows = [...state.clients.values()].sort((a, b) => a.endpoint.localeCompare(b.endpoint)).map((c) =>
    el('tr', { 'data-endpoint': c.endpoint, class: c.sleeping ? 'sleeping' : null },
      el('td', {}, el('a', { href: `#/clients/${encodeURIComponent(c.endpoint)}` }, c.endpoint)),
      el('td', {}, c.registration_id), el('td', {}, c.lwm2m_version), el('td', {}, c.address),
      el('td', {}, String(c.lifetime)), el('td', {}, c.binding),
      el('td', {}, c.queue_mode ? (c.sleeping ? 'queue (sleeping)' : 'queue (awake)') : '')));
  $('#view').replaceChildren(el('h2', {}, `Clients (${state.clients.size})`),
    el('table', { id: 'clients-table' },
      el('thead', {}, el('tr', {}, ['endpoint', 'registration', 'LwM2M', 'address', 'lifetime', 'binding', 'mode'].map((t) => el('th', {}, t)))),
      el('tbody', {}, rows)));
}

function specOf(oid) { return state.specs.get(Number(oid)); }
function resourcesOf(spec) { return spec ? Object.values(spec.resources || {}) : []; }
function opsOf(r) { return String(r.operations || '').toUpperCase(); }
const epPath = (ep, path) => `/api/clients/${encodeURIComponent(ep)}${path}`;
const q = (params) => {
  const s = Object.entries(params).filter(([, v]) => v !== '' && v !== undefined && v !== null)
    .map(([k, v]) => `${encodeURIComponent(k)}=${encodeURIComponent(v)}`).join('&');
  return s ? `?${s}` : '';
};

function result(text, ok = true) {
  const r = $('#result');
  if (r) { r.textContent = text; r.className = ok ? 'ok' : 'error'; }
}

async function run(label, f) {
  result(`${label}...`);
  try {
    const j = await f();
    result(`${label}: ${JSON.stringify(j, null, 1)}`);
    if (j && j.nodes) showNodes(j.nodes, false);
    return j;
  } catch (e) {
    result(`${label}: ${e.message}`, false);
    return null;
  }
}

function showNodes(nodes, notified) {
  for (const n of nodes) {
    const v = document.querySelector(`[data-value="${CSS.escape(n.path)}"]`);
    if (v) {
      v.textContent = typeof n.value === 'object' ? JSON.stringify(n.value) : String(n.value);
      v.classList.toggle('changed', notified);
    }
    // A resource instance's value also shows under its resource.
    const parts = n.path.split('/');
    if (parts.length === 5) {
      const rv = document.querySelector(`[data-value="${CSS.escape(parts.slice(0, 4).join('/'))}"]`);
      if (rv) {
        const cur = rv.dataset.multi ? JSON.parse(rv.dataset.multi) : {};
        cur[parts[4]] = n.value;
        rv.dataset.multi = JSON.stringify(cur);
        rv.textContent = JSON.stringify(cur);
      }
    }
  }
}

function formatSelect() {
  return el('select', { id: 'format', title: 'content format' }, FORMATS.map((f) => el('option', { value: f }, f || '(default format)')));
}

function clientPage(ep) {
  const c = state.clients.get(ep);
  state.page = { ep };
  if (!c) {
    $('#view').replaceChildren(el('h2', {}, ep), el('p', { id: 'client-state' }, 'not registered'));
    return;
  }
  const fmt = () => $('#format').value;
  const read = (path) => run(`Read ${path}`, () => api('GET', epPath(ep, path) + q({ format: fmt() })));
  const observe = async (path) => {
    const j = await run(`Observe ${path}`, () => api('POST', epPath(ep, path + '/observe') + q({ format: fmt() })));
    if (j) state.observed.set(`${ep} ${path}`, true);
  };
  const cancel = (path) => run(`Cancel observe ${path}`, () => api('DELETE', epPath(ep, path + '/observe')));
  const discover = (path) => run(`Discover ${path}`, () => api('GET', epPath(ep, path + '/discover')));
  const write = (path, value) => run(`Write ${path}`, () => api('PUT', epPath(ep, path) + q({ format: fmt() }), { value: parseValue(value) }));
  const exec = (path, args) => run(`Execute ${path}`, () => api('POST', epPath(ep, path), args ? { args } : undefined));
  const del = (path) => run(`Delete ${path}`, () => api('DELETE', epPath(ep, path)));
  const attrs = (path, text) => run(`Write-Attributes ${path}`, () => api('PUT', epPath(ep, path + '/attributes') + (text ? `?${text}` : '')));

  const pathOps = (path) => el('span', { class: 'ops' },
    el('button', { type: 'button', 'data-op': 'read', 'data-path': path, onclick: () => read(path) }, 'Read'),
    el('button', { type: 'button', 'data-op': 'observe', 'data-path': path, onclick: () => observe(path) }, 'Observe'),
    el('button', { type: 'button', onclick: () => cancel(path) }, 'Stop'),
    el('button', { type: 'button', onclick: () => discover(path) }, 'Discover'),
    el('button', { type: 'button', onclick: () => { const t = prompt(`Attributes for ${path} (pmin=10&pmax=60&gt=5)`); if (t !== null) attrs(path, t); } }, 'Attributes'));

  const objects = (c.objects || []).filter((o) => o.id !== 0 || true).map((o) => {
    const spec = specOf(o.id);
    const title = `/${o.id} ${spec ? spec.name : '(unknown object)'}${o.version ? ' v' + o.version : ''}`;
    const instances = (o.instances || []).map((i) => {
      const ipath = `/${o.id}/${i}`;
      const res = resourcesOf(spec).map((r) => {
        const rpath = `${ipath}/${r.id}`;
        const ops = opsOf(r);
        const input = el('input', { size: 12, placeholder: 'value' });
        const args = el('input', { size: 10, placeholder: "0='arg'" });
        return el('div', { class: 'res', 'data-path': rpath },
          el('span', { class: 'name' }, `${r.id} ${r.name}${r.units ? ' [' + r.units + ']' : ''}`),
          el('span', { class: 'value', 'data-value': rpath }, ''),
          ops.includes('R') ? [
            el('button', { type: 'button', 'data-op': 'read', 'data-path': rpath, onclick: () => read(rpath) }, 'Read'),
            el('button', { type: 'button', 'data-op': 'observe', 'data-path': rpath, onclick: () => observe(rpath) }, 'Observe'),
            el('button', { type: 'button', onclick: () => cancel(rpath) }, 'Stop'),
          ] : null,
          ops.includes('W') ? [input, el('button', { type: 'button', 'data-op': 'write', 'data-path': rpath, onclick: () => write(rpath, input.value) }, 'Write')] : null,
          ops.includes('E') ? [args, el('button', { type: 'button', 'data-op': 'execute', 'data-path': rpath, onclick: () => exec(rpath, args.value) }, 'Execute')] : null);
      });
      return el('details', { open: true }, el('summary', {}, `Instance ${i} `, pathOps(ipath),
        el('button', { type: 'button', onclick: () => { if (confirm(`Delete ${ipath}?`)) del(ipath); } }, 'Delete')), res);
    });
    const create = el('button', { type: 'button', onclick: () => {
      const t = prompt(`Create an instance of /${o.id}: JSON {"/${o.id}/ID/R": value, ...} or {"nodes": [...]}`);
      if (t !== null) run(`Create /${o.id}`, () => api('POST', epPath(ep, `/${o.id}`), JSON.parse(t)));
    } }, 'Create instance');
    return el('details', { open: o.id !== 0 }, el('summary', {}, title, ' ', pathOps(`/${o.id}`), create), instances);
  });

  const compositePaths = el('input', { size: 40, placeholder: '/3/0/0,/3/0/9' });
  const compositeWrite = el('textarea', { placeholder: '{"/3/0/14": "+02"}' });
  $('#view').replaceChildren(
    el('h2', {}, ep, ' ', el('small', { id: 'client-state' }, c.sleeping ? 'sleeping' : 'registered')),
    el('p', {}, `${c.address} · LwM2M ${c.lwm2m_version} · lifetime ${c.lifetime}s · binding ${c.binding}`),
    el('div', { class: 'ops' }, 'Format: ', formatSelect(),
      el('button', { type: 'button', onclick: () => run('Tree', () => api('GET', epPath(ep, '/tree'))) }, 'Read all')),
    el('div', { class: 'tree' }, objects),
    el('h3', {}, 'Composite'),
    el('div', { class: 'ops' }, compositePaths,
      el('button', { type: 'button', onclick: () => run('Read-Composite', () => api('GET', epPath(ep, '/composite') + q({ paths: compositePaths.value, format: fmt() }))) }, 'Read'),
      el('button', { type: 'button', onclick: () => run('Observe-Composite', () => api('POST', epPath(ep, '/composite/observe') + q({ paths: compositePaths.value, format: fmt() }))) }, 'Observe'),
      el('button', { type: 'button', onclick: () => run('Cancel Observe-Composite', () => api('DELETE', epPath(ep, '/composite/observe') + q({ paths: compositePaths.value }))) }, 'Stop')),
    compositeWrite,
    el('button', { type: 'button', onclick: () => run('Write-Composite', () => api('PUT', epPath(ep, '/composite') + q({ format: fmt() }), JSON.parse(compositeWrite.value))) }, 'Write-Composite'),
    el('h3', {}, 'Result'),
    el('pre', { id: 'result' }, ''),
  );
}

function parseValue(text) {
  try { return JSON.parse(text); } catch { return text; }
}

// ---- security and bootstrap ----------------------------------------------------------------

function jsonEditor(id, placeholder, onSave) {
  const t = el('textarea', { id, placeholder });
  return [t, el('button', { type: 'button', onclick: () => onSave(t.value) }, 'Save')];
}

async function securityPage() {
  let list = [];
  try { list = await api('GET', '/api/security/clients'); } catch (e) { setStatus(e.message, 'error'); }
  const rows = list.map((s) => el('tr', {},
    el('td', {}, s.endpoint), el('td', {}, JSON.stringify(Object.fromEntries(Object.entries(s).filter(([k]) => k !== 'endpoint')))),
    el('td', {}, el('button', { type: 'button', onclick: async () => {
      if (!confirm(`Delete the credentials of ${s.endpoint}?`)) return;
      try { await api('DELETE', `/api/security/clients/${encodeURIComponent(s.endpoint)}`); } catch (e) { setStatus(e.message, 'error'); }
      securityPage();
    } }, 'Delete'))));
  $('#view').replaceChildren(el('h2', {}, 'Security credentials'),
    el('p', {}, 'Keys are never shown.'),
    el('table', {}, el('thead', {}, el('tr', {}, el('th', {}, 'endpoint'), el('th', {}, 'credentials'), el('th', {}))), el('tbody', {}, rows)),
    el('h3', {}, 'Add or replace'),
    ...jsonEditor('security-json', '{"endpoint": "dev-1", "credentials": {"mode": "psk", "identity": "dev-1", "key": "hex"}}', async (text) => {
      try { await api('PUT', '/api/security/clients', JSON.parse(text)); securityPage(); } catch (e) { setStatus(e.message, 'error'); }
    }));
}

async function bootstrapPage() {
  let list = [];
  try { list = await api('GET', '/api/bootstrap'); } catch (e) { setStatus(e.message, 'error'); }
  const entries = Array.isArray(list) ? list : Object.entries(list).map(([k, v]) => ({ key: k, ...v }));
  const rows = entries.map((b) => {
    const key = b.endpoint !== undefined ? { endpoint: b.endpoint } : { pattern: b.pattern };
    return el('tr', {},
      el('td', {}, b.endpoint !== undefined ? `endpoint ${b.endpoint}` : `pattern ${b.pattern}`),
      el('td', {}, el('pre', {}, JSON.stringify(b, null, 1))),
      el('td', {}, el('button', { type: 'button', onclick: async () => {
        if (!confirm('Delete this configuration?')) return;
        try { await api('DELETE', '/api/bootstrap' + q(key)); } catch (e) { setStatus(e.message, 'error'); }
        bootstrapPage();
      } }, 'Delete')));
  });
  $('#view').replaceChildren(el('h2', {}, 'Bootstrap configurations'),
    el('p', {}, 'By endpoint, or fallback by endpoint-name pattern ("pattern": "sensor-*"). Keys are never shown.'),
    el('table', {}, el('thead', {}, el('tr', {}, el('th', {}, 'for'), el('th', {}, 'configuration'), el('th', {}))), el('tbody', {}, rows)),
    el('h3', {}, 'Add or replace'),
    ...jsonEditor('bootstrap-json', '{"endpoint": "dev-1", "config": {"security": {...}, "servers": {...}}} or {"pattern": "sensor-*", "config": {...}}', async (text) => {
      try { await api('PUT', '/api/bootstrap', JSON.parse(text)); bootstrapPage(); } catch (e) { setStatus(e.message, 'error'); }
    }));
}

function coaplogPage() {
  $('#view').replaceChildren(el('h2', {}, 'CoAP log'),
    el('button', { type: 'button', onclick: () => { state.coaplog = []; appendLog('(cleared)'); } }, 'Clear'),
    el('pre', { id: 'coaplog-list' }, state.coaplog.join('\n')));
}

start().then(() => { if ($('#nav').hidden) showLogin(); });
