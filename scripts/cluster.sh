#!/usr/bin/env bash
# A real one-node Kubernetes 1.20 (etcd, kube-apiserver, controller-manager, scheduler, kubelet,
# containerd), entirely inside a network namespace and a private mount namespace this script
# creates and removes: nothing in the machine's own namespace, no machine setting changed.
#
#   scripts/cluster.sh up       start it (binaries built once, then cached), with multihome's
#                               image (built from the tree) imported into the node
#   scripts/cluster.sh install  install multihome: kubectl apply -f conf/multihome-daemonset.yml
#   scripts/cluster.sh images   rebuild multihome's images from the tree and import them into the
#                               running node (then delete the DaemonSet's pod to run them)
#   scripts/cluster.sh restart-kubelet
#                               stop kubelet and start it again, pods running
#   scripts/cluster.sh restart-apiserver
#                               stop kube-apiserver and start it again (watches break)
#   scripts/cluster.sh down     stop everything it started and remove what it made
#   scripts/cluster.sh env      the variables to talk to it (KUBECONFIG, the node's netns)
#   scripts/cluster.sh node CMD run CMD inside the node (its network and mount namespaces)
#
# State lives in $MH_CLUSTER_DIR (default /tmp/multihome-cluster). Addresses: the node
# 198.18.250.1/24, Services 198.19.128.0/24, pods of the primary bridge 198.18.8.0/24.
#
# kubelet writes three kernel sysctls machine-wide at start; in the node's mount namespace their
# /proc/sys files are covered by files of ours that already hold the values it wants, so it
# writes nothing real. containerd and kubelet share that mount namespace, in which directories
# of the work dir cover /run, /var/lib/kubelet, /var/lib/cni, /var/log, /etc/cni/net.d and /opt.
set -euo pipefail

cd "$(dirname "$0")/.."
work=${MH_CLUSTER_DIR:-/tmp/multihome-cluster}
node_ip=198.18.250.1
service_range=198.19.128.0/24
service_ip=198.19.128.1
node_name=mh-node
log() { echo "cluster: $*" >&2; }

pid_of() { cat "$work/pids/$1" 2>/dev/null || true; }
alive() { local p; p=$(pid_of "$1"); [ -n "$p" ] && kill -0 "$p" 2>/dev/null; }
netns() { cat "$work/netns" 2>/dev/null || true; }

# Runs "$@" in the node: its network namespace and the private mount namespace.
in_node() {
    nsenter -t "$(pid_of holder)" -m -n -- "$@"
}

# Waits up to $1 seconds for "${@:2}" to succeed.
wait_for() {
    local limit=$1
    shift
    local start=$SECONDS
    until "$@" >/dev/null 2>&1; do
        if [ $((SECONDS - start)) -ge "$limit" ]; then
            log "timed out after ${limit}s waiting for: $*"
            return 1
        fi
        sleep 0.5
    done
}

# The CPU cgroup of the node's own services (etcd, the control plane, containerd and what it
# runs, kubelet), as systemd's system.slice is on a real node: together they weigh as one
# against the pods' cgroups (k8s.io) instead of each thread of theirs weighing as much as all
# pods together, which starved the pods (the multihome daemon among them) during bursts.
node_cgroup=/sys/fs/cgroup/cpu/multihome-node

# Starts "${@:2}" in the background as $1, in the node's CPU cgroup, its output appended to
# logs/$1.log, its PID remembered.
start() {
    local name=$1
    shift
    (
        [ ! -d "$node_cgroup" ] || echo "$BASHPID" >"$node_cgroup/cgroup.procs"
        # A function (in_node) runs in this subshell, as it did when started with '&'.
        if declare -F "$1" >/dev/null; then "$@"; else exec "$@"; fi
    ) >>"$work/logs/$name.log" 2>&1 &
    echo $! >"$work/pids/$name"
}

