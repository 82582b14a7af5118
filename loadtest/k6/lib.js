// Shared by the scripts: where the gateway is, its keys, and the request bodies.
import http from 'k6/http';

export const BASE = __ENV.TOLLGATE_URL || 'http://127.0.0.1:8080';
export const KEY = __ENV.TOLLGATE_KEY || 'sk-load-test';

export function chatBody(model, { stream = false, words = 8, maxTokens = 32 } = {}) {
  const body = {
    model,
    max_tokens: maxTokens,
    messages: [{ role: 'user', content: 'Load test question. '.repeat(words) }],
  };
  if (stream) {
    body.stream = true;
  }
  return JSON.stringify(body);
}

export function post(body, { key = KEY, tags = {} } = {}) {
  return http.post(`${BASE}/v1/chat/completions`, body, {
    headers: { 'content-type': 'application/json', authorization: `Bearer ${key}` },
    tags,
  });
}

// The SSE `data:` events of a stream body.
export function events(body) {
  return (body || '').split('\n').filter((line) => line.startsWith('data: '));
}
