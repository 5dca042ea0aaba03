// sluice console: fills the server-rendered pages from the /v1/ JSON API.
// Hand-written, no dependencies. Every request carries the session cookie (sent by the browser)
// and the page's CSRF token; the server checks the signed-in key's policy on each one.
'use strict';

const CSRF = (document.querySelector('meta[name="csrf-token"]') || {}).content || '';

// ---------- small helpers ----------

/** Calls the JSON API; throws an Error carrying the API's error object. */
async function api(method, path, body) {
  const opts = { method, headers: { 'X-CSRF-Token': CSRF }, credentials: 'same-origin' };
  if (body !== undefined) {
    opts.headers['Content-Type'] = 'application/json';
    opts.body = JSON.stringify(body);
  }
  const r = await fetch(path, opts);
  if (r.status === 401) {
    location.href = '/console/login';
    throw new Error('signed out');
  }
  let data = null;
  try { data = await r.json(); } catch (_) { /* empty body */ }
  if (!r.ok) {
    const err = new Error((data && data.error && data.error.message) || r.statusText);
    err.status = r.status;
    err.detail = data && data.error;
    throw err;
  }
  return data;
}

/** Builds an element; strings become text nodes (never HTML). */
function h(tag, attrs, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on')) el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  for (const c of children.flat()) {
    if (c === null || c === undefined || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
  return el;
}

const $ = (id) => document.getElementById(id);
const enc = encodeURIComponent;

function flash(message, kind) {
  const f = $('flash');
  if (!f) return;
  f.replaceChildren(h('p', { class: kind === 'error' ? 'error' : 'ok' }, message));
  clearTimeout(flash.timer);
  flash.timer = setTimeout(() => f.replaceChildren(), kind === 'error' ? 15000 : 5000);
}

/** Runs an action, showing its error instead of failing silently. */
async function attempt(what, fn) {
  try {
    const out = await fn();
    return out;
  } catch (e) {
    flash(`${what}: ${e.message}`, 'error');
    return undefined;
  }
}

function fmtNum(n) {
  if (n === undefined || n === null) return '—';
  if (Math.abs(n) >= 1e6) return (n / 1e6).toFixed(1) + 'M';
  if (Math.abs(n) >= 1e4) return (n / 1e3).toFixed(1) + 'k';
  return Number.isInteger(n) ? String(n) : n.toFixed(n < 10 ? 2 : 1);
}

function fmtAge(ms) {
  if (ms === undefined || ms === null) return '—';
  const s = Math.round(ms / 1000);
  if (s < 60) return `${s} s`;
  if (s < 3600) return `${Math.floor(s / 60)} min`;
  return `${(s / 3600).toFixed(1)} h`;
}

function fmtNs(ns) {
  if (!ns) return '—';
  if (ns < 1e3) return `${ns} ns`;
  if (ns < 1e6) return `${(ns / 1e3).toFixed(1)} µs`;
  return `${(ns / 1e6).toFixed(1)} ms`;
}

/** A table, or the empty state when there are no rows. */
function table(caption, columns, rows, empty) {
  if (!rows.length) return h('p', { class: 'empty' }, empty);
  return h('div', { class: 'table-wrap' }, h('table', {},
    h('caption', { class: 'sr-only' }, caption),
    h('thead', {}, h('tr', {}, columns.map((c) => h('th', { scope: 'col' }, c[0])))),
    h('tbody', {}, rows.map((r) => h('tr', {}, columns.map((c) => h('td', { 'data-label': c[0] }, c[1](r))))))));
}

/** A button; `aria` names what it acts on, for rows of identical buttons. */
function button(label, onclick, cls, aria) {
  return h('button', { type: 'button', class: cls, onclick, 'aria-label': aria }, label);
}

// ---------- charts: inline SVG polylines ----------

const COLORS = ['#2563eb', '#16a34a', '#dc2626', '#9333ea', '#ea580c'];

/** Per-second rates between neighbouring samples of a cumulative counter. */
function rates(samples, pick) {
  const out = [];
  for (let i = 1; i < samples.length; i++) {
    const dt = (samples[i].at_ms - samples[i - 1].at_ms) / 1000;
    if (dt <= 0) continue;
    out.push({ t: samples[i].at_ms, v: Math.max(0, (pick(samples[i]) - pick(samples[i - 1])) / dt) });
  }
  return out;
}

/** A line chart of one or more series [{label, points:[{t,v}]}] with a value axis. */
function chart(title, series, unit) {
  const W = 360, H = 140, L = 44, B = 20, T = 8, R = 8;
  const all = series.flatMap((s) => s.points);
  const fig = h('figure', { class: 'chart' }, h('figcaption', {}, title));
  if (all.length < 1) {
    fig.append(h('p', { class: 'empty' }, 'Not enough samples yet — a rate needs two, taken 10 s apart.'));
    return fig;
  }
  const t0 = Math.min(...all.map((p) => p.t)), t1 = Math.max(...all.map((p) => p.t));
  const top = Math.max(...all.map((p) => p.v));
  const vmax = (top > 0 ? top : 1) * 1.1;
  const x = (t) => L + (t1 === t0 ? (W - L - R) : ((t - t0) / (t1 - t0)) * (W - L - R));
  const y = (v) => T + (1 - v / vmax) * (H - T - B);
  const ns = 'http://www.w3.org/2000/svg';
  const svg = document.createElementNS(ns, 'svg');
  svg.setAttribute('viewBox', `0 0 ${W} ${H}`);
  svg.setAttribute('role', 'img');
  const last = series.map((s) => `${s.label} ${fmtNum(s.points.length ? s.points[s.points.length - 1].v : 0)}${unit}`);
  svg.setAttribute('aria-label', `${title}: latest ${last.join(', ')}`);
  const add = (tag, attrs, text) => {
    const el = document.createElementNS(ns, tag);
    for (const [k, v] of Object.entries(attrs)) el.setAttribute(k, v);
    if (text !== undefined) el.textContent = text;
    svg.append(el);
  };
  for (const frac of [0, 0.5, 1]) {
    const v = (vmax / 1.1) * frac;
    add('line', { x1: L, x2: W - R, y1: y(v), y2: y(v), class: 'grid' });
    add('text', { x: L - 4, y: y(v) + 4, 'text-anchor': 'end', class: 'axis' }, fmtNum(v));
  }
  const span = Math.round((t1 - t0) / 1000);
  add('text', { x: L, y: H - 4, class: 'axis' }, span >= 120 ? `-${Math.round(span / 60)} min` : `-${span} s`);
  add('text', { x: W - R, y: H - 4, 'text-anchor': 'end', class: 'axis' }, 'now');
  series.forEach((s, i) => {
    if (!s.points.length) return;
    const pts = s.points.length === 1 ? [s.points[0], { t: s.points[0].t, v: s.points[0].v }] : s.points;
    add('polyline', {
      points: pts.map((p, j) => `${s.points.length === 1 ? L + j * (W - L - R) : x(p.t)},${y(p.v)}`).join(' '),
      fill: 'none', stroke: COLORS[i % COLORS.length], 'stroke-width': 2,
    });
  });
  fig.append(svg);
  fig.append(h('p', { class: 'legend' }, series.map((s, i) =>
    h('span', { class: `swatch c${i % COLORS.length}` }, last[i]))));
  return fig;
}

// ---------- JSON tree ----------

/** A collapsible tree of a JSON value (details/summary: keyboard and screen-reader friendly). */
function jsonTree(value, key, open) {
  const label = key === undefined ? '' : `${key}: `;
  if (value !== null && typeof value === 'object') {
    const entries = Array.isArray(value) ? value.map((v, i) => [i, v]) : Object.entries(value);
    const summary = Array.isArray(value) ? `[${entries.length}]` : `{${entries.length}}`;
    return h('details', { class: 'json', open: open || entries.length <= 4 },
      h('summary', {}, label, h('span', { class: 'muted' }, summary)),
      h('div', { class: 'json-body' }, entries.map(([k, v]) => jsonTree(v, k, false))));
  }
  const cls = value === null ? 'null' : typeof value;
  return h('div', { class: 'json-leaf' }, label, h('span', { class: `j-${cls}` }, JSON.stringify(value)));
}

// ---------- overview ----------

async function overview() {
  const [hist, queues, rules, topics] = await Promise.all([
    api('GET', '/console/history').catch((e) => ({ denied: e.message })),
    api('GET', '/v1/queues').catch(() => ({ queues: [] })),
    api('GET', '/v1/rules').catch(() => ({ rules: [] })),
    api('GET', '/v1/topics').catch(() => ({ topics: [] })),
  ]);
  const s = hist.samples || [];
  const rate = (pick) => { const r = rates(s.slice(-2), pick); return r.length ? r[0].v : 0; };
  const nowS = s[s.length - 1] || {};
  const qs = queues.queues || [];
  const cards = [
    ['Ingest', `${fmtNum(rate((x) => x.ingested))}/s`, `${fmtNum(nowS.ingested)} messages since start`],
    ['Rule executions', `${fmtNum(rate((x) => x.rule_runs))}/s`, `${fmtNum(nowS.rule_failed)} failed`],
    ['Deliveries', `${fmtNum(rate((x) => x.delivered))}/s`, `${fmtNum(nowS.delivered)} since start`],
    ['Queued', fmtNum(qs.reduce((a, q) => a + (q.active_messages || 0), 0)), `in ${qs.length} queue(s)`],
    ['Dead letters', fmtNum(nowS.dead_lettered), 'since start'],
    ['Connected devices', fmtNum(nowS.connected), 'MQTT sessions'],
  ];
  $('stats').replaceChildren(...cards.map(([k, v, sub]) =>
    h('div', { class: 'card' }, h('div', { class: 'k' }, k), h('div', { class: 'v' }, v), h('div', { class: 'sub' }, sub))));
  if (hist.denied) {
    $('charts').replaceChildren(h('p', { class: 'empty' }, `Charts need an admin key (${hist.denied}).`));
  } else {
    $('charts').replaceChildren(
      chart('Ingested and rule outputs (msg/s)', [
        { label: 'in', points: rates(s, (x) => x.ingested) },
        { label: 'out', points: rates(s, (x) => x.outputs) }], '/s'),
      chart('Rule executions and failures (/s)', [
        { label: 'runs', points: rates(s, (x) => x.rule_runs) },
        { label: 'failed', points: rates(s, (x) => x.rule_failed) }], '/s'),
      chart('Deliveries and dead letters (/s)', [
        { label: 'delivered', points: rates(s, (x) => x.delivered) },
        { label: 'dead-lettered', points: rates(s, (x) => x.dead_lettered) }], '/s'));
  }
  $('queue-depths').replaceChildren(table('Queue depths', [
    ['Queue', (q) => h('a', { href: '/console/queues' }, q.name)],
    ['Active', (q) => fmtNum(q.active_messages)],
    ['In flight', (q) => fmtNum(q.inactive_messages)],
    ['Delayed', (q) => fmtNum(q.delayed_messages)],
    ['Oldest', (q) => fmtAge(q.oldest_message_age_ms)],
    ['Dead-lettered', (q) => fmtNum(q.dead_lettered_total)],
  ], qs, 'No queues yet — create one on the Queues page.'));
  const errors = [];
  for (const r of rules.rules || []) {
    if (r.load_error) errors.push([`rule ${r.name}`, r.load_error]);
    for (const [kind, n] of Object.entries((r.counters || {}).failed || {})) errors.push([`rule ${r.name}`, `${n} message(s) failed: ${kind}`]);
  }
  for (const t of (topics.topics || [])) {
    const subs = await api('GET', `/v1/topics/${enc(t.name)}/subscriptions`).catch(() => ({ subscriptions: [] }));
    for (const sub of subs.subscriptions || []) {
      const st = sub.push || {};
      if (st.last_error) errors.push([`subscription ${t.name}/${sub.name}`, st.last_error]);
    }
  }
  $('errors').replaceChildren(table('Recent errors', [['Where', (e) => e[0]], ['What', (e) => e[1]]],
    errors, 'No errors — rules, loads and pushes are all healthy.'));
}

// ---------- rules ----------

function ruleDefinition() {
  const kind = $('rule-kind').value;
  const lines = (id) => $(id).value.split('\n').map((l) => l.trim()).filter(Boolean);
  const def = { data_type: $('rule-data-type').value, actions: lines('rule-actions') };
  const ea = $('rule-error-action').value.trim();
  if (ea) def.error_action = ea;
  const grant = lines('rule-grant');
  if (grant.length) def.grant = grant;
  return { kind, def };
}

async function withModule(kind, def) {
  if (kind === 'sql') {
    def.sql = $('rule-sql').value;
    return def;
  }
  const file = $('rule-wasm').files[0];
  if (!file) throw new Error('choose a .wasm file');
  const bytes = new Uint8Array(await file.arrayBuffer());
  let bin = '';
  for (let i = 0; i < bytes.length; i += 0x8000) bin += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  def.module_base64 = btoa(bin);
  def.from = $('rule-from').value.trim();
  return def;
}

function showSqlError(detail) {
  const box = $('sql-error');
  if (!detail) { box.hidden = true; box.textContent = ''; $('rule-sql').removeAttribute('aria-invalid'); return; }
  box.hidden = false;
  box.textContent = detail.line ? `Line ${detail.line}, column ${detail.column}: ${detail.message}` : detail.message;
  $('rule-sql').setAttribute('aria-invalid', 'true');
  $('rule-sql').setAttribute('aria-describedby', 'sql-error');
  if (detail.line) {
    // Put the caret where the error is.
    const ta = $('rule-sql');
    const lines = ta.value.split('\n');
    let pos = 0;
    for (let i = 0; i < detail.line - 1 && i < lines.length; i++) pos += lines[i].length + 1;
    pos += Math.max(0, detail.column - 1);
    ta.setSelectionRange(pos, pos);
  }
}

async function saveRule(method) {
  const name = $('rule-name').value.trim();
  if (!name) { flash('give the rule a name', 'error'); $('rule-name').focus(); return; }
  const { kind, def } = ruleDefinition();
  showSqlError(null);
  try {
    await withModule(kind, def);
    await api(method, `/v1/rules/${enc(name)}`, def);
    flash(method === 'POST' ? `Rule ${name} created (stopped) — start it from the list.` : `Rule ${name} updated.`);
    await rulesList();
  } catch (e) {
    if (e.detail && e.detail.field === 'sql') showSqlError(e.detail);
    flash(`Saving rule ${name}: ${e.message}`, 'error');
  }
}

async function runTest() {
  const name = $('rule-name').value.trim() || 'test';
  const { kind, def } = ruleDefinition();
  const out = $('test-output');
  showSqlError(null);
  out.replaceChildren(h('p', { class: 'muted' }, 'Running…'));
  try {
    await withModule(kind, def);
    const r = await api('POST', `/v1/rules/${enc(name)}/test`, {
      rule: def, topic: $('test-topic').value, payload: $('test-payload').value,
    });
    const head = { emitted: `${r.decisions.length} decision(s)`, dropped: 'Dropped: the rule chose not to forward this message (WHERE was false).', failed: 'The rule failed this message.', topic_not_matched: `Not run: the topic does not match the rule's filter ${r.filter}, so the running rule would never see this message.` }[r.outcome];
    out.replaceChildren(h('p', { class: r.outcome === 'emitted' || r.outcome === 'dropped' ? 'ok' : 'error', id: 'test-outcome', 'data-outcome': r.outcome }, head),
      r.failure ? h('p', { class: 'error' }, `${r.failure.kind}: ${r.failure.message}`) : '',
      h('ol', { class: 'decisions' }, r.decisions.map((d) => h('li', { class: 'decision' },
        h('div', {}, h('strong', {}, d.kind), ' → ', h('code', {}, d.target)),
        jsonTree(d.payload, undefined, true)))));
  } catch (e) {
    if (e.detail && e.detail.field === 'sql') showSqlError(e.detail);
    out.replaceChildren(h('p', { class: 'error', id: 'test-outcome', 'data-outcome': 'error' }, e.message));
  }
}

function editRule(r) {
  $('rule-name').value = r.name;
  $('rule-kind').value = r.kind;
  $('rule-data-type').value = r.data_type;
  $('rule-sql').value = r.sql || '';
  $('rule-from').value = r.from || '';
  $('rule-actions').value = (r.actions || []).join('\n');
  $('rule-error-action').value = r.error_action || '';
  $('rule-grant').value = '';
  syncKind();
  ruleCharts(r.name);
  $('rule-name').focus();
}

async function ruleCharts(name) {
  const box = $('rule-charts');
  box.dataset.rule = name;
  const hist = await api('GET', '/console/history').catch((e) => ({ denied: e.message }));
  if (hist.denied) { box.replaceChildren(h('p', { class: 'empty' }, `Charts need an admin key (${hist.denied}).`)); return; }
  const s = (hist.rules || {})[name] || [];
  const kinds = [...new Set(s.flatMap((x) => Object.keys(x.failed || {})))];
  const failedSeries = kinds.length
    ? kinds.map((k) => ({ label: `failed ${k}`, points: rates(s, (x) => (x.failed || {})[k] || 0) }))
    : [{ label: 'failed', points: rates(s, () => 0) }];
  box.replaceChildren(h('h3', {}, `Rule ${name}`),
    chart('Messages in and out (/s)', [
      { label: 'in', points: rates(s, (x) => x.messages_in) },
      { label: 'out', points: rates(s, (x) => x.outputs) }], '/s'),
    chart('Failed by kind (/s)', failedSeries, '/s'),
    chart('Latency p50 / p99 (µs, since start)', [
      { label: 'p50', points: s.map((x) => ({ t: x.at_ms, v: x.p50_ns / 1000 })) },
      { label: 'p99', points: s.map((x) => ({ t: x.at_ms, v: x.p99_ns / 1000 })) }], ' µs'));
}

async function rulesList() {
  const { rules } = await api('GET', '/v1/rules');
  const act = (what, r) => attempt(`${what} ${r.name}`, async () => {
    if (what === 'delete') {
      if (!confirm(`Delete rule ${r.name}? This cannot be undone.`)) return;
      await api('DELETE', `/v1/rules/${enc(r.name)}`);
    } else {
      await api('POST', `/v1/rules/${enc(r.name)}/${what}`);
    }
    flash(`Rule ${r.name}: ${what} done.`);
    await rulesList();
  });
  $('rules-list').replaceChildren(table('Rules', [
    ['Name', (r) => h('code', {}, r.name)],
    ['State', (r) => h('span', { class: `state ${r.state}`, 'data-rule-state': r.name }, r.state)],
    ['From', (r) => h('code', {}, r.from)],
    ['Actions', (r) => (r.actions || []).join(', ') || '—'],
    ['In', (r) => fmtNum(r.counters.messages_in)],
    ['Out', (r) => fmtNum(r.counters.outputs)],
    ['Failed', (r) => fmtNum(Object.values(r.counters.failed || {}).reduce((a, b) => a + b, 0))],
    ['p99', (r) => fmtNs(r.counters.latency_ns && r.counters.latency_ns.p99)],
    ['', (r) => h('span', { class: 'buttons' },
      r.state === 'running'
        ? button('Stop', () => act('stop', r), null, `Stop rule ${r.name}`)
        : button('Start', () => act('start', r), null, `Start rule ${r.name}`),
      button('Edit', () => editRule(r), null, `Edit rule ${r.name}`),
      button('Delete', () => act('delete', r), 'danger', `Delete rule ${r.name}`))],
  ], rules, 'No rules yet — create one with the form below.'));
}

function syncKind() {
  const wasm = $('rule-kind').value === 'wasm';
  $('sql-source').hidden = wasm;
  $('wasm-source').hidden = !wasm;
}

function rulesPage() {
  $('rule-kind').addEventListener('change', syncKind);
  $('rule-form').addEventListener('submit', (e) => { e.preventDefault(); saveRule('POST'); });
  $('rule-update').addEventListener('click', () => saveRule('PUT'));
  $('test-form').addEventListener('submit', (e) => { e.preventDefault(); runTest(); });
  rulesList().catch((e) => $('rules-list').replaceChildren(h('p', { class: 'error' }, e.message)));
  setInterval(() => {
    rulesList().catch(() => {});
    const name = $('rule-charts').dataset.rule;
    if (name) ruleCharts(name);
  }, 10000);
}

// ---------- topics and subscriptions ----------

async function topicsList() {
  const { topics } = await api('GET', '/v1/topics');
  const sel = $('sub-topic');
  const chosen = sel.value;
  sel.replaceChildren(...topics.map((t) => h('option', { value: t.name }, t.name)));
  if (chosen) sel.value = chosen;
  const box = $('topics-list');
  if (!topics.length) {
    box.replaceChildren(h('p', { class: 'empty' }, 'No topics yet — create one above; rules forward into topics.'));
    return;
  }
  const parts = [];
  for (const t of topics) {
    const { subscriptions } = await api('GET', `/v1/topics/${enc(t.name)}/subscriptions`).catch(() => ({ subscriptions: [] }));
    const del = () => attempt(`Deleting topic ${t.name}`, async () => {
      if (!confirm(`Delete topic ${t.name} and its subscriptions?`)) return;
      await api('DELETE', `/v1/topics/${enc(t.name)}`);
      await topicsList();
    });
    parts.push(h('section', { class: 'topic', 'aria-label': `Topic ${t.name}` },
      h('h3', {}, h('code', {}, t.name), ' ', button('Delete topic', del, 'danger small', `Delete topic ${t.name}`)),
      table(`Subscriptions of ${t.name}`, [
        ['Name', (s) => h('code', {}, s.name)],
        ['Endpoint', (s) => (s.endpoint.queue ? `queue ${s.endpoint.queue}` : `HTTP ${s.endpoint.http.url}`)],
        ['Filter tag', (s) => s.filter_tag || '—'],
        ['Strategy', (s) => (s.endpoint.http ? s.endpoint.http.strategy : '—')],
        ['Format', (s) => (s.endpoint.http ? s.endpoint.http.format : '—')],
        ['Backlog', (s) => (s.push ? fmtNum(s.push.backlog) : '—')],
        ['Last error', (s) => (s.push && s.push.last_error) || '—'],
        ['', (s) => h('span', { class: 'buttons' },
          s.endpoint.http ? button('Redrive dead letters', () => attempt('Redrive', async () => {
            const r = await api('POST', `/v1/topics/${enc(t.name)}/subscriptions/${enc(s.name)}/dead-letters/redrive`, {});
            flash(`${r.redriven} dead letter(s) sent again.`);
          }), null, `Redrive dead letters of ${s.name}`) : '',
          button('Unsubscribe', () => attempt('Unsubscribing', async () => {
            await api('DELETE', `/v1/topics/${enc(t.name)}/subscriptions/${enc(s.name)}`);
            await topicsList();
          }), 'danger', `Unsubscribe ${s.name}`))],
      ], subscriptions, 'No subscriptions yet — add a queue or HTTP subscription above.')));
  }
  box.replaceChildren(...parts);
}

function topicsPage() {
  $('topic-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const name = $('topic-name').value.trim();
    attempt(`Creating topic ${name}`, async () => {
      await api('PUT', `/v1/topics/${enc(name)}`, {});
      flash(`Topic ${name} created.`);
      $('topic-name').value = '';
      $('sub-topic').value = name;
      await topicsList();
      $('sub-topic').value = name;
    });
  });
  $('sub-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const topic = $('sub-topic').value, name = $('sub-name').value.trim();
    const type = $('sub-type').value, target = $('sub-target').value.trim();
    const body = { [type]: target };
    if ($('sub-filter-tag').value.trim()) body.filter_tag = $('sub-filter-tag').value.trim();
    if (type === 'http') {
      if ($('sub-strategy').value) body.strategy = $('sub-strategy').value;
      if ($('sub-format').value) body.format = $('sub-format').value;
    }
    attempt(`Subscribing ${name}`, async () => {
      const r = await api('PUT', `/v1/topics/${enc(topic)}/subscriptions/${enc(name)}`, body);
      flash(`Subscription ${name} created.`);
      $('sub-secret').replaceChildren(r && r.secret
        ? h('p', { class: 'secret' }, 'Signing secret (shown once, copy it now): ', h('code', {}, r.secret)) : '');
      await topicsList();
    });
  });
  topicsList().catch((e) => $('topics-list').replaceChildren(h('p', { class: 'error' }, e.message)));
}

