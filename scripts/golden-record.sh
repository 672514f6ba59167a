#!/usr/bin/env bash
# The record a multihome binary writes, as a golden file for tests/golden (root, Debian's
# reference plugins in /usr/lib/cni):
#
#   scripts/golden-record.sh BINARY DIR
#
# One ADD of the integration tests' two networks (bridge + host-local + tuning as eth0, ptp +
# host-local as net1) into a pod namespace this script creates, the record copied to DIR with
# the run's own names as placeholders (@CONTAINER@, @NETNS@, @IPAM@), then DEL; the namespaces
# and the scratch directory are removed on exit. Run it with the binary of a release whose
# layout is new, e.g. one built from an older commit in a git worktree.
set -euo pipefail

bin=$(realpath "$1")
out=$2
tag=mh-golden-$$
dir=/tmp/$tag
mkdir -p "$dir" "$out"
ip netns add "$tag-h"
ip netns add "$tag-p"
trap 'ip netns del "$tag-h"; ip netns del "$tag-p"; rm -rf "$dir"' EXIT
conf=$(cat <<JSON
{"cniVersion": "1.0.0", "name": "multihome", "type": "multihome", "binDir": "/usr/lib/cni",
 "cniDir": "$dir/cache",
 "delegates": [
   {"cniVersion": "1.0.0", "name": "cluster", "plugins": [
      {"type": "bridge", "bridge": "mhbr0", "isGateway": true,
       "ipam": {"type": "host-local", "subnet": "198.18.0.0/24", "dataDir": "$dir/ipam",
                "routes": [{"dst": "0.0.0.0/0"}]}},
      {"type": "tuning", "mtu": 1400}]},
   {"cniVersion": "1.0.0", "name": "p2p", "type": "ptp",
    "ipam": {"type": "host-local", "subnet": "198.18.2.0/24", "dataDir": "$dir/ipam"}}]}
JSON
)
run() {
    echo "$conf" | ip netns exec "$tag-h" env CNI_COMMAND="$1" CNI_CONTAINERID=ctr-golden \
        CNI_NETNS="/run/netns/$tag-p" CNI_IFNAME=eth0 CNI_PATH=/usr/lib/cni "$bin" >/dev/null
}
run ADD
for record in "$dir"/cache/*.json; do
    name=$(basename "$record" | sed 's/ctr-golden/@CONTAINER@/')
    sed -e "s#/run/netns/$tag-p#@NETNS@#g" -e "s#$dir/ipam#@IPAM@#g" -e 's/ctr-golden/@CONTAINER@/g' \
        "$record" >"$out/$name"
    echo "$out/$name"
done
run DEL
