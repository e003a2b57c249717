#!/bin/sh
# Keeps sandboxes off the host and the local networks: no new connection from a sandbox
# bridge may reach the host itself (INPUT, any of its addresses, IPv4 and IPv6), nor,
# through Docker's DOCKER-USER chain, any local range: loopback, private (RFC 1918),
# shared (CGNAT 100.64/10), link-local (the metadata address 169.254.169.254),
# multicast and reserved ranges, every network this host has a route to other than
# its default route (its own LAN, whatever its range; other Docker networks, another
# sandbox), and the host's own addresses reached through a DNAT (a published port). A
# sandbox network is IPv4: any IPv6 it forwards is refused too. Replies to connections
# made *to* a sandbox (the proxy, the controller's probes and hooks) pass; so does the
# public internet.
#
#   egress-guard.sh [--stack NAME] [--watch SECONDS] [--allow-port PORT]... (BRIDGE | --network NAME)...
#   egress-guard.sh [--stack NAME] --down (BRIDGE | --network NAME)...
#
# Each stack owns its chains (SBX-<hash of NAME>-…), so two stacks on one host never
# flush each other's rules. With --watch it keeps its rules in place (dockerd recreates
# DOCKER-USER when it restarts; the host's addresses may change) and removes them when
# it is stopped (SIGTERM: `docker compose down`); --down removes them at once.
# --allow-port lets sandboxes open TCP connections to that port of the host: the egress
# proxy's, which listens on the host's address on the internal egress network (issue 19).
# --network names a network the controller created (its bridge is named by
# backends/docker_spec.py's bridge_name()). Needs root, or NET_ADMIN in the host's
# network namespace (the Compose file's egress-guard service).
set -eu

watch=0
down=false
stack=default
bridges=
ports=
while [ "$#" -gt 0 ]; do
    case $1 in
        --watch) watch=$2; shift 2 ;;
        --stack) stack=$2; shift 2 ;;
        --down) down=true; shift ;;
        --allow-port) ports="$ports $2"; shift 2 ;;
        # The bridge the controller gives a network it creates (backends/docker_spec.py).
        --network) bridges="$bridges sbx-$(printf %s "$2" | sha256sum | cut -c1-10)"; shift 2 ;;
        --print) printf '%s\n' $bridges; exit 0 ;;
        *) bridges="$bridges $1"; shift ;;
    esac
done
set -- $bridges
[ "$#" -gt 0 ] || { echo "usage: $0 [--stack NAME] [--watch SECONDS | --down] (BRIDGE | --network NAME)..." >&2; exit 2; }

tag=SBX-$(printf %s "$stack" | sha256sum | cut -c1-8)
EGRESS=$tag-EGRESS  # FORWARD (DOCKER-USER): local destinations
HOST=$tag-HOST      # INPUT, and IPv6 FORWARD: everything new

# dockerd may program nftables or legacy iptables: use the one that has its chain.
ipt=
ip6t=
for candidate in iptables-nft iptables-legacy iptables; do
    if command -v "$candidate" >/dev/null 2>&1 && "$candidate" -w -n -L DOCKER-USER >/dev/null 2>&1; then
        ipt="$candidate -w"
        six=ip6${candidate#ip}
        if command -v "$six" >/dev/null 2>&1 && "$six" -w -n -L INPUT >/dev/null 2>&1; then
            ip6t="$six -w"
        fi
        break
    fi
done
[ -n "$ipt" ] || { echo "egress-guard: no DOCKER-USER chain: is dockerd running?" >&2; exit 1; }

# Always local, whatever this host's interfaces say.
LOCAL_RANGES="0.0.0.0/8 10.0.0.0/8 100.64.0.0/10 127.0.0.0/8 169.254.0.0/16 172.16.0.0/12
192.0.0.0/24 192.168.0.0/16 198.18.0.0/15 224.0.0.0/4 240.0.0.0/4"

host_ranges() {  # every IPv4 route but the default one, and the host's own addresses
    # /proc/net/route: hex, little-endian. Routes shorter than /8 are a split default
    # route (a VPN's 0/1 and 128/1), not a local network.
    awk 'function n(h,  i, v) { v = 0; for (i = 1; i <= length(h); i++)
             v = v * 16 + index("0123456789ABCDEF", toupper(substr(h, i, 1))) - 1; return v }
         function bits(h,  v, c) { v = n(h); c = 0; while (v > 0) { c += v % 2; v = int(v / 2) } return c }
         NR > 1 && bits($8) >= 8 { printf "%d.%d.%d.%d/%d\n", n(substr($2, 7, 2)),
             n(substr($2, 5, 2)), n(substr($2, 3, 2)), n(substr($2, 1, 2)), bits($8) }' /proc/net/route
    awk '/\|--/ { address = $2 } /\/32 host LOCAL/ { print address "/32" }' /proc/net/fib_trie
}