// ---------- queues ----------

async function queuesList() {
  const { queues } = await api('GET', '/v1/queues');
  // Which queues dead-letter into each queue: a dead-letter queue with one source can be
  // redriven back to it.
  const sources = {};
  for (const q of queues) {
    const dlq = q.attributes && q.attributes.dead_letter_queue;
    if (dlq) (sources[dlq] = sources[dlq] || []).push(q.name);
  }
  const sel = $('tool-queue');
  const chosen = sel.value;
  sel.replaceChildren(...queues.map((q) => h('option', { value: q.name }, q.name)));
  if (chosen) sel.value = chosen;
  $('queues-list').replaceChildren(table('Queues', [
    ['Name', (q) => h('code', {}, q.name)],
    ['Active', (q) => h('span', { 'data-active': q.name }, fmtNum(q.active_messages))],
    ['In flight', (q) => fmtNum(q.inactive_messages)],
    ['Delayed', (q) => fmtNum(q.delayed_messages)],
    ['Oldest message', (q) => fmtAge(q.oldest_message_age_ms)],
    ['Dead-lettered', (q) => fmtNum(q.dead_lettered_total)],
    ['Dead-letter queue', (q) => (q.attributes && q.attributes.dead_letter_queue) || '—'],
    ['', (q) => h('span', { class: 'buttons' },
      button('Peek', () => { sel.value = q.name; peek(); }, null, `Peek queue ${q.name}`),
      (sources[q.name] || []).length === 1
        ? button(`Redrive to ${sources[q.name][0]}`, () => redrive(q.name, sources[q.name][0]), null, `Redrive dead letters of ${q.name} to ${sources[q.name][0]}`)
        : '',
      button('Delete', () => attempt(`Deleting queue ${q.name}`, async () => {
        if (!confirm(`Delete queue ${q.name} and its messages?`)) return;
        await api('DELETE', `/v1/queues/${enc(q.name)}`);
        await queuesList();
      }), 'danger', `Delete queue ${q.name}`))],
  ], queues, 'No queues yet — create one above, then subscribe it to a topic.'));
}

