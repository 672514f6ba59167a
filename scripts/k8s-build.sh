#!/usr/bin/env bash
# Builds the Kubernetes server binaries (kube-apiserver, kube-controller-manager, kube-scheduler,
# kubelet) from Debian bookworm's `kubernetes` source package, which carries the whole tree with
# its vendor/ directory, and caches them by source and Go version: a second run prints the cached
# directory at once. Prints the directory holding the four binaries on stdout.
#
#   scripts/k8s-build.sh [CACHE_DIR]     (default: /var/cache/multihome-k8s)
#
# The machine's apt configuration is left alone: the deb-src index is fetched into a private
# directory. One vendored library is swapped: github.com/modern-go/reflect2 1.0.1 crashes every
# binary under Go >= 1.18, and Debian's 1.0.2 replaces it as it is.
set -euo pipefail

cache=${1:-/var/cache/multihome-k8s}
log() { echo "k8s-build: $*" >&2; }

export DEBIAN_FRONTEND=noninteractive
need=()
for p in golang-go rsync jq golang-github-modern-go-reflect2-dev; do
    dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
done
if [ ${#need[@]} -gt 0 ]; then
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

go_version=$(go env GOVERSION)
mkdir -p "$cache"
apt_dir="$cache/apt"
mkdir -p "$apt_dir/parts" "$apt_dir/lists/partial"
cat > "$apt_dir/parts/src.sources" <<'EOF'
Types: deb-src
URIs: http://deb.debian.org/debian
Suites: bookworm
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb-src
URIs: http://deb.debian.org/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
EOF
apt_opts=(-o Dir::Etc::SourceList=/dev/null -o "Dir::Etc::SourceParts=$apt_dir/parts"
          -o "Dir::State::Lists=$apt_dir/lists")

# The version decides the cache key; the index is fetched only when no build is cached yet.
version_file="$cache/source-version"
if [ ! -s "$version_file" ]; then
    apt-get "${apt_opts[@]}" update -qq 2>/dev/null
    apt-cache "${apt_opts[@]}" showsrc kubernetes | sed -n 's/^Version: //p' | sort -V | tail -1 \
        > "$version_file"
fi
source_version=$(cat "$version_file")
out="$cache/bin-$source_version-$go_version"
binaries=(kube-apiserver kube-controller-manager kube-scheduler kubelet)
cached() {
    local b
    for b in "${binaries[@]}"; do [ -x "$out/$b" ] || return 1; done
}
if cached; then
    log "cached: $out"
    echo "$out"
    exit 0
fi

work="$cache/src"
rm -rf "$work"
mkdir -p "$work"
log "fetching the source of kubernetes $source_version"
apt-get "${apt_opts[@]}" update -qq 2>/dev/null
(cd "$work" && apt-get "${apt_opts[@]}" source --download-only -qq "kubernetes=$source_version" \
    >/dev/null 2>&1)
tar -xzf "$work"/kubernetes_*.orig.tar.gz -C "$work"
tree=$(find "$work" -mindepth 1 -maxdepth 1 -type d -name 'kubernetes-*' | head -1)

vendored="$tree/vendor/github.com/modern-go/reflect2"
rm -rf "$vendored"
cp -r /usr/share/gocode/src/github.com/modern-go/reflect2 "$vendored"
rm -f "$vendored/go.mod"

mkdir -p "$tree/.go/src/k8s.io"
ln -sfn ../../.. "$tree/.go/src/k8s.io/kubernetes"
log "building ${binaries[*]} (about 7 minutes on 2 cores)"
start=$(date +%s)
(
    cd "$tree"
    export GOPATH="$tree/.go" GOFLAGS=-mod=vendor CGO_ENABLED=0 GOCACHE="$cache/gocache"
    make WHAT="cmd/kube-apiserver cmd/kubelet cmd/kube-scheduler cmd/kube-controller-manager" \
        >"$cache/build.log" 2>&1
) || { tail -30 "$cache/build.log" >&2; exit 1; }
mkdir -p "$out.tmp"
for b in "${binaries[@]}"; do
    cp "$tree/_output/bin/$b" "$out.tmp/$b"
done
rm -rf "$out"
mv "$out.tmp" "$out"
rm -rf "$work"
log "built in $(( $(date +%s) - start )) s: $out"
echo "$out"
