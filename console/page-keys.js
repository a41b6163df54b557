// Keys: one page of keys from the server, filtered by workload, owner and status, searched and
// sorted there too (the list may hold 100,000 keys). The filters live in the URL, so a view can
// be bookmarked and the browser's back button undoes a change.

import { api, query } from './api.js';
import { h, field, table, statusBadge, when, num, spendOf, takeFlash } from './ui.js';

const PER_PAGE = 50;
const COLUMNS = [
  { key: 'id', label: 'Id', sort: 'id' },
  { key: 'hint', label: 'Hint' },
  { key: 'workload', label: 'Workload', sort: 'workload' },
  { key: 'owner', label: 'Owner', sort: 'owner' },
  { key: 'status', label: 'Status' },
  { key: 'created_at', label: 'Created', sort: 'created_at' },
  { key: 'updated_at', label: 'Last updated', sort: 'updated_at' },
  { key: 'last_used_at', label: 'Last used', sort: 'last_used_at' },
  { key: 'expires_at', label: 'Expires', sort: 'expires_at' },
  { key: 'requests_today', label: 'Requests today', sort: 'requests_today', num: true },
  { key: 'spend_today', label: 'Spend today of budget', sort: 'spend_today', num: true },
];

function go(params) {
  window.location.hash = `#/keys${query(params)}`;
}

function cell(col, k) {
  switch (col.key) {
    case 'id': return h('a', { href: `#/keys/${encodeURIComponent(k.id)}` }, k.id);
    case 'hint': return h('code', {}, k.hint || '—');
    case 'workload': return h('a', { href: `#/workloads/${encodeURIComponent(k.workload)}` }, k.workload);
    case 'owner': return k.owner || '—';
    case 'status': return statusBadge(k.status);
    case 'requests_today': return num(k.requests_today);
    case 'spend_today': return spendOf(k.spend_today_usd, k.budget_daily_usd);
    case 'last_used_at': return k.last_used_at ? when(k.last_used_at) : 'never';
    case 'expires_at': return k.expires_at ? when(k.expires_at) : 'never';
    default: return when(k[col.key]);
  }
}

export async function keysPage({ params }, ctx) {
  const state = {
    workload: params.get('workload') || '',
    owner: params.get('owner') || '',
    status: params.get('status') || '',
    q: params.get('q') || '',
    sort: params.get('sort') || 'id',
    order: params.get('order') === 'desc' ? 'desc' : 'asc',
    page: Math.max(1, Number.parseInt(params.get('page') || '1', 10) || 1),
  };
  const [list, catalog] = await Promise.all([
    api('GET', `/admin/keys${query({ ...state, per_page: PER_PAGE })}`),
    api('GET', '/admin/catalog'),
  ]);

  const workload = h('select', { name: 'workload' },
    h('option', { value: '' }, 'All workloads'),
    (catalog.workloads || []).map((w) => h('option', { value: w.name, selected: w.name === state.workload }, w.name)));
  const owner = h('input', { type: 'text', name: 'owner', value: state.owner, autocomplete: 'off' });
  const status = h('select', { name: 'status' },
    ['', 'active', 'paused', 'expired'].map((s) => h('option', { value: s, selected: s === state.status }, s || 'Any status')));
  const q = h('input', { type: 'search', name: 'q', value: state.q, autocomplete: 'off' });
  const filters = h('form', {
    class: 'filters',
    role: 'search',
    'aria-label': 'Filter keys',
    onsubmit: (e) => {
      e.preventDefault();
      go({ ...state, workload: workload.value, owner: owner.value.trim(), status: status.value, q: q.value.trim(), page: 1 });
    },
  },
  field('Workload', workload),
  field('Owner', owner),
  field('Status', status),
  field('Search', q, 'Id, owner, description or workload'),
  h('div', { class: 'field buttons' }, h('button', { type: 'submit' }, 'Apply'),
    h('button', { type: 'button', class: 'secondary', onclick: () => go({}) }, 'Clear')));

  const columns = COLUMNS.map((col) => {
    const active = state.sort === col.sort;
    const header = col.sort
      ? h('button', {
        type: 'button',
        class: 'sort',
        'data-focus': `sort-${col.sort}`,
        'aria-label': `Sort by ${col.label}${active ? (state.order === 'asc' ? ', now ascending' : ', now descending') : ''}`,
        onclick: () => go({ ...state, sort: col.sort, order: active && state.order === 'asc' ? 'desc' : 'asc', page: 1 }),
      }, col.label, h('span', { 'aria-hidden': 'true', class: 'sort-mark' }, active ? (state.order === 'asc' ? ' ▲' : ' ▼') : ' ↕'))
      : col.label;
    return { label: col.label, header, num: col.num, cell: (k) => cell(col, k) };
  });
  const t = table(`Keys ${list.total ? `${(state.page - 1) * PER_PAGE + 1}–${(state.page - 1) * PER_PAGE + list.data.length} of ${num(list.total)}` : ''}`, columns, list.data, 'No keys match.');
  for (const [i, col] of COLUMNS.entries()) {
    if (col.sort === state.sort) t.querySelectorAll('th')[i].setAttribute('aria-sort', state.order === 'asc' ? 'ascending' : 'descending');
  }

  const pages = Math.max(1, Math.ceil(list.total / PER_PAGE));
  const pager = h('nav', { class: 'pager', 'aria-label': 'Pages of keys' },
    h('button', { type: 'button', 'data-focus': 'prev', disabled: state.page <= 1, onclick: () => go({ ...state, page: state.page - 1 }) }, '← Previous'),
    h('span', {}, `Page ${state.page} of ${pages}`),
    h('button', { type: 'button', 'data-focus': 'next', disabled: state.page >= pages, onclick: () => go({ ...state, page: state.page + 1 }) }, 'Next →'));

  return [
    h('div', { class: 'title-row' }, h('h1', {}, 'Keys'),
      ctx.canWrite ? h('a', { class: 'button', href: '#/keys/new' }, 'Create key') : null),
    takeFlash(),
    filters, t, pager,
  ];
}
