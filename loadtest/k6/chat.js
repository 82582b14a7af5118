// Non-stream chat completions at a steady arrival rate.
import { check } from 'k6';
import { chatBody, post } from './lib.js';

export const options = {
  scenarios: {
    chat: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 200),
      timeUnit: '1s',
      duration: __ENV.DURATION || '30s',
      preAllocatedVUs: 50,
      maxVUs: 400,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    http_req_duration: ['p(99)<250'],
    checks: ['rate>0.999'],
  },
};

export default function () {
  const res = post(chatBody('chat'));
  check(res, {
    'status 200': (r) => r.status === 200,
    'a chat completion': (r) => r.json('object') === 'chat.completion',
    'the gateway says what it added': (r) => r.headers['X-Tollgate-Overhead-Us'] !== undefined,
  });
}
