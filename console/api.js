// The console's only way to the gateway: the JSON admin API on this origin, with the session
// cookie, and the session's CSRF token on every write.

let csrfToken = '';

/** An answer other than 2xx, with the API's message and, for a refused change, every problem. */
export class ApiError extends Error {
  constructor(status, body) {
    const e = (body && body.error) || {};
    super(e.message || `The gateway answered ${status}.`);
    this.status = status;
    this.code = e.code || '';
    this.problems = Array.isArray(e.problems) ? e.problems : [];
  }
}

/** The signed-in session ({name, role, csrf_token, expires_at}), or null when there is none. */
export async function loadSession() {
  const res = await fetch('/admin/session', { credentials: 'same-origin', cache: 'no-store' });
  if (res.status === 401) return null;
  const body = await res.json().catch(() => null);
  if (!res.ok) throw new ApiError(res.status, body);
  csrfToken = body.csrf_token;
  return body;
}

/** Calls the admin API; a lost session sends the browser back to the login page. */
export async function api(method, path, body) {
  const headers = { Accept: 'application/json' };
  if (method !== 'GET') headers['X-CSRF-Token'] = csrfToken;
  const init = { method, headers, credentials: 'same-origin', cache: 'no-store' };
  if (body !== undefined) {
    headers['Content-Type'] = method === 'PATCH' ? 'application/merge-patch+json' : 'application/json';
    init.body = JSON.stringify(body);
  }
  const res = await fetch(path, init);
  const text = await res.text();
  let parsed = null;
  try {
    parsed = text ? JSON.parse(text) : null;
  } catch {
    parsed = null;
  }
  if (res.status === 401 && path !== '/admin/session') {
    window.location.assign('/ui/login#ended');
    throw new ApiError(401, parsed);
  }
  if (!res.ok) throw new ApiError(res.status, parsed);
  return parsed;
}

/** A query string from an object, skipping empty values. */
export function query(params) {
  const q = new URLSearchParams();
  for (const [k, v] of Object.entries(params)) {
    if (v !== undefined && v !== null && v !== '') q.set(k, String(v));
  }
  const s = q.toString();
  return s ? `?${s}` : '';
}

/** Percent-encodes one path segment (a key id or workload name). */
export const seg = (s) => encodeURIComponent(s);
