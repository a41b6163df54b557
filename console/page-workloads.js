// Workloads: the list with their keys, spend and budgets, and one workload's usage by key.

import { api, seg } from './api.js';
import { h, section, table, usd, num } from './ui.js';
import { hbarChart } from './chart.js';

function budgetText(b) {
  if (!b) return 'none';
  return [b.daily_usd != null ? `${usd(b.daily_usd)} a day` : null, b.monthly_usd != null ? `${usd(b.monthly_usd)} a month` : null, b.mode ? `(${b.mode})` : null]
    .filter(Boolean).join(', ') || 'none';
}

export async function workloadsPage() {
  const { workloads } = await api('GET', '/admin/workloads');
  return [
    h('h1', {}, 'Workloads'),
    table('Workloads', [
      { label: 'Workload', cell: (w) => h('a', { href: `#/workloads/${seg(w.name)}` }, w.name) },
      { label: 'Description', cell: (w) => w.description || '—' },
      { label: 'Keys', cell: (w) => h('a', { href: `#/keys?workload=${seg(w.name)}`, 'aria-label': `${num(w.keys)} keys of ${w.name}` }, num(w.keys)), num: true },
      { label: 'Spend today', cell: (w) => usd(w.spend_today_usd), num: true },
      { label: 'Spend this month', cell: (w) => usd(w.spend_month_usd), num: true },
      { label: 'Blocked today', cell: (w) => num(w.blocked_today), num: true },
      { label: 'Budget', cell: (w) => budgetText(w.budget) },
      { label: 'Guardrails', cell: (w) => (w.guardrails || []).join(', ') || 'none' },
    ], workloads, 'No workloads.'),
  ];
}

export async function workloadPage({ parts }) {
  const w = await api('GET', `/admin/workloads/${seg(parts[1])}`);
  // The API lists the keys used this month, highest cost first; the table shows the month.
  const byKey = (w.usage_by_key || []).map((r) => ({ key: r.key, ...r.month }));
  return [
    h('h1', {}, `Workload ${w.name}`),
    section('Settings', h('dl', { class: 'settings' },
      h('dt', {}, 'Description'), h('dd', {}, w.description || '—'),
      h('dt', {}, 'Models'), h('dd', {}, (w.models || []).join(', ') || '—'),
      h('dt', {}, 'Operations'), h('dd', {}, (w.operations || []).join(', ') || '—'),
      h('dt', {}, 'Guardrails'), h('dd', {}, (w.guardrails || []).join(', ') || 'none'),
      h('dt', {}, 'Keys'), h('dd', {}, h('a', { href: `#/keys?workload=${seg(w.name)}` }, `${num(w.keys)} ${w.keys === 1 ? 'key' : 'keys'}`)),
      h('dt', {}, 'Spend today'), h('dd', {}, usd(w.spend_today_usd)),
      h('dt', {}, 'Spend this month'), h('dd', {}, usd(w.spend_month_usd)),
      h('dt', {}, 'Budget'), h('dd', {}, budgetText(w.budget)))),
    section('Usage by key this month',
      hbarChart({ title: 'Cost by key this month', rows: byKey.slice(0, 15).map((r) => ({ label: r.key, value: r.cost_usd })), unit: 'USD', fmt: usd }),
      table('Usage by key this month', [
        { label: 'Key', cell: (r) => h('a', { href: `#/keys/${seg(r.key)}` }, r.key) },
        { label: 'Requests', cell: (r) => num(r.requests), num: true },
        { label: 'Tokens', cell: (r) => num(r.tokens), num: true },
        { label: 'Cost', cell: (r) => usd(r.cost_usd), num: true },
        { label: 'Blocked by guardrails', cell: (r) => num(r.blocked_requests), num: true },
      ], byKey, 'No usage this month.')),
  ];
}
