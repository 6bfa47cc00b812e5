// Usage and billing: balance and held credits, the webhook secret (reveal, rotate), the account's
// tasks filtered by status and model with pages, and the ledger with pages.
'use strict';

(function () {
  const { api, el, errorBox, table, format, copyButton } = window.AIO;
  const PAGE = 10;

  // A list with Older/Newer buttons over cursor pages: `fetchPage(cursor)` answers {rows, next}.
  function pager(id, headers, empty, fetchPage) {
    const holder = el('div', { id });
    const cursors = [null];
    const older = el('button', { type: 'button', class: 'ghost small', 'data-page': 'older', text: 'Older →' });
    const newer = el('button', { type: 'button', class: 'ghost small', 'data-page': 'newer', text: '← Newer' });
    const content = el('div', {});
    let next = null;
    const show = async () => {
      try {
        const page = await fetchPage(cursors[cursors.length - 1]);
        next = page.next;
        content.replaceChildren(table(headers, page.rows, empty));
        older.disabled = !next;
        newer.disabled = cursors.length === 1;
      } catch (error) {
        content.replaceChildren(errorBox(error));
      }
    };
    older.addEventListener('click', () => { if (next) { cursors.push(next); show(); } });
    newer.addEventListener('click', () => { if (cursors.length > 1) { cursors.pop(); show(); } });
    holder.append(content, el('div', { class: 'pager' }, newer, older));
    return {
      node: holder,
      reset() { cursors.length = 1; return show(); },
    };
  }

  function taskRow(task) {
    const images = (task.output && task.output.images) || [];
    return el('tr', { 'data-task': task.task_id },
      el('td', { text: format.time(task.created_at) }),
      el('td', {}, el('code', { text: task.sub_model })),
      el('td', {}, el('span', { class: 'status', 'data-status': task.status, text: task.queue_position ? `${task.status} #${task.queue_position}` : task.status })),
      el('td', { class: 'num', text: `${task.credits.charged} / ${task.credits.price}` }),
      el('td', { text: format.duration(task.created_at, task.completed_at) }),
      el('td', {}, images.length ? images.map((image, i) => el('a', { href: image.url, target: '_blank', rel: 'noopener', text: images.length > 1 ? `image ${i + 1}` : 'image' })) : '—'));
  }

  function entryRow(entry) {
    return el('tr', {},
      el('td', { text: format.time(entry.created_at) }),
      el('td', { text: entry.kind }),
      el('td', { class: 'num', text: (entry.amount > 0 ? '+' : '') + entry.amount }),
      el('td', { class: 'num', text: String(entry.balance_after) }),
      el('td', {}, entry.task_id ? el('code', { text: entry.task_id }) : (entry.reason || '—')));
  }

  function webhookSecret() {
    const value = el('code', { id: 'webhook-secret', class: 'secret', text: 'whsec_••••••••' });
    const message = el('div', {});
    let secret = null;
    const reveal = el('button', { type: 'button', class: 'ghost small', id: 'reveal-secret', text: 'Reveal' });
    const rotate = el('button', { type: 'button', class: 'danger small', id: 'rotate-secret', text: 'Rotate' });
    const copy = copyButton('Copy', () => secret || '');
    copy.hidden = true;
    const show = (answer) => {
      secret = answer.secret;
      value.textContent = secret;
      copy.hidden = false;
    };
    reveal.addEventListener('click', async () => {
      try { show(await api('GET', '/api/v1/webhooks/secret')); } catch (error) { message.replaceChildren(errorBox(error)); }
    });
    rotate.addEventListener('click', async () => {
      if (!window.confirm('Rotate the webhook secret? The current one keeps signing next to the new one for the overlap period.')) return;
      try {
        const answer = await api('POST', '/api/v1/webhooks/secret/rotate');
        show(answer);
        message.replaceChildren(el('p', { class: 'ok', text: `Rotated. The previous secret also signs for ${Math.round(answer.overlap_secs / 3600)} h.` }));
      } catch (error) {
        message.replaceChildren(errorBox(error));
      }
    });
    return el('section', { class: 'card' },
      el('h2', { text: 'Webhook secret' }),
      el('p', { class: 'muted', text: 'Verifies the webhook-signature header of the webhooks sent to your callback_url.' }),
      el('p', {}, value, ' ', reveal, ' ', copy, ' ', rotate),
      message);
  }

  window.AIO.page('usage', async () => {
    const [credits, catalog] = await Promise.all([window.AIO.refreshBalance(), window.AIO.models()]);
    const status = el('select', { id: 'filter-status' },
      ['', 'queued', 'pending', 'running', 'succeeded', 'failed', 'cancelled'].map((s) => el('option', { value: s, text: s || 'any status' })));
    const modelIds = catalog.data.flatMap((m) => [m.id, ...m.sub_models.filter((s) => s !== m.id)]);
    const model = el('select', { id: 'filter-model' },
      el('option', { value: '', text: 'any model' }), modelIds.map((id) => el('option', { value: id, text: id })));

    const tasks = pager('tasks', ['Time', 'Model', 'Status', 'Credits (charged / price)', 'Duration', 'Result'], 'No tasks match.', async (cursor) => {
      const query = new URLSearchParams({ limit: String(PAGE) });
      if (status.value) query.set('status', status.value);
      if (model.value) query.set('model', model.value);
      if (cursor) query.set('cursor', cursor);
      const page = await api('GET', '/api/v1/tasks?' + query);
      return { rows: page.data.map(taskRow), next: page.next_cursor };
    });
    const summary = el('p', { class: 'muted', id: 'usage-summary' });
    const ledger = pager('ledger', ['Time', 'Kind', 'Amount', 'Balance after', 'Task / reason'], 'No ledger entries.', async (cursor) => {
      const query = new URLSearchParams({ limit: String(PAGE) });
      if (cursor) query.set('ledger_cursor', cursor);
      const usage = await api('GET', '/api/v1/usage?' + query);
      const s = usage.summary;
      summary.textContent = `${s.tasks} tasks: ${s.succeeded} succeeded, ${s.failed} failed, ${s.unfinished} unfinished; ${s.credits_charged} credits charged.`;
      return { rows: usage.ledger.data.map(entryRow), next: usage.ledger.next_cursor };
    });
    status.addEventListener('change', () => tasks.reset());
    model.addEventListener('change', () => tasks.reset());
    await Promise.all([tasks.reset(), ledger.reset()]);

    const balance = (label, value, id) => el('div', { class: 'figure' }, el('span', { class: 'label', text: label }), el('strong', { id, text: value }));
    return el('div', { class: 'page', id: 'page-usage' },
      el('h1', { text: 'Usage & billing' }),
      el('section', { class: 'card' },
        el('div', { class: 'figures' },
          balance('Balance', credits ? String(credits.balance) : '?', 'balance'),
          balance('Held by unfinished tasks', credits ? String(credits.held) : '?', 'held'),
          balance('Price of a credit', credits ? format.usd(credits.usd_per_credit) : '?', 'usd-per-credit'))),
      el('section', { class: 'card' },
        el('h2', { text: 'Tasks' }),
        el('div', { class: 'inline-form' },
          el('div', { class: 'field' }, el('label', { for: 'filter-status', text: 'Status' }), status),
          el('div', { class: 'field' }, el('label', { for: 'filter-model', text: 'Model' }), model)),
        tasks.node),
      el('section', { class: 'card' }, el('h2', { text: 'Ledger' }), summary, ledger.node),
      webhookSecret());
  });
})();
