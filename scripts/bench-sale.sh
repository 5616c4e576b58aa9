#!/usr/bin/env bash
# bench-sale.sh: the purchase path against the database's own rate, in one run.
#
# On one MariaDB cluster (the DSNs of `scripts/mariadb-cluster.sh env` in
# the environment, and PODIUM_DB_STATE_DIR naming its state dir, as
# `make bench` sets them):
#   1. raw: mariadb-slap at c=32 runs the purchase transaction itself
#      (BEGIN; conditional UPDATE games; INSERT tickets; COMMIT) on the
#      primary, for one hot game and spread over 624 games;
#   2. origin: `podium bench run` closed-loop (64 connections) straight at
#      one origin, hot and spread;
#   3. edge: the same through a podium edge in front of that origin;
#   4. p99 of purchases at 1,000/s through the edge (open loop, one game);
#   5. a storm of 5,000 buys/s on a sold-out game through the edge (open
#      loop): p99, and how many of those requests the primary saw
#      (Com_commit, Com_update, Com_insert of SHOW GLOBAL STATUS).
# The games are made for the run (capacity 10,000,000, so nothing sells out
# by accident), 624 of them for "spread". Writes bench-results/sale.md and
# bench-results/sale-*.json. DURATION sets each run (default 15s).
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
bin=${PODIUM_BIN:-bin/podium}
duration=${DURATION:-15s}
slap_tx=${SLAP_TX:-12000}
out=bench-results
mkdir -p "$out"
: "${PODIUM_DB_PRIMARY:?eval \"\$(scripts/mariadb-cluster.sh env)\" first}"
: "${PODIUM_DB_REPLICAS:?eval \"\$(scripts/mariadb-cluster.sh env)\" first}"
: "${PODIUM_DB_MIGRATE:?eval \"\$(scripts/mariadb-cluster.sh env)\" first}"
origin_addr=127.0.0.1:19701
edge_addr=127.0.0.1:19702
edge_admin=127.0.0.1:19703
tmp=$(mktemp -d)
pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$tmp"
}
trap cleanup EXIT
say() { printf 'bench-sale: %s\n' "$*" >&2; }
sql() { scripts/mariadb-cluster.sh sql primary "$1"; }

# user:pass@tcp(host:port)/db, for mariadb-slap.
if [[ ! $PODIUM_DB_PRIMARY =~ ^([^:]+):([^@]*)@tcp\(([^:]+):([0-9]+)\)/([A-Za-z0-9_]+) ]]; then
	say "cannot read PODIUM_DB_PRIMARY ($PODIUM_DB_PRIMARY)"
	exit 1
fi
db_user=${BASH_REMATCH[1]} db_pass=${BASH_REMATCH[2]} db_host=${BASH_REMATCH[3]} db_port=${BASH_REMATCH[4]} db=${BASH_REMATCH[5]}

"$bin" origin migrate -migrate-dsn "$PODIUM_DB_MIGRATE" >"$tmp/migrate.log" 2>&1 || { cat "$tmp/migrate.log" >&2; exit 1; }
run=$(date -u +%Y%m%d%H%M%S)
new_games() { # new_games LABEL COUNT CAPACITY: prints "FIRST LAST"
	sql "INSERT INTO $db.games (sport, event, venue, city, starts_at, price_cents, currency, capacity, remaining)
	     SELECT 'Bench', CONCAT('bench-$run $1 ', seq), 'Bench Arena', 'Benchville', '2030-01-01 10:00:00', 1000, 'EUR', $3, $3
	     FROM $db.seq_1_to_$2"
	sql "SELECT MIN(id), MAX(id) FROM $db.games WHERE event LIKE 'bench-$run $1 %'"
}
read -r slap_hot _ < <(new_games slap-hot 1 10000000)
read -r slap_first slap_last < <(new_games slap-spread 624 10000000)
read -r hot _ < <(new_games hot 1 10000000)
read -r first last < <(new_games spread 624 10000000)
read -r paced _ < <(new_games paced 1 10000000)
read -r gone _ < <(new_games sold-out 1 100)
status() { # the primary's write counters, as "commit update insert"
	sql "SELECT GROUP_CONCAT(VARIABLE_VALUE ORDER BY VARIABLE_NAME SEPARATOR ' ') FROM information_schema.GLOBAL_STATUS
	     WHERE VARIABLE_NAME IN ('COM_COMMIT', 'COM_INSERT', 'COM_UPDATE')"
}
load=$(cut -d' ' -f1-3 /proc/loadavg)

# 1. raw purchase transactions.
slap() { # slap LABEL FIRST COUNT: prints transactions/s
	local q
	q="SET @g = $2 + FLOOR(RAND() * $3); BEGIN; UPDATE $db.games SET remaining = remaining - 1 WHERE id = @g AND remaining >= 1;"
	q+=" INSERT INTO $db.tickets (game_id, email, quantity, order_token, created_at) VALUES (@g, 'slap-$run@example.com', 1, RANDOM_BYTES(16), NOW(6)); COMMIT"
	local before after start end
	before=$(sql "SELECT COUNT(*) FROM $db.tickets WHERE email = 'slap-$run@example.com'")
	start=$(date +%s.%N)
	# 5 statements a transaction; mariadb-slap spreads the count over the clients.
	mariadb-slap --no-defaults --protocol=tcp -h "$db_host" -P "$db_port" -u "$db_user" -p"$db_pass" \
		--create-schema="$db" --concurrency=32 --iterations=1 --number-of-queries=$((slap_tx * 5)) \
		--delimiter=';' --query="$q" >"$tmp/slap-$1.log" 2>&1 || { cat "$tmp/slap-$1.log" >&2; exit 1; }
	end=$(date +%s.%N)
	after=$(sql "SELECT COUNT(*) FROM $db.tickets WHERE email = 'slap-$run@example.com'")
	python3 -c "print(round(($after - $before) / ($end - $start)))"
}
say "mariadb-slap, one hot game"
raw_hot=$(slap hot "$slap_hot" 1)
say "mariadb-slap, spread over 624 games"
raw_spread=$(slap spread "$slap_first" 624)

