// Billing: buy a package of credits (the Buy button opens Stripe Checkout), the account's orders,
// redeem a code; admins also see every account's orders and make batches of redemption codes.
'use strict';

(function () {
  const { api, el, errorBox, table, format, copyButton, refreshBalance } = window.AIO;

  function money(amount, currency) {
    try {
      return new Intl.NumberFormat(undefined, { style: 'currency', currency: currency.toUpperCase() }).format(amount / 100);
    } catch (_) {
      return `${(amount / 100).toFixed(2)} ${currency.toUpperCase()}`;
    }
  }

  function orderRow(order, withAccount) {
    return el('tr', { 'data-order': order.order_id },
      el('td', { text: format.time(order.created_at) }),
      withAccount ? el('td', { class: 'num', text: String(order.account_id) }) : null,
      el('td', {}, el('code', { text: order.order_id })),
      el('td', { text: order.package_id }),
      el('td', { class: 'num', text: String(order.credits) }),
      el('td', { class: 'num', text: money(order.amount, order.currency) }),
      el('td', {}, el('span', { class: 'status', 'data-status': order.status, text: order.status })),
      el('td', { class: 'num', text: order.owed_credits ? `${order.reversed_credits} (owed ${order.owed_credits})` : String(order.reversed_credits) }));
  }

  async function ordersTable(id, path, withAccount) {
    const page = await api('GET', path + '?limit=50');
    const headers = ['Created'].concat(withAccount ? ['Account'] : [], ['Order', 'Package', 'Credits', 'Price', 'Status', 'Taken back']);
    return el('div', { id }, table(headers, page.data.map((o) => orderRow(o, withAccount)), 'No orders yet.'));
  }

  function packagesCard(packages, message) {
    const rows = packages.map((p) => {
      const buy = el('button', { type: 'button', 'data-buy': p.id, text: 'Buy' });
      buy.addEventListener('click', async () => {
        buy.disabled = true;
        try {
          const order = await api('POST', '/api/v1/billing/orders', { package_id: p.id });
          location.assign(order.checkout_url);
        } catch (error) {
          message.replaceChildren(errorBox(error));
          buy.disabled = false;
        }
      });
      return el('tr', { 'data-package': p.id },
        el('td', { text: p.label }),
        el('td', { class: 'num', text: format.credits(p.credits) }),
        el('td', { class: 'num', text: money(p.amount, p.currency) }),
        el('td', {}, buy));
    });
    return el('section', { class: 'card', id: 'packages' },
      el('h2', { text: 'Buy credits' }),
      message,
      table(['Package', 'Credits', 'Price', ''], rows, 'No packages are on sale on this gateway.'));
  }

  function redeemCard(onRedeemed) {
    const input = el('input', { id: 'redeem-code', type: 'text', maxlength: '64', placeholder: 'AIO-XXXX-XXXX-XXXX-XXXX-XXXX', spellcheck: 'false', autocomplete: 'off' });
    const message = el('div', { id: 'redeem-message' });
    const form = el('form', { id: 'redeem-form', class: 'inline-form' },
      el('div', { class: 'field' }, el('label', { for: 'redeem-code', text: 'Code' }), input),
      el('button', { type: 'submit', text: 'Redeem' }));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      try {
        const redeemed = await api('POST', '/api/v1/billing/redeem', { code: input.value });
        input.value = '';
        message.replaceChildren(el('p', { class: 'ok', text: `Redeemed ${redeemed.credits} credits; balance ${redeemed.balance}.` }));
        await onRedeemed();
      } catch (error) {
        message.replaceChildren(errorBox(error));
      }
    });
    return el('section', { class: 'card' }, el('h2', { text: 'Redeem a code' }), form, message);
  }

  function codesCard() {
    const credits = el('input', { id: 'codes-credits', type: 'number', min: '1', step: '1', value: '500' });
    const count = el('input', { id: 'codes-count', type: 'number', min: '1', max: '1000', step: '1', value: '10' });
    const expires = el('input', { id: 'codes-expires', type: 'date' });
    const message = el('div', { id: 'codes-message' });
    const form = el('form', { id: 'codes-form', class: 'inline-form' },
      el('div', { class: 'field' }, el('label', { for: 'codes-credits', text: 'Credits each' }), credits),
      el('div', { class: 'field' }, el('label', { for: 'codes-count', text: 'How many' }), count),
      el('div', { class: 'field' }, el('label', { for: 'codes-expires', text: 'Expires (optional)' }), expires),
      el('button', { type: 'submit', text: 'Make codes' }));
    form.addEventListener('submit', async (event) => {
      event.preventDefault();
      try {
        const body = { credits: Number(credits.value), count: Number(count.value) };
        if (expires.value) body.expires_at = new Date(expires.value + 'T23:59:59Z').toISOString();
        const batch = await api('POST', '/api/v1/admin/redemption-codes', body);
        const text = batch.codes.join('\n');
        message.replaceChildren(
          el('p', { class: 'notice', text: `Batch ${batch.batch_id}: ${batch.codes.length} codes of ${batch.credits} credits. They are shown only now.` }),
          el('pre', { id: 'codes-list' }, el('code', { text })),
          copyButton('Copy codes', () => text));
      } catch (error) {
        message.replaceChildren(errorBox(error));
      }
    });
    return el('section', { class: 'card' }, el('h2', { text: 'Redemption codes' }), form, message);
  }

  window.AIO.page('billing', async (params) => {
    const session = window.AIO.state.session;
    const message = el('div', { id: 'billing-message' });
    const result = params.get('result');
    if (result === 'paid') {
      message.append(el('p', { class: 'ok', text: 'Payment received. The credits are added as soon as Stripe confirms it (usually within seconds).' }));
    } else if (result === 'cancelled') {
      message.append(el('p', { class: 'muted', text: 'Checkout cancelled: nothing was charged.' }));
    }
    const [packages, credits] = await Promise.all([api('GET', '/api/v1/billing/packages'), refreshBalance()]);
    const balance = el('strong', { id: 'billing-balance', text: credits ? String(credits.balance) : '—' });
    const orders = el('section', { class: 'card' }, el('h2', { text: 'Your orders' }), await ordersTable('orders', '/api/v1/billing/orders', false));
    const reload = async () => {
      const now = await refreshBalance();
      if (now) balance.textContent = String(now.balance);
      orders.replaceChildren(el('h2', { text: 'Your orders' }), await ordersTable('orders', '/api/v1/billing/orders', false));
    };
    const parts = [
      el('h1', { text: 'Billing' }),
      el('section', { class: 'card' }, el('div', { class: 'figures' },
        el('div', { class: 'figure' }, el('span', { class: 'label', text: 'Balance (credits)' }), balance))),
      packagesCard(packages.data, message),
      redeemCard(reload),
      orders,
    ];
    if (session && session.role === 'admin') {
      parts.push(codesCard(), el('section', { class: 'card' }, el('h2', { text: 'All orders' }), await ordersTable('all-orders', '/api/v1/admin/orders', true)));
    }
    return el('div', { class: 'page', id: 'page-billing' }, ...parts);
  });
})();
