#!/usr/bin/env bash
# Tears a Compose stack (deploy/compose) down and leaves nothing of it on the host: its
# services and volumes, the sandboxes its controller made (containers labelled
# app.kubernetes.io/instance=$SANDBOX_DOCKER_INSTANCE), its sandbox network and the
# egress guard's rules (its SBX-<hash>-* chains). Another stack on the same host, with
# its own SANDBOX_DOCKER_INSTANCE and SANDBOX_DOCKER_NETWORK, is not touched.
#
#   cd deploy/compose && ../../scripts/compose-down.sh [COMPOSE OPTIONS]
#
# COMPOSE OPTIONS are what you gave `up` (-p NAME, -f FILE, --env-file FILE); they go to
# Compose as they are. `docker compose` is used if present, else `docker-compose` (v1);
# COMPOSE="docker-compose" chooses. Settings are read as Compose reads them: the
# environment first, then the env file (--env-file, else ./.env).
set -euo pipefail

env_file=.env
args=("$@")
for ((i = 0; i < ${#args[@]}; i++)); do
    case ${args[i]} in
        --env-file) env_file=${args[i + 1]:-} ;;
        --env-file=*) env_file=${args[i]#--env-file=} ;;
    esac
done

setting() {  # setting NAME DEFAULT: the environment's value, else the env file's, else DEFAULT
    local value=${!1:-}
    if [ -z "$value" ] && [ -f "$env_file" ]; then
        value=$(sed -n "s/^$1=//p" "$env_file" | tail -n 1)
    fi
    printf '%s\n' "${value:-$2}"
}

if [ -n "${COMPOSE:-}" ]; then
    read -r -a compose <<<"$COMPOSE"
elif docker compose version >/dev/null 2>&1; then
    compose=(docker compose)
else
    compose=(docker-compose)
fi

instance=$(setting SANDBOX_DOCKER_INSTANCE agent-sandbox)
network=$(setting SANDBOX_DOCKER_NETWORK agent-sandbox)
egress_network=$(setting SANDBOX_DOCKER_EGRESS_NETWORK agent-sandbox-egress)
guard_image=$(setting EGRESS_GUARD_IMAGE agent-sandbox/egress-guard:latest)

# The controller first, so it makes no sandbox while they go; the guard last.
"${compose[@]}" "$@" stop controller proxy
sandboxes=$(docker ps -aq --filter "label=app.kubernetes.io/instance=$instance")
if [ -n "$sandboxes" ]; then
    # shellcheck disable=SC2086  # one id per word
    docker rm -f -v $sandboxes >/dev/null  # -v: their anonymous CA-bundle volumes too
fi
echo "compose-down: removed $(printf '%s' "$sandboxes" | grep -c . || true) sandboxes of $instance" >&2
# The guard removes its chains when it stops (SIGTERM).
"${compose[@]}" "$@" down -v --remove-orphans
for net in "$network" "$egress_network"; do
    if docker network inspect "$net" >/dev/null 2>&1; then
        docker network rm "$net" >/dev/null
        echo "compose-down: removed the network $net" >&2
    fi
done
# Again by hand, in case the guard was killed before it could (idempotent).
if docker image inspect "$guard_image" >/dev/null 2>&1; then
    docker run --rm --network host --cap-drop ALL --cap-add NET_ADMIN --cap-add NET_RAW \
        "$guard_image" --stack "$instance" --down --network "$network" \
        --network "$egress_network" >/dev/null 2>&1 || true
fi
echo "compose-down: stack $instance is gone" >&2
