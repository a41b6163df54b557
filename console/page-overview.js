// Overview: today's and this month's traffic and cost, error rate, latency, refusals by reason,
// the top spenders and the health of every upstream endpoint.

import { api } from './api.js';
import { h, section, table, statusBadge, usd, num, pct, ms } from './ui.js';
import { hbarChart } from './chart.js';

function stat(label, value) {
  return h('div', { class: 'stat' }, h('dt', {}, label), h('dd', {}, value));
}

function period(title, p) {
  return section(title, h('dl', { class: 'stats' },
    stat('Requests', num(p.requests)),
    stat('Tokens', num(p.tokens)),
    stat('Cost', usd(p.cost_usd)),
    stat('Blocked by guardrails', num(p.blocked_requests))));
}

export async function overviewPage(route, ctx) {
  const o = await api('GET', '/admin/overview');
  const refusals = Object.entries(o.refusals || {}).sort((a, b) => b[1] - a[1]);
  return [
    h('div', { class: 'title-row' }, h('h1', {}, 'Overview'),
      h('button', { type: 'button', class: 'secondary', 'data-focus': 'refresh', onclick: () => ctx.refresh() }, 'Refresh')),
    h('div', { class: 'grid2' }, period('Today (UTC)', o.today), period('This month (UTC)', o.month)),
    section('Errors and latency today',
      h('dl', { class: 'stats' },
        stat('Error rate (5xx)', pct(o.error_rate)),
        stat('Latency p50', ms(o.latency_ms && o.latency_ms.p50)),
        stat('Latency p95', ms(o.latency_ms && o.latency_ms.p95)))),
    h('div', { class: 'grid2' },
      section('Refusals today by reason',
        hbarChart({ title: 'Refused requests by reason', rows: refusals.map(([reason, n]) => ({ label: reason, value: n })), unit: 'requests', fmt: num, integer: true, empty: 'No refusals today.' }),
        table('Refusals by reason', [
          { label: 'Reason', cell: (r) => r[0] },
          { label: 'Requests', cell: (r) => num(r[1]), num: true },
        ], refusals, 'No refusals today.')),
      section('Top keys by spend today',
        table('Top keys by spend today', [
          { label: 'Key', cell: (k) => h('a', { href: `#/keys/${encodeURIComponent(k.id)}` }, k.id) },
          { label: 'Workload', cell: (k) => h('a', { href: `#/workloads/${encodeURIComponent(k.workload)}` }, k.workload) },
          { label: 'Cost', cell: (k) => usd(k.cost_usd), num: true },
        ], o.top_keys || [], 'No spend today.'))),
    section('Upstream endpoints',
      table('Upstream endpoint health', [
        { label: 'Provider', cell: (u) => u.provider },
        { label: 'Endpoint', cell: (u) => h('code', {}, u.url) },
        { label: 'Health', cell: (u) => statusBadge(u.healthy ? 'healthy' : 'unhealthy') },
        { label: 'State', cell: (u) => u.state },
      ], o.upstreams || [], 'No upstream endpoints.')),
  ];
}
