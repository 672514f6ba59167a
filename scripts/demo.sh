#!/usr/bin/env bash
# Wires a fresh network namespace with three networks through multihome and the real reference
# plugins: a bridge cluster network (bridge + tuning chain) as eth0, a macvlan over a veth master
# as net1, a ptp link as net2. Prints the result, what the pod sees, the wall times of ADD and
# DEL, then checks that DEL left nothing behind. Everything lives in namespaces created here and
# removed on exit. Needs root.
set -euo pipefail

bin=${MULTIHOME:-target/$(rustc -vV | sed -n 's/^host: //p')/release/multihome}
tag="mhdemo-$$"
host="$tag-host"
pod="$tag-pod"
work=$(mktemp -d "/tmp/$tag.XXXX")

cleanup() {
    ip netns del "$pod" 2>/dev/null || true
    ip netns del "$host" 2>/dev/null || true
    rm -rf "$work"
}
trap cleanup EXIT

[ "$(id -u)" -eq 0 ] || { echo "demo: needs root (network namespaces)" >&2; exit 1; }
[ -x "$bin" ] || { echo "demo: $bin not built (make build)" >&2; exit 1; }

ip netns add "$host"
ip netns add "$pod"
ip -n "$host" link set lo up
# The macvlan master: one end of a veth pair inside the demo's host namespace.
ip -n "$host" link add mvmaster type veth peer name mvpeer
ip -n "$host" link set mvmaster up
ip -n "$host" link set mvpeer up

cat > "$work/multihome.conf" <<JSON
{
  "cniVersion": "1.0.0",
  "name": "multihome-demo",
  "type": "multihome",
  "binDir": "/usr/lib/cni",
  "cniDir": "$work/cache",
  "delegates": [
    {"cniVersion": "1.0.0", "name": "cluster", "plugins": [
      {"type": "bridge", "bridge": "mhdemo0", "isGateway": true,
       "ipam": {"type": "host-local", "subnet": "198.18.0.0/24", "dataDir": "$work/ipam",
                "routes": [{"dst": "0.0.0.0/0"}]}},
      {"type": "tuning", "mtu": 1450}]},
    {"cniVersion": "1.0.0", "name": "storage", "type": "macvlan", "master": "mvmaster", "mode": "bridge",
     "ipam": {"type": "host-local", "subnet": "198.18.1.0/24", "dataDir": "$work/ipam"}},
    {"cniVersion": "1.0.0", "name": "p2p", "type": "ptp",
     "ipam": {"type": "host-local", "subnet": "198.18.2.0/24", "dataDir": "$work/ipam"}}
  ]
}
JSON

export CNI_CONTAINERID="$tag" CNI_NETNS="/run/netns/$pod" CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni
export CNI_ARGS="IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=demo"
now() { date +%s%N; }

echo "== ADD ($bin, three networks)"
t0=$(now)
CNI_COMMAND=ADD ip netns exec "$host" "$bin" < "$work/multihome.conf" > "$work/result.json"
t1=$(now)
if command -v jq >/dev/null; then jq . "$work/result.json"; else cat "$work/result.json"; fi

echo "== the pod namespace"
ip -n "$pod" -br addr show
ip -n "$pod" route show

echo "== CHECK"
CNI_COMMAND=CHECK ip netns exec "$host" "$bin" < "$work/multihome.conf"
echo ok

echo "== DEL"
t2=$(now)
CNI_COMMAND=DEL ip netns exec "$host" "$bin" < "$work/multihome.conf"
t3=$(now)
left=$(ip -n "$pod" -o link show | grep -cv ' lo:' || true)
leaked=$(find "$work/ipam" -type f -name '198.18.*' | wc -l)
[ "$left" -eq 0 ] || { echo "demo: $left interface(s) left in the pod" >&2; exit 1; }
[ "$leaked" -eq 0 ] || { echo "demo: $leaked IP(s) still reserved" >&2; exit 1; }
echo "pod interfaces left: 0, IPs still reserved: 0"

printf '== wall time: ADD %d ms, DEL %d ms; binary %s bytes\n' \
    $(( (t1 - t0) / 1000000 )) $(( (t3 - t2) / 1000000 )) "$(stat -c %s "$bin")"
