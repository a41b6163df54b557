// The form for a key's settings, shared by Create key and the key page's edit form: workload
// (searchable), owner, description, models, operations, rate limits, concurrency, budget, IP
// allowlist, expiry and guardrails (added to the workload's, or switched off). `values()` reads it as key-file fields, `null` for a field left empty.

import { h, field, uid, listValue } from './ui.js';

const WINDOWS = ['1s', '1m', '1h', '1d'];

/** `2026-12-05T10:30` in local time for a datetime-local input. */
function localInput(iso) {
  if (!iso) return '';
  const d = new Date(iso);
  const pad = (n) => String(n).padStart(2, '0');
  return `${d.getFullYear()}-${pad(d.getMonth() + 1)}-${pad(d.getDate())}T${pad(d.getHours())}:${pad(d.getMinutes())}`;
}

function numberOrNull(input) {
  const v = input.value.trim();
  return v === '' ? null : Number(v);
}

function checkboxGroup(legend, name, options, checked, help) {
  const boxes = options.map((o) => {
    const id = uid(name);
    return h('div', { class: 'check' },
      h('input', { type: 'checkbox', id, name, value: o.value, checked: checked.includes(o.value) }),
      h('label', { for: id }, o.label));
  });
  const helpId = uid('help');
  return h('fieldset', { class: 'checks', 'aria-describedby': helpId },
    h('legend', {}, legend), h('div', { class: 'check-list' }, boxes), h('p', { class: 'help', id: helpId }, help));
}

function checked(fieldset) {
  const v = [...fieldset.querySelectorAll('input:checked')].map((i) => i.value);
  return v.length ? v : null;
}

function rateLimitRow(limit, rows) {
  const kind = h('select', {}, ['requests', 'tokens'].map((k) => h('option', { value: k, selected: limit && limit[k] !== undefined && limit[k] !== null }, k)));
  const amount = h('input', { type: 'number', min: '1', step: '1', value: limit ? (limit.requests ?? limit.tokens ?? '') : '', required: true });
  const per = h('input', { type: 'text', value: (limit && limit.per) || '1m', list: 'kg-windows', size: 6, required: true });
  const row = h('div', { class: 'limit-row' },
    field('Limit on', kind), field('At most', amount), field('Per window', per, 'e.g. 1m, 1h, 1d'),
    h('button', { type: 'button', class: 'secondary', onclick: () => { row.remove(); rows.dispatchEvent(new Event('change')); } }, 'Remove this limit'));
  row.read = () => ({ [kind.value]: Number(amount.value), per: per.value.trim() });
  return row;
}

/**
 * The form's fields for `key` (null to create), choices from `catalog`. Returns the fieldsets
 * and `values()`.
 */
