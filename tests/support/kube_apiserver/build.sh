#!/bin/sh
# Builds the Kubernetes API server the integration tests run against, once per machine.
#
# What it makes: k8s.io/apiextensions-apiserver (the CRD server inside kube-apiserver: the
# generic registry, etcd3 storage, watch cache, bookmarks, status subresource, 409 and 410),
# compiled from Debian sid's Go source packages, plus etcd 3.5 and kubectl from sid.
#
#   CACHE/bin/{apiextensions-apiserver,etcd,kubectl}   the binaries the fixture runs
#   CACHE/manifest.txt                                 package=version of every deb used
#   CACHE/recipe.sha256                                this script's hash at build time
#   CACHE/debs/                                        the debs (kept: a rebuild is offline)
#
# CACHE is $KUBE_APISERVER_CACHE, else ${XDG_CACHE_HOME:-~/.cache}/cemesh/kube-apiserver.
# When the three binaries exist and recipe.sha256 matches this script, it exits at once (no
# network). apt runs against a private root under CACHE (its own sources, lists, archives and
# an empty dpkg status): the system's apt configuration and packages are never touched, and no
# root is needed. Needs: apt-get, apt-cache, dpkg-deb, the Debian archive keyring, network to
# the Debian mirror this machine uses (cold run only), ~5 GB free while building.
# Env: KUBE_APISERVER_KEEP_BUILD=1 keeps the extracted tree and Go cache for debugging.
set -eu

SCRIPT=$(cd "$(dirname "$0")" && pwd)/$(basename "$0")
CACHE=${KUBE_APISERVER_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/cemesh/kube-apiserver}
BIN=$CACHE/bin DEBS=$CACHE/debs APTROOT=$CACHE/aptroot TREE=$CACHE/tree
RECIPE=$(sha256sum "$SCRIPT" | cut -d' ' -f1)

say() { echo "kube-apiserver: $*"; }
fail() { echo "kube-apiserver: $*" >&2; exit 1; }

if [ -x "$BIN/apiextensions-apiserver" ] && [ -x "$BIN/etcd" ] && [ -x "$BIN/kubectl" ] \
    && [ -s "$CACHE/manifest.txt" ] && [ "$(cat "$CACHE/recipe.sha256" 2>/dev/null)" = "$RECIPE" ]; then
  say "cached in $BIN"
  exit 0
fi
for tool in apt-get apt-cache dpkg-deb sha256sum; do
  command -v "$tool" >/dev/null 2>&1 || fail "$tool is missing (a Debian/Ubuntu system is needed to build the test API server)"
done
[ -r /usr/share/keyrings/debian-archive-keyring.gpg ] \
  || fail "/usr/share/keyrings/debian-archive-keyring.gpg is missing (apt-get install debian-archive-keyring)"
started=$(date +%s)
mkdir -p "$APTROOT/etc/apt/sources.list.d" "$APTROOT/etc/apt/preferences.d" \
  "$APTROOT/lists/partial" "$APTROOT/archives/partial" "$DEBS" "$BIN"

