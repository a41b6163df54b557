// Key detail: settings and the edit form (PATCH), pause and resume, rotate with a grace period,
// delete confirmed by typing the id, budget gauges, usage charts, guardrail blocks and the recent
// requests.

import { api, seg } from './api.js';
import { h, section, table, statusBadge, when, usd, num, ms, errorBox, secretPanel, mount, actionButton, field, setFlash, takeFlash, notice } from './ui.js';
import { barChart, hbarChart, gauge } from './chart.js';
import { keyFields, mergePatch } from './key-form.js';

function settingsList(k) {
  const rows = [
    ['Workload', h('a', { href: `#/workloads/${seg(k.workload)}` }, k.workload)],
    ['Hint', h('code', {}, k.hint || '—')],
    ['Status', statusBadge(k.status)],
    ['Owner', k.owner || '—'],
    ['Description', k.description || '—'],
    ['Models', (k.models || []).join(', ') || 'all of the workload\'s'],
    ['Operations', (k.operations || []).join(', ') || 'all of the workload\'s'],
    ['Rate limits', (k.rate_limits || []).map((l) => (l.requests != null ? `${num(l.requests)} requests / ${l.per}` : `${num(l.tokens)} tokens / ${l.per}`)).join('; ') || 'none of its own'],
    ['Concurrent requests', k.max_concurrent ?? 'no cap of its own'],
    ['Budget', k.budget ? [k.budget.daily_usd != null ? `${usd(k.budget.daily_usd)} a day` : null, k.budget.monthly_usd != null ? `${usd(k.budget.monthly_usd)} a month` : null, `mode ${k.budget.mode || 'enforce'}`].filter(Boolean).join(', ') : 'none of its own'],
    ['Allowed IPs', (k.allowed_ips || []).join(', ') || 'any'],
    ['Guardrails', guardrailsText(k)],
    ['Expires', k.expires_at ? when(k.expires_at) : 'never'],
    ['Created', when(k.created_at)],
    ['Last updated', when(k.updated_at)],
    ['Last used', k.last_used_at ? when(k.last_used_at) : 'never'],
  ];
  for (const until of k.previous_secrets_valid_until || []) rows.push(['Previous secret valid until', when(until)]);
  return h('dl', { class: 'settings' }, rows.map(([dt, dd]) => [h('dt', {}, dt), h('dd', {}, dd)]));
}

function guardrailsText(k) {
  const effective = (k.guardrails_effective || []).join(', ') || 'none';
  const own = [
    (k.guardrails || []).length ? `added: ${k.guardrails.join(', ')}` : null,
    (k.guardrails_off || []).length ? `switched off: ${k.guardrails_off.join(', ')}` : null,
  ].filter(Boolean);
  return own.length ? `${effective} (${own.join('; ')})` : effective;
}

/** What a request's guardrails did: "no-secrets (aws_access_key): block". */
function firedText(r) {
  return (r.guardrails || []).map((g) => `${g.guardrail} (${g.rule}): ${g.action}`).join('; ');
}

/** Requests a guardrail blocked: counts today, this month and per day, and the latest firings. */
function guardrailBlocks(k, daily, requests) {
  const fired = requests.filter((r) => (r.guardrails || []).length);
  const blocked30 = daily.reduce((a, d) => a + (Number(d.blocked_requests) || 0), 0);
  return [
    h('dl', { class: 'stats' },
      h('div', { class: 'stat' }, h('dt', {}, 'Blocked today'), h('dd', {}, num(k.blocked_today))),
      h('div', { class: 'stat' }, h('dt', {}, 'Blocked this month'), h('dd', {}, num(k.blocked_month))),
      h('div', { class: 'stat' }, h('dt', {}, 'Blocked, last 30 days'), h('dd', {}, num(blocked30)))),
    table('Latest requests on which a guardrail fired, newest first', [
      { label: 'Time', cell: (r) => when(r.time) },
      { label: 'Model', cell: (r) => r.model || '—' },
      { label: 'Outcome', cell: (r) => statusBadge(r.refusal_reason === 'content_policy_violation' || r.error === 'response_blocked' ? 'blocked' : r.status < 400 ? 'ok' : 'refused') },
      { label: 'Guardrails', cell: firedText },
    ], fired, 'No guardrail fired on the latest requests.'),
  ];
}

