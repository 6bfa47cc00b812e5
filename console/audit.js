// Audit (role admin only): the audit log, newest first, filtered by action, account, actor and time,
// page by page; each entry's actor, request id and before → after.
'use strict';

(function () {
  const { api, el, errorBox, table, format } = window.AIO;
  const PAGE = 20;
  const ACTIONS = ['account.create', 'credits.grant', 'credits.adjust', 'credits.top_up', 'credits.refund',
    'credits.redeem', 'key.create', 'key.revoke', 'key.limits', 'account.limits', 'webhook_secret.rotate', 'session.sign_in'];

  function field(id, label, input) {
    return el('div', { class: 'field' }, el('label', { for: id, text: label }), input);
  }

  function actor(a) {
    const who = a.id ? `${a.kind} ${a.id}` : a.kind;
    return a.key_prefix ? `${who} (${a.key_prefix}…)` : who;
  }

  function change(entry) {
    const show = (value) => (value === null || value === undefined ? '—' : JSON.stringify(value));
    return el('code', { class: 'change', text: `${show(entry.before)} → ${show(entry.after)}` });
  }

  window.AIO.page('audit', async (params, current) => {
    const session = window.AIO.state.session;
    if (!session || session.role !== 'admin') {
      return el('div', { class: 'page', id: 'page-audit' },
        el('h1', { text: 'Audit' }),
        el('p', { class: 'error', role: 'alert', 'data-error-code': 'forbidden' }, el('code', { text: 'forbidden' }), ' This page is for admin accounts; you are signed in as a user.'));
    }
    const action = el('select', { id: 'audit-action' }, el('option', { value: '', text: 'Any action' }), ACTIONS.map((a) => el('option', { value: a, text: a })));
    const account = el('input', { id: 'audit-account', type: 'number', min: '1', step: '1', placeholder: 'any' });
    const who = el('input', { id: 'audit-actor', type: 'text', placeholder: 'admin, cli, key:key_…' });
    const since = el('input', { id: 'audit-since', type: 'datetime-local' });
    const until = el('input', { id: 'audit-until', type: 'datetime-local' });
    const filters = el('form', { id: 'audit-filters', class: 'inline-form' },
      field('audit-action', 'Action', action), field('audit-account', 'Account', account), field('audit-actor', 'Actor', who),
      field('audit-since', 'From', since), field('audit-until', 'Until', until),
      el('button', { type: 'submit', text: 'Apply' }));
    const message = el('div', { id: 'audit-message' });
    const holder = el('div', { id: 'audit-entries' });
    const more = el('button', { type: 'button', class: 'ghost small', id: 'audit-next', text: 'Next →' });
    const back = el('button', { type: 'button', class: 'ghost small', id: 'audit-previous', text: '← Previous' });
    let cursors = [null];
    let next = null;
    const load = async () => {
      const query = new URLSearchParams({ limit: String(PAGE) });
      if (action.value) query.set('action', action.value);
      if (account.value) query.set('account_id', account.value);
      if (who.value.trim()) query.set('actor', who.value.trim());
      if (since.value) query.set('since', new Date(since.value).toISOString());
      if (until.value) query.set('until', new Date(until.value).toISOString());
      const cursor = cursors[cursors.length - 1];
      if (cursor) query.set('cursor', cursor);
      const page = await api('GET', '/api/v1/admin/audit?' + query);
      next = page.next_cursor;
      more.disabled = !next;
      back.disabled = cursors.length === 1;
      message.replaceChildren();
      const rows = page.data.map((e) => el('tr', { 'data-entry': e.id, 'data-action': e.action },
        el('td', { text: format.time(e.created_at) }),
        el('td', {}, el('code', { text: e.action })),
        el('td', { class: 'actor', text: actor(e.actor) }),
        el('td', { class: 'num', text: e.target.account_id === null ? '—' : String(e.target.account_id) }),
        el('td', { text: e.target.id || '—' }),
        el('td', {}, el('code', { text: e.request_id || '—' })),
        el('td', {}, change(e))));
      if (current()) holder.replaceChildren(table(['Time', 'Action', 'Actor', 'Account', 'Key, order or batch', 'Request id', 'Before → after'], rows, 'No entries.'));
    };
    const reload = () => load().catch((error) => { holder.replaceChildren(); message.replaceChildren(errorBox(error)); });
    filters.addEventListener('submit', (event) => { event.preventDefault(); cursors = [null]; reload(); });
    more.addEventListener('click', () => { if (next) { cursors.push(next); reload(); } });
    back.addEventListener('click', () => { if (cursors.length > 1) { cursors.pop(); reload(); } });
    await load();
    return el('div', { class: 'page', id: 'page-audit' },
      el('h1', { text: 'Audit' }),
      el('section', { class: 'card' }, filters, message, holder, el('div', { class: 'pager' }, back, more)));
  });
})();
