// Keys: the account's API keys (prefix only), create (the key shown once, with a copy button),
// revoke after a confirmation, and each key's limits (allowed models, in flight, daily and monthly
// credit caps; empty is no limit), edited in place.
'use strict';

(function () {
  const { api, el, errorBox, table, format, copyButton } = window.AIO;

  function status(key) {
    if (key.revoked_at) return 'revoked';
    if (key.expires_at && new Date(key.expires_at) <= new Date()) return 'expired';
    return 'active';
  }

  function limitsText(key) {
    const parts = [];
    if (key.allowed_models) parts.push('models: ' + (key.allowed_models.join(', ') || 'none'));
    if (key.max_in_flight !== null && key.max_in_flight !== undefined) parts.push(`${key.max_in_flight} in flight`);
    if (key.daily_credit_cap !== null && key.daily_credit_cap !== undefined) parts.push(`${key.daily_credit_cap}/day`);
    if (key.monthly_credit_cap !== null && key.monthly_credit_cap !== undefined) parts.push(`${key.monthly_credit_cap}/month`);
    return parts.length ? parts.join(' · ') : 'none';
  }

  window.AIO.page('keys', async (params, current) => {
    const listHolder = el('div', {});
    const limitsHolder = el('div', { id: 'key-limits' });
    const message = el('div', { id: 'keys-message' });

    // The limits form of one key: each field empty means no limit.
    const editLimits = (key) => {
      const value = (v) => (v === null || v === undefined ? '' : String(v));
      const field = (id, label, v, hint) => {
        const input = el('input', { id, type: 'text', value: value(v), placeholder: hint });
        return [input, el('div', { class: 'field' }, el('label', { for: id, text: label }), input)];
      };
      const [models, modelsField] = field('limit-models', 'Allowed models (comma-separated)', key.allowed_models ? key.allowed_models.join(', ') : '', 'every model');
      const [inFlight, inFlightField] = field('limit-in-flight', 'Max in flight', key.max_in_flight, 'no limit');
      const [daily, dailyField] = field('limit-daily', 'Daily credit cap (UTC day)', key.daily_credit_cap, 'no cap');
      const [monthly, monthlyField] = field('limit-monthly', 'Monthly credit cap (UTC month)', key.monthly_credit_cap, 'no cap');
      const form = el('form', { id: 'limits-form', class: 'inline-form' },
        modelsField, inFlightField, dailyField, monthlyField,
        el('button', { type: 'submit', text: 'Save limits' }));
      const number = (input) => (input.value.trim() === '' ? null : Number(input.value.trim()));
      form.addEventListener('submit', async (event) => {
        event.preventDefault();
        const list = models.value.split(',').map((id) => id.trim()).filter((id) => id);
        const request = {
          allowed_models: list.length ? list : null,
          max_in_flight: number(inFlight),
          daily_credit_cap: number(daily),
          monthly_credit_cap: number(monthly),
        };
        try {
          await api('PATCH', '/api/v1/keys/' + encodeURIComponent(key.key_id), request);
          message.replaceChildren(el('p', { class: 'ok', text: `Limits of ${key.prefix}… saved.` }));
          limitsHolder.replaceChildren();
          await load();
        } catch (error) {
          message.replaceChildren(errorBox(error));
        }
      });
      limitsHolder.replaceChildren(el('h3', { text: `Limits of ${key.prefix}…` }), form);
    };

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
        const limits = state === 'active'
          ? el('button', { type: 'button', class: 'small', 'data-limits': key.key_id, text: 'Limits' })
          : null;
        if (limits) limits.addEventListener('click', () => editLimits(key));
        return el('tr', { 'data-key': key.key_id, 'data-prefix': key.prefix },
          el('td', {}, el('code', { text: key.prefix + '…' })),
          el('td', { text: key.name || '—' }),
          el('td', { text: format.time(key.created_at) }),
          el('td', { text: format.time(key.last_used_at) }),
          el('td', { text: key.expires_at ? format.time(key.expires_at) : 'never' }),
          el('td', {}, el('span', { class: 'status', 'data-status': state, text: state })),
          el('td', { text: limitsText(key) }),
          el('td', {}, limits, ' ', revoke));
      });
      if (current()) listHolder.replaceChildren(table(['Prefix', 'Name', 'Created', 'Last used', 'Expires', 'Status', 'Limits', ''], rows, 'No keys yet.'));
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
      el('section', { class: 'card' }, el('h2', { text: 'Your keys' }), listHolder, limitsHolder));
  });
})();