/** Moves a dead-letter queue's messages back to their source queue: receive, send, then
 * delete (at least once: a failure in between leaves a copy in both, never none). */
async function redrive(dlq, source) {
  if (!confirm(`Move every message of ${dlq} back to ${source}?`)) return;
  await attempt(`Redriving ${dlq}`, async () => {
    let n = 0;
    for (let round = 0; round < 200; round++) {
      const r = await api('GET', `/v1/queues/${enc(dlq)}/messages?max=16`);
      if (!r.messages.length) break;
      await api('POST', `/v1/queues/${enc(source)}/messages`, {
        messages: r.messages.map((m) => {
          const out = m.body_base64 !== undefined ? { body_base64: m.body_base64 } : { body: m.body };
          if (m.tag) out.tag = m.tag;
          if (m.attributes && Object.keys(m.attributes).length) out.attributes = m.attributes;
          return out;
        }),
      });
      await api('POST', `/v1/queues/${enc(dlq)}/messages/delete`, { receipt_handles: r.messages.map((m) => m.receipt_handle) });
      n += r.messages.length;
    }
    flash(`Redrove ${n} message(s) from ${dlq} to ${source}.`);
    await queuesList();
  });
}

async function peek() {
  const q = $('tool-queue').value;
  if (!q) return;
  const r = await attempt(`Peeking ${q}`, () => api('GET', `/v1/queues/${enc(q)}/messages?peek=true&max=16`));
  if (!r) return;
  $('peek-output').replaceChildren(h('h3', {}, `Head of ${q}`), table(`Messages of ${q}`, [
    ['Id', (m) => h('code', {}, m.id)],
    ['Enqueued', (m) => new Date(m.enqueue_time_ms).toLocaleTimeString()],
    ['Received', (m) => fmtNum(m.dequeue_count)],
    ['Body', (m) => { let v = m.body; try { v = JSON.parse(m.body); } catch (_) { /* text */ } return jsonTree(v, undefined, false); }],
  ], r.messages, 'The queue is empty — no visible messages.'));
}

