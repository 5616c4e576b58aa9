#!/usr/bin/env bash
# demo.sh: the whole Podium stack on loopback, in the foreground.
#
#   scripts/demo.sh          start everything, print the URLs, wait for Ctrl-C
#   scripts/demo.sh clean    stop anything left and wipe the state directory
#
# Starts: the Consul agent (:8500), a MariaDB primary and two replicas
# (:3307-3309), three origins (:9001-9003) registered in Consul, the edge on
# :8080 (admin :9901) discovering them, and Prometheus (:9090) scraping edge
# and origins. Ctrl-C stops all of it; a second run reuses .state/ (data,
# Consul's catalog, Prometheus's TSDB). Logs go to .state/demo/*.log.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
state=${PODIUM_STATE:-$repo/.state}
logs=$state/demo
bin=$repo/bin/podium

say() { printf '\033[1mdemo:\033[0m %s\n' "$*"; }

if [[ ${1:-} == clean ]]; then
	scripts/consul.sh stop >/dev/null 2>&1 || true
	PODIUM_DB_STATE_DIR=$state/mariadb scripts/mariadb-cluster.sh stop >/dev/null 2>&1 || true
	rm -rf "$state"
	say "wiped $state"
	exit 0
fi

[[ -x $bin ]] || { echo "demo.sh: $bin missing; run make demo (it builds first)" >&2; exit 1; }
busy=()
for port in 8080 9901 9001 9002 9003 9090; do
	if (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null; then busy+=("$port"); fi
done
if [[ ${#busy[@]} -gt 0 ]]; then
	echo "demo.sh: ports ${busy[*]} are in use on 127.0.0.1; is a demo already running? (stop it, or: make demo-clean)" >&2
	exit 1
fi
mkdir -p "$logs"

pids=()
stopped=0
stop_all() {
	[[ $stopped -eq 1 ]] && return
	stopped=1
	say "stopping"
	# Edge first (it drains), then origins (they leave Consul), then the rest.
	for ((i = ${#pids[@]} - 1; i >= 0; i--)); do kill -TERM "${pids[$i]}" 2>/dev/null || true; done
	for p in "${pids[@]}"; do
		for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
		kill -KILL "$p" 2>/dev/null || true
	done
	PODIUM_DB_STATE_DIR=$state/mariadb scripts/mariadb-cluster.sh stop >/dev/null 2>&1 || true
	PODIUM_CONSUL_STATE=$state/consul scripts/consul.sh stop >/dev/null 2>&1 || true
	say "stopped; state kept in $state (make demo-clean wipes it)"
}
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT

say "Consul agent"
PODIUM_CONSUL_STATE=$state/consul scripts/consul.sh start
say "MariaDB primary and two replicas"
PODIUM_DB_STATE_DIR=$state/mariadb scripts/mariadb-cluster.sh start
eval "$(PODIUM_DB_STATE_DIR=$state/mariadb scripts/mariadb-cluster.sh env)"
"$bin" origin migrate >"$logs/migrate.log" 2>&1 || { cat "$logs/migrate.log" >&2; exit 1; }
PODIUM_DB_STATE_DIR=$state/mariadb scripts/mariadb-cluster.sh wait >/dev/null

for i in 1 2 3; do
	say "origin $i on 127.0.0.1:900$i"
	"$bin" origin -listen "127.0.0.1:900$i" -consul 127.0.0.1:8500 >"$logs/origin$i.log" 2>&1 &
	pids+=($!)
done
say "edge on :8080 (admin 127.0.0.1:9901)"
"$bin" edge -config deploy/edge/demo.yaml >"$logs/edge.log" 2>&1 &
pids+=($!)
say "Prometheus on 127.0.0.1:9090"
mkdir -p "$state/prometheus"
prometheus --config.file=deploy/prometheus/prometheus.yml --storage.tsdb.path="$state/prometheus" \
	--web.listen-address=127.0.0.1:9090 >"$logs/prometheus.log" 2>&1 &
pids+=($!)

for _ in $(seq 1 150); do
	curl -fsS -o /dev/null http://127.0.0.1:8080/api/games 2>/dev/null && break
	sleep 0.2
done
curl -fsS -o /dev/null http://127.0.0.1:8080/api/games || { say "the edge is not answering; see $logs/edge.log"; exit 1; }
cat <<MSG

  Podium is up.
    site          http://127.0.0.1:8080/games
    API           http://127.0.0.1:8080/api/games
    edge metrics  http://127.0.0.1:9901/metrics   (config: /config)
    origins       http://127.0.0.1:9001/metrics  :9002  :9003
    Prometheus    http://127.0.0.1:9090/alerts
    Consul UI     http://127.0.0.1:8500/ui/
    logs          $logs/
  Try a ticket drop:  bin/podium bench run -target http://127.0.0.1:8080 -scenario ticket-drop
  Ctrl-C stops everything.

MSG
# Wait until Ctrl-C, or until a process dies (then say which, and stop all).
while true; do
	for p in "${pids[@]}"; do
		if ! kill -0 "$p" 2>/dev/null; then
			say "process $p exited; see $logs/ (stopping the rest)"
			exit 1
		fi
	done
	sleep 1
done