# 1. A private apt root that knows Debian sid only, on the mirror this machine already uses.
mirror=$(sed -n 's/^URIs: *\([^ ]*\).*/\1/p' /etc/apt/sources.list.d/*.sources 2>/dev/null \
  | grep -v security | head -n1 || true)
[ -n "$mirror" ] || mirror=$(awk '$1 == "deb" && $2 !~ /security/ { print $2; exit }' \
  /etc/apt/sources.list 2>/dev/null || true)
[ -n "$mirror" ] || mirror=http://deb.debian.org/debian
cat > "$APTROOT/etc/apt/sources.list.d/sid.sources" <<SOURCES
Types: deb
URIs: $mirror
Suites: sid
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
SOURCES
: > "$APTROOT/status"
apt_options="-o Dir::Etc=$APTROOT/etc/apt -o Dir::Etc::SourceList=/dev/null
  -o Dir::State::Lists=$APTROOT/lists -o Dir::State::status=$APTROOT/status
  -o Dir::Cache=$APTROOT/cache -o Dir::Cache::Archives=$APTROOT/archives
  -o APT::Sandbox::User=$(id -un)"
refresh_index() { apt-get -qq $apt_options update || fail "apt-get update of Debian sid on $mirror failed"; }
ls "$APTROOT"/lists/*_Packages* >/dev/null 2>&1 || refresh_index

# 2. Which debs: the Go dependency closure of the apiextensions-apiserver source package
#    (golang-* only; that includes the Go toolchain), plus etcd-server and kubectl.
resolve() {
  apt-cache $apt_options depends --recurse --no-recommends --no-suggests --no-conflicts \
      --no-breaks --no-replaces --no-enhances golang-k8s-apiextensions-apiserver-dev \
    | grep '^golang-' | sort -u > "$CACHE/closure.txt"
  [ -s "$CACHE/closure.txt" ] || fail "Debian sid has no golang-k8s-apiextensions-apiserver-dev"
  apt-cache $apt_options show --no-all-versions $(cat "$CACHE/closure.txt") etcd-server kubectl \
    | awk -v out="$CACHE/manifest.txt" '
        /^Package:/ { name = $2 } /^Version:/ { version = $2 }
        /^Size:/ { bytes += $2; count++; print name "=" version > out }
        END { printf "kube-apiserver: %d debs, %.0f MB\n", count, bytes / 1e6 }'
}
deb_file() { echo "$DEBS/${1}_$(echo "$2" | sed 's/:/%3a/')_"*.deb; }
not_downloaded() {
  while IFS== read -r name version; do
    ls $(deb_file "$name" "$version") >/dev/null 2>&1 || echo "$name=$version"
  done < "$CACHE/manifest.txt"
}
resolve
cd "$DEBS"
wanted=$(not_downloaded)
if [ -n "$wanted" ] && ! apt-get -qq $apt_options download $wanted; then
  # sid moved since the index was fetched: refresh once and resolve again.
  refresh_index; resolve; wanted=$(not_downloaded)
  [ -z "$wanted" ] || apt-get -qq $apt_options download $wanted || fail "downloading the debs failed"
fi
downloaded=$(date +%s)
say "resolve and download: $((downloaded - started)) s"

# 3. Unpack (no dpkg database, no maintainer scripts) into a private tree.
rm -rf "$TREE" "$CACHE/unpack"
mkdir -p "$TREE"
while IFS== read -r name version; do
  case $name in
    etcd-server|kubectl)
      dpkg-deb -x $(deb_file "$name" "$version") "$CACHE/unpack"
      binary=${name%-server}
      cp "$CACHE/unpack/usr/bin/$binary" "$BIN/.$binary.new"
      mv -f "$BIN/.$binary.new" "$BIN/$binary" ;;  # mv: a running old binary keeps its inode
    *) dpkg-deb -x $(deb_file "$name" "$version") "$TREE" ;;
  esac
done < "$CACHE/manifest.txt"
rm -rf "$CACHE/unpack"

# 4. Standalone use. Inside kube-apiserver, the aggregator serves /apis and the OpenAPI v3 of
#    CRDs; the CRD server alone turns its discovery off and lists CRD groups only in the
#    aggregated discovery. Three small edits keep legacy /apis discovery (kubectl's kind
#    mapping), list CRD groups there, and run the CRD OpenAPI v3 controller (kubectl explain).
src=$TREE/usr/share/gocode/src/k8s.io/apiextensions-apiserver/pkg/apiserver
sed -i \
  -e 's|^\tc.GenericConfig.EnableDiscovery = false$|\t// cemesh: discovery stays on|' \
  -e 's|^\(\tdiscoveryController := NewDiscoveryController(.*\)$|\1\n\tdiscoveryController.legacyGroups = genericServer.DiscoveryGroupManager // cemesh|' \
  -e 's|^\t\tif s.GenericAPIServer.StaticOpenAPISpec != nil {$|\t\tif true { // cemesh|' \
  "$src/apiserver.go"
sed -i \
  -e 's|^\tresourceManager discoveryendpoint.ResourceManager$|&\n\tlegacyGroups discovery.GroupManager // cemesh|' \
  -e 's|^\t\tc.groupHandler.unsetDiscovery(version.Group)$|&\n\t\tif c.legacyGroups != nil { c.legacyGroups.RemoveGroup(version.Group) } // cemesh|' \
  -e 's|^\tc.groupHandler.setDiscovery(version.Group, discovery.NewAPIGroupHandler(Codecs, apiGroup))$|&\n\tif c.legacyGroups != nil { c.legacyGroups.AddGroup(apiGroup) } // cemesh|' \
  "$src/customresource_discovery_controller.go"
edits=$(cat "$src/apiserver.go" "$src/customresource_discovery_controller.go" | grep -c '// cemesh' || true)
[ "$edits" = 6 ] || fail "the standalone edits matched $edits of 6 lines: the sid sources changed; update $SCRIPT"
unpacked=$(date +%s)
say "unpack: $((unpacked - downloaded)) s"

# 5. Offline build in GOPATH mode against the unpacked /usr/share/gocode.
goroot=$(ls -d "$TREE"/usr/lib/go-1.* | sort -V | tail -n1)
kube_version=$(sed -n 's/^golang-k8s-apiextensions-apiserver-dev=0\.\([0-9]*\.[0-9]*\).*/1.\1/p' "$CACHE/manifest.txt")
version_pkg=k8s.io/component-base/version
say "building apiextensions-apiserver v$kube_version with $("$goroot/bin/go" version | cut -d' ' -f3)"
env GOROOT="$goroot" GOPATH="$TREE/usr/share/gocode" GO111MODULE=off GOPROXY=off GOFLAGS= \
    GOTOOLCHAIN=local CGO_ENABLED=0 GOCACHE="$CACHE/gocache" \
  "$goroot/bin/go" build -trimpath -o "$BIN/.apiextensions-apiserver.new" \
    -ldflags "-s -w -X $version_pkg.gitVersion=v$kube_version -X $version_pkg.gitMajor=1 -X $version_pkg.gitMinor=$(echo "$kube_version" | cut -d. -f2)" \
    k8s.io/apiextensions-apiserver
mv -f "$BIN/.apiextensions-apiserver.new" "$BIN/apiextensions-apiserver"
[ "${KUBE_APISERVER_KEEP_BUILD:-0}" = 1 ] || rm -rf "$TREE" "$CACHE/gocache"
echo "$RECIPE" > "$CACHE/recipe.sha256"
built=$(date +%s)
say "build: $((built - unpacked)) s; total $((built - started)) s; binaries in $BIN"