function queuesPage() {
  $('queue-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const name = $('queue-name').value.trim();
    const body = {};
    if ($('queue-dlq').value.trim()) body.dead_letter_queue = $('queue-dlq').value.trim();
    attempt(`Creating queue ${name}`, async () => {
      await api('PUT', `/v1/queues/${enc(name)}`, body);
      flash(`Queue ${name} created.`);
      $('queue-name').value = '';
      await queuesList();
    });
  });
  $('queue-send-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const q = $('tool-queue').value;
    attempt(`Sending to ${q}`, async () => {
      await api('POST', `/v1/queues/${enc(q)}/messages`, { body: $('send-body').value });
      flash(`Test message sent to ${q}.`);
      await queuesList();
    });
  });
  $('queue-peek').addEventListener('click', peek);
  $('queue-purge').addEventListener('click', () => {
    const q = $('tool-queue').value;
    if (!q || !confirm(`Purge queue ${q}? Every visible message is received and deleted.`)) return;
    attempt(`Purging ${q}`, async () => {
      let n = 0;
      for (let round = 0; round < 200; round++) {
        const r = await api('GET', `/v1/queues/${enc(q)}/messages?max=16`);
        if (!r.messages.length) break;
        await api('POST', `/v1/queues/${enc(q)}/messages/delete`, { receipt_handles: r.messages.map((m) => m.receipt_handle) });
        n += r.messages.length;
      }
      flash(`Purged ${n} message(s) from ${q}.`);
      await queuesList();
    });
  });
  queuesList().catch((e) => $('queues-list').replaceChildren(h('p', { class: 'error' }, e.message)));
  setInterval(() => queuesList().catch(() => {}), 3000);
}

