#!/usr/bin/env bash
# Prometheus and promtool for the tests (tests/test_prometheus.py): a real Prometheus scrapes an
# agent and answers the Grafana dashboard's queries; promtool lints the exposition format.
# Debian's `prometheus` package is downloaded and unpacked, not installed: no service starts, no
# system user is made, nothing outside DEST changes. Idempotent. Usage: install-prometheus.sh DEST
set -euo pipefail
dest=${1:?usage: $0 DEST (e.g. .venv/bin)}
[ -x "$dest/prometheus" ] && [ -x "$dest/promtool" ] && exit 0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
# apt-get download needs package lists; refresh them once if they are missing (fresh image).
if ! apt-get download prometheus >/dev/null 2>&1; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    apt-get download prometheus >/dev/null
fi
dpkg -x prometheus_*.deb root
cd - >/dev/null
install -m 0755 "$work/root/usr/bin/prometheus" "$work/root/usr/bin/promtool" "$dest/"
echo "prometheus and promtool in $dest: $("$dest/prometheus" --version 2>&1 | head -1)"
