#!/usr/bin/env bash
# deps.sh — installs what ds4 needs on Debian 12, or says exactly what to run.
#
#   scripts/deps.sh         Debian packages needed to build and run
#   scripts/deps.sh --test  also the test-only npm packages, into tests/node/node_modules
#
# Installs with apt-get when running as root (or with passwordless sudo);
# otherwise prints the exact command and exits 1. Quiet when all is present.
set -eu
cd "$(dirname "$0")/.."

PKGS="build-essential libjansson-dev libmicrohttpd-dev libutf8proc-dev libedit-dev libssl-dev"
missing=""
for p in $PKGS; do
    dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
done
if [ -n "$missing" ]; then
    if [ "$(id -u)" = 0 ]; then SUDO=""; elif sudo -n true 2>/dev/null; then SUDO="sudo"; else
        echo "ds4: missing Debian packages:$missing" >&2
        echo "ds4: run:  sudo apt-get install -y$missing" >&2
        exit 1
    fi
    echo "ds4: installing Debian packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    $SUDO apt-get install -y -q $missing >/dev/null || {
        $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q $missing >/dev/null; }
fi

if [ "${1:-}" = "--test" ]; then
    stamp=tests/node/node_modules/.ds4-stamp
    if [ ! -f "$stamp" ] || [ tests/node/package-lock.json -nt "$stamp" ]; then
        command -v npm >/dev/null || { echo "ds4: npm is needed for the tests: sudo apt-get install -y nodejs npm" >&2; exit 1; }
        echo "ds4: installing test-only npm packages into tests/node/node_modules"
        (cd tests/node && npm ci --omit=optional --ignore-scripts --no-audit --no-fund >/dev/null)
        touch "$stamp"
    fi
fi
