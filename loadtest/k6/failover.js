// Providers that fail (503s) or stall (no first token in time): the retry policy hides them.
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import { chatBody, post } from './lib.js';

const failedOver = new Counter('failed_over');

export const options = {
  scenarios: {
    failover: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 50),
      timeUnit: '1s',
      duration: __ENV.DURATION || '30s',
      preAllocatedVUs: 100,
      maxVUs: 400,
    },
  },
  thresholds: {
    // Every request has a healthy target left within its three attempts.
    http_req_failed: ['rate==0'],
    checks: ['rate==1'],
    // The failures were really there.
    failed_over: ['count>0'],
  },
};

export default function () {
  const res = post(chatBody('resilient', { stream: Math.random() < 0.5 }));
  if (Number(res.headers['X-Tollgate-Attempts'] || 1) > 1) {
    failedOver.add(1);
  }
  check(res, { 'status 200': (r) => r.status === 200 });
}