// ---------- live tail ----------

function tailPage() {
  let source = null, paused = false, held = [];
  const rows = $('tail-rows'), status = $('tail-status');
  const cap = () => Math.max(1, Number($('tail-cap').value) || 200);
  const params = new URLSearchParams(location.search);
  if (params.get('kind')) $('tail-kind').value = params.get('kind');
  if (params.get('target')) $('tail-target').value = params.get('target');

  const fillTargets = async () => {
    const kind = $('tail-kind').value;
    let names = [];
    if (kind === 'rule') names = ((await api('GET', '/v1/rules').catch(() => ({ rules: [] }))).rules || []).map((r) => r.name);
    if (kind === 'queue') names = ((await api('GET', '/v1/queues').catch(() => ({ queues: [] }))).queues || []).map((q) => q.name);
    if (kind === 'topic') names = ['#', '/sys/#', '/+/+/user/#'];
    $('tail-targets').replaceChildren(...names.map((n) => h('option', { value: n })));
  };
  $('tail-kind').addEventListener('change', () => { $('tail-target').value = ''; fillTargets(); });
  fillTargets();

  const show = (m) => {
    const empty = rows.querySelector('.empty');
    if (empty) empty.remove();
    const when = new Date(m.at_ms).toLocaleTimeString();
    const where = m.topic || m.queue;
    rows.prepend(h('article', { class: 'tail-row', 'data-source': m.source },
      h('header', {}, h('time', {}, when), ' ', h('span', { class: 'badge' }, m.source), ' ', h('code', {}, where),
        m.rule ? h('span', { class: 'muted' }, ` by rule ${m.rule}`) : ''),
      jsonTree(m.body, undefined, true)));
    while (rows.children.length > cap()) rows.lastElementChild.remove();
  };

  $('tail-form').addEventListener('submit', (e) => {
    e.preventDefault();
    if (source) source.close();
    const kind = $('tail-kind').value, target = $('tail-target').value.trim();
    const url = kind === 'topic' ? `/console/events/topic?filter=${enc(target)}` : `/console/events/${kind}/${enc(target)}`;
    source = new EventSource(url);
    status.textContent = `Connecting to ${kind} ${target}…`;
    source.addEventListener('open', () => { status.textContent = `Following ${kind} ${target}.`; });
    source.addEventListener('message', (ev) => {
      const m = JSON.parse(ev.data);
      if (paused) { held.push(m); status.textContent = `Paused — ${held.length} new message(s) held.`; } else show(m);
    });
    source.addEventListener('lagged', (ev) => flash(`The tail fell behind and skipped ${JSON.parse(ev.data).missed} message(s).`, 'error'));
    source.addEventListener('failed', (ev) => { status.textContent = `Stopped: ${JSON.parse(ev.data).error}`; source.close(); });
    source.addEventListener('error', () => {
      if (source.readyState === EventSource.CLOSED) status.textContent = 'Not following (the server refused or went away).';
      else status.textContent = 'Reconnecting…';
    });
  });
  $('tail-pause').addEventListener('click', () => {
    paused = !paused;
    $('tail-pause').setAttribute('aria-pressed', String(paused));
    $('tail-pause').textContent = paused ? 'Resume' : 'Pause';
    if (!paused) { held.forEach(show); held = []; status.textContent = 'Following.'; }
  });
  $('tail-clear').addEventListener('click', () => {
    rows.replaceChildren(h('p', { class: 'empty' }, 'Cleared — new messages appear here as they arrive.'));
  });
  if (params.get('target')) $('tail-start').click();
}

