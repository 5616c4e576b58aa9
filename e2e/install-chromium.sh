#!/usr/bin/env bash
# install-chromium.sh: Debian's Chromium for the end-to-end browser tests
# (go test ./e2e/). Does nothing when it is installed already.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
	exit 0
fi
export DEBIAN_FRONTEND=noninteractive
# Refresh the lists only when apt does not know the package yet.
apt-cache show chromium >/dev/null 2>&1 || apt-get update -qq
apt-get install -y -qq chromium >/dev/null
chromium --version
