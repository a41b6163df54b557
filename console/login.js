// The login page: exchanges an admin token for a session cookie, then opens the console.

const form = document.getElementById('login');
const input = document.getElementById('token');
const error = document.getElementById('login-error');

form.addEventListener('submit', async (event) => {
  event.preventDefault();
  error.textContent = '';
  const token = input.value.trim();
  if (!token) {
    error.textContent = 'Enter an admin token.';
    if (window.location.hash === '#ended') {
  error.textContent = 'Your session has ended. Sign in again.';
}
input.focus();
    return;
  }
  const button = form.querySelector('button');
  button.disabled = true;
  try {
    const res = await fetch('/admin/session', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'application/json' },
      credentials: 'same-origin',
      cache: 'no-store',
      body: JSON.stringify({ token }),
    });
    if (res.ok) {
      input.value = '';
      window.location.replace('/ui/#/overview');
      return;
    }
    const body = await res.json().catch(() => null);
    if (res.status === 429) {
      const after = res.headers.get('retry-after');
      error.textContent = `Too many wrong tokens from this address. Try again in ${after || 'a few'} seconds.`;
    } else if (res.status === 401) {
      error.textContent = 'That token is not right.';
    } else {
      error.textContent = (body && body.error && body.error.message) || `The gateway answered ${res.status}.`;
    }
  } catch {
    error.textContent = 'The gateway could not be reached.';
  } finally {
    button.disabled = false;
  }
  input.select();
});

if (window.location.hash === '#ended') {
  error.textContent = 'Your session has ended. Sign in again.';
}
input.focus();
