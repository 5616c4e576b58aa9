#!/usr/bin/env bash
# bench-slow-origin.sh: what slow origins cost the fans, reproducible.
#
# Three synthetic upstreams; the edge in front with a 250 ms per-try timeout
# and up to 2 retries. First a baseline with no slow answers, then again
# with every 10th answer of every upstream delayed 5 s. The edge must retry
# the slow ones elsewhere, and the requests answered at the first try must
# keep a p99 under 2x the baseline's. Writes bench-results/slow-origin-*.
# Upstreams and generator on CPU 0, the edge on CPU 1, as make bench pins
# them, so the edge's CPU is its own.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bin=${PODIUM_BIN:-bin/podium}
rate=${RATE:-1000}
duration=${DURATION:-20s}
out=bench-results
mkdir -p "$out"
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT

cat >"$tmp/edge.yaml" <<YAML
listen: "127.0.0.1:18480"
admin: "127.0.0.1:19480"
discovery: {static: ["127.0.0.1:19481", "127.0.0.1:19482", "127.0.0.1:19483"]}
routes: [{name: all, match: {path_prefix: /}}]
ratelimits: {}
access_log: {enabled: false}
retries: {max_retries: 2, per_try_timeout: 250ms}
YAML

run() { # name, extra upstream flags
	local name=$1; shift
	taskset -c 0 "$bin" bench upstream -listen 127.0.0.1:19481,127.0.0.1:19482,127.0.0.1:19483 "$@" >"$tmp/up.log" 2>&1 &
	local up=$!
	pids+=("$up")
	taskset -c 1 "$bin" edge -config "$tmp/edge.yaml" -drain 0s >"$tmp/edge-$name.log" 2>&1 &
	local edge=$!
	pids+=("$edge")
	for _ in $(seq 1 100); do curl -fsS -o /dev/null http://127.0.0.1:18480/bench/payload 2>/dev/null && break; sleep 0.1; done
	taskset -c 0 "$bin" bench run -target http://127.0.0.1:18480 -scenario proxied-get -mode open -rate "$rate" \
		-duration "$duration" -quiet -prefix "$out/slow-origin-$name"
	kill "$edge" "$up"; wait "$edge" "$up" 2>/dev/null || true
	sleep 1
}
run baseline
run slow -slow-every 10 -slow-delay 5s
echo
for f in "$out/slow-origin-baseline.json" "$out/slow-origin-slow.json"; do
	python3 - "$f" <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
ft = r.get("first_try_latency") or r["latency"]
print(f'{sys.argv[1]}: {r["requests"]} requests, {r["error_count"]} errors, retried {r.get("retried", 0)}; '
      f'p99 all {r["latency"]["p99_us"]/1000:.2f} ms, p99 first try {ft["p99_us"]/1000:.2f} ms')
PY
done
