#!/bin/sh
# Keeps sandboxes off the host and the private network: no new connection from a sandbox
# bridge may reach the host itself (INPUT), a private, shared, link-local (the cloud
# metadata address, 169.254.169.254) or loopback range (FORWARD, through Docker's
# DOCKER-USER chain), and so not another sandbox either. Replies to connections made
# *to* a sandbox (the proxy, the controller's probes and hooks, published ports) pass;
# so does the public internet. Idempotent: it owns two chains and one jump per bridge.
#
#   egress-guard.sh [--watch SECONDS] (BRIDGE | --network NAME)...
#
# --network names a network the controller created (its bridge is named by
# backends/docker.py's bridge_name()). Needs root, or NET_ADMIN in the host's network
# namespace (the Compose file's egress-guard service).
set -eu

watch=0
bridges=
while [ "$#" -gt 0 ]; do
    case $1 in
        --watch) watch=$2; shift 2 ;;
        # The bridge the controller gives a network it creates (backends/docker.py).
        --network) bridges="$bridges sbx-$(printf %s "$2" | sha256sum | cut -c1-10)"; shift 2 ;;
        --print) printf '%s\n' $bridges; exit 0 ;;
        *) bridges="$bridges $1"; shift ;;
    esac
done
set -- $bridges
[ "$#" -gt 0 ] || { echo "usage: $0 [--watch SECONDS] (BRIDGE | --network NAME)..." >&2; exit 2; }

# dockerd may program nftables or legacy iptables: use the one that has its chain.
ipt=
for candidate in iptables-nft iptables-legacy iptables; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -w -n -L DOCKER-USER >/dev/null 2>&1; then
        ipt="$candidate -w"
        break
    fi
done
[ -n "$ipt" ] || { echo "egress-guard: no DOCKER-USER chain: is dockerd running?" >&2; exit 1; }

BLOCKED="0.0.0.0/8 10.0.0.0/8 100.64.0.0/10 127.0.0.0/8 169.254.0.0/16 172.16.0.0/12 192.168.0.0/16 224.0.0.0/4 240.0.0.0/4"

chain() {  # chain NAME RULES...: (re)fill a chain of our own
    name=$1
    $ipt -N "$name" 2>/dev/null || $ipt -F "$name"
    $ipt -A "$name" -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
}

apply() {
    chain SANDBOX-EGRESS
    for net in $BLOCKED; do
        $ipt -A SANDBOX-EGRESS -d "$net" -j REJECT --reject-with icmp-net-prohibited
    done
    chain SANDBOX-HOST
    $ipt -A SANDBOX-HOST -j REJECT --reject-with icmp-port-unreachable
    for bridge in "$@"; do
        $ipt -C DOCKER-USER -i "$bridge" -j SANDBOX-EGRESS 2>/dev/null \
            || $ipt -I DOCKER-USER 1 -i "$bridge" -j SANDBOX-EGRESS
        $ipt -C INPUT -i "$bridge" -j SANDBOX-HOST 2>/dev/null \
            || $ipt -I INPUT 1 -i "$bridge" -j SANDBOX-HOST
    done
}

apply "$@"
echo "egress-guard: sandboxes on $* cannot reach the host or private ranges" >&2
# dockerd recreates DOCKER-USER when it restarts: keep the jumps in place. The rules
# stay when this stops (they are the kernel's); a stop ends the wait at once.
trap 'exit 0' TERM INT
while [ "$watch" -gt 0 ]; do
    sleep "$watch" &
    wait $!
    for bridge in "$@"; do
        if ! $ipt -C DOCKER-USER -i "$bridge" -j SANDBOX-EGRESS 2>/dev/null \
            || ! $ipt -C INPUT -i "$bridge" -j SANDBOX-HOST 2>/dev/null; then
            apply "$@"
            break
        fi
    done
done
