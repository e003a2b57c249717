"""Real clients through the egress proxy as a sandbox runs them: pip downloading from a
package index on a secret's host (its index URL carrying the placeholder, swapped in
at the edge inside Basic credentials), npm installing from a registry there (its token the
placeholder), and git cloning over HTTPS through a tunnel."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

from .conftest import PLACEHOLDER, SECRET_VALUE, World


def _wheel(directory: Path) -> Path:
    """A minimal valid wheel: demo_pkg 1.0."""
    path = directory / "demo_pkg-1.0-py3-none-any.whl"
    files = {
        "demo_pkg/__init__.py": b"VALUE = 1\n",
        "demo_pkg-1.0.dist-info/METADATA": b"Metadata-Version: 2.1\nName: demo-pkg\nVersion: 1.0\n",
        "demo_pkg-1.0.dist-info/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
        ),
    }
    record = "".join(
        f"{name},sha256={base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b'=').decode()},{len(data)}\n"
        for name, data in files.items()
    )
    with zipfile.ZipFile(path, "w") as zf:
        for name, data in files.items():
            zf.writestr(name, data)
        zf.writestr("demo_pkg-1.0.dist-info/RECORD", record + "demo_pkg-1.0.dist-info/RECORD,,\n")
    return path


def _client_env(world: World) -> dict[str, str]:
    proxy = f"http://pod-a:pw-a@127.0.0.1:{world.proxy_port}"
    return {
        "PATH": os.environ["PATH"],
        "HOME": str(world.static.parent),
        "HTTP_PROXY": proxy,
        "HTTPS_PROXY": proxy,
        "http_proxy": proxy,
        "https_proxy": proxy,
        "NO_PROXY": "localhost,127.0.0.1,::1",
        # What a sandbox's env holds with egress on: the bundle with the deployment CA.
        "SSL_CERT_FILE": str(world.bundle),
        "REQUESTS_CA_BUNDLE": str(world.bundle),
        "PIP_CERT": str(world.bundle),
        "GIT_SSL_CAINFO": str(world.bundle),
        "PIP_CONFIG_FILE": os.devnull,
        "GIT_CONFIG_NOSYSTEM": "1",
    }


def test_pip_download_from_an_index_on_a_secret_host(world: World, tmp_path: Path) -> None:
    simple = world.static / "simple" / "demo-pkg"
    simple.mkdir(parents=True, exist_ok=True)
    wheel = _wheel(world.static)
    digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
    (simple / "index.html").write_text(
        f'<html><body><a href="/{wheel.name}#sha256={digest}">{wheel.name}</a></body></html>'
    )
    before = len(world.received())
    out = subprocess.run(
        [
            sys.executable, "-m", "pip", "download", "--no-deps", "--no-cache-dir",
            "--disable-pip-version-check", "-d", str(tmp_path),
            "--index-url", f"https://__token__:{PLACEHOLDER}@api.secret.test/simple/",
            "demo-pkg",
        ],
        capture_output=True, text=True, env=_client_env(world), timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert (tmp_path / wheel.name).read_bytes() == wheel.read_bytes()
    sent = [dict((k.lower(), v) for k, v in e["headers"]) for e in world.received()[before:]]
    real = "Basic " + base64.b64encode(f"__token__:{SECRET_VALUE}".encode()).decode()
    assert sent and all(h.get("authorization") == real for h in sent)


@pytest.mark.skipif(shutil.which("git") is None, reason="needs git")
def test_git_clone_over_https_through_a_tunnel(world: World, tmp_path: Path) -> None:
    source = tmp_path / "source"
    env = _client_env(world) | {
        "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
        "GIT_COMMITTER_EMAIL": "t@t",
    }  # fmt: skip
    git = ["git", "-c", "init.defaultBranch=main"]
    subprocess.run([*git, "init", "-q", str(source)], check=True, env=env)
    (source / "README").write_text("through the egress proxy\n")
    subprocess.run([*git, "-C", str(source), "add", "README"], check=True, env=env)
    subprocess.run([*git, "-C", str(source), "commit", "-qm", "one"], check=True, env=env)
    bare = world.static / "repo.git"
    subprocess.run([*git, "clone", "-q", "--bare", str(source), str(bare)], check=True, env=env)
    # A static server: git's "dumb" HTTP protocol reads these files.
    subprocess.run([*git, "-C", str(bare), "update-server-info"], check=True, env=env)
    out = subprocess.run(
        [*git, "clone", "-q", "https://allowed.test/repo.git", str(tmp_path / "clone")],
        capture_output=True, text=True, env=env, timeout=120,
    )  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert (tmp_path / "clone" / "README").read_text() == "through the egress proxy\n"
    assert "host=allowed.test port=443 kind=tunnel decision=allowed" in world.proxy_log.read_text()


def _npm_package(world: World) -> None:
    """A registry on api.secret.test as static files: the packument and its tarball."""
    import io
    import json
    import tarfile

    root = world.static / "demo-npm"
    (root / "-").mkdir(parents=True, exist_ok=True)
    manifest = json.dumps({"name": "demo-npm", "version": "1.0.0", "main": "index.js"}).encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz") as tar:
        for name, data in (("package/package.json", manifest), ("package/index.js", b"1;\n")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    tgz = buf.getvalue()
    (root / "-" / "demo-npm-1.0.0.tgz").write_bytes(tgz)
    integrity = "sha512-" + base64.b64encode(hashlib.sha512(tgz).digest()).decode()
    packument = {
        "name": "demo-npm",
        "dist-tags": {"latest": "1.0.0"},
        "versions": {
            "1.0.0": {
                "name": "demo-npm",
                "version": "1.0.0",
                "dist": {
                    "tarball": "https://api.secret.test/demo-npm/-/demo-npm-1.0.0.tgz",
                    "integrity": integrity,
                    "shasum": hashlib.sha1(tgz).hexdigest(),
                },
            }
        },
    }
    (root / "index.html").write_text(json.dumps(packument))


@pytest.mark.skipif(shutil.which("npm") is None, reason="needs npm")
def test_npm_install_from_a_registry_on_a_secret_host(world: World, tmp_path: Path) -> None:
    _npm_package(world)
    project = tmp_path / "project"
    project.mkdir()
    (project / "package.json").write_text('{"name": "p", "version": "1.0.0"}')
    npmrc = tmp_path / "npmrc"
    # The token npm sends as "Authorization: Bearer ...": the sandbox holds the placeholder.
    npmrc.write_text(f"//api.secret.test/:_authToken={PLACEHOLDER}\n")
    before = len(world.received())
    env = _client_env(world) | {"NODE_EXTRA_CA_CERTS": str(world.bundle)}
    out = subprocess.run(
        [
            "npm", "install", "--no-audit", "--no-fund", "--userconfig", str(npmrc),
            "--cache", str(tmp_path / "cache"), "--registry", "https://api.secret.test/",
            "--cafile", str(world.bundle), "demo-npm",
        ],
        capture_output=True, text=True, env=env, cwd=project, timeout=180,
    )  # fmt: skip
    assert out.returncode == 0, out.stdout + out.stderr
    assert (project / "node_modules" / "demo-npm" / "index.js").exists()
    sent = [dict((k.lower(), v) for k, v in e["headers"]) for e in world.received()[before:]]
    assert sent and all(h.get("authorization") == f"Bearer {SECRET_VALUE}" for h in sent)
