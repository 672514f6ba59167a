#!/usr/bin/env bash
# Proves the release binary runs on any Linux node: it is statically linked, answers VERSION in
# an empty directory used as root (nothing but itself, /etc/hosts and /etc/resolv.conf, what a
# node always has), and resolves a kubeconfig server name from that /etc/hosts. Everything lives
# in a directory and a network namespace made here, removed on exit. Needs root.
set -euo pipefail

bin=${1:?usage: check-static.sh BINARY}
tag="mhstatic-$$"
root=$(mktemp -d "/tmp/$tag.XXXX")
cleanup() {
    ip netns del "$tag" 2>/dev/null || true
    rm -rf "$root"
}
trap cleanup EXIT

if ldd "$bin" >/dev/null 2>&1; then
    echo "check-static: $bin is dynamically linked:" >&2
    ldd "$bin" >&2
    exit 1
fi
echo "check-static: $(file -b "$bin" | cut -d, -f1-4); $(stat -c %s "$bin") bytes"

mkdir -p "$root/etc" "$root/run/netns"
cp "$bin" "$root/multihome"
echo "127.0.0.1 apiserver.test" > "$root/etc/hosts"
echo "nameserver 127.0.0.1" > "$root/etc/resolv.conf"

out=$(echo '{"cniVersion":"1.0.0"}' | CNI_COMMAND=VERSION chroot "$root" /multihome)
echo "check-static: VERSION in an empty root: $out"
case "$out" in *'"supportedVersions"'*) ;; *) echo "check-static: no VERSION reply" >&2; exit 1 ;; esac

# A name only /etc/hosts knows: the connection to it is refused (nothing listens on port 1),
# which proves the name was resolved; a name nobody knows fails to resolve.
ip netns add "$tag"
ip -n "$tag" link set lo up
touch "$root/run/netns/pod"
try() {
    printf "clusters: [{name: c, cluster: {server: 'https://%s:1', insecure-skip-tls-verify: true}}]\n" "$1" > "$root/kubeconfig"
    echo '{"cniVersion":"1.0.0","name":"m","type":"multihome","cniDir":"/cache","kubeconfig":"/kubeconfig","apiAttempts":1,"logLevel":"panic","delegates":[{"name":"x","type":"bridge"}]}' |
        CNI_COMMAND=ADD CNI_CONTAINERID=c CNI_NETNS=/run/netns/pod CNI_IFNAME=eth0 \
        CNI_ARGS="K8S_POD_NAMESPACE=a;K8S_POD_NAME=b" ip netns exec "$tag" chroot "$root" /multihome || true
}
known=$(try apiserver.test)
unknown=$(try nowhere.test)
case "$known" in *"Connection refused"*) ;; *) echo "check-static: apiserver.test not resolved: $known" >&2; exit 1 ;; esac
case "$unknown" in *"dns error"*) ;; *) echo "check-static: nowhere.test resolved?: $unknown" >&2; exit 1 ;; esac
echo "check-static: /etc/hosts names resolve in the empty root (apiserver.test -> 127.0.0.1: connection refused, as it should be)"
