#!/bin/sh
# Installs the server binaries that the test fixtures start (each on a free port, in a temp dir).
# Only what is missing is installed, and only with apt-get as root; otherwise it says what to do.
set -eu

missing=""
pg_bin=$(ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -n 1 || true)
if [ -z "$pg_bin" ] && ! command -v initdb >/dev/null 2>&1; then
    missing="$missing postgresql"
fi

[ -z "$missing" ] && exit 0

if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing test servers:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
else
    echo "missing test servers:$missing" >&2
    echo "install them (Debian/Ubuntu: sudo apt-get install$missing) and run again" >&2
    exit 1
fi