blocked() {
    printf '%s\n' $LOCAL_RANGES
    host_ranges
}

fill() {  # fill IPT CHAIN: (re)make one of our chains, refusing all while it is filled
    $1 -N "$2" 2>/dev/null || $1 -F "$2"
    $1 -A "$2" -m conntrack --ctstate ESTABLISHED,RELATED -j RETURN
    $1 -A "$2" -j REJECT
}

jump() {  # jump IPT FROM BRIDGE CHAIN
    $1 -C "$2" -i "$3" -j "$4" 2>/dev/null || $1 -I "$2" 1 -i "$3" -j "$4"
}

apply() {
    fill "$ipt" "$EGRESS"
    for net in $(blocked | sort -u); do
        $ipt -A "$EGRESS" -d "$net" -j REJECT --reject-with icmp-net-prohibited
        # A published port of the host's: the destination was rewritten; the original was local.
        $ipt -A "$EGRESS" -m conntrack --ctorigdst "$net" -j REJECT --reject-with icmp-net-prohibited
    done
    $ipt -D "$EGRESS" 2  # the catch-all of fill(): the public internet passes
    fill "$ipt" "$HOST"
    for port in $ports; do  # after the ESTABLISHED rule, before the catch-all REJECT
        $ipt -I "$HOST" 2 -p tcp --dport "$port" -j RETURN
    done
    [ -z "$ip6t" ] || fill "$ip6t" "$HOST"
    for bridge in "$@"; do
        jump "$ipt" DOCKER-USER "$bridge" "$EGRESS"
        jump "$ipt" INPUT "$bridge" "$HOST"
        if [ -n "$ip6t" ]; then
            jump "$ip6t" INPUT "$bridge" "$HOST"
            jump "$ip6t" FORWARD "$bridge" "$HOST"
        fi
    done
}

remove() {
    for bridge in "$@"; do
        while $ipt -D DOCKER-USER -i "$bridge" -j "$EGRESS" 2>/dev/null; do :; done
        while $ipt -D INPUT -i "$bridge" -j "$HOST" 2>/dev/null; do :; done
        if [ -n "$ip6t" ]; then
            while $ip6t -D INPUT -i "$bridge" -j "$HOST" 2>/dev/null; do :; done
            while $ip6t -D FORWARD -i "$bridge" -j "$HOST" 2>/dev/null; do :; done
        fi
    done
    for chain in "$EGRESS" "$HOST"; do
        $ipt -F "$chain" 2>/dev/null && $ipt -X "$chain" || true
    done
    if [ -n "$ip6t" ]; then $ip6t -F "$HOST" 2>/dev/null && $ip6t -X "$HOST" || true; fi
}

in_place() {
    for bridge in "$@"; do
        $ipt -C DOCKER-USER -i "$bridge" -j "$EGRESS" 2>/dev/null \
            && $ipt -C INPUT -i "$bridge" -j "$HOST" 2>/dev/null || return 1
    done
}

if $down; then
    remove "$@"
    echo "egress-guard: rules of stack $stack removed" >&2
    exit 0
fi
apply "$@"
applied=$(blocked | sort -u)
echo "egress-guard ($tag, stack $stack): sandboxes on $* cannot reach the host or a local range" >&2
[ "$watch" -gt 0 ] || exit 0
# A stop removes this stack's rules and ends the wait at once.
trap 'remove "$@"; echo "egress-guard: rules of stack $stack removed" >&2; exit 0' TERM INT
while :; do
    sleep "$watch" &
    wait $!
    if ! in_place "$@" || [ "$(blocked | sort -u)" != "$applied" ]; then
        apply "$@"
        applied=$(blocked | sort -u)
    fi
done
