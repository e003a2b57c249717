"""How the Kubernetes backend reaches its API server: the client configuration (a
kubeconfig, or the in-cluster service account) and the namespace it manages."""

from __future__ import annotations

import os
from pathlib import Path

import aiohttp
from aiohttp.helpers import get_env_proxy_for_url
from kubernetes_asyncio import client as k8s
from kubernetes_asyncio import config as k8s_config
from yarl import URL

from .base import BackendError, ErrorKind

PERMANENT = ErrorKind.PERMANENT

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")


async def load_api_client(kubeconfig: str | None) -> k8s.ApiClient:
    """A kubeconfig if one is named, else in-cluster config, else ~/.kube/config."""
    configuration = k8s.Configuration()
    try:
        if kubeconfig:
            await k8s_config.load_kube_config(
                config_file=kubeconfig, client_configuration=configuration
            )
        elif os.environ.get("KUBERNETES_SERVICE_HOST"):
            k8s_config.load_incluster_config(client_configuration=configuration)  # type: ignore[no-untyped-call]
        else:
            if not _default_kubeconfig().expanduser().exists():  # said here, in one line
                raise k8s_config.ConfigException("no kubeconfig")
            await k8s_config.load_kube_config(client_configuration=configuration)
    except (k8s_config.ConfigException, OSError) as exc:
        raise BackendError(
            _no_configuration(kubeconfig, exc), retryable=False, kind=PERMANENT
        ) from None
    api = k8s.ApiClient(configuration)
    _resolve_environment_once(api)
    return api


def _default_kubeconfig() -> Path:
    """The kubeconfig the library reads when none is named (KUBECONFIG's first)."""
    return Path((os.environ.get("KUBECONFIG") or "~/.kube/config").split(os.pathsep)[0])


def _no_configuration(kubeconfig: str | None, exc: Exception) -> str:
    """What was looked for, and what to set: one line for a first run without a cluster."""
    if kubeconfig:
        tried = f"the kubeconfig {kubeconfig} (SANDBOX_KUBECONFIG)"
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        tried = "the in-cluster service account"
    else:
        where = str(_default_kubeconfig())
        tried = f"no in-cluster service account, and the kubeconfig {where}"
        if not Path(where).expanduser().exists():  # the library calls that "invalid"
            return (
                f"no Kubernetes configuration: not in a cluster, and no kubeconfig at "
                f"{where}; set SANDBOX_KUBECONFIG (or KUBECONFIG), or SANDBOX_BACKEND=local "
                "or docker to run without a cluster"
            )
    why = " ".join(str(exc).split()) or type(exc).__name__
    return (
        f"no usable Kubernetes configuration: {tried}: {why}; set SANDBOX_KUBECONFIG, "
        "or SANDBOX_BACKEND=local or docker to run without a cluster"
    )


def _resolve_environment_once(api: k8s.ApiClient) -> None:
    """kubernetes-asyncio hard-codes aiohttp's trust_env=True, which looks up ~/.netrc
    and the proxy variables in a worker thread on every request: two thread hops per
    API call, and a thread wanting the GIL while the loop serves a claim. Read the
    proxy variables once here instead; netrc has no say on an API server, whose
    credentials come from the kubeconfig or the service account."""
    rest = api.rest_client
    old = rest.pool_manager
    connector = old.connector
    old.detach()  # the connector (TLS context, pool limit) moves to the new session
    # read_bufsize as kubernetes-asyncio sets it: a watch event can carry a large object.
    rest.pool_manager = aiohttp.ClientSession(
        connector=connector, trust_env=False, read_bufsize=2**21
    )
    if rest.proxy is None:
        try:
            proxy, proxy_auth = get_env_proxy_for_url(URL(api.configuration.host))
        except LookupError:
            return
        rest.proxy = str(proxy)
        if proxy_auth is not None:
            rest.proxy_headers = {"Proxy-Authorization": proxy_auth.encode()}


def resolve_namespace(
    explicit: str | None,
    kubeconfig: str | None,
    *,
    service_account_namespace: Path = SERVICE_ACCOUNT_NAMESPACE,
) -> str:
    """Settings first. In a cluster, the pod's own namespace, or an error that says how
    to name one: a controller guessing ``default`` there would manage pods where its
    RBAC, and the operator, are not. Outside one, the kubeconfig context's namespace,
    else ``default`` (what kubectl does)."""
    if explicit:
        return explicit
    # In a cluster: what load_api_client then connects with (in-cluster config).
    in_cluster = not kubeconfig and bool(os.environ.get("KUBERNETES_SERVICE_HOST"))
    if in_cluster or service_account_namespace.exists():
        try:
            namespace = service_account_namespace.read_text().strip()
        except OSError as exc:
            namespace, why = "", exc.strerror or type(exc).__name__
        else:
            why = "it is empty"
        if not namespace:
            raise BackendError(
                f"running in a cluster, but the pod's namespace cannot be read from "
                f"{service_account_namespace} ({why}): set SANDBOX_NAMESPACE",
                retryable=False,
            )
        return namespace
    try:
        _, current = k8s_config.list_kube_config_contexts(config_file=kubeconfig)
    except k8s_config.ConfigException:  # no kubeconfig, or no current context
        return "default"
    return str((current or {}).get("context", {}).get("namespace") or "default")