function gauges(state) {
  const period = (title, p) => gauge({
    title,
    limit: p.limit_usd,
    spent: Number(p.spent_usd) || 0,
    reserved: Number(p.reserved_usd) || 0,
    remaining: p.remaining_usd,
    fmt: usd,
  });
  return h('div', { class: 'grid2' }, period('Today (UTC)', state.day), period('This month (UTC)', state.month));
}

function charts(daily, models) {
  const points = (f) => daily.map((d) => ({ label: d.day, short: d.day.slice(5), value: f(d) }));
  const byModel = (f) => models.map((m) => ({ label: m.model, value: f(m) }));
  return [
    h('div', { class: 'grid3' },
      barChart({ title: 'Requests per day', points: points((d) => d.requests), unit: 'requests', fmt: num, tickFmt: num, integer: true }),
      barChart({ title: 'Tokens per day', points: points((d) => d.tokens), unit: 'tokens', fmt: num, tickFmt: num, integer: true }),
      barChart({ title: 'Cost per day', points: points((d) => d.cost_usd), unit: 'USD', fmt: usd, tickFmt: usd })),
    h('div', { class: 'grid3' },
      hbarChart({ title: 'Requests by model', rows: byModel((m) => m.requests), unit: 'requests', fmt: num, integer: true }),
      hbarChart({ title: 'Tokens by model', rows: byModel((m) => m.tokens), unit: 'tokens', fmt: num, integer: true }),
      hbarChart({ title: 'Cost by model', rows: byModel((m) => m.cost_usd), unit: 'USD', fmt: usd })),
  ];
}

function recent(requests) {
  return table('Most recent requests, newest first', [
    { label: 'Time', cell: (r) => when(r.time) },
    { label: 'Model', cell: (r) => r.model || '—' },
    { label: 'Status', cell: (r) => statusBadge(r.status < 400 ? 'ok' : r.refusal_reason ? 'refused' : 'error'), header: 'Outcome' },
    { label: 'HTTP status', cell: (r) => String(r.status), num: true },
    { label: 'Tokens', cell: (r) => num(r.tokens), num: true },
    { label: 'Cost', cell: (r) => usd(r.cost_usd), num: true },
    { label: 'Latency', cell: (r) => ms(r.latency_ms), num: true },
    { label: 'Refusal reason', cell: (r) => r.refusal_reason || r.error || '—' },
    { label: 'Guardrails', cell: (r) => firedText(r) || '—' },
  ], requests, 'No requests yet.');
}

