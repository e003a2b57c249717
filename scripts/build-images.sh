#!/usr/bin/env bash
# Builds the images the docker backend's tests, benchmark and Compose test run, with no
# registry: a Debian root filesystem from debootstrap with Python and the project's
# dependencies (cached as a tarball outside the clone, keyed by a hash of what goes in),
# imported with `docker import` as agent-sandbox/base:<hash>; then the project's own layer
# from deploy/docker/devsandbox.Dockerfile on top (the classic builder pulls nothing when
# its base is local), and the Compose test's egress guard and PostgreSQL likewise. The
# first run takes a few minutes; later runs take seconds.
#
#   bash scripts/build-images.sh          # prints the tags it built
#   bash scripts/build-images.sh --print-base   # the base it needs, building nothing
#
# Needs root, docker.io and debootstrap (Debian packages), and the network for Debian
# packages and PyPI on the first run only.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

cache=${AGENT_SANDBOX_CACHE:-/var/cache/agent-sandbox}
suite=bookworm
mirror=${DEBIAN_MIRROR:-http://deb.debian.org/debian}
export DOCKER_BUILDKIT=0  # BuildKit would look the base up in a registry.

deps=$(python3 -c 'import tomllib; print("\n".join(sorted(tomllib.load(open("pyproject.toml", "rb"))["project"]["dependencies"])))')
# postgresql is for the Compose test's database service; iptables for its egress guard.
packages=python3,python3-venv,ca-certificates,iptables,postgresql-15
# The key is the recipe (not this file), so editing a comment here rebuilds nothing.
key=$(printf '%s\n' "$suite" "$packages" "$deps" "rootfs-v1" | sha256sum | cut -c1-12)
base=agent-sandbox/base:$key
# --print-base: the base image and its cached root filesystem, built nothing (the tests
# skip, outside CI, when neither is there and debootstrap is missing).
if [ "${1:-}" = --print-base ]; then
    echo "$base $cache/base-$key.tar"
    exit 0
fi

build_rootfs() {  # build_rootfs TARBALL
    local root
    root=$(mktemp -d /var/tmp/agent-sandbox-rootfs.XXXXXX)
    # Never rm -rf a tree with /proc still mounted in it.
    trap 'umount "'"$root"'/proc" 2>/dev/null || true; mountpoint -q "'"$root"'/proc" || rm -rf "'"$root"'"' EXIT
    debootstrap --variant=minbase --include="$packages" "$suite" "$root" "$mirror" >&2
    populate_rootfs "$root"
    mkdir -p "$(dirname "$1")"
    tar -C "$root" --numeric-owner -cf "$1.part" . && mv "$1.part" "$1"
}

populate_rootfs() {  # populate_rootfs ROOT: the project's dependencies in /opt/venv
    local root=$1
    cp /etc/resolv.conf "$root/etc/resolv.conf"
    # This machine's CA bundle, for pip only (an egress proxy may sign with its own CA).
    cp /etc/ssl/certs/ca-certificates.crt "$root/tmp/ca.crt"
    mountpoint -q "$root/proc" || mount -t proc proc "$root/proc"
    echo "$deps" >"$root/tmp/requirements.txt"
    chroot "$root" /usr/bin/env -i PATH=/usr/sbin:/usr/bin:/sbin:/bin HOME=/root \
        PIP_CERT=/tmp/ca.crt PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_DEFAULT_TIMEOUT=180 \
        sh -ec 'python3 -m venv /opt/venv
                /opt/venv/bin/pip install --quiet --no-cache-dir -r /tmp/requirements.txt "setuptools>=68"' >&2
    umount "$root/proc"
    chroot "$root" apt-get clean
    rm -rf "$root"/var/lib/apt/lists/* "$root"/tmp/* "$root"/var/cache/debconf/*-old "$root"/root/.cache
    : >"$root/etc/resolv.conf"
}

if ! docker image inspect "$base" >/dev/null 2>&1; then
    tarball=$cache/base-$key.tar
    [ -f "$tarball" ] || build_rootfs "$tarball"
    docker import --change 'ENV PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
        "$tarball" "$base" >/dev/null
fi

docker build -q --build-arg "BASE_IMAGE=$base" -f deploy/docker/devsandbox.Dockerfile \
    -t agent-sandbox/devsandbox:dev . >/dev/null
# The Compose test's other services, on the same base (no registry: no postgres image).
for name in egress-guard postgres; do
    docker build -q --build-arg "BASE_IMAGE=$base" -f "deploy/docker/$name.Dockerfile" \
        -t "agent-sandbox/$name:dev" deploy/docker >/dev/null
done
# Earlier builds of the sandbox image that no container uses any more.
docker image prune -f --filter label=org.opencontainers.image.title=agent-sandbox-devsandbox >/dev/null
echo agent-sandbox/devsandbox:dev