# 2. and 3. the origin, then the edge in front of it.
"$bin" origin -listen "$origin_addr" -primary "$PODIUM_DB_PRIMARY" -replicas "$PODIUM_DB_REPLICAS" >"$tmp/origin.log" 2>&1 &
pids+=($!)
cat >"$tmp/edge.yaml" <<YAML
listen: "$edge_addr"
admin: "$edge_admin"
discovery: {static: ["$origin_addr"]}
routes: [{name: all, match: {path_prefix: /}}]
ratelimits: {}
access_log: {enabled: false}
YAML
"$bin" edge -config "$tmp/edge.yaml" -drain 0s >"$tmp/edge.log" 2>&1 &
pids+=($!)
for _ in $(seq 1 150); do
	curl -fsS -o /dev/null "http://$edge_addr/api/games/$hot" 2>/dev/null && break
	sleep 0.2
done
curl -fsS -o /dev/null "http://$edge_addr/api/games/$hot" || { say "the edge does not answer; logs:"; cat "$tmp/origin.log" "$tmp/edge.log" >&2; exit 1; }

bench() { # bench NAME TARGET GAMES [flags...]
	local name=$1 target=$2 games=$3
	shift 3
	say "$name"
	"$bin" bench run -target "http://$target" -scenario buy-storm -games "$games" -duration "$duration" -quiet \
		-run-id "$run-$name" -prefix "$out/sale-$name" "$@" >"$tmp/bench-$name.log" 2>&1 || { cat "$tmp/bench-$name.log" >&2; exit 1; }
}
bench origin-hot "$origin_addr" "$hot-$hot" -mode closed
bench origin-spread "$origin_addr" "$first-$last" -mode closed
bench edge-hot "$edge_addr" "$hot-$hot" -mode closed
bench edge-spread "$edge_addr" "$first-$last" -mode closed
bench edge-paced-1000 "$edge_addr" "$paced-$paced" -mode open -rate 1000 -ramp 0

# 5. Sell the game out (its 100 seats in one order), let one refusal mark
# it, then the storm.
sql "BEGIN; UPDATE $db.games SET remaining = 0 WHERE id = $gone;
     INSERT INTO $db.tickets (game_id, email, quantity, order_token, created_at) VALUES ($gone, 'sold@example.com', 100, RANDOM_BYTES(16), NOW(6)); COMMIT"
code=$(curl -sS -o /dev/null -w '%{http_code}' -X POST -H 'Content-Type: application/json' \
	-d '{"quantity": 1, "email": "y@example.com"}' "http://$edge_addr/api/games/$gone/buy")
[[ $code == 409 ]] || { say "sold-out game $gone answered $code, not 409"; exit 1; }
before=$(status)
bench edge-sold-out-5000 "$edge_addr" "$gone-$gone" -mode open -rate 5000 -ramp 0
after=$(status)

python3 - "$out" "$load" "$raw_hot" "$raw_spread" "$before" "$after" <<'PY' | tee "$out/sale.md"
import json, sys
out, load, raw_hot, raw_spread = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
before, after = [list(map(int, s.split())) for s in sys.argv[5:7]]
def r(name):
    return json.load(open(f"{out}/sale-{name}.json"))
def sold(name):
    x = r(name)
    return x["statuses"].get("201", 0) / (x["elapsed_ns"] / 1e9)
def ms(name, p):
    return r(name)["latency"][f"{p}_us"] / 1000
print(f"# Purchases, load average before the run {load}\n")
print("| path | one hot game, purchases/s | × raw | spread over 624 games, purchases/s | × raw |")
print("|---|---|---|---|---|")
print(f"| mariadb-slap c=32 (raw) | {raw_hot} | 1.00 | {raw_spread} | 1.00 |")
for label, name in (("origin direct", "origin"), ("edge → origin", "edge")):
    h, s = sold(f"{name}-hot"), sold(f"{name}-spread")
    print(f"| {label} (64 conns, closed loop) | {h:.0f} | {h / raw_hot:.2f} | {s:.0f} | {s / raw_spread:.2f} |")
p = r("edge-paced-1000")
print(f"\nPaced 1,000 buys/s through the edge, one game: {p['requests']} requests, "
      f"{p['statuses'].get('201', 0)} sold, errors {p['error_count']}, p50 {ms('edge-paced-1000', 'p50'):.2f} ms, "
      f"p99 {ms('edge-paced-1000', 'p99'):.2f} ms, max {ms('edge-paced-1000', 'max'):.2f} ms.")
s = r("edge-sold-out-5000")
d = {k: a - b for k, a, b in zip(("Com_commit", "Com_insert", "Com_update"), after, before)}
n = s["requests"]
print(f"\nSold-out storm, 5,000 buys/s through the edge: {n} requests, statuses {s['statuses']}, errors {s['error_count']}, "
      f"p50 {ms('edge-sold-out-5000', 'p50'):.2f} ms, p99 {ms('edge-sold-out-5000', 'p99'):.2f} ms. "
      "The primary saw " + ", ".join(f"{k} +{v} ({100 * v / max(n, 1):.3f}% of requests)" for k, v in d.items()) + ".")
PY
