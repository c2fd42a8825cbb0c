#!/usr/bin/env bash
# `make docker-check`: what can be checked of docker/ without a container engine.
# - hadolint on both Dockerfiles (any finding fails; ignores carry their reason in a comment);
# - compose.yaml against the compose specification's schema (vendored in check-jsonschema);
# - the k3s manifests against Kubernetes' schemas (vendored in kubernetes-validate), strict, for
#   the oldest and newest Kubernetes this targets;
# - compose's broker configuration run by the real mosquitto: its users log in with the
#   documented passwords, a wrong one is refused, the ACL loads.
# Needs hadolint, check-jsonschema and kubernetes-validate on PATH (.venv-tools), mosquitto.
set -euo pipefail
cd "$(dirname "$0")"
fail=0
step() { echo "== $*"; }

step "hadolint Dockerfile jetson/Dockerfile"
hadolint Dockerfile jetson/Dockerfile || fail=1

step "check-jsonschema compose.yaml (compose-spec)"
check-jsonschema --builtin-schema vendor.compose-spec compose.yaml || fail=1

for v in 1.30.0 1.37.0; do
    step "kubernetes-validate --strict -k $v k3s/*.yaml"
    kubernetes-validate --strict -k "$v" k3s/*.yaml || fail=1
done

step "compose's mosquitto configuration, run by mosquitto"
work=$(mktemp -d)
pid=""
cleanup() { [ -n "$pid" ] && kill "$pid" 2>/dev/null; rm -rf "$work"; }
trap cleanup EXIT
port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cp mosquitto/passwd mosquitto/acl "$work/"
chmod 600 "$work/passwd"
# the container's paths -> the copies; the container's port -> a free one; run as ourselves
sed -e "s#/mosquitto/config/#$work/#; s#/mosquitto/data/#$work/#; s#^listener 1883#listener $port 127.0.0.1#" \
    mosquitto/mosquitto.conf >"$work/mosquitto.conf"
echo "user $(id -un)" >>"$work/mosquitto.conf"
MOSQUITTO=$(command -v mosquitto || echo /usr/sbin/mosquitto)
"$MOSQUITTO" -c "$work/mosquitto.conf" >"$work/log" 2>&1 &
pid=$!
pub() { mosquitto_pub -h 127.0.0.1 -p "$port" -q 1 -u "$1" -P "$2" -t "edgeva/v1/cam-01/state" -m x 2>&1; }
for _ in $(seq 50); do pub cam-01 dev-cam-01 >/dev/null && break; sleep 0.1; done
for up in cam-01:dev-cam-01 acme:dev-acme ops:dev-ops; do
    if out=$(pub "${up%%:*}" "${up#*:}"); then echo "ok: ${up%%:*} logs in"; else echo "FAIL: ${up%%:*}: $out"; fail=1; fi
done
if out=$(pub acme wrong-password); then echo "FAIL: a wrong password was accepted"; fail=1; else echo "ok: a wrong password is refused ($out)"; fi
if grep -qi "error" "$work/log"; then echo "FAIL: mosquitto logged errors:"; cat "$work/log"; fail=1; fi

if [ "$fail" -ne 0 ]; then echo "docker-check: FAILED"; exit 1; fi
echo "docker-check: OK (no image was built or run: there is no container engine here)"
