#!/usr/bin/env bash
# bench-deps.sh: install what `podium bench compare` needs, if missing:
# HAProxy 2.6 and nginx 1.22 (the comparison peers, Debian 12's packages),
# wrk (a second load tool, for cross-checking podium bench by hand) and
# taskset (util-linux; pins the proxy and the load to separate CPUs).
# Safe to run any number of times; does nothing when all are there.
set -euo pipefail

have() { command -v "$1" >/dev/null 2>&1 || [[ -x /usr/sbin/$1 ]]; }

missing=()
have haproxy || missing+=(haproxy)
# nginx-light is enough (proxy, upstream keepalive, proxy_cache); any
# nginx already installed will do.
have nginx || missing+=(nginx-light)
have wrk || missing+=(wrk)
have taskset || missing+=(util-linux)
[[ ${#missing[@]} -eq 0 ]] && exit 0

if [[ $(id -u) -ne 0 ]]; then
	echo "bench-deps.sh: need root to install: ${missing[*]} (run: sudo apt-get install ${missing[*]})" >&2
	exit 1
fi
echo "bench-deps.sh: installing ${missing[*]}" >&2
export DEBIAN_FRONTEND=noninteractive
# Update the package lists only when apt cannot see a package: a fresh
# machine has none, and an update costs tens of seconds.
for p in "${missing[@]}"; do
	if ! apt-cache show "$p" >/dev/null 2>&1; then
		apt-get update -qq
		break
	fi
done
# Keep the packages' own services from starting on ports 80 and 8404: the
# bench runs its own instances on free loopback ports.
policy=/usr/sbin/policy-rc.d
created_policy=0
if [[ ! -e $policy ]]; then
	printf '#!/bin/sh\nexit 101\n' >"$policy" && chmod +x "$policy" && created_policy=1
fi
trap '[[ $created_policy -eq 1 ]] && rm -f "$policy"' EXIT
if ! apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null; then
	# A stale package list can point at versions the mirror no longer has.
	apt-get update -qq
	apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
haproxy -v | head -n1
nginx -v 2>&1
