// The console's shell: checks the session, shows who is signed in, routes the `#/…` part of the
// URL to a page, and logs out. Pages get `ctx` = {session, canWrite} and the <main> to fill.

import { api, loadSession } from './api.js';
import { h, mount, errorBox } from './ui.js';
import { overviewPage } from './page-overview.js';
import { keysPage } from './page-keys.js';
import { createPage } from './page-create.js';
import { keyPage } from './page-key.js';
import { workloadsPage, workloadPage } from './page-workloads.js';

const main = document.getElementById('main');

/** `#/keys/abc?x=1` → {parts: ['keys', 'abc'], params: URLSearchParams}. */
function parseHash() {
  const raw = window.location.hash.replace(/^#\/?/, '');
  const [path, q = ''] = raw.split('?');
  const parts = path.split('/').filter(Boolean).map(decodeURIComponent);
  return { parts, params: new URLSearchParams(q) };
}

function pick({ parts }) {
  const [first, second] = parts;
  if (!first || first === 'overview') return ['overview', overviewPage];
  if (first === 'keys' && !second) return ['keys', keysPage];
  if (first === 'keys' && second === 'new' && parts.length === 2) return ['create', createPage];
  if (first === 'keys' && parts.length === 2) return ['keys', keyPage];
  if (first === 'workloads' && !second) return ['workloads', workloadsPage];
  if (first === 'workloads' && parts.length === 2) return ['workloads', workloadPage];
  return [null, null];
}

let ctx = null;
let renderSeq = 0;

async function render() {
  const route = parseHash();
  const [nav, page] = pick(route);
  for (const a of document.querySelectorAll('[data-nav]')) {
    if (a.dataset.nav === nav) a.setAttribute('aria-current', 'page');
    else a.removeAttribute('aria-current');
  }
  const seq = ++renderSeq;
  // A control that re-renders its own page (a sort header, a pager) keeps the focus.
  const focusKey = document.activeElement && document.activeElement.dataset ? document.activeElement.dataset.focus : undefined;
  if (!page) {
    document.title = 'Not found · keygate console';
    mount(main, h('h1', {}, 'Not found'), h('p', {}, 'There is no such page. ', h('a', { href: '#/overview' }, 'Go to the overview'), '.'));
    return;
  }
  mount(main, h('p', { class: 'loading', role: 'status' }, 'Loading…'));
  try {
    const content = await page(route, ctx);
    if (seq !== renderSeq) return;
    mount(main, content);
    const heading = main.querySelector('h1');
    document.title = `${heading ? heading.textContent : 'keygate'} · keygate console`;
  } catch (err) {
    if (seq !== renderSeq) return;
    mount(main, h('h1', {}, 'Something went wrong'), errorBox(err));
  }
  const again = focusKey && main.querySelector(`[data-focus="${CSS.escape(focusKey)}"]`);
  if (again) again.focus();
  // Otherwise focus moves to the new content, so keyboard and screen-reader users land on it.
  else if (!main.contains(document.activeElement)) main.focus({ preventScroll: true });
}

/** Re-renders the current page in place (after a change made on it). */
function refresh() {
  return render();
}

async function start() {
  const session = await loadSession();
  if (!session) {
    window.location.replace('/ui/login');
    return;
  }
  ctx = { session, canWrite: session.role === 'admin', refresh };
  for (const el of document.querySelectorAll('[data-write]')) {
    if (!ctx.canWrite) el.closest('li').remove();
  }
  document.getElementById('who').textContent = `Signed in as ${session.name} (${session.role})`;
  document.getElementById('logout').addEventListener('click', async () => {
    try {
      await api('DELETE', '/admin/session');
    } finally {
      window.location.replace('/ui/login');
    }
  });
  window.addEventListener('hashchange', render);
  await render();
}

start().catch((err) => mount(main, h('h1', {}, 'The console could not start'), errorBox(err)));
