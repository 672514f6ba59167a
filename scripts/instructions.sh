#!/usr/bin/env bash
# Instructions multihome itself executes for VERSION, ADD and DEL, with three stub delegates,
# counted by callgrind: the plugin process only (delegates are not traced), so the figure is
# multihome's own cost, and it is the same from run to run whatever else the machine does, which
# wall time on a shared machine is not. Then the wall times of the same calls, RUNS rounds with
# the binaries interleaved, so that they share the machine's moods (medians; compare within one
# run only). Compare binaries side by side:
#
#   scripts/instructions.sh target/x86_64-unknown-linux-gnu/release/multihome [OTHER...]
#
# Needs root (it makes a network namespace for the pod) and valgrind.
set -euo pipefail

[ $# -ge 1 ] || { echo "usage: $0 BINARY [BINARY...]" >&2; exit 2; }
command -v valgrind >/dev/null || { echo "$0: valgrind is needed (apt-get install valgrind)" >&2; exit 1; }

dir=$(mktemp -d /tmp/mh-instructions.XXXXXX)
ns="mh-instr-$$"
cleanup() {
    ip netns del "$ns" 2>/dev/null || true
    rm -rf "$dir"
}
trap cleanup EXIT
ip netns add "$ns"

# A stub delegate: a minimal 1.0.0 result on ADD, nothing otherwise.
mkdir "$dir/stub"
cat >"$dir/stub/stub" <<'STUB'
#!/bin/sh
cat >/dev/null
[ "$CNI_COMMAND" = ADD ] && printf '{"cniVersion":"1.0.0","interfaces":[{"name":"%s","sandbox":"%s"}],"ips":[{"address":"198.18.250.1/24","interface":0}]}' "$CNI_IFNAME" "$CNI_NETNS"
exit 0
STUB
chmod 755 "$dir/stub/stub"
net() { printf '{"cniVersion":"1.0.0","name":"%s","type":"stub"}' "$1"; }
conf=$(printf '{"cniVersion":"1.0.0","name":"multihome","type":"multihome","binDir":"%s","cniDir":"%s","delegates":[%s,%s,%s]}' \
    "$dir/stub" "$dir/cache" "$(net a)" "$(net b)" "$(net c)")

RUNS=${RUNS:-20}

# invoke COMMAND BINARY [WRAPPER...]: one invocation, as a runtime makes it.
invoke() {
    local command=$1 bin=$2
    shift 2
    if ! env -i PATH=/usr/bin:/bin CNI_COMMAND="$command" CNI_CONTAINERID=instructions \
        CNI_NETNS="/var/run/netns/$ns" CNI_IFNAME=eth0 CNI_PATH="$dir/stub" \
        "$@" "$bin" <<<"$conf" >"$dir/stdout" 2>"$dir/stderr"; then
        echo "$0: $command with $bin failed:" >&2
        cat "$dir/stdout" "$dir/stderr" >&2
        exit 1
    fi
}

# count COMMAND BINARY: the instructions of one invocation.
count() {
    invoke "$1" "$2" valgrind --tool=callgrind --callgrind-out-file="$dir/callgrind.out"
    awk '/^(summary|totals):/ { print $2; exit }' "$dir/callgrind.out"
}

# clock COMMAND BINARY KEY: appends the wall time of one invocation, in microseconds, to KEY's
# file.
clock() {
    local start end
    start=$(date +%s%N)
    invoke "$1" "$2"
    end=$(date +%s%N)
    echo $(((end - start) / 1000)) >>"$dir/$3.us"
}

median_ms() {
    sort -n "$1" | awk '{ v[NR] = $1 } END { printf "%.1f", v[int((NR + 1) / 2)] / 1000 }'
}

echo "instructions (callgrind, multihome's process only):"
printf '%-52s %10s %10s %10s %12s\n' binary VERSION ADD DEL "size (B)"
for bin in "$@"; do
    printf '%-52s %10s %10s %10s %12s\n' "$bin" "$(count VERSION "$bin")" "$(count ADD "$bin")" \
        "$(count DEL "$bin")" "$(stat -c %s "$bin")"
done

for _ in $(seq "$RUNS"); do
    i=0
    for bin in "$@"; do
        i=$((i + 1))
        for command in VERSION ADD DEL; do
            clock "$command" "$bin" "$i-$command"
        done
    done
done
echo
echo "wall time, ms (medians of $RUNS rounds, binaries interleaved; stub delegates included):"
printf '%-52s %10s %10s %10s\n' binary VERSION ADD DEL
i=0
for bin in "$@"; do
    i=$((i + 1))
    printf '%-52s %10s %10s %10s\n' "$bin" "$(median_ms "$dir/$i-VERSION.us")" \
        "$(median_ms "$dir/$i-ADD.us")" "$(median_ms "$dir/$i-DEL.us")"
done
