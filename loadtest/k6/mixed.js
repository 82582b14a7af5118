// Several keys, models and prompt sizes; about a third streams.
import { check } from 'k6';
import { chatBody, events, post } from './lib.js';

const KEYS = ['sk-load-test', 'sk-team-a', 'sk-team-b'];
const MODELS = ['chat', 'stream', 'translated'];

export const options = {
  scenarios: {
    mixed: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 150),
      timeUnit: '1s',
      duration: __ENV.DURATION || '30s',
      preAllocatedVUs: 100,
      maxVUs: 600,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    'http_req_duration{kind:whole}': ['p(99)<300'],
    checks: ['rate>0.999'],
  },
};

export default function () {
  const stream = Math.random() < 0.33;
  const words = [4, 64, 1024][Math.floor(Math.random() * 3)];
  const model = MODELS[Math.floor(Math.random() * MODELS.length)];
  const key = KEYS[Math.floor(Math.random() * KEYS.length)];
  const res = post(chatBody(model, { stream, words }), {
    key,
    tags: { kind: stream ? 'stream' : 'whole' },
  });
  check(res, {
    'status 200': (r) => r.status === 200,
    'a complete answer': (r) =>
      stream ? events(r.body).pop() === 'data: [DONE]' : r.json('choices.0.message.content') !== undefined,
  });
}
