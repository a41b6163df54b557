// DOM helpers shared by the pages: elements built from data with textContent only (never HTML
// from the API), labelled form fields, tables, status badges and number formats.

/** An element: `attrs` are attributes (`class`, `for`; `true` for a bare one, false/null to omit), `on*` listeners. */
export function h(tag, attrs = {}, ...children) {
  const el = document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith('on') && typeof v === 'function') el.addEventListener(k.slice(2), v);
    else if (k === 'class') el.className = v;
    else if (k === 'for') el.htmlFor = v;
    else el.setAttribute(k, v === true ? '' : v);
  }
  append(el, children);
  return el;
}

function append(el, children) {
  for (const c of children.flat(Infinity)) {
    if (c === undefined || c === null || c === false) continue;
    el.append(c instanceof Node ? c : document.createTextNode(String(c)));
  }
}

let ids = 0;
/** A fresh element id, for label/control and aria pairs. */
export const uid = (prefix) => `${prefix}-${++ids}`;

/** A labelled control: `<label for>` + the control + optional help text tied by aria-describedby. */
export function field(label, control, help) {
  if (!control.id) control.id = uid('f');
  const wrap = h('div', { class: 'field' }, h('label', { for: control.id }, label), control);
  if (help) {
    const helpId = uid('help');
    control.setAttribute('aria-describedby', helpId);
    wrap.append(h('p', { class: 'help', id: helpId }, help));
  }
  return wrap;
}

/** A status as a word and a colour, never a colour alone. */
export function statusBadge(status) {
  const known = ['active', 'paused', 'expired', 'healthy', 'unhealthy', 'ok', 'refused', 'blocked', 'error'];
  const cls = known.includes(status) ? status : 'other';
  return h('span', { class: `badge badge-${cls}` }, status || 'unknown');
}

const usdFmt = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD', minimumFractionDigits: 2, maximumFractionDigits: 4 });
const numFmt = new Intl.NumberFormat('en-US');
const compactFmt = new Intl.NumberFormat('en-US', { notation: 'compact', maximumFractionDigits: 1 });

// Requests often cost fractions of a cent: those keep three significant digits, not "$0.00".
const smallUsdFmt = new Intl.NumberFormat('en-US', { style: 'currency', currency: 'USD', maximumSignificantDigits: 3 });
export function usd(v) {
  if (v === null || v === undefined) return '—';
  const n = Number(v);
  return n !== 0 && Math.abs(n) < 0.01 ? smallUsdFmt.format(n) : usdFmt.format(n);
}
export const num = (v) => (v === null || v === undefined ? '—' : numFmt.format(Number(v)));
export const compact = (v) => compactFmt.format(Number(v));
export const pct = (v) => (v === null || v === undefined ? '—' : `${(Number(v) * 100).toFixed(2)} %`);
export const ms = (v) => (v === null || v === undefined ? '—' : `${numFmt.format(Math.round(Number(v)))} ms`);

/** A timestamp as a <time> element: local date and time, the exact value in its title. */
export function when(iso) {
  if (!iso) return '—';
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return String(iso);
  const text = d.toLocaleString('en-GB', { year: 'numeric', month: 'short', day: '2-digit', hour: '2-digit', minute: '2-digit' });
  return h('time', { dateTime: d.toISOString(), title: d.toISOString() }, text);
}

/** "$1.20 of $5.00" for spend against a budget, or the spend alone. */
export function spendOf(spent, budget) {
  return budget === null || budget === undefined ? usd(spent) : `${usd(spent)} of ${usd(budget)}`;
}

/** A table with a caption; `columns` = [{label, cell(row) -> node|text, num?}]. */
export function table(caption, columns, rows, empty = 'Nothing yet.') {
  const head = h('tr', {}, columns.map((c) => h('th', { scope: 'col', class: c.num ? 'num' : '' }, c.header || c.label)));
  const body = rows.length
    ? rows.map((r) => h('tr', {}, columns.map((c) => h('td', { class: c.num ? 'num' : '' }, c.cell(r)))))
    : [h('tr', {}, h('td', { colSpan: columns.length, class: 'empty' }, empty))];
  return h('div', { class: 'table-wrap' },
    h('table', {}, h('caption', {}, caption), h('thead', {}, head), h('tbody', {}, body)));
}

/** A message region: role=alert for errors so screen readers announce them. */
export function errorBox(err) {
  const box = h('div', { class: 'error-box', role: 'alert' }, h('p', {}, err.message || String(err)));
  if (err.problems && err.problems.length) box.append(h('ul', {}, err.problems.map((p) => h('li', {}, typeof p === 'string' ? p : JSON.stringify(p)))));
  return box;
}

export function notice(text) {
  return h('p', { class: 'notice', role: 'status' }, text);
}

/** Replaces the children of `el`. */
export function mount(el, ...children) {
  el.replaceChildren();
  append(el, children);
}

/** A section with a heading of the given level. */
export function section(title, ...children) {
  return h('section', { class: 'card' }, h('h2', {}, title), ...children);
}

/** A button that runs `action` while showing it is busy, and reports a failure beside itself. */
export function actionButton(label, action, attrs = {}) {
  const status = h('span', { class: 'action-status', role: 'status' });
  const button = h('button', {
    type: 'button',
    ...attrs,
    onclick: async () => {
      button.disabled = true;
      status.textContent = '';
      status.className = 'action-status';
      try {
        await action();
      } catch (err) {
        status.textContent = err.message;
        status.className = 'action-status error';
      } finally {
        button.disabled = false;
      }
    },
  }, label);
  return [button, status];
}

/** A list input ("a, b") as an array, or null when empty. */
export function listValue(text) {
  const items = text.split(',').map((s) => s.trim()).filter(Boolean);
  return items.length ? items : null;
}

/** The panel that shows a new secret once, with a copy button and a warning. */
export function secretPanel(id, secret, extra) {
  const out = h('output', { class: 'secret', id: uid('secret'), 'data-secret': true }, secret);
  const copied = h('span', { role: 'status', class: 'action-status' });
  const copy = h('button', {
    type: 'button',
    onclick: async () => {
      try {
        await navigator.clipboard.writeText(secret);
        copied.textContent = 'Copied.';
      } catch {
        const range = document.createRange();
        range.selectNodeContents(out);
        const sel = window.getSelection();
        sel.removeAllRanges();
        sel.addRange(range);
        copied.textContent = 'Selected: press Ctrl+C to copy.';
      }
    },
  }, 'Copy secret');
  return h('div', { class: 'secret-panel', role: 'region', 'aria-label': `Secret of key ${id}` },
    h('p', { class: 'warning' }, h('strong', {}, 'Copy this secret now. '),
      'keygate stores only its digest: it will never be shown again, and cannot be recovered.'),
    out, h('div', { class: 'actions' }, copy, copied), extra || null);
}

let flash = null;
/** A message for the next page shown (after a change that re-renders or navigates). */
export function setFlash(text) {
  flash = text;
}
/** The pending message as a status element, once. */
export function takeFlash() {
  const text = flash;
  flash = null;
  return text ? notice(text) : null;
}
