#!/usr/bin/env bash
# Node-RED, Node-RED Dashboard 2.0 and headless Chromium for the Node-RED flow tests
# (tests/test_nodered*.py) and for trying control/nodered/flows.json by hand.
#
# Idempotent: does nothing when everything is in place. Node-RED and the dashboard come from the
# npm registry into .nodered/ (git-ignored; versions pinned below); node/npm and chromium come
# from apt when missing (needs root or sudo). Never fails the build: a tool that cannot be
# installed is reported, and the tests that need it skip saying why.
set -uo pipefail
cd "$(dirname "$0")/.."
NODERED_VERSION=4.1.15
DASHBOARD_VERSION=1.31.0
DIR=.nodered
STAMP="$DIR/.installed-$NODERED_VERSION-$DASHBOARD_VERSION"

SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
need=()
command -v node >/dev/null 2>&1 && command -v npm >/dev/null 2>&1 || need+=(nodejs npm)
command -v chromium >/dev/null 2>&1 || need+=(chromium)
if [ ${#need[@]} -gt 0 ]; then
    echo "installing system packages: ${need[*]}"
    if { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
            $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null; }; then
        :
    else
        echo "WARNING: apt-get could not install ${need[*]}: the Node-RED tests will skip" >&2
    fi
fi

[ -f "$STAMP" ] && exit 0
if ! command -v npm >/dev/null 2>&1; then
    echo "WARNING: npm is missing: Node-RED not installed, the Node-RED tests will skip" >&2
    exit 0
fi
mkdir -p "$DIR"
# A package.json of our own keeps npm from walking up into the repository.
[ -f "$DIR/package.json" ] || echo '{"name": "edgeva-nodered-tools", "private": true}' > "$DIR/package.json"
echo "installing node-red@$NODERED_VERSION and @flowfuse/node-red-dashboard@$DASHBOARD_VERSION into $DIR"
if npm install --prefix "$DIR" --no-audit --no-fund --loglevel=error --save-exact \
        "node-red@$NODERED_VERSION" "@flowfuse/node-red-dashboard@$DASHBOARD_VERSION"; then
    rm -f "$DIR"/.installed-*
    touch "$STAMP"
else
    echo "WARNING: npm install failed: the Node-RED tests will skip" >&2
fi
exit 0
