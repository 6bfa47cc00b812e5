// The console's core: the JSON client (cookie session, error envelope), DOM helpers, the hash router,
// sign-in and sign-out. Pages register themselves with AIO.page(name, render).
'use strict';

(function () {
  const pages = {};
  const state = { session: null, models: null, renderId: 0 };

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  // Every call is same-origin with the session cookie; errors carry the envelope's code and message.
  async function api(method, path, body) {
    const init = { method, credentials: 'same-origin', headers: { Accept: 'application/json' } };
    if (body !== undefined) {
      init.headers['Content-Type'] = 'application/json';
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 204) return null;
    let data = null;
    try {
      data = await response.json();
    } catch (_) {
      data = null;
    }
    if (!response.ok) {
      const error = (data && data.error) || {};
      if (response.status === 401 && path !== '/api/v1/session') showSignIn();
      throw new ApiError(response.status, error.code || 'http_' + response.status, error.message || response.statusText);
    }
    return data;
  }

  // el('p', {class: 'x', text: 'hi', on: {click: f}}, child, ...): attributes by name, children (arrays at
  // any depth) appended.
  function el(tag, props, ...children) {
    const node = document.createElement(tag);
    for (const [name, value] of Object.entries(props || {})) {
      if (value === null || value === undefined || value === false) continue;
      if (name === 'text') node.textContent = value;
      else if (name === 'on') for (const [event, handler] of Object.entries(value)) node.addEventListener(event, handler);
      else if (name === 'class') node.className = value;
      else node.setAttribute(name, value === true ? '' : value);
    }
    for (const child of children.flat(Infinity)) {
      if (child === null || child === undefined || child === false) continue;
      node.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return node;
  }

  // Help and error texts mark names with backticks (`prompt`): each pair becomes a <code> span, built
  // as DOM nodes (text nodes, never HTML), and a stray backtick is dropped. The one place that reads them.
  function rich(text) {
    const parts = String(text ?? '').split('`');
    // An odd number of backticks leaves the last one unpaired: its text stays plain.
    const paired = parts.length % 2 === 1 ? parts.length : parts.length - 1;
    const nodes = [];
    parts.forEach((part, i) => {
      if (!part) return;
      if (i % 2 === 1 && i < paired) nodes.push(el('code', { text: part }));
      else nodes.push(document.createTextNode(part));
    });
    return nodes;
  }

  // A task's or request's error: its code, then its message.
  function errorLine(code, message) {
    return [el('code', { class: 'error-code', text: code }), ' ', ...rich(message)];
  }

  function errorBox(error) {
    const code = error instanceof ApiError ? error.code : 'network_error';
    return el('p', { class: 'error', role: 'alert', 'data-error-code': code }, errorLine(code, error.message));
  }

  // A table in a box that scrolls sideways; on phones its rows stack, each cell labelled with its
  // column's header (`data-label`, shown by console.css).
  function table(headers, rows, empty) {
    if (!rows.length) return el('p', { class: 'muted', text: empty || 'Nothing yet.' });
    const labels = headers.map((h) => (h instanceof Node ? h.textContent : h).replace(/[▲▼↕]/g, '').trim());
    for (const row of rows) {
      [...row.children].forEach((cell, i) => {
        if (labels[i] && !cell.hasAttribute('colspan')) cell.dataset.label = labels[i];
      });
    }
    return el('div', { class: 'table-wrap' },
      el('table', {},
        el('thead', {}, el('tr', {}, headers.map((h) => (h instanceof Node ? el('th', {}, h) : el('th', { text: h }))))),
        el('tbody', {}, rows)));
  }

  const format = {
    time(iso) {
      if (!iso) return '—';
      const date = new Date(iso);
      return isNaN(date) ? iso : date.toLocaleString();
    },
    credits(n) {
      return Number(n).toLocaleString() + ' credits';
    },
    // Dollars with 2 decimals ($0.04, $0.10, $1.20); a sub-cent amount keeps its digits ($0.005).
    usd(n) {
      const value = Number(n);
      if (!Number.isFinite(value)) return '—';
      const sign = value < 0 ? '-' : '';
      const abs = Math.abs(value);
      const cents = abs * 100;
      const text = Math.abs(cents - Math.round(cents)) < 1e-6 ? abs.toFixed(2) : abs.toFixed(6).replace(/0+$/, '');
      return sign + '$' + text;
    },
    duration(fromIso, toIso) {
      if (!fromIso || !toIso) return '—';
      const ms = new Date(toIso) - new Date(fromIso);
      return ms < 1000 ? ms + ' ms' : (ms / 1000).toFixed(1) + ' s';
    },
  };

  // Copies text with the Clipboard API where the page may, else through a selected text area.
  async function copy(text) {
    try {
      await navigator.clipboard.writeText(text);
      return;
    } catch (_) {
      const area = el('textarea', { class: 'offscreen', readonly: true });
      area.value = text;
      document.body.append(area);
      area.select();
      document.execCommand('copy');
      area.remove();
    }
  }

  function copyButton(label, textOf) {
    const button = el('button', { type: 'button', class: 'ghost small', text: label });
    button.addEventListener('click', async () => {
      await copy(textOf());
      button.textContent = 'Copied';
      setTimeout(() => { button.textContent = label; }, 1500);
    });
    return button;
  }

  async function models() {
    if (!state.models) state.models = await api('GET', '/api/v1/models');
    return state.models;
  }

  async function refreshBalance() {
    try {
      const credits = await api('GET', '/api/v1/billing/credits');
      document.getElementById('who-balance').textContent = format.credits(credits.balance);
      return credits;
    } catch (_) {
      return null;
    }
  }

  function page(name, render) {
    pages[name] = render;
  }

  // A page is named by the hash (`#/usage?…`); a model's page also by its path, `/console/models/{id}`
  // (linkable), which a hash names only as `#/model?id=…`.
  function parseHash() {
    const hash = location.hash.replace(/^#\/?/, '');
    const [name, query] = hash.split('?');
    const path = location.pathname.match(/^\/console\/models\/([^/]+)$/);
    if (!hash && path) return { name: 'model', params: new URLSearchParams({ id: decodeURIComponent(path[1]) }) };
    // A hash link followed from a model's path: the path is dropped, as on every other page.
    if (hash && path) history.replaceState(null, '', '/console#/' + hash);
    return { name: name || 'models', params: new URLSearchParams(query || '') };
  }

  // Renders the page of the hash; a page still loading when the user moves on is dropped (`current`).
  async function route() {
    if (!state.session) return;
    const { name, params } = parseHash();
    const render = pages[name] || pages.models;
    const id = ++state.renderId;
    const view = document.getElementById('view');
    document.querySelectorAll('#nav a').forEach((a) => a.classList.toggle('active', a.dataset.page === (name === 'model' ? 'models' : name)));
    view.replaceChildren(el('p', { class: 'muted', text: 'Loading…' }));
    const current = () => id === state.renderId;
    try {
      const content = await render(params, current);
      if (current()) view.replaceChildren(content);
    } catch (error) {
      if (current()) view.replaceChildren(errorBox(error));
    }
  }

  function showSignIn() {
    state.session = null;
    state.renderId++;
    document.getElementById('nav').hidden = true;
    document.getElementById('who').hidden = true;
    document.getElementById('view').replaceChildren();
    document.getElementById('sign-in').hidden = false;
    document.getElementById('sign-in-key').focus();
  }

  function signedIn(session) {
    state.session = session;
    document.getElementById('sign-in').hidden = true;
    document.getElementById('nav').hidden = false;
    document.getElementById('who').hidden = false;
    document.getElementById('nav-admin').hidden = session.role !== 'admin';
    document.getElementById('nav-audit').hidden = session.role !== 'admin';
    document.getElementById('who-name').textContent = session.name + (session.role === 'admin' ? ' (admin)' : '');
    refreshBalance();
    route();
  }

  async function signIn(event) {
    event.preventDefault();
    const input = document.getElementById('sign-in-key');
    const message = document.getElementById('sign-in-error');
    message.hidden = true;
    try {
      const session = await api('POST', '/api/v1/session', { api_key: input.value.trim() });
      input.value = '';
      signedIn(session);
    } catch (error) {
      message.replaceChildren(...errorLine(error.code || 'error', error.message));
      message.hidden = false;
    }
  }

  async function signOut() {
    try {
      await api('DELETE', '/api/v1/session');
    } finally {
      state.models = null;
      showSignIn();
    }
  }

  async function start() {
    document.getElementById('sign-in-form').addEventListener('submit', signIn);
    document.getElementById('sign-out').addEventListener('click', signOut);
    window.addEventListener('hashchange', route);
    try {
      signedIn(await api('GET', '/api/v1/session'));
    } catch (_) {
      showSignIn();
    }
  }

  window.AIO = { api, ApiError, el, rich, errorLine, errorBox, table, format, copyButton, models, refreshBalance, page, state };
  document.addEventListener('DOMContentLoaded', start);
})();
