#!/usr/bin/env bash
# consul.sh: build and run the Consul agent that Podium's demo, tests and CI use.
#
#   scripts/consul.sh build    build consul v1.15.4 once into $PODIUM_CACHE/bin (reused when present)
#   scripts/consul.sh start    start `consul agent -dev` on loopback and wait for a leader
#   scripts/consul.sh stop     stop it (SIGTERM, then SIGKILL after 10 s)
#   scripts/consul.sh status   print whether it runs; exit 0 if it does, 3 if not
#   scripts/consul.sh path     print the binary's path (after build)
#
# Every command is idempotent. Environment (defaults in brackets):
#   PODIUM_CACHE                  cache dir [<repo>/.cache]; binary at $PODIUM_CACHE/bin/consul
#   PODIUM_CONSUL_STATE           data dir, log and pid file [<repo>/.state/consul]
#   PODIUM_CONSUL_HTTP_PORT       HTTP API on 127.0.0.1 [8500]
#   PODIUM_CONSUL_SERVER_PORT     server RPC [8300]
#   PODIUM_CONSUL_SERF_LAN_PORT   [8301]     PODIUM_CONSUL_SERF_WAN_PORT [8302]
#   PODIUM_CONSUL_DNS_PORT        [-1, off]  PODIUM_CONSUL_GRPC_PORT     [-1, off]
#
# The agent keeps its services and checks in the state dir, so a restart
# brings back what was registered (a plain -dev agent forgets everything).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cache=${PODIUM_CACHE:-$repo/.cache}
bin=$cache/bin/consul
state=${PODIUM_CONSUL_STATE:-$repo/.state/consul}
http_port=${PODIUM_CONSUL_HTTP_PORT:-8500}
server_port=${PODIUM_CONSUL_SERVER_PORT:-8300}
serf_lan_port=${PODIUM_CONSUL_SERF_LAN_PORT:-8301}
serf_wan_port=${PODIUM_CONSUL_SERF_WAN_PORT:-8302}
dns_port=${PODIUM_CONSUL_DNS_PORT:--1}
grpc_port=${PODIUM_CONSUL_GRPC_PORT:--1}
pidfile=$state/consul.pid
logfile=$state/consul.log

die() { echo "consul.sh: $*" >&2; exit 1; }

# built: is the cached binary there and the wanted version? (No pipe into
# grep -q: under pipefail its early exit would SIGPIPE consul and fail.)
built() {
	local v
	[[ -x $bin ]] && v=$("$bin" version 2>/dev/null) && [[ $v == "Consul v1.15.4"* ]]
}

build() {
	if built; then
		return 0
	fi
	mkdir -p "$cache/bin"
	# One build at a time: parallel test packages may all find the binary
	# missing and call us together.
	exec 9>"$cache/bin/.consul.lock"
	flock 9
	if built; then
		return 0
	fi
	echo "consul.sh: building consul v1.15.4 into $bin (cold: about 370 CPU-seconds, 3-9 minutes on 2 shared cores)" >&2
	(cd "$repo/tools/consul" && go build -mod=readonly -buildvcs=false -trimpath -o "$bin.tmp" .)
	mv -f "$bin.tmp" "$bin"
	# The first line only, without a pipe into head: under pipefail head's early
	# exit SIGPIPEs consul's second line and fails the build step (exit 141).
	local v
	v=$("$bin" version)
	echo "${v%%$'\n'*}" >&2
}

pid() {
	[[ -f $pidfile ]] || return 1
	local p
	p=$(<"$pidfile")
	# The pid must still be our consul, not a recycled pid.
	[[ -n $p ]] && [[ $(readlink "/proc/$p/exe" 2>/dev/null) == "$(readlink -f "$bin")" ]] || return 1
	echo "$p"
}

leader() {
	# Prints the leader's address, empty while there is none.
	local out
	out=$(curl -fsS --max-time 1 "http://127.0.0.1:$http_port/v1/status/leader" 2>/dev/null) || return 1
	out=${out//\"/}
	[[ -n $out ]] && echo "$out"
}

start() {
	build
	if p=$(pid); then
		leader >/dev/null || wait_leader
		echo "consul.sh: already running (pid $p, http 127.0.0.1:$http_port)"
		return 0
	fi
	mkdir -p "$state/data"
	# `consul agent -dev` refuses to start in a working directory that holds
	# a folder named mdb; the state dir never does.
	cd "$state"
	nohup "$bin" agent -dev \
		-bind=127.0.0.1 -client=127.0.0.1 -advertise=127.0.0.1 \
		-data-dir="$state/data" \
		-http-port="$http_port" -server-port="$server_port" \
		-serf-lan-port="$serf_lan_port" -serf-wan-port="$serf_wan_port" \
		-dns-port="$dns_port" -grpc-port="$grpc_port" -grpc-tls-port=-1 \
		-log-level=info >>"$logfile" 2>&1 </dev/null &
	local child=$!
	echo "$child" >"$pidfile"
	wait_leader "$child"
	echo "consul.sh: started (pid $(<"$pidfile"), http 127.0.0.1:$http_port, log $logfile)"
}

# alive: is our own child still running? Right after `nohup consul &` the
# child is bash, then nohup, until it execs consul, so pid's check of
# /proc/PID/exe fails for a while (long on a loaded machine) although nothing
# exited. An exited child stays a zombie (state Z) until this script reaps it.
alive() {
	local st
	st=$(sed -n 's/^State:[[:space:]]*\([A-Z]\).*/\1/p' "/proc/$1/status" 2>/dev/null) && [[ -n $st && $st != Z && $st != X ]]
}

# running: is the agent being started still there? With a pid (the child
# start just forked), that process; without one, the pid file's consul.
running() {
	if [[ -n $1 ]]; then
		alive "$1"
	else
		pid >/dev/null
	fi
}

wait_leader() {
	# A -dev agent elects itself in well under a second; 30 s covers a
	# loaded CI machine.
	local i child=${1:-}
	for ((i = 0; i < 300; i++)); do
		if leader >/dev/null; then
			return 0
		fi
		if ! running "$child"; then
			tail -n 20 "$logfile" >&2 || true
			die "agent exited during start; log above ($logfile)"
		fi
		sleep 0.1
	done
	tail -n 20 "$logfile" >&2 || true
	die "no leader after 30 s on 127.0.0.1:$http_port; log above ($logfile)"
}

stop() {
	local p i
	if ! p=$(pid); then
		rm -f "$pidfile"
		echo "consul.sh: not running"
		return 0
	fi
	kill -TERM "$p"
	for ((i = 0; i < 100; i++)); do
		kill -0 "$p" 2>/dev/null || break
		sleep 0.1
	done
	if kill -0 "$p" 2>/dev/null; then
		kill -KILL "$p"
	fi
	rm -f "$pidfile"
	echo "consul.sh: stopped (pid $p)"
}

status() {
	local p l
	if ! p=$(pid); then
		echo "consul.sh: not running"
		return 3
	fi
	l=$(leader) || l="none yet"
	echo "consul.sh: running (pid $p, http 127.0.0.1:$http_port, leader $l)"
}

case ${1:-} in
build) build ;;
start) start ;;
stop) stop ;;
status) status ;;
path) build && echo "$bin" ;;
*) die "usage: scripts/consul.sh build|start|stop|status|path" ;;
esac
