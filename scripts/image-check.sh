#!/usr/bin/env bash
# Builds the image (podman, offline, FROM scratch with the static binary) and runs its
# `install --once` with a test-made host root mounted, then checks what it wrote: the binary in
# the bin dir and 00-multihome.conflist generated from the primary. Everything is made in a
# temporary directory and removed on exit, the image too. Needs root and podman.
#
# This machine's sandbox has hybrid cgroups and may not raise rlimits, so the container runs
# with runc, the cgroupfs manager, no default ulimits and no network (a test-made
# containers.conf), none of which a node needs.
set -euo pipefail

bin=${1:?usage: image-check.sh STATIC-BINARY}
image="localhost/multihome:check-$$"
work=$(mktemp -d /tmp/mhimage.XXXX)
cleanup() {
    podman rmi -f "$image" >/dev/null 2>&1 || true
    rm -rf "$work"
}
trap cleanup EXIT

cp "$bin" "$work/multihome"
podman build -q -t "$image" -f conf/Containerfile "$work" >/dev/null
echo "image-check: built $image, $(podman image inspect -f '{{.Size}}' "$image") bytes"

root="$work/root"
mkdir -p "$root/etc/cni/net.d" "$root/opt/cni/bin"
cat > "$root/etc/cni/net.d/10-bridge.conflist" <<'JSON'
{"cniVersion": "1.0.0", "name": "cbr", "plugins": [
  {"type": "bridge", "bridge": "cni0", "ipam": {"type": "host-local", "subnet": "198.18.0.0/24"}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
JSON
printf '[containers]\ndefault_ulimits = []\n' > "$work/containers.conf"
CONTAINERS_CONF="$work/containers.conf" podman --runtime runc --cgroup-manager cgroupfs run --rm \
    --network none \
    -v "$root/etc/cni/net.d:/host/etc/cni/net.d" -v "$root/opt/cni/bin:/host/opt/cni/bin" \
    "$image" install --once

cmp "$bin" "$root/opt/cni/bin/multihome"
generated="$root/etc/cni/net.d/00-multihome.conflist"
grep -q '"type": "multihome"' "$generated"
# The primary travels inside the config (no --cni-conf-dir-host): it works on any host layout.
grep -q '"delegates": \[' "$generated"
grep -q '"name": "cbr"' "$generated"
grep -q '"portMappings": true' "$generated"
echo "image-check: install --once in the image wrote the binary and $(basename "$generated")"
