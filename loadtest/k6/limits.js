// A key over its rate limit and a key over its budget: 429s with retry-after, never a 5xx.
import { check } from 'k6';
import { Counter, Rate } from 'k6/metrics';
import { chatBody, post } from './lib.js';

const limited = new Counter('answered_429');
const serverErrors = new Rate('server_errors');

export const options = {
  scenarios: {
    limits: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 50),
      timeUnit: '1s',
      duration: __ENV.DURATION || '20s',
      preAllocatedVUs: 50,
      maxVUs: 200,
    },
  },
  thresholds: {
    server_errors: ['rate==0'],
    answered_429: ['count>0'],
    checks: ['rate==1'],
  },
};

export default function () {
  const key = Math.random() < 0.5 ? 'sk-rate-limited' : 'sk-tiny-budget';
  const res = post(chatBody('chat'), { key });
  serverErrors.add(res.status >= 500);
  if (res.status === 429) {
    limited.add(1);
  }
  check(res, {
    '200 or 429': (r) => r.status === 200 || r.status === 429,
    'a 429 says when to retry': (r) => r.status !== 429 || r.headers['Retry-After'] !== undefined,
    'a 429 says why': (r) =>
      r.status !== 429 || ['rate_limit_exceeded', 'budget_exceeded'].includes(r.json('error.code')),
  });
}
