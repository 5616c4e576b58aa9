#!/usr/bin/env bash
# demo.sh: the whole Podium stack on loopback, in the foreground.
#
#   scripts/demo.sh            start everything, print the URLs, supervise until Ctrl-C
#   scripts/demo.sh scale N    from another terminal: run N origins (1..9) in the running demo
#   scripts/demo.sh clean      stop anything left and wipe the state directory
#
# Starts: the Consul agent (:8500), a MariaDB primary and two replicas
# (:3307-3309), three origins (:9001-9003) registered in Consul, the edge on
# :8080 (admin :9901) discovering them, and Prometheus (:9090) scraping edge
# and origins. The edge runs deploy/edge/demo.yaml's copy in
# <state>/demo/edge.yaml, whose waiting room "sale" guards the buy pages and
# the purchase API with keys generated on the first run
# (<state>/demo/demo-waitroom.keys) and its state in <state>/demo/waitroom.
# A second run reuses the state dir (data, Consul's catalog, Prometheus's
# TSDB, the room's keys and admission history). Logs go to <state>/demo/*.log.
#
# The demo supervises its origins, so that failures can be watched, not
# merely suffered:
# - An origin that exits (kill -9 one to watch the edge route around it,
#   Consul mark it critical and the alert fire) is named and restarted with
#   backoff, 2 s, 4 s, 8 s ... capped at 30 s, and not before Consul has
#   stopped listing it passing (at most 10 s more), so the death can be
#   watched; the backoff starts again at 2 s once an origin has stayed up
#   60 s. It rejoins through Consul. Its log, appended across restarts, is
#   <state>/demo/originN.log.
# - `scale N` sets the number of origins. Origin N listens on
#   127.0.0.1:(9001 + N - 1). New ones register in Consul and the edge
#   slow-starts them (balancer.slow_start in deploy/edge/demo.yaml); removed
#   ones, highest first, get SIGTERM: critical in Consul, drain, deregister.
#   Prometheus follows (the demo rewrites its origin targets file).
# - The edge, Prometheus or the Consul agent exiting stops the demo, saying
#   which and where its log is. A MariaDB node going down or coming back is
#   reported and the demo keeps running (scripts/mariadb-cluster.sh
#   stop-node/start-node make a database failure drill).
# - Ctrl-C stops everything: the edge first (it drains), then the origins
#   (they leave Consul), then Prometheus, MariaDB and Consul. A second Ctrl-C
#   SIGKILLs whatever is still stopping.
#
# Control channel: plain files in <state>/demo/, so a demo that was killed
# leaves nothing that blocks the next one.
#   demo.pid       the supervising demo's pid, while it runs
#   demo.env       the ports it runs on (read by `scale`)
#   origins.want   the wanted number of origins, one line; `scale` replaces
#                  it (write, then rename) and the demo reads it every 0.5 s
#   origins        the demo's view, rewritten (renamed into place) on every
#                  change: "want N", then "INDEX ADDRESS PID STATE" per
#                  origin, STATE one of running, restarting, stopping
#   demo.log       what the demo said, with times; `scale` prints what it
#                  says while it waits
# `scale` waits (at most 60 s each) until the demo has applied the count
# and until Consul shows exactly those N origins passing, reports both, and
# exits non-zero when no demo runs, N is out of range, a new origin's port
# is taken by another process, or a wait ran out.
#
# Environment (defaults in brackets):
#   PODIUM_STATE                 state dir [<repo>/.state]; `scale` and `clean` need the demo's
#   PODIUM_DEMO_BIN              the podium binary [<repo>/bin/podium]
#   PODIUM_DEMO_EDGE_PORT        the edge, all interfaces [8080]
#   PODIUM_DEMO_ADMIN_PORT       the edge's admin listener, 127.0.0.1 [9901]
#   PODIUM_DEMO_ORIGIN_PORT      origin 1, 127.0.0.1; origin N on this + N - 1 [9001]
#   PODIUM_DEMO_ORIGINS          origins at start, 1..9 [3]
#   PODIUM_DEMO_PROMETHEUS_PORT  Prometheus, 127.0.0.1 [9090]
#   PODIUM_PROM_CONSOLE_LIBRARIES  prom.lib and menu.lib for the dashboard
#                                [/usr/share/doc/prometheus/examples/console_libraries]
#   PODIUM_CONSUL_HTTP_PORT, _SERVER_PORT, _SERF_LAN_PORT, _SERF_WAN_PORT
#                                the Consul agent's, as scripts/consul.sh reads them [8500, 8300-8302]
#   PODIUM_DB_PRIMARY_PORT, _REPLICA1_PORT, _REPLICA2_PORT
#                                MariaDB's, as scripts/mariadb-cluster.sh reads them; fixed
#                                when the state dir is first initialised [3307-3309]
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
state=${PODIUM_STATE:-$repo/.state}
logs=$state/demo
bin=${PODIUM_DEMO_BIN:-$repo/bin/podium}
edge_port=${PODIUM_DEMO_EDGE_PORT:-8080}
admin_port=${PODIUM_DEMO_ADMIN_PORT:-9901}
origin_port=${PODIUM_DEMO_ORIGIN_PORT:-9001}
origins_at_start=${PODIUM_DEMO_ORIGINS:-3}
prom_port=${PODIUM_DEMO_PROMETHEUS_PORT:-9090}
consul_port=${PODIUM_CONSUL_HTTP_PORT:-8500}
max_origins=9
# The child scripts read their state dirs from these.
export PODIUM_CONSUL_STATE=$state/consul PODIUM_DB_STATE_DIR=$state/mariadb

