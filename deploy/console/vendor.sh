#!/bin/sh
# Refresh the web console's vendored front-end parts (broker/server/console/static/vendor/).
#
# The console loads its libraries from the cemesh package itself: nothing is fetched from a CDN
# when it runs, and no build tool is needed then. This script is the only place they come from:
# it takes the pinned versions below from the npm registry (`npm pack`, which checks each
# tarball against the registry's integrity hash), copies each library's ES-module build and its LICENSE, and writes
# VERSIONS. js-yaml ships its ES module unminified, so it is minified here with esbuild (run
# through npx, at vendoring time only). Run it from the repository root: `make console-vendor`.
set -eu

CYTOSCAPE=3.35.0
JS_YAML=4.1.0
ESBUILD=0.28.2

dest=broker/server/console/static/vendor
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

fetch() {  # fetch NAME VERSION: unpack the registry's tarball into $work/NAME
    tarball=$(cd "$work" && npm pack --silent "$1@$2")
    mkdir -p "$work/$1"
    tar -xzf "$work/$tarball" -C "$work/$1" --strip-components=1
}

fetch cytoscape "$CYTOSCAPE"
fetch js-yaml "$JS_YAML"

mkdir -p "$dest"
cp "$work/cytoscape/dist/cytoscape.esm.min.mjs" "$dest/cytoscape.esm.min.mjs"
cp "$work/cytoscape/LICENSE" "$dest/cytoscape.LICENSE"
npx --yes "esbuild@$ESBUILD" "$work/js-yaml/dist/js-yaml.mjs" --minify --format=esm \
    --log-level=warning --outfile="$dest/js-yaml.min.mjs"
cp "$work/js-yaml/LICENSE" "$dest/js-yaml.LICENSE"

{
    echo "# Written by deploy/console/vendor.sh: package, version, what was taken, license."
    echo "cytoscape $CYTOSCAPE dist/cytoscape.esm.min.mjs MIT"
    echo "js-yaml $JS_YAML dist/js-yaml.mjs (minified by esbuild $ESBUILD) MIT"
} >"$dest/VERSIONS"
ls -l "$dest"
