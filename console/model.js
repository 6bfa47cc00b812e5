// A model's page (`/console/models/{id}`, or `#/model?id=…`): every section generated from
// GET /api/v1/models/{id} — header, call contract, runtime, request preview, parameters, pricing,
// capabilities, use cases, FAQ, the models on the same endpoint and their comparison, integration flow.
'use strict';

(function () {
  const { api, el, rich, table, format, copyButton } = window.AIO;

  function section(key, title, ...content) {
    return el('section', { class: 'card', 'data-section': key }, el('h2', { text: title }), ...content);
  }

  function list(items, empty) {
    if (!items || !items.length) return el('p', { class: 'muted', text: empty });
    return el('ul', {}, items.map((item) => el('li', {}, rich(item))));
  }

  // Two-column rows: a label and its value.
  function facts(rows) {
    return el('div', { class: 'table-wrap' }, el('table', {}, el('tbody', {},
      rows.map(([label, value]) => el('tr', {}, el('th', { scope: 'row', text: label }), el('td', {}, value))))));
  }

  const modelLink = (m) => el('a', { href: '/console/models/' + encodeURIComponent(m.id), 'data-model-link': m.id, text: m.name });

  // The curl of the default sub-model with every parameter at its default.
  function preview(model) {
    const body = { model: model.sub_models[0], prompt: 'A serene mountain lake at sunrise with reflections, photorealistic' };
    for (const p of model.parameters) if (p.values && p.default !== null) body[p.name] = p.default;
    const url = model.contract.api_url + model.contract.endpoint;
    return `curl -X ${model.contract.method} ${url} -H "Authorization: Bearer $AIO_KEY" -H "Content-Type: application/json" --data-raw '${JSON.stringify(body)}'`;
  }

  function header(model) {
    return el('section', { class: 'card', 'data-section': 'header' },
      el('p', {}, el('a', { href: '/console#/models', text: '← Models' })),
      el('h1', {}, model.name, ' ', el('span', { class: 'status', 'data-status': 'active', text: 'active' })),
      el('p', {}, el('strong', { text: model.vendor }), ' · ', el('code', { text: model.id }), ' · ',
        el('strong', { 'data-price': model.credits, text: format.credits(model.credits) }), ` (${format.usd(model.usd)}) per image`),
      model.description ? el('p', {}, rich(model.description)) : null,
      el('p', {}, el('a', { href: '/console#/console?model=' + encodeURIComponent(model.id), text: 'Try it in the API console' })));
  }

  function contract(model) {
    const c = model.contract;
    return section('contract', 'Call contract', facts([
      ['Base URL', el('code', { text: c.api_url })],
      ['Auth', el('code', { text: c.auth + ' <API key>' })],
      ['Model field', [el('code', { text: c.model_field }), ': ', model.sub_models.map((s, i) => [i ? ', ' : '', el('code', { text: s })])]],
      ['Endpoint', el('code', { text: `${c.method} ${c.endpoint}` })],
      ['Result path', el('code', { text: 'GET ' + c.result_path })],
      ['Result field', el('code', { text: c.result_field })],
      ['Billing path', el('code', { text: 'GET ' + c.billing_path })],
    ]));
  }

  function runtime(model) {
    const routes = model.routes.map((r) => el('tr', {},
      el('td', { text: r.provider_label }), el('td', { 'data-backend-node': r.backend_node, text: r.backend_node }), el('td', { text: r.simulated ? 'simulated (placeholder images)' : 'real' })));
    return section('runtime', 'Runtime behaviour',
      facts([
        ['Mode', model.runtime_mode],
        ['Usual runtime', model.runtime_text],
        ['Position', `${model.position.rank}/${model.position.of} (${model.position.order})`],
        ['Input', model.input_types.join(', ')],
        ['Output', model.output],
      ]),
      el('h3', { text: 'Routes' }),
      table(['Provider', 'Backend node', 'Served by'], routes));
  }

  function request(model) {
    const code = el('code', { text: preview(model) });
    const route = model.lowest_cost_route;
    return section('request', 'Request preview',
      el('p', {}, 'Served by ', el('strong', { 'data-live-route': route.provider_label, text: route.provider_label }), ' on node ', el('code', { text: route.backend_node }), '. Set ', el('code', { text: 'AIO_KEY' }), ' to one of your keys.'),
      el('div', { class: 'example' }, el('pre', { 'data-curl': '' }, code), copyButton('Copy', () => code.textContent)));
  }

  function parameters(model) {
    const rows = model.parameters.map((p) => {
      let required = p.required ? 'yes' : 'no';
      const takers = p.accepted_by || [];
      const requiredBy = takers.filter((a) => a.min > 0).map((a) => a.sub_model);
      if (requiredBy.length) required = 'yes for ' + requiredBy.join(', ');
      const only = takers.length ? [el('br'), el('small', { class: 'muted', text: 'only ' + takers.map((a) => a.sub_model).join(', ') })] : [];
      return el('tr', { 'data-parameter': p.name },
        el('td', {}, el('code', { text: p.name }), only),
        el('td', { text: p.type }),
        el('td', { 'data-required': required, text: required }),
        el('td', {}, p.default === null || p.default === undefined ? '—' : el('code', { text: p.default })),
        el('td', {}, p.values ? p.values.map((v, i) => [i ? ' ' : '', el('code', { text: v })]) : p.max_length ? `≤ ${p.max_length} characters` : '—'),
        el('td', {}, rich(p.description)));
    });
    return section('parameters', 'Parameters', table(['Name', 'Type', 'Required', 'Default', 'Allowed values', 'Description'], rows));
  }

  function pricing(model) {
    const rows = [
      ['Base price', `${format.credits(model.credits)} (${format.usd(model.usd)}) per image`],
      ['Billing', model.billing],
      ['Lowest-cost route', model.lowest_cost_route.text],
    ];
    // Price rules and a price range, when the gateway has them: shown as the API gives them.
    const range = model.price_range;
    if (range && range.min !== undefined) rows.push(['Price range', `${range.min}–${range.max} credits`]);
    const rules = Array.isArray(model.price_rules) ? model.price_rules : [];
    return section('pricing', 'Pricing', facts(rows),
      rules.length ? el('ul', { 'data-price-rules': '' }, rules.map((r) => el('li', {}, el('code', { text: JSON.stringify(r) })))) : null);
  }

  function faq(model) {
    if (!model.faq.length) return section('faq', 'FAQ', el('p', { class: 'muted', text: 'No questions yet.' }));
    return section('faq', 'FAQ', el('dl', {}, model.faq.map((f) => [el('dt', {}, el('strong', {}, rich(f.q))), el('dd', {}, rich(f.a))])));
  }

  function sameEndpoint(model) {
    const others = model.same_endpoint;
    const rows = [{ ...model, provider_label: model.lowest_cost_route.provider_label, backend_node: model.lowest_cost_route.backend_node }, ...others]
      .map((m) => el('tr', { 'data-model': m.id, class: m.id === model.id ? 'current' : null },
        el('td', {}, m.id === model.id ? el('strong', { text: m.name }) : modelLink(m)),
        el('td', { class: 'num', text: String(m.credits) }),
        el('td', { class: 'num', text: format.usd(m.usd) }),
        el('td', { text: m.provider_label }),
        el('td', { text: m.runtime_mode }),
        el('td', { text: m.input_types.join(', ') }),
        el('td', { text: m.output }),
        el('td', { text: m.backend_node })));
    return [
      section('same-endpoint', 'Models on the same endpoint',
        others.length ? el('p', {}, others.map((m, i) => [i ? ' · ' : '', modelLink(m)])) : el('p', { class: 'muted', text: 'No other model.' })),
      section('comparison', 'Endpoint model comparison',
        table(['Model', 'Credits', 'USD', 'Provider', 'Runtime mode', 'Input', 'Output', 'Backend node'], rows)),
    ];
  }

  function flow(model) {
    const c = model.contract;
    return section('flow', 'Integration flow', el('ol', {},
      el('li', {}, el('a', { href: '/console#/keys', text: 'Create an API key' }), '.'),
      el('li', {}, 'Call ', el('code', { text: `${c.method} ${c.endpoint}` }), ' with ', el('code', { text: c.auth + ' <key>' }), ' and ', el('code', { text: `"${c.model_field}": "${model.sub_models[0]}"` }), ': the answer is a task.'),
      el('li', {}, 'Poll ', el('code', { text: 'GET ' + c.result_path }), model.webhook ? [' (or give ', el('code', { text: 'callback_url' }), ')'] : null,
        ' until it ends; the images are ', el('code', { text: c.result_field }), '.'),
      el('li', {}, 'See what was charged at ', el('code', { text: 'GET ' + c.billing_path }), `: ${model.billing} only.`)));
  }

  window.AIO.page('model', async (params) => {
    const model = await api('GET', '/api/v1/models/' + encodeURIComponent(params.get('id') || ''));
    document.title = `${model.name} · aio-gateway console`;
    return el('div', { class: 'page', id: 'page-model', 'data-model': model.id },
      header(model), contract(model), runtime(model), request(model), parameters(model), pricing(model),
      section('capabilities', 'Capabilities', list(model.capabilities, 'None listed.')),
      section('use-cases', 'Use cases', list(model.use_cases, 'None listed.')),
      faq(model), sameEndpoint(model), flow(model));
  });
})();