function actions(k, ctx) {
  const id = k.id;
  const out = h('div', { 'aria-live': 'polite', class: 'action-result' });
  const paused = k.status === 'paused';
  const [toggle, toggleStatus] = actionButton(paused ? 'Resume key' : 'Pause key', async () => {
    await api('POST', `/admin/keys/${seg(id)}/${paused ? 'resume' : 'pause'}`);
    setFlash(paused ? `Key ${id} resumed.` : `Key ${id} paused: the gateway refuses its requests.`);
    await ctx.refresh();
  }, { 'data-focus': 'toggle' });

  const grace = h('input', { type: 'text', value: '1h', size: 8, name: 'grace', spellcheck: false });
  const [rotate, rotateStatus] = actionButton('Rotate secret', async () => {
    const g = grace.value.trim();
    const r = await api('POST', `/admin/keys/${seg(id)}/rotate`, g && g !== '0' ? { grace: g } : {});
    mount(out, h('h3', {}, 'New secret'),
      secretPanel(id, r.secret, r.previous_secret_valid_until
        ? h('p', {}, 'The previous secret keeps working until ', when(r.previous_secret_valid_until), '.')
        : h('p', {}, 'The previous secret stopped working.')));
    out.querySelector('button').focus();
  });

  const confirm = h('input', { type: 'text', name: 'confirm', autocomplete: 'off', spellcheck: false });
  const [del, delStatus] = actionButton('Delete key', async () => {
    await api('DELETE', `/admin/keys/${seg(id)}`);
    setFlash(`Key ${id} deleted.`);
    window.location.hash = '#/keys';
  }, { class: 'danger', disabled: true });
  confirm.addEventListener('input', () => { del.disabled = confirm.value !== id; });

  return section('Actions',
    h('div', { class: 'action-row' }, h('p', {}, paused ? 'The key is paused: the gateway refuses it.' : 'Pausing makes the gateway refuse the key until it is resumed.'), toggle, toggleStatus),
    h('div', { class: 'action-row' }, field('Grace period for the old secret', grace, 'e.g. 1h or 30m, at most 30d; 0: the old secret stops at once.'), rotate, rotateStatus),
    out,
    h('div', { class: 'action-row danger-zone' }, field(`Type ${id} to confirm deletion`, confirm), del, delStatus));
}

function editForm(k, catalog, ctx) {
  const { parts, values } = keyFields(catalog, k, { withIdentity: false });
  const result = h('div', { 'aria-live': 'polite', tabIndex: -1 });
  const submit = h('button', { type: 'submit' }, 'Save changes');
  let before = null;
  const form = h('form', {
    class: 'key-form',
    onsubmit: async (e) => {
      e.preventDefault();
      if (!form.reportValidity()) return;
      const patch = mergePatch(before, values());
      if (!Object.keys(patch).length) {
        mount(result, notice('Nothing changed.'));
        return;
      }
      submit.disabled = true;
      try {
        await api('PATCH', `/admin/keys/${seg(k.id)}`, patch);
        setFlash(`Saved: ${Object.keys(patch).join(', ')}.`);
        await ctx.refresh();
      } catch (err) {
        mount(result, errorBox(err));
        result.focus();
      } finally {
        submit.disabled = false;
      }
    },
  }, parts, h('div', { class: 'actions' }, submit), result);
  // What the form shows before any edit: the patch is the difference from it.
  before = values();
  return form;
}

export async function keyPage({ parts }, ctx) {
  const id = parts[1];
  const [k, daily, models, requests, catalog] = await Promise.all([
    api('GET', `/admin/keys/${seg(id)}`),
    api('GET', `/admin/keys/${seg(id)}/usage/daily?days=30`),
    api('GET', `/admin/keys/${seg(id)}/usage/models?days=30`),
    api('GET', `/admin/keys/${seg(id)}/requests?limit=50`),
    ctx.canWrite ? api('GET', '/admin/catalog') : null,
  ]);
  const page = [
    h('div', { class: 'title-row' }, h('h1', {}, `Key ${k.id}`), statusBadge(k.status),
      h('button', { type: 'button', class: 'secondary', 'data-focus': 'refresh', onclick: () => ctx.refresh() }, 'Refresh')),
    takeFlash(),
    h('div', { class: 'grid2' }, section('Settings', settingsList(k)), ctx.canWrite ? actions(k, ctx) : null),
    section('Budget', k.budget_state ? gauges(k.budget_state) : h('p', {}, 'No budget figures.')),
    section('Usage, last 30 days', charts(daily.days || [], models.models || [])),
    section('Guardrail blocks', guardrailBlocks(k, daily.days || [], requests.requests || [])),
    section('Recent requests', recent(requests.requests || [])),
  ];
  if (ctx.canWrite) {
    // Built after the rest so that a failed catalog read still shows the key.
    const edit = h('details', { class: 'card' }, h('summary', {}, h('h2', {}, 'Edit settings')), editForm(k, catalog, ctx));
    page.push(edit);
  }
  return page;
}
