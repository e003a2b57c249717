#!/usr/bin/env bash
# Starts dockerd in the background when none answers (a CI machine or a container without
# systemd), and waits until it does. Its log goes to /var/log/agent-sandbox-dockerd.log.
set -euo pipefail
docker info >/dev/null 2>&1 && exit 0
command -v dockerd >/dev/null 2>&1 || { echo "start-dockerd: dockerd is not installed" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "start-dockerd: dockerd must be started as root" >&2; exit 1; }
# gVisor, when Debian's runsc is installed: SANDBOX_DOCKER_RUNTIME=runsc then works.
runtimes=()
if command -v runsc >/dev/null 2>&1; then
    runtimes=(--add-runtime "runsc=$(command -v runsc)")
fi
# setsid: the daemon outlives this script and the test run that started it.
setsid dockerd "${runtimes[@]}" >>/var/log/agent-sandbox-dockerd.log 2>&1 </dev/null &
for _ in $(seq 1 60); do
    docker info >/dev/null 2>&1 && exit 0
    sleep 0.5
done
echo "start-dockerd: dockerd did not answer within 30 s (see /var/log/agent-sandbox-dockerd.log)" >&2
exit 1