export function keyFields(catalog, key, { withIdentity }) {
  const k = key || {};
  const parts = [];
  let idInput = null;
  let workloadInput = null;
  if (withIdentity) {
    idInput = h('input', { type: 'text', name: 'id', required: true, autocomplete: 'off', spellcheck: false, pattern: '[A-Za-z0-9_\\-][A-Za-z0-9._\\-]{0,63}', maxlength: 64 });
    const listId = uid('workloads');
    workloadInput = h('input', { type: 'text', name: 'workload', list: listId, required: true, autocomplete: 'off' });
    parts.push(h('fieldset', {}, h('legend', {}, 'Key'),
      field('Id', idInput, '1 to 64 letters, digits, ".", "_" and "-", not starting with "."; it names the key\'s file.'),
      field('Workload', workloadInput, 'Type to search the workloads.'),
      h('datalist', { id: listId }, (catalog.workloads || []).map((w) => h('option', { value: w.name })))));
  }
  const owner = h('input', { type: 'text', name: 'owner', value: k.owner || '', autocomplete: 'off' });
  const description = h('input', { type: 'text', name: 'description', value: k.description || '', autocomplete: 'off' });
  parts.push(h('fieldset', {}, h('legend', {}, 'Who it is for'), field('Owner', owner), field('Description', description)));

  const models = checkboxGroup('Models', 'models',
    (catalog.models || []).map((m) => ({ value: m.name, label: `${m.name} (${m.provider})` })), k.models || [],
    'None checked: every model of the workload.');
  const operations = checkboxGroup('Operations', 'operations',
    (catalog.operations || []).map((o) => ({ value: o, label: o })), k.operations || [],
    'None checked: every operation of the workload.');
  parts.push(h('fieldset', {}, h('legend', {}, 'What it may use'), models, operations));

  const rows = h('div', { class: 'limit-rows' });
  for (const l of k.rate_limits || []) rows.append(rateLimitRow(l, rows));
  const maxConcurrent = h('input', { type: 'number', min: '1', step: '1', name: 'max_concurrent', value: k.max_concurrent ?? '' });
  parts.push(h('fieldset', {}, h('legend', {}, 'Limits'),
    h('datalist', { id: 'kg-windows' }, WINDOWS.map((w) => h('option', { value: w }))),
    rows,
    h('button', { type: 'button', class: 'secondary', onclick: () => rows.append(rateLimitRow(null, rows)) }, 'Add a rate limit'),
    field('Concurrent requests at most', maxConcurrent, 'Empty: no cap of its own.')));

  const b = k.budget || {};
  const daily = h('input', { type: 'number', min: '0', step: '0.01', name: 'budget_daily', value: b.daily_usd ?? '' });
  const monthly = h('input', { type: 'number', min: '0', step: '0.01', name: 'budget_monthly', value: b.monthly_usd ?? '' });
  const mode = h('select', { name: 'budget_mode' },
    h('option', { value: 'enforce', selected: b.mode !== 'track' }, 'enforce: refuse requests past a cap'),
    h('option', { value: 'track', selected: b.mode === 'track' }, 'track: count and alert only'));
  parts.push(h('fieldset', {}, h('legend', {}, 'Budget'),
    field('Daily budget (USD)', daily, 'Empty: no daily cap.'),
    field('Monthly budget (USD)', monthly, 'Empty: no monthly cap.'),
    field('Budget mode', mode)));

  const ips = h('input', { type: 'text', name: 'allowed_ips', value: (k.allowed_ips || []).join(', '), autocomplete: 'off', spellcheck: false });
  const expires = h('input', { type: 'datetime-local', name: 'expires_at', value: localInput(k.expires_at) });
  parts.push(h('fieldset', {}, h('legend', {}, 'Access'),
    field('Allowed IP addresses', ips, 'Comma-separated addresses or CIDR ranges, e.g. 10.0.0.0/8. Empty: any address.'),
    field('Expires', expires, 'Your local time. Empty: never.')));

  // Offered only when the policy defines guardrails. Labels differ between the two lists, so
  // that each checkbox's name says what it does.
  const names = catalog.guardrails || [];
  let addGuardrails = null;
  let offGuardrails = null;
  if (names.length) {
    addGuardrails = checkboxGroup('Guardrails added', 'guardrails',
      names.map((n) => ({ value: n, label: n })), k.guardrails || [],
      'Applied on top of the workload\'s guardrails and the defaults.');
    offGuardrails = checkboxGroup('Guardrails switched off', 'guardrails_off',
      names.map((n) => ({ value: n, label: `Switch off ${n}` })), k.guardrails_off || [],
      'The workload\'s or the default guardrails this key does not apply.');
    parts.push(h('fieldset', {}, h('legend', {}, 'Guardrails'), addGuardrails, offGuardrails));
  }

  const values = () => {
    const daily_usd = numberOrNull(daily);
    const monthly_usd = numberOrNull(monthly);
    const v = {
      owner: owner.value.trim() || null,
      description: description.value.trim() || null,
      models: checked(models),
      operations: checked(operations),
      rate_limits: [...rows.children].map((r) => r.read()),
      max_concurrent: numberOrNull(maxConcurrent),
      budget: daily_usd === null && monthly_usd === null ? null : { daily_usd, monthly_usd, mode: mode.value },
      allowed_ips: listValue(ips.value),
      expires_at: expires.value ? new Date(expires.value).toISOString() : null,
    };
    if (addGuardrails) {
      v.guardrails = checked(addGuardrails);
      v.guardrails_off = checked(offGuardrails);
    }
    if (!v.rate_limits.length) v.rate_limits = null;
    if (withIdentity) {
      v.id = idInput.value.trim();
      v.workload = workloadInput.value.trim();
    }
    return v;
  };
  return { parts, values };
}

/** The merge patch (RFC 7396) that turns `before` into `after`: changed fields only, null removes. */
export function mergePatch(before, after) {
  const patch = {};
  for (const [name, value] of Object.entries(after)) {
    if (JSON.stringify(value) !== JSON.stringify(before[name])) patch[name] = value;
  }
  return patch;
}
