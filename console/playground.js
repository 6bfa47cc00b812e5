// API console: a form generated from the model's parameters, live request examples (curl, fetch,
// Python requests), and Run, which creates the task with the session, follows it live (its Server-Sent
// Events; Cancel while it runs), and shows the image, the credits charged and the new balance.
'use strict';

(function () {
  const { api, el, rich, errorBox, format, copyButton } = window.AIO;
  const ENDPOINT = '/api/v1/images/generations';
  const SAMPLE_PROMPT = 'A serene mountain lake at sunrise with reflections, photorealistic';
  const TERMINAL = ['succeeded', 'failed', 'cancelled'];

  // One form control per parameter: a select for choices (the default selected), a text area for the
  // prompt and for image URLs (one per line), an input otherwise.
  function control(parameter) {
    const id = 'param-' + parameter.name;
    let input;
    if (parameter.values) {
      input = el('select', { id, name: parameter.name }, parameter.values.map((v) => el('option', { value: v, text: v, selected: v === parameter.default })));
    } else if (parameter.name === 'prompt' || parameter.type === 'array') {
      input = el('textarea', { id, name: parameter.name, rows: parameter.name === 'prompt' ? 3 : 2, placeholder: parameter.type === 'array' ? 'https://… (one URL per line)' : '' });
      if (parameter.name === 'prompt') input.value = SAMPLE_PROMPT;
    } else {
      input = el('input', { id, name: parameter.name, type: parameter.name === 'callback_url' ? 'url' : 'text', placeholder: parameter.name === 'callback_url' ? 'https://…' : '' });
    }
    if (parameter.required) input.setAttribute('aria-required', 'true');
    input.dataset.kind = parameter.type;
    const mark = el('span', { class: 'required', title: 'required', text: ' *', hidden: !parameter.required });
    const field = el('div', { class: 'field', 'data-param': parameter.name },
      el('label', { for: id }, parameter.name, mark),
      input,
      el('small', { class: 'muted' }, rich(parameter.description)));
    // A parameter only some sub-models take (image_urls): shown for those, required where they need it.
    field.forSubModel = (subModel) => {
      if (!parameter.accepted_by) return;
      const takes = parameter.accepted_by.find((a) => a.sub_model === subModel);
      field.hidden = !takes;
      const required = Boolean(takes && takes.min > 0);
      mark.hidden = !required;
      if (required) input.setAttribute('aria-required', 'true');
      else input.removeAttribute('aria-required');
    };
    return field;
  }

  // The request body the form describes; empty optional fields and hidden ones are left out.
  function body(form, subModel) {
    const request = { model: subModel };
    for (const input of form.querySelectorAll('[name]')) {
      if (input.closest('.field').hidden) continue;
      const value = input.value.trim();
      if (input.dataset.kind === 'array') {
        const items = value.split(/\s+/).filter(Boolean);
        if (items.length) request[input.name] = items;
      } else if (value !== '' || input.name === 'prompt') {
        request[input.name] = value;
      }
    }
    return request;
  }

  // One step of a quote's breakdown in words: `base 12`, `quality = high ×1.5: 18`, `× 2 images: 36`.
  function describeStep(step) {
    if (step.step === 'images') return `× ${step.n} images: ${step.credits}`;
    if (step.step !== 'rule') return `base ${step.credits}`;
    const when = Object.entries(step.when || {}).map(([k, v]) => `${k} = ${v}`).join(', ');
    const how = step.multiply !== undefined ? `×${step.multiply}` : step.set !== undefined ? `= ${step.set}` : `+${step.add}`;
    return `${when} ${how}: ${step.credits}`;
  }

  const shellQuote = (text) => "'" + text.replace(/'/g, "'\\''") + "'";

  function examples(request) {
    const url = location.origin + ENDPOINT;
    const json = JSON.stringify(request);
    const pretty = JSON.stringify(request, null, 2);
    return {
      curl: `curl -sS -X POST ${shellQuote(url)} \\\n  -H "Authorization: Bearer $AIO_KEY" \\\n  -H 'Content-Type: application/json' \\\n  --data-raw ${shellQuote(json)}`,
      fetch: `// AIO_KEY holds your API key (keep it on the server side).\nconst response = await fetch(${JSON.stringify(url)}, {\n  method: 'POST',\n  headers: { Authorization: \`Bearer \${AIO_KEY}\`, 'Content-Type': 'application/json' },\n  body: JSON.stringify(${pretty.replace(/\n/g, '\n  ')}),\n});\nconst task = await response.json();\nconsole.log(task.task_id, task.status);`,
      python: `import os\nimport requests\n\nresponse = requests.post(\n    ${JSON.stringify(url)},\n    headers={"Authorization": f"Bearer {os.environ['AIO_KEY']}"},\n    json=${pretty.replace(/\n/g, '\n    ')},\n    timeout=30,\n)\ntask = response.json()\nprint(task["task_id"], task["status"])`,
    };
  }

  function exampleTabs() {
    const names = { curl: 'curl', fetch: 'JavaScript fetch', python: 'Python requests' };
    const blocks = {};
    const tabs = el('div', { class: 'tabs', role: 'tablist' });
    const panes = el('div', {});
    let selected = 'curl';
    const select = (name) => {
      selected = name;
      for (const [key, block] of Object.entries(blocks)) {
        block.pane.hidden = key !== name;
        block.tab.setAttribute('aria-selected', String(key === name));
      }
    };
    for (const [key, label] of Object.entries(names)) {
      const code = el('code', { id: 'example-' + key });
      const pane = el('div', { class: 'example' }, el('pre', {}, code), copyButton('Copy', () => code.textContent));
      const tab = el('button', { type: 'button', role: 'tab', class: 'tab', 'data-tab': key, text: label, on: { click: () => select(key) } });
      blocks[key] = { code, pane, tab };
      tabs.append(tab);
      panes.append(pane);
    }
    select(selected);
    return {
      node: el('div', {}, tabs, panes),
      update(request) {
        const texts = examples(request);
        for (const [key, block] of Object.entries(blocks)) block.code.textContent = texts[key];
      },
    };
  }

  // The task's states as the server sends them (GET …/events, with the session cookie), each passed to
  // `onTask`, until it ends (or the page is left: `current()` turns false). EventSource reconnects by
  // itself after a broken connection, sending Last-Event-ID, so no state is shown twice.
  function follow(taskId, current, onTask) {
    return new Promise((resolve) => {
      const source = new EventSource('/api/v1/tasks/' + encodeURIComponent(taskId) + '/events');
      source.addEventListener('task', (event) => {
        if (!current()) {
          source.close();
          resolve(null);
          return;
        }
        const task = JSON.parse(event.data);
        onTask(task);
        if (TERMINAL.includes(task.status)) {
          source.close();
          resolve(task);
        }
      });
    });
  }

  async function run(request, result, current) {
    result.replaceChildren(el('p', { class: 'muted', text: 'Sending…' }));
    let task;
    try {
      task = await api('POST', ENDPOINT, request);
    } catch (error) {
      result.replaceChildren(errorBox(error));
      return;
    }
    const status = el('span', { class: 'status', id: 'run-status' });
    const cancel = el('button', { type: 'button', id: 'run-cancel', text: 'Cancel' });
    cancel.addEventListener('click', async () => {
      cancel.disabled = true;
      try {
        await api('POST', '/api/v1/tasks/' + encodeURIComponent(task.task_id) + '/cancel');
      } catch (error) {
        result.append(errorBox(error));
      }
    });
    const line = el('p', {}, 'Task ', el('code', { id: 'run-task', text: task.task_id }), ': ', status, ' ', cancel);
    result.replaceChildren(line);
    const show = (state) => {
      // A queued task shows its place in the account's queue.
      status.textContent = state.queue_position ? `${state.status} #${state.queue_position}` : state.status;
      status.dataset.status = state.status;
      cancel.hidden = TERMINAL.includes(state.status);
    };
    show(task);
    if (!TERMINAL.includes(task.status)) task = await follow(task.task_id, current, show);
    if (!task || !current()) return;
    if (task.status === 'cancelled') {
      result.append(el('p', { class: 'muted', id: 'run-cancelled', text: 'Cancelled. Nothing was charged.' }));
      await window.AIO.refreshBalance();
      return;
    }
    if (task.status === 'failed') {
      const error = task.error || { code: 'failed', message: 'The task failed.' };
      result.append(errorBox(new window.AIO.ApiError(200, error.code, error.message + ' Nothing was charged.')));
      return;
    }
    const credits = await window.AIO.refreshBalance();
    result.append(
      el('div', { class: 'images' }, ((task.output && task.output.images) || []).map((image) =>
        el('a', { href: image.url, target: '_blank', rel: 'noopener' }, el('img', { src: image.url, alt: request.prompt, class: 'result-image' })))),
      el('p', {}, 'Charged ', el('strong', { id: 'run-charged', text: String(task.credits.charged) }), ' credits. New balance: ',
        el('strong', { id: 'run-balance', text: credits ? String(credits.balance) : '?' }), ' credits.'));
    if (task.provider) {
      const simulated = task.provider.simulated ? ' (simulated: a placeholder image)' : '';
      result.append(el('p', { class: 'muted', id: 'run-provider', text: `Served by ${task.provider.label}${simulated}.` }));
    }
  }

  window.AIO.page('console', async (params, current) => {
    const list = await window.AIO.models();
    if (!list.data.length) return el('p', { class: 'muted', text: 'The catalog is empty.' });
    const modelSelect = el('select', { id: 'model' }, list.data.map((m) => el('option', { value: m.id, text: `${m.name} — ${m.credits} credits` })));
    const subSelect = el('select', { id: 'sub-model' });
    const form = el('form', { id: 'params', autocomplete: 'off' });
    const tabs = exampleTabs();
    const result = el('div', { id: 'run-result', class: 'result' });
    const runButton = el('button', { type: 'button', id: 'run', text: 'Run' });
    const price = el('p', { class: 'muted', id: 'quote' });
    if (list.data.some((m) => m.id === params.get('model'))) modelSelect.value = params.get('model');

    const model = () => list.data.find((m) => m.id === modelSelect.value);
    // The price of the request as the form stands (POST /api/v1/quotes: nothing is created), asked again
    // on every change; an answer that arrives after a newer question is dropped.
    let asked = 0;
    const quote = async (request) => {
      const m = model();
      const mine = ++asked;
      const perImage = `${m.credits} credits (${format.usd(m.usd)}) per image; charged only for images delivered.`;
      try {
        const answer = await api('POST', '/api/v1/quotes', request);
        if (mine !== asked) return;
        const steps = (answer.breakdown || []).map(describeStep).join(' → ');
        price.dataset.quote = String(answer.credits);
        price.textContent = `This request: ${answer.credits} credits (${format.usd(answer.credits * m.usd / m.credits)})` +
          (steps ? ` — ${steps}` : '') + `. ${perImage}`;
      } catch (_) {
        if (mine !== asked) return;
        delete price.dataset.quote;
        price.textContent = perImage;
      }
    };
    const refresh = () => {
      const request = body(form, subSelect.value);
      tabs.update(request);
      quote(request);
    };
    const pickSubModel = () => {
      for (const field of form.children) field.forSubModel(subSelect.value);
      refresh();
    };
    const pickModel = () => {
      const m = model();
      subSelect.replaceChildren(...m.sub_models.map((s) => el('option', { value: s, text: s })));
      form.replaceChildren(...m.parameters.map(control));
      pickSubModel();
    };
    modelSelect.addEventListener('change', pickModel);
    subSelect.addEventListener('change', pickSubModel);
    form.addEventListener('input', refresh);
    form.addEventListener('change', refresh);
    form.addEventListener('submit', (event) => event.preventDefault());
    runButton.addEventListener('click', async () => {
      runButton.disabled = true;
      try {
        await run(body(form, subSelect.value), result, current);
      } finally {
        runButton.disabled = false;
      }
    });
    pickModel();

    return el('div', { class: 'page', id: 'page-console' },
      el('h1', { text: 'API console' }),
      el('div', { class: 'split' },
        el('section', { class: 'card' },
          el('h2', { text: 'Request' }),
          el('div', { class: 'field' }, el('label', { for: 'model', text: 'Model' }), modelSelect),
          el('div', { class: 'field' }, el('label', { for: 'sub-model', text: 'Sub-model' }), subSelect),
          price,
          form,
          el('p', { class: 'muted' }, el('span', { class: 'required', text: '*' }), ' required'),
          runButton,
          result),
        el('section', { class: 'card' },
          el('h2', { text: 'Code' }),
          el('p', { class: 'muted' }, 'Set ', el('code', { text: 'AIO_KEY' }), ' to one of your API keys (see Keys).'),
          tabs.node)));
  });
})();
