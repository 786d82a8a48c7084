#!/usr/bin/env bash
# Install the Debian packages sd3c builds with (only what is missing). Needs root or sudo.
set -e
PKGS="build-essential pkg-config libcjson-dev libstb-dev libpng-dev"
missing=""
for p in $PKGS; do dpkg -s "$p" >/dev/null 2>&1 || missing="$missing $p"; done
[ -z "$missing" ] && exit 0
SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq $missing
