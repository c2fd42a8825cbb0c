#!/usr/bin/env bash
# System packages edgeva's tests and demo use: mosquitto (MQTT 5 broker + clients), ffmpeg
# (RTSP test peer), openssl (test certificates for TLS links), iproute2 (network-namespace
# link test). Installs only what is missing; needs root or sudo for apt-get.
set -euo pipefail
need=()
command -v mosquitto >/dev/null 2>&1 || [ -x /usr/sbin/mosquitto ] || need+=(mosquitto)
command -v mosquitto_pub >/dev/null 2>&1 || need+=(mosquitto-clients)
command -v ffmpeg >/dev/null 2>&1 || need+=(ffmpeg)
command -v openssl >/dev/null 2>&1 || need+=(openssl)
command -v ip >/dev/null 2>&1 || need+=(iproute2)
[ ${#need[@]} -eq 0 ] && exit 0
SUDO=""
[ "$(id -u)" -eq 0 ] || SUDO="sudo"
echo "installing system packages: ${need[*]}"
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