// ---------- devices and keys ----------

async function devicesList() {
  const r = await api('GET', '/v1/devices');
  const devices = r.devices || [];
  $('devices-list').replaceChildren(table('Devices', [
    ['Product key', (d) => h('code', {}, d.product_key)],
    ['Device name', (d) => h('code', {}, d.device_name)],
    ['Online', (d) => (d.online ? 'yes' : 'no')],
    ['Tags', (d) => Object.entries(d.tags || {}).map(([k, v]) => `${k}=${v}`).join(', ') || '—'],
    ['', (d) => button('Delete', () => attempt('Deleting device', async () => {
      if (!confirm(`Delete device ${d.product_key}/${d.device_name}?`)) return;
      await api('DELETE', `/v1/devices/${enc(d.product_key)}/${enc(d.device_name)}`);
      await devicesList();
    }), 'danger', `Delete device ${d.product_key}/${d.device_name}`)],
  ], devices, 'No devices yet — register one above (anonymous loopback devices need none).'));
}

function devicesPage() {
  $('device-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const pk = $('device-pk').value.trim(), dn = $('device-dn').value.trim();
    attempt('Registering device', async () => {
      const r = await api('PUT', `/v1/devices/${enc(pk)}/${enc(dn)}`, {});
      const secret = r && (r.device_secret || r.secret);
      $('device-secret').replaceChildren(secret
        ? h('p', { class: 'secret' }, 'Device secret (shown once, copy it now): ', h('code', {}, secret)) : '');
      await devicesList();
    });
  });
  devicesList().catch((e) => $('devices-list').replaceChildren(h('p', { class: 'error' }, e.message)));
}