install_deps() {
    local need=()
    for p in etcd-server containerd runc iptables openssl podman busybox-static gcc libc6-dev \
        util-linux iproute2 containernetworking-plugins curl; do
        dpkg -s "$p" >/dev/null 2>&1 || need+=("$p")
    done
    command -v kubectl >/dev/null || need+=(kubernetes-client)
    if [ ${#need[@]} -gt 0 ]; then
        log "installing ${need[*]}"
        export DEBIAN_FRONTEND=noninteractive
        apt-get update -qq
        apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
    fi
}

certificates() {
    local pki=$work/pki
    mkdir -p "$pki"
    openssl req -x509 -newkey rsa:2048 -nodes -days 2 -subj /CN=multihome-e2e-ca \
        -keyout "$pki/ca.key" -out "$pki/ca.crt" 2>/dev/null
    openssl req -newkey rsa:2048 -nodes -subj /CN=kube-apiserver \
        -keyout "$pki/apiserver.key" -out "$pki/apiserver.csr" 2>/dev/null
    printf 'subjectAltName=IP:%s,IP:%s,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local\n' \
        "$node_ip" "$service_ip" >"$pki/san.ext"
    openssl x509 -req -in "$pki/apiserver.csr" -CA "$pki/ca.crt" -CAkey "$pki/ca.key" \
        -CAcreateserial -days 2 -extfile "$pki/san.ext" -out "$pki/apiserver.crt" 2>/dev/null
    openssl genrsa -out "$pki/sa.key" 2048 2>/dev/null
    openssl rsa -in "$pki/sa.key" -pubout -out "$pki/sa.pub" 2>/dev/null
}

# A static token and a kubeconfig for each identity.
identities() {
    : >"$work/pki/tokens.csv"
    local name user groups token
    for name in admin node controller-manager scheduler; do
        case $name in
            admin) user=admin groups=system:masters ;;
            node) user=system:node:$node_name groups=system:nodes ;;
            controller-manager) user=system:kube-controller-manager groups= ;;
            scheduler) user=system:kube-scheduler groups= ;;
        esac
        token=$(openssl rand -hex 16)
        echo "$token,$user,$user,\"$groups\"" >>"$work/pki/tokens.csv"
        cat >"$work/$name.kubeconfig" <<EOF
apiVersion: v1
kind: Config
clusters:
- name: e2e
  cluster:
    server: https://$node_ip:6443
    certificate-authority: $work/pki/ca.crt
users:
- name: $name
  user:
    token: $token
contexts:
- name: e2e
  context: {cluster: e2e, user: $name}
current-context: e2e
EOF
    done
}

# The sandbox (pause) image, a busybox image for test pods, and multihome's own image, imported
# into the node's containerd. No image is pulled.
images() {
    local img=$work/images
    mkdir -p "$img/pause" "$img/busybox"
    cat >"$img/pause/pause.c" <<'EOF'
#include <signal.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
int main(void) {
    signal(SIGINT, quit);
    signal(SIGTERM, quit);
    for (;;) pause();
}
EOF
    gcc -static -O2 -o "$img/pause/pause" "$img/pause/pause.c"
    printf 'FROM scratch\nCOPY pause /pause\nENTRYPOINT ["/pause"]\n' >"$img/pause/Containerfile"
    cp /bin/busybox "$img/busybox/busybox"
    printf 'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox", "--install", "-s", "/bin"]\n' \
        >"$img/busybox/Containerfile"
    printf '[containers]\ndefault_ulimits = []\n' >"$img/containers.conf"
    local podman=(env CONTAINERS_CONF="$img/containers.conf" podman --runtime runc
        --cgroup-manager cgroupfs)
    "${podman[@]}" build -q -t localhost/pause:e2e -f "$img/pause/Containerfile" "$img/pause" >/dev/null
    "${podman[@]}" build -q --network none -t localhost/busybox:e2e \
        -f "$img/busybox/Containerfile" "$img/busybox" >/dev/null
    local version
    version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
    make -s image >/dev/null
    # A second multihome image for the rolling update: the same program with other bytes (a
    # marker after the ELF image, which the loader ignores), so the installer must replace it.
    mkdir -p "$img/next"
    { cat "$(make -s --eval 'bin: ; @echo $(BIN)' bin)"; printf '\nmultihome e2e next\n'; } \
        >"$img/next/multihome"
    chmod 755 "$img/next/multihome"
    "${podman[@]}" build -q -t localhost/multihome:next -f conf/Containerfile "$img/next" >/dev/null
    for ref in localhost/pause:e2e localhost/busybox:e2e "localhost/multihome:$version" \
        localhost/multihome:next; do
        local file=$img/$(echo "$ref" | tr '/:' '__').tar
        rm -f "$file"
        "${podman[@]}" save -q --format docker-archive -o "$file" "$ref"
        in_node ctr -a /run/containerd/containerd.sock -n k8s.io images import \
            --snapshotter native "$file" >/dev/null
    done
}

