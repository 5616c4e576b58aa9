#!/usr/bin/env bash
# stress.sh: the suite on a busy machine. Runs each package's tests COUNT
# times (go test -count) beside two CPU hogs, all packages at once, and
# counts the failures of each test: a test that fails on timing alone shows
# here long before it reddens CI.
#
#   scripts/stress.sh [-n COUNT] [-j SHARDS] [PACKAGE...]
#
# COUNT defaults to 50, the packages to every package with tests. SHARDS
# (default 1) splits each package's COUNT over that many processes at once:
# more load, and a slow package (e2e) done sooner. The go test -json output
# of each process and a summary are kept in stress-results/ (RESULTS sets
# another directory). Exit status 1 when any test failed.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
count=50 shards=1
while getopts "n:j:" opt; do
	case $opt in
	n) count=$OPTARG ;;
	j) shards=$OPTARG ;;
	*) echo "usage: scripts/stress.sh [-n COUNT] [-j SHARDS] [PACKAGE...]" >&2; exit 2 ;;
	esac
done
shift $((OPTIND - 1))
if [[ ! $count =~ ^[1-9][0-9]*$ || ! $shards =~ ^[1-9][0-9]*$ ]] || ((shards > count)); then
	echo "stress.sh: -n and -j are positive whole numbers, -j at most -n" >&2
	exit 2
fi
(($# > 0)) || set -- ./...
mapfile -t pkgs < <(go list -f '{{if or .TestGoFiles .XTestGoFiles}}{{.ImportPath}}{{end}}' "$@" | sed '/^$/d')
if ((${#pkgs[@]} == 0)); then
	echo "stress.sh: no package with tests in $*" >&2
	exit 2
fi
out=${RESULTS:-stress-results}
mkdir -p "$out"
rm -f "$out"/*.json "$out"/summary.txt

pids=()
cleanup() {
	for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap cleanup EXIT
# Two CPU hogs at the tests' own priority.
for _ in 1 2; do
	nice -n 10 sh -c 'while :; do :; done' &
	pids+=($!)
done

start=$(date +%s)
runs=()
for pkg in "${pkgs[@]}"; do
	name=${pkg#github.com/podium-edge/podium}
	name=${name#/}
	name=${name//\//-}
	[[ -n $name ]] || name=root
	for ((s = 1; s <= shards; s++)); do
		n=$((count / shards + (s <= count % shards ? 1 : 0)))
		nice -n 10 go test -json -count="$n" -timeout 0 "$pkg" >"$out/$name-$s.json" 2>"$out/$name-$s.err" &
		runs+=($!)
	done
done
echo "stress.sh: ${#pkgs[@]} packages × $count runs ($shards process(es) each) beside two CPU hogs; results in $out/" >&2
for p in "${runs[@]}"; do wait "$p" || true; done

# One line a package: the runs of its top-level tests that passed, and
# every test that failed with how often.
{
	printf 'stress.sh: %s runs each, beside two CPU hogs, %d s, %s\n' "$count" "$(($(date +%s) - start))" "$(git rev-parse --short HEAD)"
	for pkg in "${pkgs[@]}"; do
		name=${pkg#github.com/podium-edge/podium}
		name=${name#/}
		name=${name//\//-}
		[[ -n $name ]] || name=root
		files=("$out/$name"-*.json)
		passes=$(cat "${files[@]}" | grep -c '"Action":"pass".*"Test":"[^"/]*"' || true)
		fails=$(cat "${files[@]}" | grep '"Action":"fail".*"Test":"[^"/]*"' | sed 's/.*"Test":"\([^"]*\)".*/\1/' | sort | uniq -c | awk '{printf "%s×%s ", $2, $1}' || true)
		builds=$(cat "$out/$name"-*.err)
		printf '%-28s %6d passed  %s%s\n' "$name" "$passes" "${fails:+failed: $fails}" "${builds:+(stderr: see $out/$name-*.err)}"
	done
} | tee "$out/summary.txt"
if grep -q 'failed:\|stderr:' "$out/summary.txt"; then
	exit 1
fi
