// Models: the decision panel (GET /api/v1/models's endpoint_summary) over the catalog table, sortable by
// price; each model's name links to its page (model.js).
'use strict';

(function () {
  const { el, table, format } = window.AIO;

  // The endpoint's figures, as the server computes them (endpoint_summary).
  function figures(summary) {
    const range = summary.credit_range || {};
    const cheapest = summary.lowest_cost_model;
    return {
      models: String(summary.models),
      sources: String(summary.sources),
      providers: String(summary.providers),
      credit_range: range.min === null || range.min === undefined ? '—' : `${range.min}–${range.max}`,
      webhook_coverage: summary.webhook_coverage,
      lowest_cost_model: cheapest ? cheapest.name : '—',
      lowest_cost_route: cheapest ? cheapest.text : '',
    };
  }

  // Which providers serve (demo, live or staging), said where the catalog is read.
  function mode(list) {
    const words = {
      demo: 'Demo mode: no provider key is configured, so every model runs on the simulated provider and returns placeholder images.',
      staging: 'Staging mode: simulated routes serve beside real ones; their placeholder images are billed.',
      live: 'Live: real providers only.',
    };
    return el('p', { class: list.mode === 'live' ? 'muted' : 'notice', id: 'mode-banner', 'data-mode': list.mode || '', text: words[list.mode] || '' });
  }

  // Models of the catalog this gateway does not offer, and why: their providers are not configured.
  function hidden(list) {
    const models = list.hidden_models || [];
    if (!models.length) return null;
    const providers = [...new Set(models.flatMap((m) => m.providers))].sort();
    const count = models.length === 1 ? '1 model of the catalog is' : `${models.length} models of the catalog are`;
    return el('div', { class: 'notice', id: 'hidden-models', 'data-count': String(models.length) },
      el('p', {}, `${count} hidden: no provider that serves them is configured on this gateway. `,
        `An operator offers them by setting the key of one of their providers (${providers.join(', ')}); see docs/providers.md.`),
      el('details', {},
        el('summary', { text: 'Hidden models' }),
        el('ul', {}, models.map((m) => el('li', { 'data-hidden-model': m.id },
          el('strong', { text: m.name }), ' ', el('code', { text: m.id }), ` — needs ${m.providers.join(' or ') || 'a provider'}`)))));
  }

  function panel(list) {
    const f = figures(list.endpoint_summary);
    const card = (key, label, value, detail) =>
      el('div', { class: 'figure' }, el('span', { class: 'label', text: label }), el('strong', { 'data-figure': key, text: value }),
        detail ? el('small', { class: 'muted', 'data-figure-detail': key, text: detail }) : null);
    return el('section', { class: 'card' },
      el('h2', {}, 'Endpoint ', el('code', { text: list.endpoint_summary.endpoint })),
      mode(list),
      hidden(list),
      el('div', { class: 'figures' },
        card('models', 'Models', f.models),
        card('sources', 'Provider sources', f.sources),
        card('providers', 'Providers', f.providers),
        card('credit_range', 'Credit range', f.credit_range),
        card('webhook_coverage', 'Webhook coverage', f.webhook_coverage),
        card('lowest_cost_model', 'Lowest cost', f.lowest_cost_model, f.lowest_cost_route)));
  }

  function catalog(models, sort, onSort) {
    const sorted = sort ? [...models].sort((a, b) => (sort === 'asc' ? a.credits - b.credits : b.credits - a.credits)) : models;
    const arrow = sort === 'asc' ? ' ▲' : sort === 'desc' ? ' ▼' : ' ↕';
    const priceHeader = el('button', { type: 'button', class: 'sort', id: 'sort-price', 'aria-sort': sort ? (sort === 'asc' ? 'ascending' : 'descending') : 'none', on: { click: onSort } }, 'Credits' + arrow);
    const headers = ['Model', 'Vendor', 'Provider', 'Backend node', priceHeader, 'USD', 'Position', 'Runtime', 'Input', 'Output', 'Webhook', ''];
    const rows = sorted.map((m) => {
      const nodes = [...new Set((m.routes || []).map((r) => r.backend_node).filter(Boolean))].join(', ');
      return el('tr', { 'data-model': m.id },
        el('td', {}, el('a', { href: '/console/models/' + encodeURIComponent(m.id), 'data-model-link': m.id }, el('strong', { text: m.name })), el('br'), el('code', { class: 'muted', text: m.id })),
        el('td', { text: m.vendor }),
        el('td', { text: m.provider_label }),
        el('td', { 'data-backend-node': nodes, text: nodes || '—' }),
        el('td', { class: 'num', 'data-credits': m.credits, text: String(m.credits) }),
        el('td', { class: 'num', text: format.usd(m.usd) }),
        el('td', { class: 'num', 'data-position': m.position.rank, text: `${m.position.rank}/${m.position.of}` }),
        el('td', { text: m.runtime_text }),
        el('td', { text: (m.input_types || []).join(', ') }),
        el('td', { text: m.output }),
        el('td', { text: m.webhook ? 'yes' : 'no' }),
        el('td', {}, el('a', { href: '#/console?model=' + encodeURIComponent(m.id), text: 'Try' })));
    });
    return table(headers, rows, 'The catalog is empty.');
  }

  window.AIO.page('models', async () => {
    const list = await window.AIO.models();
    let sort = null;
    const holder = el('section', { class: 'card' }, el('h2', { text: 'Catalog' }));
    const draw = () => {
      holder.replaceChildren(el('h2', { text: 'Catalog' }), catalog(list.data, sort, () => {
        sort = sort === 'asc' ? 'desc' : 'asc';
        draw();
      }));
    };
    draw();
    return el('div', { class: 'page', id: 'page-models' }, el('h1', { text: 'Models' }), panel(list), holder);
  });
})();
