// Admin (role admin only): accounts with their balances; grant or adjust credits with a reason;
// create an account.
'use strict';

(function () {
  const { api, el, errorBox, table, format } = window.AIO;
  const PAGE = 20;

  function creditForm(account, onDone) {
    const amount = el('input', { type: 'number', step: '1', placeholder: '+100 or -50', 'aria-label': 'Amount', class: 'amount' });
    const reason = el('input', { type: 'text', maxlength: '500', placeholder: 'Reason', 'aria-label': 'Reason' });
    const form = el('form', { class: 'row-form', 'data-account': account.account_id },
      amount, reason, el('button', { type: 'submit', class: 'small', text: 'Apply' }));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      const value = Number(amount.value);
      try {
        if (!Number.isInteger(value) || value === 0) throw new window.AIO.ApiError(400, 'invalid_request', 'The amount must be a whole number other than 0.');
        const changed = await api('POST', `/api/v1/admin/accounts/${account.account_id}/credits`, { amount: value, reason: reason.value });
        onDone(el('p', { class: 'ok', text: `${changed.account.name}: ${value > 0 ? 'granted' : 'took'} ${Math.abs(value)} credits; balance ${changed.account.balance}.` }));
      } catch (error) {
        onDone(errorBox(error));
      }
    });
    return form;
  }

  window.AIO.page('admin', async (params, current) => {
    const session = window.AIO.state.session;
    if (!session || session.role !== 'admin') {
      return el('div', { class: 'page', id: 'page-admin' },
        el('h1', { text: 'Admin' }),
        el('p', { class: 'error', role: 'alert', 'data-error-code': 'forbidden' }, el('code', { text: 'forbidden' }), ' This page is for admin accounts; you are signed in as a user.'));
    }
    const message = el('div', { id: 'admin-message' });
    const holder = el('div', {});
    const cursors = [null];
    const more = el('button', { type: 'button', class: 'ghost small', text: 'Next →' });
    const back = el('button', { type: 'button', class: 'ghost small', text: '← Previous' });
    let next = null;
    const load = async () => {
      const query = new URLSearchParams({ limit: String(PAGE) });
      const cursor = cursors[cursors.length - 1];
      if (cursor) query.set('cursor', cursor);
      const page = await api('GET', '/api/v1/admin/accounts?' + query);
      next = page.next_cursor;
      more.disabled = !next;
      back.disabled = cursors.length === 1;
      const done = async (note) => {
        message.replaceChildren(note);
        await load().catch((error) => message.append(errorBox(error)));
      };
      const rows = page.data.map((a) => el('tr', { 'data-account': a.account_id },
        el('td', { class: 'num', text: String(a.account_id) }),
        el('td', { text: a.name }),
        el('td', { class: 'num', 'data-balance': a.balance, text: String(a.balance) }),
        el('td', { class: 'num', text: String(a.held) }),
        el('td', { text: format.time(a.created_at) }),
        el('td', {}, creditForm(a, done))));
      if (current()) holder.replaceChildren(table(['Id', 'Name', 'Balance', 'Held', 'Created', 'Grant (+) or adjust (−)'], rows, 'No accounts.'));
    };
    const name = el('input', { id: 'account-name', type: 'text', maxlength: '200', placeholder: 'e.g. acme' });
    const startCredits = el('input', { id: 'account-credits', type: 'number', min: '0', step: '1', value: '0' });
    const create = el('form', { id: 'account-form', class: 'inline-form' },
      el('div', { class: 'field' }, el('label', { for: 'account-name', text: 'Name' }), name),
      el('div', { class: 'field' }, el('label', { for: 'account-credits', text: 'Starting credits' }), startCredits),
      el('button', { type: 'submit', text: 'Create account' }));
    create.addEventListener('submit', async (event) => {
      event.preventDefault();
      try {
        const account = await api('POST', '/api/v1/admin/accounts', { name: name.value, credits: Number(startCredits.value || 0) });
        message.replaceChildren(el('p', { class: 'ok', text: `Account ${account.account_id} (${account.name}) created with ${account.balance} credits. Give it a key with the CLI: aio-gateway keys create --account ${account.account_id}` }));
        name.value = '';
        startCredits.value = '0';
        await load();
      } catch (error) {
        message.replaceChildren(errorBox(error));
      }
    });
    more.addEventListener('click', () => { if (next) { cursors.push(next); load().catch((e) => message.replaceChildren(errorBox(e))); } });
    back.addEventListener('click', () => { if (cursors.length > 1) { cursors.pop(); load().catch((e) => message.replaceChildren(errorBox(e))); } });
    await load();
    return el('div', { class: 'page', id: 'page-admin' },
      el('h1', { text: 'Admin' }),
      el('section', { class: 'card' }, el('h2', { text: 'New account' }), create),
      el('section', { class: 'card' }, el('h2', { text: 'Accounts' }), message, holder, el('div', { class: 'pager' }, back, more)));
  });
})();
