#!/usr/bin/env bash
# deps.sh: install the Debian packages Podium's demo, tests and bench use,
# once, skipping what is already there. Safe to run any number of times.
#
#   scripts/deps.sh [group...]   groups: db, peers, obs, all (default: all)
#
# db     mariadb-server mariadb-client   (the origin's primary and replicas)
# peers  haproxy nginx-light wrk util-linux  (the comparison peers, a load tool, taskset)
# obs    prometheus                      (promtool checks metrics and alert rules)
set -euo pipefail

declare -A groups=(
	[db]="mariadb-server mariadb-client"
	[peers]="haproxy nginx-light wrk util-linux"
	[obs]="prometheus"
)
want=()
for g in "${@:-all}"; do
	if [[ $g == all ]]; then
		for k in "${!groups[@]}"; do want+=(${groups[$k]}); done
	elif [[ -n ${groups[$g]:-} ]]; then
		want+=(${groups[$g]})
	else
		echo "deps.sh: unknown group $g (use: ${!groups[*]} all)" >&2
		exit 2
	fi
done

missing=()
for p in "${want[@]}"; do
	# A command substitution, not a pipe into grep -q: under pipefail grep's early
	# exit can SIGPIPE dpkg-query and fail the test for an installed package.
	[[ $(dpkg-query -W -f='${Status}' "$p" 2>/dev/null) == "install ok installed" ]] || missing+=("$p")
done
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -ne 0 ]]; then
	echo "deps.sh: need root to install: ${missing[*]} (run: sudo apt-get install ${missing[*]})" >&2
	exit 1
fi
echo "deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# A fresh machine has no package lists; a stale one may 404.
apt-get update -qq
# Do not let the packages' own services start on the default ports: Podium
# runs its own instances with their own data directories.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
fi
apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
[[ $created_policy -eq 1 ]] && rm -f "$policy"
echo "deps.sh: installed ${missing[*]}" >&2
