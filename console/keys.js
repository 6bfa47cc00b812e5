// Keys: the account's API keys (prefix only), create (the key shown once, with a copy button),
// revoke after a confirmation.
'use strict';

(function () {
  const { api, el, errorBox, table, format, copyButton } = window.AIO;

  function status(key) {
    if (key.revoked_at) return 'revoked';
    if (key.expires_at && new Date(key.expires_at) <= new Date()) return 'expired';
    return 'active';
  }

  window.AIO.page('keys', async (params, current) => {
    const listHolder = el('div', {});
    const message = el('div', { id: 'keys-message' });

    const load = async () => {
      const keys = (await api('GET', '/api/v1/keys')).data;
      const rows = keys.map((key) => {
        const state = status(key);
        const revoke = state === 'active'
          ? el('button', { type: 'button', class: 'danger small', 'data-revoke': key.key_id, text: 'Revoke' })
          : null;
        if (revoke) {
          revoke.addEventListener('click', async () => {
            if (!window.confirm(`Revoke the key ${key.prefix}…${key.name ? ` (${key.name})` : ''}? Requests with it will get 401.`)) return;
            try {
              await api('DELETE', '/api/v1/keys/' + encodeURIComponent(key.key_id));
              message.replaceChildren(el('p', { class: 'ok', text: `Key ${key.prefix}… revoked.` }));
              await load();
            } catch (error) {
              message.replaceChildren(errorBox(error));
            }
          });
        }
        return el('tr', { 'data-key': key.key_id, 'data-prefix': key.prefix },
          el('td', {}, el('code', { text: key.prefix + '…' })),
          el('td', { text: key.name || '—' }),
          el('td', { text: format.time(key.created_at) }),
          el('td', { text: format.time(key.last_used_at) }),
          el('td', { text: key.expires_at ? format.time(key.expires_at) : 'never' }),
          el('td', {}, el('span', { class: 'status', 'data-status': state, text: state })),
          el('td', {}, revoke));
      });
      if (current()) listHolder.replaceChildren(table(['Prefix', 'Name', 'Created', 'Last used', 'Expires', 'Status', ''], rows, 'No keys yet.'));
    };

    const name = el('input', { id: 'key-name', type: 'text', maxlength: '100', placeholder: 'e.g. ci' });
    const expires = el('input', { id: 'key-expires', type: 'datetime-local' });
    const create = el('form', { id: 'key-form', class: 'inline-form' },
      el('div', { class: 'field' }, el('label', { for: 'key-name', text: 'Name' }), name),
      el('div', { class: 'field' }, el('label', { for: 'key-expires', text: 'Expires (optional)' }), expires),
      el('button', { type: 'submit', text: 'Create key' }));
    create.addEventListener('submit', async (event) => {
      event.preventDefault();
      const request = {};
      if (name.value.trim()) request.name = name.value.trim();
      if (expires.value) request.expires_at = new Date(expires.value).toISOString();
      try {
        const key = await api('POST', '/api/v1/keys', request);
        const secret = el('code', { id: 'new-key', class: 'secret', text: key.api_key });
        message.replaceChildren(el('div', { class: 'notice' },
          el('p', {}, el('strong', { text: 'Your new key — shown this once.' }), ' Copy it now; only its prefix is kept for listings.'),
          el('p', {}, secret, ' ', copyButton('Copy key', () => key.api_key))));
        name.value = '';
        expires.value = '';
        await load();
      } catch (error) {
        message.replaceChildren(errorBox(error));
      }
    });

    await load();
    return el('div', { class: 'page', id: 'page-keys' },
      el('h1', { text: 'Keys' }),
      el('section', { class: 'card' }, el('h2', { text: 'New key' }), create, message),
      el('section', { class: 'card' }, el('h2', { text: 'Your keys' }), listHolder));
  });
})();
