// @ts-check
/** "Connect a client": the base URL of a slug and ready-to-copy settings for the usual SDKs and
 * tools. The data plane may listen on another port than this console (`admin_listen`), so the
 * gateway's address is editable and remembered. */
import { h, replace } from './dom.js';
import { t } from './i18n.js';
import { api } from './api.js';
import { page, copyButton, fieldRow } from './ui.js';

const BASE = 'keygate.gateway';

/**
 * @param {string} g gateway address
 * @param {string} slug
 * @param {string} kind
 * @returns {[string, string, string][]} id, title, text
 */
export function snippets(g, slug, kind) {
  const llm = `${g}/llm/${slug}`;
  const key = 'kg-...';
  if (kind === 'rest') {
    return [['curl', 'curl', `curl ${g}/proxy/${slug}/<path> \\\n  -H "Authorization: Bearer ${key}"`]];
  }
  const model = kind === 'anthropic' ? 'claude-sonnet-4-5' : kind === 'gemini' ? 'gemini-2.5-flash' : 'gpt-4o-mini';
  return [
    ['openai-py', 'OpenAI SDK (Python)', `from openai import OpenAI\n\nclient = OpenAI(base_url="${llm}/v1", api_key="${key}")\nr = client.chat.completions.create(\n    model="${model}",\n    messages=[{"role": "user", "content": "Hello"}],\n)\nprint(r.choices[0].message.content)`],
    ['openai-js', 'OpenAI SDK (Node)', `import OpenAI from "openai";\n\nconst client = new OpenAI({ baseURL: "${llm}/v1", apiKey: "${key}" });\nconst r = await client.chat.completions.create({\n  model: "${model}",\n  messages: [{ role: "user", content: "Hello" }],\n});\nconsole.log(r.choices[0].message.content);`],
    ['anthropic', 'Anthropic SDK (Python)', `import anthropic\n\nclient = anthropic.Anthropic(base_url="${llm}", api_key="${key}")\nr = client.messages.create(\n    model="${model}", max_tokens=512,\n    messages=[{"role": "user", "content": "Hello"}],\n)\nprint(r.content[0].text)`],
    ['gemini', 'Gemini SDK (google-genai)', `from google import genai\n\nclient = genai.Client(api_key="${key}", http_options={"base_url": "${llm}"})\nr = client.models.generate_content(model="${model}", contents="Hello")\nprint(r.text)`],
    ['curl', 'curl', `curl ${llm}/v1/chat/completions \\\n  -H "Authorization: Bearer ${key}" \\\n  -H "Content-Type: application/json" \\\n  -d '{"model": "${model}", "messages": [{"role": "user", "content": "Hello"}]}'`],
    ['cursor', 'Cursor', `Settings → Models → OpenAI API Key: ${key}\nOverride OpenAI Base URL: ${llm}/v1`],
    ['cherry', 'Cherry Studio', `Settings → Model Provider → Add → type "OpenAI"\nAPI Key: ${key}\nAPI Host: ${llm}`],
    ['claude-code', 'Claude Code', `export ANTHROPIC_BASE_URL="${llm}"\nexport ANTHROPIC_AUTH_TOKEN="${key}"\nclaude`],
    ['codex', 'Codex CLI', `export OPENAI_BASE_URL="${llm}/v1"\nexport OPENAI_API_KEY="${key}"\ncodex`],
  ];
}

/** @type {import('./main.js').View} */
export async function connectView({ slug }) {
  const svc = await api('GET', `/admin/services/${encodeURIComponent(slug)}`);
  const input = h('input', { value: localStorage.getItem(BASE) || location.origin, spellcheck: false, name: 'gateway' });
  const out = h('div', { class: 'snippets' });
  const draw = () => {
    const g = input.value.trim().replace(/\/+$/, '');
    replace(out, snippets(g, svc.slug, svc.kind).map(([id, title, text]) => h('figure', { class: 'card snippet', 'data-snippet': id },
      h('figcaption', null, h('span', null, title), copyButton(text)),
      h('pre', null, h('code', null, text)))));
  };
  input.addEventListener('input', () => { localStorage.setItem(BASE, input.value.trim()); draw(); });
  draw();
  const base = svc.kind === 'rest' ? `/proxy/${svc.slug}/` : `/llm/${svc.slug}/v1`;
  return page(`${t('connect.title')} · ${svc.slug}`, [h('a', { class: 'button ghost', href: `#/services/${svc.slug}/keys` }, t('svc.keys'))],
    h('div', { class: 'card' },
      fieldRow(t('connect.gateway'), input, t('connect.gateway_help')),
      h('p', null, t('connect.base'), ' ', h('code', { 'data-testid': 'base-url' }, base), ' ', t('connect.key_note'), ' ', h('a', { href: '#/access-keys' }, t('nav.access-keys')), '.')),
    out);
}