# kubelet in the node, with what this sandbox needs: cgroupfs without QoS cgroups or allocatable
# enforcement, no OOM score changes, no image GC of the imported images, no swap check.
start_kubelet() {
    local bins
    bins=$(scripts/k8s-build.sh 2>/dev/null)
    start kubelet in_node "$bins/kubelet" --kubeconfig="$work/node.kubeconfig" \
        --hostname-override="$node_name" --node-ip="$node_ip" \
        --container-runtime=remote \
        --container-runtime-endpoint=unix:///run/containerd/containerd.sock \
        --cgroup-driver=cgroupfs --cgroups-per-qos=false --enforce-node-allocatable= \
        --oom-score-adj=0 --fail-swap-on=false --resolv-conf="$work/resolv.conf" \
        --volume-plugin-dir="$work/node/plugins" --image-gc-high-threshold=100 \
        --eviction-hard= --anonymous-auth=true --authorization-mode=AlwaysAllow
}

# Starts kube-apiserver from the binaries in $1.
start_apiserver() {
    start apiserver ip netns exec "$(netns)" "$1/kube-apiserver" \
        --etcd-servers=http://127.0.0.1:2379 --advertise-address="$node_ip" --secure-port=6443 \
        --service-cluster-ip-range="$service_range" --allow-privileged=true \
        --tls-cert-file="$work/pki/apiserver.crt" --tls-private-key-file="$work/pki/apiserver.key" \
        --client-ca-file="$work/pki/ca.crt" --token-auth-file="$work/pki/tokens.csv" \
        --authorization-mode=Node,RBAC --enable-admission-plugins=NodeRestriction \
        --service-account-issuer=https://kubernetes.default.svc \
        --service-account-key-file="$work/pki/sa.pub" \
        --service-account-signing-key-file="$work/pki/sa.key" \
        --api-audiences=https://kubernetes.default.svc \
        --kubelet-preferred-address-types=InternalIP,Hostname \
        --audit-policy-file="$work/audit-policy.yaml" --audit-log-path="$work/audit.log"
}

# Stops kube-apiserver (by its PID) and starts it again: every watch breaks, and a watch resumed
# from before may find its resourceVersion too old.
restart_apiserver() {
    local pid
    pid=$(pid_of apiserver)
    kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    start_apiserver "$(scripts/k8s-build.sh)"
    KUBECONFIG=$work/admin.kubeconfig wait_for 60 ip netns exec "$(netns)" kubectl get --raw /readyz
    log "API server restarted"
}

# Stops kubelet (by its PID) and starts it again; the pods keep running meanwhile.
restart_kubelet() {
    local pid
    pid=$(pid_of kubelet)
    kill "$pid"
    while kill -0 "$pid" 2>/dev/null; do sleep 0.2; done
    start_kubelet
    wait_for 60 in_node curl -sf http://127.0.0.1:10248/healthz
    log "kubelet restarted"
}