async function keysList() {
  const { keys } = await api('GET', '/v1/keys');
  $('keys-list').replaceChildren(table('Access keys', [
    ['Id', (k) => h('code', {}, k.id)],
    ['Name', (k) => k.name],
    ['Grants', (k) => (k.allow || []).join(', ')],
    ['Created', (k) => new Date(k.create_time_ms).toLocaleString()],
    ['', (k) => button('Delete', () => attempt('Deleting key', async () => {
      if (!confirm(`Delete key ${k.name} (${k.id})? Clients using it stop working.`)) return;
      await api('DELETE', `/v1/keys/${enc(k.id)}`);
      await keysList();
    }), 'danger', `Delete key ${k.name}`)],
  ], keys, 'No keys yet — create one above.'));
}

function keysPage() {
  $('key-form').addEventListener('submit', (e) => {
    e.preventDefault();
    const allow = $('key-allow').value.split('\n').map((l) => l.trim()).filter(Boolean);
    attempt('Creating key', async () => {
      const k = await api('POST', '/v1/keys', { name: $('key-name').value.trim(), allow });
      $('key-secret').replaceChildren(h('p', { class: 'secret' },
        `Key ${k.id} created. Its secret is shown once — copy it now: `, h('code', {}, k.secret)));
      await keysList();
    });
  });
  keysList().catch((e) => $('keys-list').replaceChildren(h('p', { class: 'error' }, e.message)));
}

// ---------- start ----------

const PAGES = {
  overview: () => { overview().catch((e) => flash(e.message, 'error')); setInterval(() => overview().catch(() => {}), 10000); },
  rules: rulesPage, topics: topicsPage, queues: queuesPage, tail: tailPage, devices: devicesPage, keys: keysPage,
};

document.addEventListener('DOMContentLoaded', () => {
  const out = $('sign-out');
  if (out) {
    out.addEventListener('click', async () => {
      await api('POST', '/console/logout').catch(() => {});
      location.href = '/console/login';
    });
  }
  const page = PAGES[document.body.dataset.page];
  if (page) page();
});
