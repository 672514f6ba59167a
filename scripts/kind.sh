#!/usr/bin/env bash
# A recipe for people with a cluster at hand (not run in CI, which has none): load the image into
# a kind cluster, install multihome, and start a pod with a second network.
#
#   make image && scripts/kind.sh [CLUSTER]
#
# Needs kind and kubectl. The kind node's primary CNI (kindnet) is found and wrapped as the
# cluster network; the pod gets eth0 from it and net1 from the macvlan NAD below.
set -euo pipefail
cluster=${1:-kind}
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)
image="localhost/multihome:$version"

podman save "$image" -o /tmp/multihome-image.tar
kind load image-archive /tmp/multihome-image.tar --name "$cluster"
kubectl apply -f conf/multihome-daemonset.yml
kubectl -n kube-system rollout status daemonset/multihome --timeout=120s

kubectl apply -f - <<'YAML'
apiVersion: k8s.cni.cncf.io/v1
kind: NetworkAttachmentDefinition
metadata:
  name: macvlan-net
spec:
  config: |
    {"cniVersion": "1.0.0", "type": "macvlan", "master": "eth0", "mode": "bridge",
     "ipam": {"type": "host-local", "subnet": "198.18.1.0/24"}}
---
apiVersion: v1
kind: Pod
metadata:
  name: multihome-check
  annotations:
    k8s.v1.cni.cncf.io/networks: macvlan-net
spec:
  containers:
    - name: c
      image: busybox
      command: ["sh", "-c", "ip addr; sleep 3600"]
YAML
kubectl wait pod/multihome-check --for=condition=Ready --timeout=120s
kubectl exec multihome-check -- ip -o addr show net1
kubectl get pod multihome-check -o jsonpath='{.metadata.annotations.k8s\.v1\.cni\.cncf\.io/network-status}'; echo