up() {
    if [ -e "$work/netns" ]; then
        log "already up ($work); 'scripts/cluster.sh down' first"
        exit 1
    fi
    install_deps
    local bins
    bins=$(scripts/k8s-build.sh)
    rm -rf "$work"
    rm -rf "$work.logs"
    trap 'log "up failed; the logs are kept in $work.logs"; cp -r "$work/logs" "$work.logs"; down' ERR
    mkdir -p "$work"/{pids,logs,etcd,node/run,node/kubelet,node/cni-cache,node/log,node/conf,node/opt/cni/bin,node/sysctl,node/plugins,containerd}
    local t0=$SECONDS
    # containerd makes a k8s.io cgroup in each hierarchy; removed again at 'down' unless it was
    # there before.
    [ -d /sys/fs/cgroup/cpu/k8s.io ] || touch "$work/made-k8s.io-cgroups"
    # Without a cgroup v1 CPU hierarchy the services stay where they are.
    [ ! -d /sys/fs/cgroup/cpu ] || mkdir -p "$node_cgroup"

    # The node's network: a veth pair of its own carries the node address.
    local ns="mhk-$$-$RANDOM"
    ip netns add "$ns"
    echo "$ns" >"$work/netns"
    ip -n "$ns" link set lo up
    ip -n "$ns" link add mhk0 type veth peer name mhk1
    ip -n "$ns" addr add "$node_ip/24" dev mhk0
    ip -n "$ns" link set mhk0 up
    ip -n "$ns" link set mhk1 up
    ip -n "$ns" route add default dev mhk0
    # No kube-proxy: the kubernetes Service, which in-cluster clients use, to the API server.
    for chain in OUTPUT PREROUTING; do
        ip netns exec "$ns" iptables -t nat -A "$chain" -d "$service_ip" -p tcp --dport 443 \
            -j DNAT --to-destination "$node_ip:6443"
    done

    certificates
    identities
    cat >"$work/audit-policy.yaml" <<'EOF'
apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: Metadata
EOF

    start etcd ip netns exec "$ns" etcd --data-dir "$work/etcd" \
        --listen-client-urls http://127.0.0.1:2379 --advertise-client-urls http://127.0.0.1:2379 \
        --listen-peer-urls http://127.0.0.1:2380
    start_apiserver "$bins"
    export KUBECONFIG=$work/admin.kubeconfig
    wait_for 60 ip netns exec "$ns" kubectl get --raw /readyz
    log "API server ready after $((SECONDS - t0)) s"
    start controller-manager ip netns exec "$ns" "$bins/kube-controller-manager" \
        --kubeconfig="$work/controller-manager.kubeconfig" --leader-elect=false \
        --use-service-account-credentials --root-ca-file="$work/pki/ca.crt" \
        --service-account-private-key-file="$work/pki/sa.key"
    start scheduler ip netns exec "$ns" "$bins/kube-scheduler" \
        --kubeconfig="$work/scheduler.kubeconfig" --leader-elect=false

    # The node's mount namespace, held by a process of its own.
    local n=$work/node
    echo 1 >"$n/sysctl/overcommit_memory"
    echo 10 >"$n/sysctl/panic"
    echo 1 >"$n/sysctl/panic_on_oops"
    cp /usr/lib/cni/* "$n/opt/cni/bin/"
    # Entered with nsenter, not 'ip netns exec', which would hide the cgroup hierarchies under
    # a fresh /sys: here /sys is remounted for the node's network and the cgroups put back.
    mkdir -p "$n/cgroup"
    start holder nsenter --net="/run/netns/$ns" unshare --mount --propagation private sh -c "
        set -e
        mount --rbind /sys/fs/cgroup '$n/cgroup'
        mount -t sysfs sysfs /sys
        mount --rbind '$n/cgroup' /sys/fs/cgroup
        umount -l '$n/cgroup'
        mount --bind '$n/run' /run
        mkdir -p /var/lib/kubelet /var/lib/cni /etc/cni/net.d /opt
        mount --bind '$n/kubelet' /var/lib/kubelet
        mount --bind '$n/cni-cache' /var/lib/cni
        mount --bind '$n/log' /var/log
        mount --bind '$n/conf' /etc/cni/net.d
        mount --bind '$n/opt' /opt
        mount --bind '$n/sysctl/overcommit_memory' /proc/sys/vm/overcommit_memory
        mount --bind '$n/sysctl/panic' /proc/sys/kernel/panic
        mount --bind '$n/sysctl/panic_on_oops' /proc/sys/kernel/panic_on_oops
        # Shared within the node's own mount namespace (its mounts are no peers of the
        # machine's), as on a node run by systemd: the network namespaces containerd mounts later
        # reach the containers that mount the node's root (the node daemon's hot-plug).
        mount --make-rshared /
        touch '$n/run/.ready'
        exec sleep infinity"
    wait_for 10 test -e "$n/run/.ready"

    # The primary CNI network: a bridge with host-local, and portmap.
    cat >"$n/conf/10-bridge.conflist" <<'EOF'
{"cniVersion": "1.0.0", "name": "cbr", "plugins": [
  {"type": "bridge", "bridge": "cni0", "isGateway": true,
   "ipam": {"type": "host-local", "subnet": "198.18.8.0/24", "routes": [{"dst": "0.0.0.0/0"}]}},
  {"type": "portmap", "capabilities": {"portMappings": true}}]}
EOF
    cat >"$work/containerd.toml" <<EOF
version = 2
root = "$work/containerd/root"
state = "$work/containerd/state"
disabled_plugins = ["io.containerd.snapshotter.v1.aufs", "io.containerd.snapshotter.v1.btrfs",
  "io.containerd.snapshotter.v1.zfs", "io.containerd.snapshotter.v1.devmapper",
  "io.containerd.snapshotter.v1.overlayfs"]
[grpc]
  address = "/run/containerd/containerd.sock"
[plugins."io.containerd.grpc.v1.cri"]
  sandbox_image = "localhost/pause:e2e"
  restrict_oom_score_adj = true
  netns_mounts_under_state_dir = true
  disable_apparmor = true
  enable_selinux = false
  [plugins."io.containerd.grpc.v1.cri".containerd]
    snapshotter = "native"
    default_runtime_name = "runc"
    [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
  [plugins."io.containerd.grpc.v1.cri".cni]
    bin_dir = "/opt/cni/bin"
    conf_dir = "/etc/cni/net.d"
EOF
    start containerd in_node containerd --config "$work/containerd.toml"
    wait_for 30 in_node ctr -a /run/containerd/containerd.sock version
    images

    : >"$work/resolv.conf"
    start_kubelet
    wait_for 90 sh -c "ip netns exec $ns kubectl get node $node_name -o jsonpath='{.status.conditions[?(@.type==\"Ready\")].status}' | grep -qx True"
    log "node Ready after $((SECONDS - t0)) s"
    trap - ERR
}

# multihome as a user installs it: the manifests of conf/, unchanged.
install() {
    local ns t0=$SECONDS
    ns=$(netns)
    export KUBECONFIG=$work/admin.kubeconfig
    ip netns exec "$ns" kubectl apply -f conf/multihome-daemonset.yml >/dev/null
    wait_for 120 sh -c "ip netns exec $ns kubectl -n kube-system get ds multihome -o jsonpath='{.status.numberReady}' | grep -qx 1"
    wait_for 60 test -e "$work/node/conf/00-multihome.conflist"
    log "multihome installed in $((SECONDS - t0)) s"
}

down() {
    local ns
    ns=$(netns)
    # kubelet first, so that nothing restarts the pods; then every container, then containerd.
    if alive kubelet; then kill "$(pid_of kubelet)"; fi
    if alive holder && alive containerd; then
        local sock=/run/containerd/containerd.sock task
        in_node ctr -a "$sock" -n k8s.io containers ls -q >"$work/containers" 2>/dev/null || true
        for task in $(in_node ctr -a "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
            in_node ctr -a "$sock" -n k8s.io tasks kill -s SIGKILL "$task" >/dev/null 2>&1 || true
        done
        sleep 1
        for task in $(in_node ctr -a "$sock" -n k8s.io tasks ls -q 2>/dev/null); do
            in_node ctr -a "$sock" -n k8s.io tasks delete -f "$task" >/dev/null 2>&1 || true
        done
    fi
    local name
    for name in containerd scheduler controller-manager apiserver etcd holder; do
        if alive "$name"; then kill "$(pid_of "$name")" 2>/dev/null || true; fi
    done
    # The shims containerd started, and any process left in the node's network namespace.
    if [ -n "$ns" ] && [ -e "/run/netns/$ns" ]; then
        local pids
        pids=$(ip netns pids "$ns" 2>/dev/null || true)
        [ -z "$pids" ] || kill -9 $pids 2>/dev/null || true
        sleep 0.5
        ip netns del "$ns" 2>/dev/null || true
    fi
    # What is left of the node, found by what is its alone: processes in the cgroups of its
    # containers (one whose task containerd no longer listed sits in a pod's own network
    # namespace, out of reach of the kill above) and processes working in its directory (a
    # shim whose namespace is gone).
    local ids id procs p
    ids=$(cat "$work/containers" 2>/dev/null || true
        ls "$work/containerd/state/io.containerd.runtime.v2.task/k8s.io" 2>/dev/null || true)
    for id in $ids; do
        for procs in $(find /sys/fs/cgroup -path "*/k8s.io/$id/cgroup.procs" 2>/dev/null); do
            xargs -r kill -9 <"$procs" 2>/dev/null || true
        done
    done
    for p in /proc/[0-9]*; do
        case $(readlink "$p/cwd" 2>/dev/null) in
            "$work"/*) kill -9 "${p#/proc/}" 2>/dev/null || true ;;
        esac
    done
    sleep 0.5
    # The cgroups runc made for the node's containers (cgroupfs), once empty.
    for id in $ids; do
        find /sys/fs/cgroup -depth -type d -name "$id" -exec rmdir {} + 2>/dev/null || true
    done
    if [ -e "$work/made-k8s.io-cgroups" ]; then
        find /sys/fs/cgroup/*/k8s.io -depth -type d -exec rmdir {} + 2>/dev/null || true
    fi
    # The services' cgroup, empty once they are stopped (what is left in it is the node's).
    if [ -d "$node_cgroup" ]; then
        xargs -r kill -9 <"$node_cgroup/cgroup.procs" 2>/dev/null || true
        sleep 0.2
        rmdir "$node_cgroup" 2>/dev/null || log "could not remove $node_cgroup"
    fi
    rm -rf "$work"
    log "down"
}

case ${1:-} in
    up) up ;;
    install) install ;;
    images) images ;;
    restart-kubelet) restart_kubelet ;;
    restart-apiserver) restart_apiserver ;;
    down) down ;;
    env)
        echo "export KUBECONFIG=$work/admin.kubeconfig"
        echo "export MH_CLUSTER_NETNS=$(netns)"
        ;;
    node)
        shift
        in_node "$@"
        ;;
    *)
        echo "usage: scripts/cluster.sh up|install|images|restart-kubelet|restart-apiserver|down|env|node CMD..." >&2
        exit 2
        ;;
esac
