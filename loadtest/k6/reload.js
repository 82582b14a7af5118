// Traffic while run.sh rewrites the config file every second: reloads lose nothing.
import { check } from 'k6';
import { chatBody, post } from './lib.js';

export const options = {
  scenarios: {
    reload: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 100),
      timeUnit: '1s',
      duration: __ENV.DURATION || '30s',
      preAllocatedVUs: 50,
      maxVUs: 400,
    },
  },
  thresholds: {
    http_req_failed: ['rate==0'],
    checks: ['rate==1'],
  },
};

export default function () {
  const res = post(chatBody(Math.random() < 0.5 ? 'chat' : 'stream', { stream: Math.random() < 0.3 }));
  check(res, { 'status 200': (r) => r.status === 200 });
}
