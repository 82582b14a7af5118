// SSE streams: time to first token and the gap between chunks, as custom trends.
import { check } from 'k6';
import { Trend } from 'k6/metrics';
import { chatBody, events, post } from './lib.js';

const ttft = new Trend('time_to_first_token', true);
const chunkGap = new Trend('inter_chunk_gap', true);

export const options = {
  scenarios: {
    stream: {
      executor: 'constant-arrival-rate',
      rate: Number(__ENV.RATE || 100),
      timeUnit: '1s',
      duration: __ENV.DURATION || '30s',
      preAllocatedVUs: 100,
      maxVUs: 600,
    },
  },
  thresholds: {
    http_req_failed: ['rate<0.001'],
    // The mock streams a token every 20 ms: what is left is the gateway.
    time_to_first_token: ['p(99)<150'],
    inter_chunk_gap: ['p(99)<60'],
    checks: ['rate>0.999'],
  },
};

export default function () {
  const res = post(chatBody('stream', { stream: true }));
  const data = events(res.body);
  // k6 reads a response whole: the first byte is the first chunk (the gateway commits a
  // stream on its first token), and the time receiving is spread over the chunks that follow.
  ttft.add(res.timings.waiting);
  if (data.length > 1) {
    chunkGap.add(res.timings.receiving / (data.length - 1));
  }
  check(res, {
    'status 200': (r) => r.status === 200,
    'ends with [DONE]': () => data.length > 0 && data[data.length - 1] === 'data: [DONE]',
    'no usage chunk it did not ask for': () => data.every((e) => !e.includes('"usage":{')),
  });
}
