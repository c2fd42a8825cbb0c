#!/usr/bin/env bash
# Node-RED, Node-RED Dashboard 2.0 and headless Chromium for the Node-RED flow tests
# (tests/test_nodered.py) and for trying control/nodered/flows.json by hand.
#
# Idempotent: does nothing when everything is in place. Node-RED and the dashboard come from the
# npm registry into .nodered/ (git-ignored), exactly as tools/nodered/package-lock.json pins them
# (`npm ci`); node/npm and chromium come from apt when missing (needs root or sudo). Never fails
# the build: a tool that cannot be installed is reported, and the tests that need it skip saying
# why.
set -uo pipefail
cd "$(dirname "$0")/.."
SRC=tools/nodered
DIR=.nodered
STAMP="$DIR/.installed-$(cat "$SRC/package.json" "$SRC/package-lock.json" | sha256sum | cut -c1-16)"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
{ command -v node && command -v npm; } >/dev/null 2>&1 || need+=(nodejs npm)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing system packages: ${need[*]}"
    if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }; then
        echo "WARNING: apt-get could not install ${need[*]}: the Node-RED tests will skip" >&2
    fi
fi

[ -f "$STAMP" ] && exit 0
if ! command -v npm >/dev/null 2>&1; then
    echo "WARNING: npm is missing: Node-RED not installed, the Node-RED tests will skip" >&2
    exit 0
fi
mkdir -p "$DIR"
cp "$SRC/package.json" "$SRC/package-lock.json" "$DIR/"
echo "installing Node-RED and @flowfuse/node-red-dashboard (npm ci) into $DIR"
if npm ci --prefix "$DIR" --no-audit --no-fund --loglevel=error; then
    rm -f "$DIR"/.installed-*
    touch "$STAMP"
else
    echo "WARNING: npm ci failed: the Node-RED tests will skip" >&2
fi
exit 0
