#!/bin/sh
# Installs wrk (the load generator of bench/e2e.py) when it is missing: with apt-get, as root
# only; otherwise it says what to do. Same policy as tests/support/install_servers.sh.
set -eu

command -v wrk >/dev/null 2>&1 && exit 0

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing wrk"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends wrk
else
    echo "wrk is missing: install it (Debian/Ubuntu: sudo apt-get install wrk) and run again" >&2
    exit 1
fi