pidfile=$logs/demo.pid
envfile=$logs/demo.env
wantfile=$logs/origins.want
viewfile=$logs/origins
eventlog=$logs/demo.log

bold='' plain=''
if [[ -t 1 ]]; then bold=$'\033[1m' plain=$'\033[0m'; fi
logging=0
# say prints a line for the user; the supervising demo also appends it, with
# the time, to demo.log (which `scale` follows).
say() {
	printf '%sdemo:%s %s\n' "$bold" "$plain" "$*"
	if [[ $logging -eq 1 ]]; then printf '%(%H:%M:%S)T %s\n' -1 "$*" >>"$eventlog"; fi
}
die() { echo "demo.sh: $*" >&2; exit 1; }
usage() { echo "usage: scripts/demo.sh [scale N | clean]   (see the top of scripts/demo.sh)" >&2; exit 2; }

# running_demo prints the pid of the demo supervising this state dir, if any.
running_demo() {
	local p cmd
	[[ -f $pidfile ]] && read -r p <"$pidfile" && [[ $p =~ ^[0-9]+$ ]] || return 1
	kill -0 "$p" 2>/dev/null || return 1
	# Not a recycled pid: the process must still be a demo.sh.
	cmd=$(tr '\0' ' ' <"/proc/$p/cmdline" 2>/dev/null) || return 1
	[[ $cmd == *demo.sh* ]] || return 1
	echo "$p"
}

