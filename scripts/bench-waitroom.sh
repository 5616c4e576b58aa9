#!/usr/bin/env bash
# bench-waitroom.sh: the waiting room's load test and cost figure (issue 18),
# in one command, on loopback. `podium bench waitroom` starts its own edge
# (one room over /api/games/*/buy, admit_per_second 500, refresh 5 s, a
# fresh key file and state dir) on CPU 1 in front of `podium bench
# upstream` on CPU 0, and runs from CPU 0 itself:
#   1. load: 20,000 visitors, each its own X-Forwarded-For address, arrive
#      evenly over 10 s, queue, come back after Retry-After and get in;
#      forged, copied and replayed tokens mixed in. Required: admitted rate
#      500/s ± 10%, 0 order violations, 0 attacks admitted (and each one
#      counted by the refused-token metric), 0 5xx, 0 client errors;
#   2. cost: the edge's CPU per waiting-page request over a cached listing
#      hit, paced alike, 3 interleaved rounds with 20,000 visitors waiting
#      in the paused room. Required: at most 1.5.
# Writes bench-results/waitroom.{md,json} (the edge's config and log under
# bench-results/waitroom/) and exits non-zero when a requirement fails.
# Flags go to `podium bench waitroom` (-h lists them), e.g. -visitors 5000.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
# PODIUM_BIN names a binary to bench; unset, this tree's is built.
bin=${PODIUM_BIN:-}
if [[ -z $bin ]]; then
	bin=bin/podium
	go build -o "$bin" ./cmd/podium
fi
printf 'bench-waitroom: %s\n' "$(uptime)" >&2
exec taskset -c "${LOAD_CPU:-0}" "$bin" bench waitroom -load-cpu "${LOAD_CPU:-0}" -proxy-cpu "${PROXY_CPU:-1}" "$@"
