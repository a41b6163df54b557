// Create key: the settings form, then the new secret, shown once.

import { api } from './api.js';
import { h, errorBox, secretPanel, mount } from './ui.js';
import { keyFields } from './key-form.js';

/** A create body carries only the fields that were filled in. */
function withoutEmpty(values) {
  const body = {};
  for (const [k, v] of Object.entries(values)) {
    if (v === null) continue;
    body[k] = k === 'budget' ? Object.fromEntries(Object.entries(v).filter(([, x]) => x !== null)) : v;
  }
  return body;
}

export async function createPage(route, ctx) {
  if (!ctx.canWrite) {
    return [h('h1', {}, 'Create key'), h('p', { class: 'notice' }, 'Your role is viewer: you can read everything but not create keys.')];
  }
  const catalog = await api('GET', '/admin/catalog');
  const { parts, values } = keyFields(catalog, null, { withIdentity: true });
  const result = h('div', { 'aria-live': 'polite' });
  const submit = h('button', { type: 'submit' }, 'Create key');
  const form = h('form', {
    class: 'key-form',
    onsubmit: async (e) => {
      e.preventDefault();
      if (!form.reportValidity()) return;
      submit.disabled = true;
      mount(result);
      try {
        const created = await api('POST', '/admin/keys', withoutEmpty(values()));
        form.remove();
        mount(result,
          h('h2', {}, `Key ${created.id} created`),
          secretPanel(created.id, created.secret,
            h('p', {}, h('a', { href: `#/keys/${encodeURIComponent(created.id)}` }, `Open key ${created.id}`))));
        result.querySelector('button').focus();
      } catch (err) {
        mount(result, errorBox(err));
        result.focus();
      } finally {
        submit.disabled = false;
      }
    },
  }, parts, h('div', { class: 'actions' }, submit));
  result.tabIndex = -1;
  return [h('h1', {}, 'Create key'), form, result];
}
