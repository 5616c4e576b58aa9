#!/usr/bin/env bash
# fuzz.sh: run every Go fuzz target in the module for a bounded time each.
#
#   scripts/fuzz.sh [FUZZTIME]      default 20s per target (make fuzz)
#
# Targets are found with `go test -list`, so a new Fuzz function is run
# without being named here. A crasher is written by Go under the package's
# testdata/fuzz/FuzzX/; commit it: from then on plain `go test` runs it as a
# regression case. Minimisation is capped so a target's budget is spent
# fuzzing, not shrinking inputs.
set -euo pipefail
repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$repo"
fuzztime=${1:-20s}
ran=0
failed=()
for pkg in $(go list ./...); do
	targets=$(go test -list '^Fuzz' "$pkg" 2>/dev/null) || { echo "fuzz.sh: cannot list $pkg" >&2; exit 1; }
	for target in $targets; do
		[[ $target == Fuzz* ]] || continue
		echo "fuzz.sh: $pkg $target for $fuzztime"
		if ! go test -run '^$' -fuzz "^$target\$" -fuzztime "$fuzztime" -fuzzminimizetime 5s "$pkg"; then
			failed+=("$pkg $target")
		fi
		ran=$((ran + 1))
	done
done
if [[ $ran -eq 0 ]]; then
	echo "fuzz.sh: found no fuzz targets" >&2
	exit 1
fi
if [[ ${#failed[@]} -gt 0 ]]; then
	echo "fuzz.sh: ${#failed[@]} of $ran targets failed: ${failed[*]} (crashers are under each package's testdata/fuzz/)" >&2
	exit 1
fi
echo "fuzz.sh: $ran targets ran $fuzztime each, no failure"
