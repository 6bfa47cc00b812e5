// Usage and billing: balance and held credits, the webhook secret (reveal, rotate), the account's
// tasks filtered by status and model with pages, and the ledger with pages.
'use strict';

(function () {
  const { api, el, rich, errorLine, errorBox, table, format, copyButton } = window.AIO;
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

  const DELIVERIES = 20;
  const TASK_COLUMNS = ['Time', 'Model', 'Status', 'Charged / price', 'Duration', 'Result or error', 'Webhook'];

  // What a task came to: its images, its error (code and message), or nothing yet.
  function outcome(task) {
    const images = (task.output && task.output.images) || [];
    if (images.length) {
      return images.map((image, i) => el('a', { href: image.url, target: '_blank', rel: 'noopener', text: images.length > 1 ? `image ${i + 1}` : 'image' }));
    }
    if (task.error) return el('span', { class: 'task-error', 'data-error-code': task.error.code }, errorLine(task.error.code, task.error.message));
    return task.status === 'cancelled' ? el('span', { class: 'muted', text: 'cancelled by you' }) : '—';
  }

  function attemptRow(attempt) {
    const answer = attempt.status_code === null || attempt.status_code === undefined ? 'no answer' : 'HTTP ' + attempt.status_code;
    return el('tr', { 'data-attempt': '' },
      el('td', { text: format.time(attempt.attempted_at) }),
      el('td', {}, el('span', { class: 'status', 'data-status': attempt.status_code >= 200 && attempt.status_code < 300 ? 'succeeded' : 'failed', text: answer })),
      el('td', { class: 'num', text: attempt.latency_ms + ' ms' }),
      el('td', {}, attempt.error ? rich(attempt.error) : attempt.response_excerpt ? el('code', { text: attempt.response_excerpt }) : '—'));
  }

  function deliveryBlock(delivery) {
    const next = delivery.next_attempt_at ? ` · next attempt ${format.time(delivery.next_attempt_at)}` : '';
    return el('div', { class: 'delivery', 'data-delivery': delivery.delivery_id },
      el('p', {},
        el('span', { class: 'status', 'data-status': delivery.status, text: delivery.status }), ' to ', el('code', { text: delivery.url }),
        el('br'),
        el('small', { class: 'muted' }, `trigger ${delivery.trigger} · webhook-id `, el('code', { text: delivery.webhook_id }), next)),
      table(['Attempt', 'Answer', 'Latency', 'Error or answer'], delivery.attempts.map(attemptRow), 'No attempt yet.'));
  }

  // The task's webhook log, under its row: each delivery with its attempts (GET …/deliveries).
  async function deliveries(task) {
    const page = await api('GET', `/api/v1/tasks/${encodeURIComponent(task.task_id)}/deliveries?limit=${DELIVERIES}`);
    const blocks = page.data.map(deliveryBlock);
    if (!blocks.length) blocks.push(el('p', { class: 'muted', text: 'No delivery yet: the webhook is sent when the task ends.' }));
    if (page.next_cursor) blocks.push(el('p', { class: 'muted', text: `The first ${DELIVERIES} deliveries are shown.` }));
    return blocks;
  }

  function taskRow(task) {
    const row = el('tr', { 'data-task': task.task_id });
    let details = null;
    const toggle = el('button', { type: 'button', class: 'ghost small', 'data-deliveries': task.task_id, 'aria-expanded': 'false', text: 'Deliveries' });
    toggle.addEventListener('click', async () => {
      if (details) {
        details.remove();
        details = null;
        toggle.setAttribute('aria-expanded', 'false');
        return;
      }
      const cell = el('td', { colspan: String(TASK_COLUMNS.length) }, el('p', { class: 'muted', text: 'Loading…' }));
      details = el('tr', { class: 'details', 'data-deliveries-of': task.task_id }, cell);
      row.after(details);
      toggle.setAttribute('aria-expanded', 'true');
      try {
        cell.replaceChildren(...await deliveries(task));
      } catch (error) {
        cell.replaceChildren(errorBox(error));
      }
    });
    row.append(
      el('td', { text: format.time(task.created_at) }),
      el('td', {}, el('code', { text: task.sub_model })),
      el('td', {}, el('span', { class: 'status', 'data-status': task.status, text: task.queue_position ? `${task.status} #${task.queue_position}` : task.status })),
      el('td', { class: 'num', text: `${task.credits.charged} / ${task.credits.price}` }),
      el('td', { text: format.duration(task.created_at, task.completed_at) }),
      el('td', { class: 'outcome' }, outcome(task)),
      el('td', {}, task.callback_url ? toggle : el('span', { class: 'muted', title: 'No callback_url', text: 'none' })));
    return row;
  }

  // A capture spends what the hold took at create: its amount is 0, the credits it spent are `captured`.
  function entryRow(entry) {
    const kind = entry.kind === 'capture' && entry.captured !== undefined
      ? [el('span', { text: 'capture' }), el('br'), el('small', { class: 'muted', text: `captured ${entry.captured} (held at create)` })]
      : entry.kind;
    return el('tr', { 'data-kind': entry.kind },
      el('td', { text: format.time(entry.created_at) }),
      el('td', {}, kind),
      el('td', { class: 'num', text: (entry.amount > 0 ? '+' : '') + entry.amount }),
      el('td', { class: 'num', text: String(entry.balance_after) }),
      el('td', {}, entry.task_id ? el('code', { text: entry.task_id }) : (entry.reason || '—')));
  }

  const LEGEND = [
    ['hold', 'a task was created: its price leaves the balance and is held until it ends.'],
    ['capture', 'the task succeeded: the held credits are spent. Amount 0, because the hold already took them.'],
    ['release', 'the task failed or was cancelled: the held credits come back.'],
    ['grant / adjust', 'credits added or taken by an operator, a payment or a redeemed code.'],
  ];

  function legend() {
    return el('dl', { class: 'legend', id: 'ledger-legend' },
      LEGEND.flatMap(([kind, text]) => [el('dt', {}, el('code', { text: kind })), el('dd', { text })]));
  }

  // A date input's day as the start of that day, in the browser's time zone, as RFC 3339; `next` the day after.
  function dayStart(value, next) {
    if (!value) return null;
    const [y, m, d] = value.split('-').map(Number);
    const date = new Date(y, m - 1, d + (next ? 1 : 0));
    return isNaN(date) ? null : date.toISOString();
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
    const from = el('input', { id: 'filter-from', type: 'date' });
    const to = el('input', { id: 'filter-to', type: 'date' });
    // The date range (from's day through to's day, local time) and the model apply to every list here.
    const range = (query) => {
      const since = dayStart(from.value, false);
      const until = dayStart(to.value, true);
      if (since) query.set('from', since);
      if (until) query.set('to', until);
      if (model.value) query.set('model', model.value);
      return query;
    };

    const tasks = pager('tasks', TASK_COLUMNS, 'No tasks match.', async (cursor) => {
      const query = range(new URLSearchParams({ limit: String(PAGE) }));
      if (status.value) query.set('status', status.value);
      if (cursor) query.set('cursor', cursor);
      const page = await api('GET', '/api/v1/tasks?' + query);
      return { rows: page.data.map(taskRow), next: page.next_cursor };
    });
    const summary = el('p', { class: 'muted', id: 'usage-summary' });
    const ledger = pager('ledger', ['Time', 'Kind', 'Amount', 'Balance after', 'Task / reason'], 'No ledger entries.', async (cursor) => {
      const query = range(new URLSearchParams({ limit: String(PAGE) }));
      if (cursor) query.set('ledger_cursor', cursor);
      const usage = await api('GET', '/api/v1/usage?' + query);
      const s = usage.summary;
      summary.textContent = `${s.tasks} tasks: ${s.succeeded} succeeded, ${s.failed} failed, ${s.unfinished} unfinished; ${s.credits_charged} credits charged.`;
      return { rows: usage.ledger.data.map(entryRow), next: usage.ledger.next_cursor };
    });
    status.addEventListener('change', () => tasks.reset());
    for (const filter of [model, from, to]) filter.addEventListener('change', () => Promise.all([tasks.reset(), ledger.reset()]));
    await Promise.all([tasks.reset(), ledger.reset()]);

    const balance = (label, value, id) => el('div', { class: 'figure' }, el('span', { class: 'label', text: label }), el('strong', { id, text: value }));
    const field = (id, label, input) => el('div', { class: 'field' }, el('label', { for: id, text: label }), input);
    return el('div', { class: 'page', id: 'page-usage' },
      el('h1', { text: 'Usage & billing' }),
      el('section', { class: 'card' },
        el('div', { class: 'figures' },
          balance('Balance', credits ? String(credits.balance) : '?', 'balance'),
          balance('Held by unfinished tasks', credits ? String(credits.held) : '?', 'held'),
          balance('Price of a credit', credits ? format.usd(credits.usd_per_credit) : '?', 'usd-per-credit'))),
      el('section', { class: 'card' },
        el('h2', { text: 'Filters' }),
        el('div', { class: 'inline-form' },
          field('filter-from', 'From (day)', from),
          field('filter-to', 'To (day, included)', to),
          field('filter-model', 'Model', model))),
      el('section', { class: 'card' },
        el('h2', { text: 'Tasks' }),
        el('div', { class: 'inline-form' }, field('filter-status', 'Status', status)),
        tasks.node),
      el('section', { class: 'card' }, el('h2', { text: 'Ledger' }), summary, ledger.node, legend()),
      webhookSecret());
  });
})();