# now_ms sets now to the wall clock in milliseconds (no fork).
now=0
now_ms() {
	local us=${EPOCHREALTIME//[!0-9]/}
	now=$((10#$us / 1000))
}

# exit_desc sets desc from an exit status as wait returns it.
desc=''
exit_desc() {
	if (($1 > 128)); then
		desc="signal $(kill -l $(($1 - 128)) 2>/dev/null || echo $(($1 - 128)))"
	else
		desc="status $1"
	fi
}

origin_addr() { echo "127.0.0.1:$((origin_port + $1 - 1))"; }

# consul_passing sets passing to the addresses of the podium-origin
# instances Consul has passing. The origins register as
# podium-origin-<addr>-<port> (discovery/consul/register.go); Consul answers
# pretty-printed JSON, read here without jq (not among scripts/deps.sh's).
passing=()
consul_passing() {
	local json re='"ServiceID":"podium-origin-([0-9.]+)-([0-9]+)"'
	passing=()
	json=$(curl -fsS --max-time 2 "http://127.0.0.1:$consul_port/v1/health/service/podium-origin?passing" 2>/dev/null) || return 1
	json=${json//[[:space:]]/}
	while [[ $json =~ $re ]]; do
		passing+=("${BASH_REMATCH[1]}:${BASH_REMATCH[2]}")
		json=${json#*"${BASH_REMATCH[0]}"}
	done
}

# ---- scale N: ask the running demo for N origins, and report ----

# follow prints the lines the demo logged after the first $seen, the ones
# it has finished writing.
seen=0
follow() {
	local lines=() k
	[[ -f $eventlog ]] || return 0
	mapfile lines <"$eventlog"
	for ((k = seen; k < ${#lines[@]}; k++)); do
		[[ ${lines[k]} == *$'\n' ]] || break
		printf '  %s' "${lines[k]}"
		seen=$((k + 1))
	done
}

scale() {
	[[ $# -eq 1 ]] || { echo "usage: scripts/demo.sh scale N   (N origins, 1..$max_origins)" >&2; exit 2; }
	local n=$1 p
	if ! [[ $n =~ ^[0-9]+$ ]] || ((10#$n < 1 || 10#$n > max_origins)); then
		echo "demo.sh scale: N must be a whole number from 1 to $max_origins, got '$n'" >&2
		exit 2
	fi
	n=$((10#$n))
	p=$(running_demo) || die "scale: no demo is running on state dir $state (no live $pidfile); start one with make demo, and give scale the same PODIUM_STATE"
	# The demo's ports, which this shell's environment need not know.
	# shellcheck disable=SC1090
	. "$envfile"
	# One scale at a time, so each reports its own outcome.
	exec 8>"$logs/scale.lock"
	flock -w 120 8 || die "scale: another scale has held $logs/scale.lock for 2 minutes"

	local old="?" i k idx rest listed=" " lines=()
	[[ -f $viewfile ]] && read -r _ old <"$viewfile" || true
	while read -r idx rest; do listed+="$idx "; done < <(tail -n +2 "$viewfile" 2>/dev/null)
	# A new origin's port taken by another process: it could only fail.
	for ((i = 1; i <= n; i++)); do
		[[ $listed == *" $i "* ]] && continue
		if (exec 3<>"/dev/tcp/127.0.0.1/$((origin_port + i - 1))") 2>/dev/null; then
			die "scale: port $((origin_port + i - 1)) (origin $i) is in use by another process; free it, or scale to fewer"
		fi
	done
	if [[ -f $eventlog ]]; then
		mapfile lines <"$eventlog"
		for ((k = 0; k < ${#lines[@]}; k++)); do [[ ${lines[k]} == *$'\n' ]] && seen=$((k + 1)); done
	fi
	printf '%s\n' "$n" >"$wantfile.$$"
	mv -f "$wantfile.$$" "$wantfile"
	echo "demo.sh scale: origins $old -> $n (demo pid $p, state $state); the demo says:"

	# 1. The demo has applied it: its view says "want N" and nothing is
	# still stopping (drain and deregistration take a few seconds).
	local applied=0 view
	for ((i = 0; i < 300; i++)); do
		follow
		kill -0 "$p" 2>/dev/null || die "scale: the demo (pid $p) exited; see $eventlog"
		view=$(<"$viewfile")
		if [[ $view == "want $n"* && $view != *" stopping"* ]]; then
			applied=1
			break
		fi
		sleep 0.2
	done
	if [[ $applied -eq 0 ]]; then
		echo "demo.sh scale: the demo has not applied $n origins after 60 s; its view ($viewfile):" >&2
		cat "$viewfile" >&2
		exit 1
	fi

	# 2. Consul agrees: exactly origins 1..N are passing.
	local want_addrs=() missing extra
	for ((i = 1; i <= n; i++)); do want_addrs+=("$(origin_addr "$i")"); done
	for ((i = 0; i < 300; i++)); do
		follow
		missing=() extra=()
		if consul_passing; then
			for a in "${want_addrs[@]}"; do [[ " ${passing[*]} " == *" $a "* ]] || missing+=("$a"); done
			for a in "${passing[@]}"; do [[ " ${want_addrs[*]} " == *" $a "* ]] || extra+=("$a"); done
			if [[ ${#missing[@]} -eq 0 && ${#extra[@]} -eq 0 ]]; then
				echo "demo.sh scale: Consul: $n passing (${passing[*]}) after $((i / 5)).$((i % 5 * 2)) s"
				return 0
			fi
		fi
		sleep 0.2
	done
	follow
	echo "demo.sh scale: after 60 s Consul has ${#passing[@]} passing (${passing[*]}); not yet passing: ${missing[*]:-none}; still passing: ${extra[*]:-none}" >&2
	echo "  the demo's view ($viewfile):" >&2
	cat "$viewfile" >&2
	echo "  origin logs: $logs/origin<N>.log" >&2
	exit 1
}

clean() {
	local p
	if p=$(running_demo); then
		die "a demo is running (pid $p) on $state; stop it first (Ctrl-C in its terminal)"
	fi
	scripts/consul.sh stop >/dev/null 2>&1 || true
	scripts/mariadb-cluster.sh stop >/dev/null 2>&1 || true
	rm -rf "$state"
	say "wiped $state"
}

case ${1:-} in
"") ;;
scale)
	shift
	scale "$@"
	exit 0
	;;
clean)
	clean
	exit 0
	;;
*) usage ;;
esac

# ---- the demo itself ----

port_ok() { [[ $2 =~ ^[0-9]+$ ]] && ((10#$2 >= 1 && 10#$2 <= 65535)) || die "$1 must be a port number, got '$2'"; }
port_ok PODIUM_DEMO_EDGE_PORT "$edge_port"
port_ok PODIUM_DEMO_ADMIN_PORT "$admin_port"
port_ok PODIUM_DEMO_ORIGIN_PORT "$origin_port"
port_ok PODIUM_DEMO_PROMETHEUS_PORT "$prom_port"
port_ok PODIUM_CONSUL_HTTP_PORT "$consul_port"
((origin_port + max_origins - 1 <= 65535)) || die "PODIUM_DEMO_ORIGIN_PORT=$origin_port leaves no room for $max_origins origins"
[[ $origins_at_start =~ ^[1-9]$ ]] || die "PODIUM_DEMO_ORIGINS must be 1..$max_origins, got '$origins_at_start'"
[[ -x $bin ]] || die "$bin missing; run make demo (it builds first)"
if p=$(running_demo); then
	die "a demo is already running (pid $p) on $state; stop it (Ctrl-C), or run one with another PODIUM_STATE and ports"
fi
busy=()
check_ports=("$edge_port" "$admin_port" "$prom_port")
for ((i = 1; i <= origins_at_start; i++)); do check_ports+=($((origin_port + i - 1))); done
for port in "${check_ports[@]}"; do
	if (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; then busy+=("$port"); fi
done
if [[ ${#busy[@]} -gt 0 ]]; then
	die "ports ${busy[*]} are in use on 127.0.0.1; is a demo already running? (stop it, or: make demo-clean)"
fi
# Podium's dashboard is Prometheus console pages (deploy/prometheus/consoles);
# they need the console libraries Debian ships with Prometheus as examples.
prom_libs=${PODIUM_PROM_CONSOLE_LIBRARIES:-/usr/share/doc/prometheus/examples/console_libraries}
[[ -f $prom_libs/prom.lib ]] || die "no prom.lib in $prom_libs: reinstall Debian's prometheus package (scripts/deps.sh obs), or set PODIUM_PROM_CONSOLE_LIBRARIES"

mkdir -p "$logs"
echo $$ >"$pidfile"
cat >"$envfile" <<EOF
# Written by scripts/demo.sh (pid $$): the ports this demo runs on.
edge_port=$edge_port
admin_port=$admin_port
origin_port=$origin_port
prom_port=$prom_port
consul_port=$consul_port
EOF
printf '%s\n' "$origins_at_start" >"$wantfile"
: >"$eventlog"
rm -f "$viewfile" "$logs"/origin[1-9].log
logging=1

# Supervisor state, per origin index 1..9: ostate is "", running,
# restarting (waiting out its backoff until onext) or stopping (SIGTERM
# sent at scale-down, SIGKILL at odeadline); opid its pid; ostart when it
# started; ofails its quick exits in a row (the backoff exponent).
declare -a ostate opid ostart ofails onext odeadline
want=0 bad_want='' view_written='' targets_written=''
edge_pid='' prom_pid='' consul_pid=''
declare -A db_pid=() db_seen=() # MariaDB node -> its pid while up; seen up once
restart_cap_s=30  # longest backoff
stable_ms=60000   # up this long: the next exit starts the backoff at 2 s again
stop_grace_s=30   # a scaled-down origin drains (2 s) and finishes requests; then SIGKILL

# Each process runs in a session of its own (setsid; it does not fork here,
# since a background job of a script is not a group leader, so $! is the
# process itself): a Ctrl-C in the terminal reaches only this script, which
# then stops everything in order, instead of every process at once.
start_origin() {
	local i=$1 how=$2 addr
	addr=$(origin_addr "$i")
	if [[ $how == restart ]]; then
		printf -- '--- demo.sh: origin %d restarted at %(%F %T)T ---\n' "$i" -1 >>"$logs/origin$i.log"
	fi
	setsid "$bin" origin -listen "$addr" -consul "127.0.0.1:$consul_port" </dev/null >>"$logs/origin$i.log" 2>&1 &
	opid[i]=$!
	ostart[i]=$now
	ostate[i]=running
	case $how in
	start) say "origin $i on $addr (pid ${opid[i]})" ;;
	restart) say "origin $i restarted on $addr (pid ${opid[i]}); it registers in Consul again" ;;
	scale) say "origin $i on $addr (pid ${opid[i]}): registers in Consul, the edge slow-starts it" ;;
	esac
}

# origin_exited handles an origin that exited without being asked to.
origin_exited() {
	local i=$1 pid=${opid[i]} st delay last=''
	wait "$pid" && st=0 || st=$?
	exit_desc "$st"
	if ((now - ostart[i] >= stable_ms)); then ofails[i]=0; fi
	delay=$((2 << ${ofails[i]:-0}))
	((delay <= restart_cap_s)) || delay=$restart_cap_s
	ofails[i]=$((${ofails[i]:-0} + 1))
	if ((st <= 128)); then
		last=$(tail -n 1 "$logs/origin$i.log" 2>/dev/null) || true
	fi
	say "origin $i ($(origin_addr "$i"), pid $pid) exited with $desc; restarting in ${delay}s, once Consul has marked it down (at most 10 s more) (log: $logs/origin$i.log)"
	if [[ -n $last ]]; then say "  its last log line: $last"; fi
	ostate[i]=restarting
	opid[i]=''
	onext[i]=$((now + delay * 1000))
}

# still_passing says whether Consul still lists dead origin i as passing,
# for at most consul_wait_s past its backoff: a restart on the same port
# before Consul's check has seen the death would hide it from whoever
# killed it to watch Consul mark it critical. Consul is asked at most once a
# tick (passing_tick), however many origins wait, and an unanswered query
# counts as not passing, so a slow or dead agent never holds a restart back.
consul_wait_s=10
passing_tick='' passing_ok=''
still_passing() {
	local i=$1 addr
	((now < onext[i] + consul_wait_s * 1000)) || return 1
	if [[ $passing_tick != "$now" ]]; then
		passing_tick=$now
		consul_passing && passing_ok=1 || passing_ok=''
	fi
	[[ -n $passing_ok ]] || return 1
	addr=$(origin_addr "$i")
	[[ " ${passing[*]} " == *" $addr "* ]]
}

# read_want takes the wanted number of origins from origins.want.
read_want() {
	local w=''
	if [[ -f $wantfile ]]; then read -r w <"$wantfile" || true; fi
	if [[ $w =~ ^[1-9]$ ]] && ((w <= max_origins)); then
		bad_want=''
		if ((w != want)); then
			if ((want > 0)); then say "scaling origins: $want -> $w"; fi
			want=$w
		fi
	elif [[ $w != "$bad_want" ]]; then
		bad_want=$w
		say "ignoring $wantfile: want a number 1..$max_origins, got '$w'; keeping $want origins"
	fi
}

# supervise_origins moves each origin one step towards the wanted count.
supervise_origins() {
	local i st
	now_ms
	for ((i = 1; i <= max_origins; i++)); do
		case ${ostate[i]:-} in
		running)
			if ! kill -0 "${opid[i]}" 2>/dev/null; then
				origin_exited "$i"
			elif ((i > want)); then
				kill -TERM "${opid[i]}" 2>/dev/null || true
				ostate[i]=stopping
				odeadline[i]=$((now + stop_grace_s * 1000))
				say "origin $i ($(origin_addr "$i"), pid ${opid[i]}): SIGTERM; it goes critical in Consul, drains and deregisters"
			fi
			;;
		restarting)
			if ((i > want)); then
				ostate[i]=''
				say "origin $i: restart cancelled (scaled to $want)"
			elif ((now >= onext[i])) && ! still_passing "$i"; then
				start_origin "$i" restart
			fi
			;;
		stopping)
			if ! kill -0 "${opid[i]}" 2>/dev/null; then
				wait "${opid[i]}" && st=0 || st=$?
				exit_desc "$st"
				say "origin $i ($(origin_addr "$i"), pid ${opid[i]}) stopped: exited with $desc"
				ostate[i]='' opid[i]='' ofails[i]=0
			elif ((now >= odeadline[i])); then
				kill -KILL "${opid[i]}" 2>/dev/null || true
				say "origin $i (pid ${opid[i]}) still running ${stop_grace_s}s after SIGTERM: SIGKILL"
				odeadline[i]=$((now + 3600 * 1000))
			fi
			;;
		"")
			if ((i <= want)); then
				if [[ -n $view_written ]]; then start_origin "$i" scale; else start_origin "$i" start; fi
			fi
			;;
		esac
	done
	write_view
}

# write_view publishes the supervisor's state (origins) and Prometheus's
# origin targets, each renamed into place, and only when it changed. It
# runs every tick, so it forks nothing.
write_view() {
	local i view="want $want" targets=''
	for ((i = 1; i <= max_origins; i++)); do
		[[ -n ${ostate[i]:-} ]] || continue
		view+=$'\n'"$i 127.0.0.1:$((origin_port + i - 1)) ${opid[i]:--} ${ostate[i]}"
	done
	if [[ $view != "$view_written" ]]; then
		printf '%s\n' "$view" >"$viewfile.tmp"
		mv -f "$viewfile.tmp" "$viewfile"
		view_written=$view
	fi
	for ((i = 1; i <= want; i++)); do targets+="${targets:+, }\"127.0.0.1:$((origin_port + i - 1))\""; done
	if [[ $targets != "$targets_written" ]]; then
		printf '[{"targets": [%s]}]\n' "$targets" >"$prom_dir/targets/podium-origin.json.tmp"
		mv -f "$prom_dir/targets/podium-origin.json.tmp" "$prom_dir/targets/podium-origin.json"
		targets_written=$targets
	fi
}

# check_infra stops the demo when the edge, Prometheus or Consul exited,
# and reports MariaDB nodes going down and coming back.
check_infra() {
	local st node p
	if [[ -n $edge_pid ]] && ! kill -0 "$edge_pid" 2>/dev/null; then
		wait "$edge_pid" && st=0 || st=$?
		exit_desc "$st"
		say "the edge (pid $edge_pid) exited with $desc; its log: $logs/edge.log (stopping the demo)"
		edge_pid=''
		exit 1
	fi
	if [[ -n $prom_pid ]] && ! kill -0 "$prom_pid" 2>/dev/null; then
		wait "$prom_pid" && st=0 || st=$?
		exit_desc "$st"
		say "Prometheus (pid $prom_pid) exited with $desc; its log: $logs/prometheus.log (stopping the demo)"
		prom_pid=''
		exit 1
	fi
	if [[ -n $consul_pid ]] && ! kill -0 "$consul_pid" 2>/dev/null; then
		say "the Consul agent (pid $consul_pid) exited; its log: $state/consul/consul.log (stopping the demo)"
		consul_pid=''
		exit 1
	fi
	for node in primary replica1 replica2; do
		p=${db_pid[$node]:-}
		if [[ -n $p ]] && kill -0 "$p" 2>/dev/null; then continue; fi
		if [[ -n $p ]]; then
			db_pid[$node]=''
			say "MariaDB $node (pid $p) is down; log: $state/mariadb/$node/error.log. The demo keeps running; to bring it back: PODIUM_DB_STATE_DIR=$state/mariadb scripts/mariadb-cluster.sh start-node $node"
		fi
		p=''
		[[ -f $state/mariadb/$node/mysqld.pid ]] && read -r p <"$state/mariadb/$node/mysqld.pid" || true
		if [[ $p =~ ^[0-9]+$ ]] && kill -0 "$p" 2>/dev/null; then
			[[ -z ${db_seen[$node]:-} ]] || say "MariaDB $node is back (pid $p)"
			db_pid[$node]=$p
			db_seen[$node]=1
		fi
	done
}

# stop_all stops everything this demo started, in order; a second Ctrl-C
# (hurry) turns every remaining wait into SIGKILL.
stopped=0 hurry=0
stop_all() {
	[[ $stopped -eq 1 ]] && return
	stopped=1
	trap 'hurry=1; say "second interrupt: SIGKILL for whatever is still stopping"' INT TERM
	say "stopping: the edge first (it drains), then the origins (they leave Consul), then the rest"
	local i pids=()
	if [[ -n $edge_pid ]]; then stop_pids "the edge" 15 "$edge_pid"; fi
	for ((i = 1; i <= max_origins; i++)); do
		if [[ -n ${opid[i]:-} ]]; then pids+=("${opid[i]}"); fi
	done
	if [[ ${#pids[@]} -gt 0 ]]; then stop_pids "the origins" "$stop_grace_s" "${pids[@]}"; fi
	if [[ -n $prom_pid ]]; then stop_pids "Prometheus" 15 "$prom_pid"; fi
	# Anything else this shell started (a process whose pid was not yet
	# recorded when the interrupt came).
	pids=()
	for i in $(jobs -p); do
		if kill -0 "$i" 2>/dev/null; then pids+=("$i"); fi
	done
	if [[ ${#pids[@]} -gt 0 ]]; then stop_pids "the remaining processes" 10 "${pids[@]}"; fi
	# In sessions of their own, so that a second Ctrl-C cannot cut them short.
	setsid -w scripts/mariadb-cluster.sh stop >/dev/null 2>&1 || true
	say "MariaDB stopped"
	setsid -w scripts/consul.sh stop >/dev/null 2>&1 || true
	say "Consul stopped"
	rm -f "$pidfile"
	say "stopped; state kept in $state (make demo-clean wipes it)"
}

# stop_pids NAME GRACE PID...: SIGTERM, then SIGKILL after GRACE seconds.
stop_pids() {
	local name=$1 grace=$2 p i alive
	shift 2
	kill -TERM "$@" 2>/dev/null || true
	for ((i = 0; i < grace * 10; i++)); do
		alive=0
		for p in "$@"; do
			if kill -0 "$p" 2>/dev/null; then alive=1; fi
		done
		[[ $alive -eq 1 && $hurry -eq 0 ]] || break
		sleep 0.1
	done
	for p in "$@"; do
		if kill -0 "$p" 2>/dev/null; then
			say "$name: pid $p still running; SIGKILL"
			kill -KILL "$p" 2>/dev/null || true
		fi
	done
	say "$name stopped"
}
trap 'stop_all; exit 0' INT TERM
trap stop_all EXIT
# Bash itself reports a background job killed by a signal the script does
# not trap ("line 586: 20861 Killed  setsid ..."), at whatever line it is
# on; the supervisor says it better. SIGKILL cannot be caught, so this trap
# changes nothing but that report (and children cannot inherit it).
trap '' KILL

say "Consul agent on 127.0.0.1:$consul_port"
setsid -w scripts/consul.sh start
read -r consul_pid <"$state/consul/consul.pid"
say "MariaDB primary and two replicas"
scripts/mariadb-cluster.sh start
eval "$(scripts/mariadb-cluster.sh env)"
"$bin" origin migrate >"$logs/migrate.log" 2>&1 || { cat "$logs/migrate.log" >&2; exit 1; }
scripts/mariadb-cluster.sh wait >/dev/null
check_infra

prom_dir=$logs/prometheus
mkdir -p "$prom_dir/targets" "$state/prometheus"
read_want
supervise_origins

# The edge runs a copy of demo.yaml in $logs: its waiting room's key file
# and state dir are relative to the config file, so they are this state
# dir's, not the checked-in public demo key's; and the Consul address is in
# the file (the edge has no flag for it), so the copy names the demo's port.
tmpl=$(<deploy/edge/demo.yaml)
[[ $tmpl == *127.0.0.1:8500* ]] || die "deploy/edge/demo.yaml no longer names 127.0.0.1:8500; cannot point it at Consul on :$consul_port"
[[ $tmpl == *"key_file: demo-waitroom.keys"* ]] || die "deploy/edge/demo.yaml no longer reads key_file demo-waitroom.keys; cannot give its waiting room this demo's key"
# The room's signing keys (waitroom/keys.go): made once per state dir, so a
# restarted demo keeps every visitor's place; make demo-clean wipes them.
room_keys=$logs/demo-waitroom.keys
if [[ ! -s $room_keys ]]; then
	hex32() { od -An -v -tx1 -N32 /dev/urandom | tr -d ' \n'; }
	(
		umask 077
		printf '# The waiting room keys of this demo, written by scripts/demo.sh.\nid %s\nsign 1 %s\n' "$(hex32)" "$(hex32)" >"$room_keys.tmp"
	)
	mv -f "$room_keys.tmp" "$room_keys"
	say "waiting room keys generated: $room_keys"
fi
edge_cfg=$logs/edge.yaml
printf '# Written by scripts/demo.sh from deploy/edge/demo.yaml, for Consul on :%s.\n%s\n' \
	"$consul_port" "${tmpl//127.0.0.1:8500/127.0.0.1:$consul_port}" >"$edge_cfg"
setsid "$bin" edge -config "$edge_cfg" -listen ":$edge_port" -admin "127.0.0.1:$admin_port" \
	</dev/null >"$logs/edge.log" 2>&1 &
edge_pid=$!
say "edge on :$edge_port, admin 127.0.0.1:$admin_port (pid $edge_pid, config $edge_cfg)"

# Prometheus resolves the relative paths in its config (rule files, target
# files) against the directory of the config path it is given: a symlink
# here to each file of deploy/prometheus puts the target files this demo
# writes (targets/*.json) beside the checked-in config and rules.
for f in deploy/prometheus/*.yml; do ln -sfn "$repo/$f" "$prom_dir/${f##*/}"; done
printf '[{"targets": ["127.0.0.1:%s"]}]\n' "$admin_port" >"$prom_dir/targets/podium-edge.json"
prom_args=(
	--config.file="$prom_dir/prometheus.yml"
	--storage.tsdb.path="$state/prometheus"
	--web.listen-address="127.0.0.1:$prom_port"
	--web.console.templates="$repo/deploy/prometheus/consoles"
	--web.console.libraries="$prom_libs"
)
setsid prometheus "${prom_args[@]}" </dev/null >"$logs/prometheus.log" 2>&1 &
prom_pid=$!
say "Prometheus on 127.0.0.1:$prom_port (pid $prom_pid)"

up=0
for ((i = 0; i < 150; i++)); do
	check_infra
	supervise_origins
	if curl -fsS --max-time 2 -o /dev/null "http://127.0.0.1:$edge_port/api/games" 2>/dev/null; then
		up=1
		break
	fi
	sleep 0.2
done
if [[ $up -eq 0 ]]; then
	say "the edge is not answering http://127.0.0.1:$edge_port/api/games after 30 s; see $logs/edge.log"
	exit 1
fi
origin_ports="http://$(origin_addr 1)/metrics"
for ((i = 2; i <= want; i++)); do origin_ports+="  :$((origin_port + i - 1))"; done
scale_cmd="scripts/demo.sh scale N"
if [[ -n ${PODIUM_STATE:-} ]]; then scale_cmd="PODIUM_STATE=$state $scale_cmd"; fi
cat <<MSG

  Podium is up.
    site          http://127.0.0.1:$edge_port/games
    API           http://127.0.0.1:$edge_port/api/games
    edge metrics  http://127.0.0.1:$admin_port/metrics   (config: /config)
    origins       $origin_ports
    dashboard     http://127.0.0.1:$prom_port/consoles/podium.html   (edge, ticket sale)
    Prometheus    http://127.0.0.1:$prom_port/alerts
    Consul UI     http://127.0.0.1:$consul_port/ui/
    logs          $logs/
  Waiting room "sale" on the buy pages and /api/games/*/buy (deploy/edge/demo.yaml):
    watch it      curl -s 127.0.0.1:$admin_port/rooms
    pause         curl -s -X POST 127.0.0.1:$admin_port/rooms/sale/pause    (and .../resume)
    rate          curl -s -X POST '127.0.0.1:$admin_port/rooms/sale/rate?admit_per_second=5'
    sold out      curl -s -X POST 127.0.0.1:$admin_port/rooms/sale/close    (.../resume reopens it)
  Try a ticket drop:  bin/podium bench run -target http://127.0.0.1:$edge_port -scenario ticket-drop
    (its purchases queue in the room: watch queue_length in /rooms)
  Kill an origin (kill -9 PID; pids in $viewfile): the demo restarts it.
  Scale from another terminal:  $scale_cmd   (1..$max_origins origins)
  Ctrl-C stops everything.

MSG
while true; do
	check_infra
	read_want
	supervise_origins
	sleep 0.5
done
