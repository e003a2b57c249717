"""Settings from the environment (``SANDBOX_*``), built once by the CLI or an app factory.

Each default lives here and nowhere else: the scheduler's ``Limits`` and the Kubernetes
backend's ``KubeOptions`` are derived from ``Settings``, never given defaults of their own.
"""

from __future__ import annotations

import dataclasses
import difflib
import ipaddress
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Annotated, Literal

from pydantic import (
    BeforeValidator,
    Field,
    PrivateAttr,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import BaseSettings, SettingsConfigDict

from .credentials import ApiToken, api_tokens, hook_keys, parse_api_tokens, split_list
from .durations import parse_duration
from .egress_settings import EgressLists, parse_egress_lists
from .model import Limits, Plan, PrewarmPolicy, PrewarmSettings, RecoveryGuard
from .plans import PlanError, load_plans
from .quantities import byte_size, parse_quantity
from .sandbox_contract import ENV_CLAIM_SECRET
from .templates import Template, TemplateError, default_templates, load_templates

Duration = Annotated[float, BeforeValidator(parse_duration)]


def parse_bytes(value: object) -> object:
    """A size as a Kubernetes quantity in whole bytes: ``2Gi``, ``512Mi``, ``1G`` or a
    plain number (``m`` is milli there, so ``256m`` is refused with a hint)."""
    if not isinstance(value, str):
        return value
    return byte_size(value)


Bytes = Annotated[int, BeforeValidator(parse_bytes)]


def parse_cpus(value: object) -> object:
    """CPUs as a Kubernetes quantity: ``1``, ``1.5`` or ``500m``."""
    if not isinstance(value, str):
        return value
    return float(parse_quantity(value))


Cpus = Annotated[float, BeforeValidator(parse_cpus)]


LOG_LEVELS = ("debug", "info", "warning", "error", "critical")


# A metadata key becomes the label agent-sandbox/meta-<key>: a label name of at most 63.
_LABEL_KEY = re.compile(r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,56}[A-Za-z0-9])?")


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_", extra="ignore", frozen=True)

    prewarm_pool_size: int = Field(5, ge=0)
    # static keeps prewarm_pool_size warm pods; adaptive sizes the pool from recent
    # arrivals and measured start-up times, within prewarm_min..prewarm_max.
    prewarm_policy: PrewarmPolicy = PrewarmPolicy.STATIC
    prewarm_min: int = Field(1, ge=0)
    prewarm_max: int = Field(20, ge=0)
    prewarm_target_warm_hit_rate: float = Field(0.99, gt=0.0, lt=1.0)
    max_total_jobs: int = Field(50, ge=1)
    max_sessions_per_user: int = Field(5, ge=1)
    # A YAML file of named plans (plans.py; README "Orgs and plans"); none: every
    # session has the deployment's limits above.
    plans_file: str | None = None
    idle_timeout: Duration = 9000.0
    # Idle (reclaimable) comes well before the timeout: a builder who stepped away for
    # five minutes can lose a session to their own new thread, but not to the clock.
    idle_after: Duration = 300.0
    max_lifetime: Duration = 0.0
    startup_timeout: Duration = 300.0
    # Creating pods is the expensive call on the API server; a small window keeps a
    # refill from stampeding it while still filling a pool of 5 in two rounds.
    max_concurrent_creates: int = Field(3, ge=1)
    database_url: str = "sqlite+aiosqlite:///./sandbox.db"
    backend: Literal["local", "kubernetes", "docker"] = "local"
    api_token: str | None = None
    # Signs session tokens (its Ed25519 key is derived from it) and keys the sandboxes'
    # claim secrets: the controller's alone. Proxies get the public key, never this.
    token_secret: str | None = None
    # The proxies' credential: opens /internal/* (routes, activity, the token verify
    # key) and nothing else. Unset: /internal/* takes the API token (the old way).
    proxy_token: str | None = None
    # More API tokens, all accepted alongside api_token: comma-separated, each `token` or
    # `id:token` (the id names the caller in logs and audit; else a fingerprint does).
    # Two at once is how a token rotates: add the new one, move callers, drop the old.
    api_tokens: str = ""
    # Secrets that signed session tokens before token_secret: comma-separated, they only
    # verify. Keep one for token_ttl after it stopped signing, then drop it.
    token_secret_previous: str = ""
    # Keys the sandboxes' claim secrets (the hooks' credential), apart from token_secret
    # so that rotating one leaves the other alone. Unset: token_secret keys them (as
    # before this setting existed). Previous ones authenticate the hooks of older pods.
    hook_secret: str | None = None
    hook_secret_previous: str = ""
    # Kubernetes user names (a service account: system:serviceaccount:<ns>:<name>),
    # comma-separated, whose own cluster tokens open the API, checked by TokenReview
    # (backends/kube_token_review.py). Empty: off.
    token_review_users: str = ""
    # Long enough for a working day; GET /sessions/{id} hands out a fresh one.
    token_ttl: Duration = 43200.0
    # The base of connect.url. Unset, it follows the proxy's own host and port (the
    # port it really bound, in `dev` with --proxy-port 0): see proxy_url.
    proxy_public_url: str | None = None
    controller_url: str = "http://127.0.0.1:8080"
    host: str = "127.0.0.1"
    port: int = Field(8080, ge=0, le=65535)
    proxy_host: str = "127.0.0.1"
    proxy_port: int = Field(8081, ge=0, le=65535)
    # Where the local backend keeps one file per sandbox process, so a restarted
    # controller can find (and adopt or stop) the processes of the one before it.
    state_dir: str = "./.sandbox-state"
    # Leader lease: a standby takes over within ttl after the leader stops renewing.
    leader_lease_ttl: Duration = 10.0
    leader_renew_interval: Duration = 3.0
    # The leader stops every Kubernetes write this long before its lease could end by
    # its own clock (unset: a quarter of the TTL, at least 1 s); see scheduler/lease.py.
    leader_lease_margin: Duration | None = None
    # Every wait on the database (connect, statement, lock) ends after this: an
    # outage is a fast 503 store_unavailable, and a frozen leader cannot hold the
    # lease row locked for longer.
    store_timeout: Duration = 2.0
    # Ended sessions stay readable for this long, then their rows are deleted.
    ended_retention: Duration = 7 * 86400.0
    # How often the proxy flushes activity to the controller.
    activity_flush_interval: Duration = 2.0
    log_level: str = "info"
    # "json": one JSON object per log line, for log pipelines; "text" for people.
    log_format: Literal["text", "json"] = "text"

    # The sandbox contract's hooks (hooks.py): claim on lease, status before idling a
    # session out, release before deleting its pod. A sandbox without them answers 404
    # and works as before; "false" never calls them (env and files are then refused).
    hooks: bool = True
    # Each claim or status call; a claim that takes longer fails and the next warm pod
    # is tried, a status call that takes longer counts as "not busy".
    hook_timeout: Duration = 2.0
    # Pods one session's claim may cost: a payload every sandbox refuses (or sandboxes
    # that all time out) ends its session (claim_rejected) instead of emptying the pool.
    max_claim_attempts: int = Field(3, ge=1)
    # What the sandbox gets to flush its work before its pod is deleted.
    release_timeout: Duration = 2.0

    # A rebuild that finds pods serving sessions the store does not know (a restored
    # older backup, the wrong database) deletes them only when they are this few: more
    # than this fraction of the pods AND more than this many are held for an operator
    # (scheduler/orphans.py). A crash leaves a handful; a wrong database, the fleet.
    recovery_max_delete: float = Field(0.2, ge=0.0, le=1.0)
    recovery_max_pods: int = Field(5, ge=0)
    # The operator has looked: the next start deletes whatever orphans it finds. Unset
    # it afterwards, or the guard stays off for every start.
    recovery_confirm: bool = False
    # The audit log (audit.py): JSON lines on the sandbox_controller.audit logger, and
    # also appended to this file when set (by a thread of its own: the loop never waits).
    audit_log_file: str | None = None
    # Lifecycle webhooks (webhooks.py): a signed POST here when a session ends. Unset: none.
    webhook_url: str | None = None
    # The HMAC-SHA256 key of the X-Sandbox-Signature header (required with a URL).
    webhook_secret: str | None = None
    # Deliveries waiting beyond this many are dropped (counted), never waited for.
    webhook_queue_max: int = Field(1000, ge=1)
    # Attempts per delivery (backoff 1 s doubling to 60 s between them), each bounded.
    webhook_max_attempts: int = Field(8, ge=1)
    webhook_timeout: Duration = 5.0
    # OpenTelemetry traces (tracing.py) go to this OTLP/HTTP endpoint, e.g.
    # http://collector:4318; unset, OTEL_EXPORTER_OTLP_ENDPOINT; neither: tracing off.
    otlp_endpoint: str | None = None

    # Egress (issue 19; proxy/egress/). off: sandboxes reach what their network lets them
    # (the local backend can only advise through env); audit: public addresses allowed,
    # what enforce would refuse is logged; enforce: only the lists below.
    egress: Literal["off", "audit", "enforce"] = "off"
    # Comma-separated host patterns every sandbox may reach (`*.` wildcards, `:port`).
    egress_allow: str = ""
    # Patterns a caller may grant one session (POST /sessions egress.allow, PATCH).
    egress_grantable: str = ""
    # Always refused besides the built-in private ranges (the cluster's pod/service CIDRs).
    egress_deny_cidrs: str = ""
    # Where the egress proxy listens, and the URL sandboxes are given as HTTP(S)_PROXY
    # (unset: http://{egress_proxy_host}:{egress_proxy_port}).
    egress_proxy_host: str = "127.0.0.1"
    egress_proxy_port: int = Field(3128, ge=0, le=65535)
    egress_proxy_url: str | None = None
    # Comma-separated NO_PROXY entries sandboxes are given besides loopback.
    egress_no_proxy: str = ""
    # The DNS server the egress proxy resolves through ("ip" or "ip:port"); unset: the
    # system's resolver.
    egress_resolver: str | None = None
    # The deployment CA that signs intercepted hosts' certificates (PEM files); unset:
    # generated on first start (see README, "Control what sandboxes reach"). On Docker
    # the controller reads the certificate for the bundle it uploads into sandboxes.
    egress_ca_cert_file: str | None = None
    egress_ca_key_file: str | None = None
    # Secrets the deployment gives every sandbox (a YAML/JSON list shaped like POST
    # /sessions secrets), swapped in at the edge like a session's own.
    egress_secrets_file: str | None = None
    # Kubernetes: the ConfigMap holding the deployment CA's certificate (ca.pem) that
    # each sandbox pod's init container adds to its CA bundle (the chart's
    # <release>-egress-ca); unset: sandboxes get no bundle from the controller.
    egress_ca_configmap: str | None = None

    # Suspend and resume (issue 20). At the idle timeout: end the session, or snapshot
    # it to the store and give its pod back.
    idle_action: Literal["end", "suspend"] = "end"
    # Where archives live: file:///path or s3://bucket/prefix (unset: suspension off).
    snapshot_store: str | None = None
    snapshot_max_bytes: Bytes = 1024**3
    snapshot_retention: Duration = 7 * 86400.0
    snapshot_timeout: Duration = 300.0
    # The S3 store's endpoint, region and credentials (unset: the SDK's own chain).
    snapshot_s3_endpoint_url: str | None = None
    snapshot_s3_region: str | None = None
    snapshot_s3_access_key_id: str | None = None
    snapshot_s3_secret_access_key: str | None = None
    # How long the proxy holds a request to a suspended session while it resumes.
    proxy_resume_wait: Duration = 30.0

    # The operator console at /console (sandbox_controller/console/). Signing in takes
    # the API token, or this read-only one, whose holder can look but not end sessions.
    console: bool = True
    console_token: str | None = None

    # The edge (both servers unless marked)
    # Subdomain mode (proxy): each session is its own browser origin at
    # {session_id}.{domain}, which path mode (/s/{id}/, one shared origin) cannot give.
    proxy_session_domain: str | None = None
    # Comma-separated editor origins (scheme://host[:port]) that may open a session's
    # WebSocket or send it writes with the session cookie, e.g. from an iframe.
    proxy_allowed_origins: str = ""
    # Request line plus headers; larger heads get 431 before the parser buffers them.
    max_header_bytes: int = Field(64 * 1024, ge=1024)
    # A client that has not finished its request head by then is disconnected.
    header_read_timeout: Duration = 10.0
    # A request body must bring 1 KiB/s over each window this long, or gets 408.
    body_read_timeout: Duration = 10.0
    # Open connections per process (WebSockets included); beyond it, 503 + Retry-After.
    max_connections: int = Field(10_000, ge=1)

    # Disk per sandbox (the chart's agentSandbox.job values of the same names). Each
    # writable path (/tmp, /workspace) holds at most tmp_dir_size_limit; the sandbox's own
    # writes besides (its root filesystem, logs) at most rootfs_size_limit. Docker: the
    # root is read-only and the writable paths are tmpfs, which count against the memory
    # limit too (the smaller bounds them). Kubernetes: the chart renders them into the pod
    # template; the built-in template (no SANDBOX_POD_TEMPLATE_PATH) takes them from here.
    tmp_dir_size_limit: Bytes = Field(20 * 2**30, ge=2**20)
    rootfs_size_limit: Bytes = Field(2 * 2**30, ge=2**20)

    # Kubernetes backend
    namespace: str | None = None
    # This controller's own pod (the chart sets it from the downward API), labelled
    # while it leads so that the controller Service follows the leader.
    pod_name: str | None = None
    kubeconfig: str | None = None
    pod_template_path: str | None = None
    pod_template_configmap: str | None = None

    # Named sandbox templates (templates.py); unset: one, "default", from these settings.
    templates_file: str | None = None
    # Metadata keys (comma-separated) whose values label a session's pod on Kubernetes
    # and Docker, for cost attribution: allow-listed, since labels are not secret.
    pod_label_metadata_keys: str = ""
    kube_qps: float = Field(20.0, gt=0)
    kube_burst: int = Field(40, ge=1)
    # The PodDisruptionBudget over assigned sandbox pods (the chart's) whose
    # minAvailable the controller keeps equal to the live sessions' pods; empty: none.
    kube_disruption_budget: str | None = None
    # While a session waits for a cold pod, probe its readiness endpoint itself and
    # hand it over at the first answer, not at the kubelet's next probe.
    kube_direct_readiness: bool = True
    # How often each such pod is probed: a waiting session sees its app answer half of
    # it later on average, all of it at worst. 50 ms, not 100: at 100 ms that alone is
    # the 100 ms p95 budget of a cold claim's overhead (benchmarks/README.md §12).
    kube_readiness_interval: Duration = 0.05

    # Docker backend (one VM: Docker Engine API, one container per sandbox)
    # Unset: DOCKER_HOST, else the local socket. Compose points it at the socket proxy.
    docker_url: str | None = None
    docker_image: str = "agent-sandbox/devsandbox:dev"
    # Limits per sandbox, as the chart's pod template: 1 CPU / 2 GiB.
    docker_cpus: Cpus = Field(1.0, gt=0)
    docker_memory: Bytes = Field(2 * 2**30, ge=6 * 2**20)
    # "runsc" runs each sandbox under gVisor (installed and registered with dockerd).
    docker_runtime: str | None = None
    # Sandboxes attach to it; the egress guard keeps them off private ranges from it.
    docker_network: str = "agent-sandbox"
    # With SANDBOX_EGRESS not off, sandboxes attach to this network instead: an internal
    # one (no route out, made so if missing), where the egress proxy is the only way out.
    docker_egress_network: str = "agent-sandbox-egress"
    # Its subnet, e.g. 10.89.253.0/24 (unset: Docker picks one). Fixed, the host's address
    # on it (the first) is known ahead: Compose's egress proxy listens there.
    docker_egress_subnet: str | None = None
    # Publish each sandbox's port on 127.0.0.1 (an ephemeral port) and route to that:
    # for a controller and proxy on the host itself rather than on the network.
    docker_publish: bool = False
    # The app.kubernetes.io/instance label: two controllers on one Docker host never
    # take each other's containers for strays.
    docker_instance: str = "agent-sandbox"
    # Memory no sandbox may take: the OS, dockerd, the controller, proxy and database.
    docker_reserved_memory: Bytes = Field(2**30, ge=0)
    docker_user: str = "10001:10001"

    # The plans read from plans_file, once, when the settings are made.
    _plans: tuple[Plan, ...] = PrivateAttr(default=())
    # The egress lists and secrets, parsed once (egress_policy.py, egress_secrets.py).
    _egress: EgressLists = PrivateAttr(default_factory=lambda: EgressLists())

    @model_validator(mode="after")
    def _parse_egress(self) -> Settings:
        self._egress = parse_egress_lists(
            allow_text=self.egress_allow,
            grantable_text=self.egress_grantable,
            deny_text=self.egress_deny_cidrs,
            no_proxy_text=self.egress_no_proxy,
            proxy_url=self.egress_proxy_url,
            secrets_file=self.egress_secrets_file,
        )
        return self

    @property
    def egress_lists(self) -> EgressLists:
        """The deployment's egress allow list, grantable patterns, deny CIDRs and
        secrets, parsed (each bad entry was a ConfigError naming its variable)."""
        return self._egress

    @property
    def egress_proxy_address(self) -> str:
        """The egress proxy's URL as sandboxes are given it (without credentials)."""
        return self.egress_proxy_url or f"http://{self.egress_proxy_host}:{self.egress_proxy_port}"

    @model_validator(mode="after")
    def _load_plans(self) -> Settings:
        if self.plans_file:
            try:
                self._plans = load_plans(self.plans_file)
            except PlanError as exc:
                raise ValueError(f"SANDBOX_PLANS_FILE: {exc}") from None
        return self

    @property
    def lease_margin(self) -> float:
        if self.leader_lease_margin is not None:
            return self.leader_lease_margin
        return max(1.0, self.leader_lease_ttl / 4)

    @property
    def accepted_api_tokens(self) -> tuple[ApiToken, ...]:
        """SANDBOX_API_TOKEN and every SANDBOX_API_TOKENS entry (credentials.py)."""
        return api_tokens(self.api_token, self.api_tokens)

    @property
    def verifying_token_secrets(self) -> tuple[bytes, ...]:
        """SANDBOX_TOKEN_SECRET_PREVIOUS's secrets: they verify, and sign nothing."""
        return tuple(s.encode() for s in split_list(self.token_secret_previous))

    def hook_keys(self, token_secret: bytes) -> tuple[bytes, ...]:
        """The claim-secret keys, current first (``token_secret``: the one in use, which
        the controller makes up when none is set)."""
        return hook_keys(
            self.hook_secret.encode() if self.hook_secret else None,
            tuple(s.encode() for s in split_list(self.hook_secret_previous)),
            token_secret,
            self.verifying_token_secrets,
        )

    @property
    def proxy_url(self) -> str:
        """Where editors reach the proxy: the base of every session's connect.url."""
        return self.proxy_public_url or f"http://{self.proxy_host}:{self.proxy_port}"

    @property
    def allowed_origins(self) -> frozenset[str]:
        return frozenset(
            o.strip().rstrip("/").lower()
            for o in self.proxy_allowed_origins.split(",")
            if o.strip()
        )

    def connect_url(self, session_id: str) -> str:
        """A session's base URL: its own host in subdomain mode, else /s/{id}/ on the proxy."""
        base = self.proxy_url.rstrip("/")
        if not self.proxy_session_domain:
            return f"{base}/s/{session_id}/"
        scheme, _, rest = base.partition("://")
        port = rest.split("/", 1)[0].rpartition("]")[2].rpartition(":")[2]
        suffix = f":{port}" if port.isdigit() else ""
        return f"{scheme}://{session_id}.{self.proxy_session_domain}{suffix}/"

    def limits(self) -> Limits:
        base = self._base_limits()
        # Without a templates file, none: the one default template follows the fields
        # (prewarm_pool_size, prewarm) of these limits, as a sweep changes them.
        templates = () if self.templates_file is None else self.templates(base)
        return dataclasses.replace(
            base,
            templates=tuple(t.limits for t in templates),
            label_metadata_keys=self.label_metadata_keys,
        )

    def templates(self, base: Limits | None = None) -> tuple[Template, ...]:
        """The sandbox templates, the default first (templates.py)."""
        base = base or self._base_limits()
        if self.templates_file is None:
            return default_templates(base)
        return load_templates(self.templates_file, base)

    @property
    def label_metadata_keys(self) -> tuple[str, ...]:
        return tuple(k.strip() for k in self.pod_label_metadata_keys.split(",") if k.strip())

    def _base_limits(self) -> Limits:
        return Limits(
            prewarm_pool_size=self.prewarm_pool_size,
            max_total_jobs=self.max_total_jobs,
            max_sessions_per_user=self.max_sessions_per_user,
            idle_after=self.idle_after,
            idle_timeout=self.idle_timeout,
            max_lifetime=self.max_lifetime,
            startup_timeout=self.startup_timeout,
            max_concurrent_creates=self.max_concurrent_creates,
            # One flush interval of batching in the proxy, and one more for delivery.
            activity_lag=2 * self.activity_flush_interval,
            prewarm=PrewarmSettings(
                policy=self.prewarm_policy,
                min=self.prewarm_min,
                max=self.prewarm_max,
                target_warm_hit_rate=self.prewarm_target_warm_hit_rate,
            ),
            hooks=self.hooks,
            hook_timeout=self.hook_timeout,
            # Snapshots are taken through the hooks, with the pod's claim secret.
            snapshots=bool(self.snapshot_store) and self.hooks,
            idle_action=self.idle_action,
            snapshot_timeout=self.snapshot_timeout,
            snapshot_retention=self.snapshot_retention,
            max_claim_attempts=self.max_claim_attempts,
            plans=self._plans,
            recovery=RecoveryGuard(
                self.recovery_max_delete, self.recovery_max_pods, self.recovery_confirm
            ),
        )

    def kube_options(self) -> KubeOptions:
        return KubeOptions(
            namespace=self.namespace,
            kubeconfig=self.kubeconfig,
            template_path=self.pod_template_path,
            template_configmap=self.pod_template_configmap,
            qps=self.kube_qps,
            burst=self.kube_burst,
            max_concurrent_creates=self.max_concurrent_creates,
            disruption_budget=self.kube_disruption_budget,
            tmp_dir_size_limit=self.tmp_dir_size_limit,
            rootfs_size_limit=self.rootfs_size_limit,
            direct_readiness=self.kube_direct_readiness,
            readiness_interval=self.kube_readiness_interval,
            templates=self.templates(),
        )

    def docker_options(self) -> DockerOptions:
        return DockerOptions(
            url=self.docker_url,
            image=self.docker_image,
            cpus=self.docker_cpus,
            memory=self.docker_memory,
            runtime=self.docker_runtime,
            network=self.docker_egress_network if self.egress != "off" else self.docker_network,
            internal=self.egress != "off",
            subnet=self.docker_egress_subnet if self.egress != "off" else None,
            publish=self.docker_publish,
            instance=self.docker_instance,
            reserved_memory=self.docker_reserved_memory,
            workspace_size=min(self.tmp_dir_size_limit, self.docker_memory),
            user=self.docker_user,
            max_concurrent_creates=self.max_concurrent_creates,
            templates=self.templates(),
        )

    @field_validator("api_tokens")
    @classmethod
    def _api_tokens(cls, value: str) -> str:
        parse_api_tokens(value)  # ValueError names what is wrong, never a token
        return value

    @field_validator("api_token", "token_secret", "proxy_token", "hook_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `SANDBOX_API_TOKEN=` in a manifest means "not set", never "the empty token".
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator(
        "audit_log_file",
        "webhook_url",
        "webhook_secret",
        "otlp_endpoint",
        "egress_proxy_url",
        "egress_resolver",
        "egress_ca_cert_file",
        "egress_ca_key_file",
        "egress_secrets_file",
        "snapshot_store",
        "snapshot_s3_endpoint_url",
        "snapshot_s3_region",
        "snapshot_s3_access_key_id",
        "snapshot_s3_secret_access_key",
        mode="before",
    )
    @classmethod
    def _blank_is_unset(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("snapshot_store")
    @classmethod
    def _store_location(cls, value: str | None) -> str | None:
        # Checked here so a typo stops start-up naming the variable (snapshots.open_store).
        if value is not None and not re.fullmatch(
            r"file://(localhost)?/.+|s3://[^/]+(/.*)?", value
        ):
            raise ValueError(f"must be file:///path or s3://bucket/prefix (not {value!r})")
        return value

    @field_validator("console_token", mode="before")
    @classmethod
    def _console_token(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("log_level")
    @classmethod
    def _known_level(cls, value: str) -> str:
        if value.lower() not in LOG_LEVELS:
            raise ValueError(f"must be one of {', '.join(LOG_LEVELS)} (not {value!r})")
        return value.lower()

    @field_validator(
        "docker_runtime", "docker_url", "kube_disruption_budget", "templates_file", mode="before"
    )
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    @field_validator("proxy_session_domain", mode="before")
    @classmethod
    def _domain(cls, value: object) -> object:
        if isinstance(value, str):
            value = value.strip().strip(".").lower()
            return value or None
        return value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.prewarm_pool_size > self.max_total_jobs:
            raise ValueError(
                "SANDBOX_PREWARM_POOL_SIZE must not exceed SANDBOX_MAX_TOTAL_JOBS "
                f"({self.prewarm_pool_size} > {self.max_total_jobs})"
            )
        if self.prewarm_min > self.prewarm_max:
            raise ValueError(
                "SANDBOX_PREWARM_MIN must not exceed SANDBOX_PREWARM_MAX "
                f"({self.prewarm_min} > {self.prewarm_max})"
            )
        if self.idle_timeout <= 0:
            raise ValueError("SANDBOX_IDLE_TIMEOUT must be greater than zero")
        if self.header_read_timeout <= 0:
            raise ValueError("SANDBOX_HEADER_READ_TIMEOUT must be greater than zero")
        if self.body_read_timeout <= 0:
            raise ValueError("SANDBOX_BODY_READ_TIMEOUT must be greater than zero")
        if self.startup_timeout <= 0:
            raise ValueError("SANDBOX_STARTUP_TIMEOUT must be greater than zero")
        if self.leader_renew_interval >= self.leader_lease_ttl - self.lease_margin:
            raise ValueError(
                "SANDBOX_LEADER_RENEW_INTERVAL must be shorter than the lease TTL minus its "
                f"margin ({self.leader_renew_interval:g}s >= "
                f"{self.leader_lease_ttl:g}s - {self.lease_margin:g}s)"
            )
        if self.store_timeout <= 0:
            raise ValueError("SANDBOX_STORE_TIMEOUT must be greater than zero")
        if self.kube_readiness_interval < 0.01:
            raise ValueError("SANDBOX_KUBE_READINESS_INTERVAL must be at least 10ms")
        named: dict[str, str] = {}
        for key in self.label_metadata_keys:
            if not _LABEL_KEY.fullmatch(key):
                raise ValueError(
                    f"SANDBOX_POD_LABEL_METADATA_KEYS: {key!r} cannot name a label "
                    "(letters, digits, -, _ and ., at most 58 characters)"
                )
            # sandbox_pod_labels names labels as Prometheus does: - and . become _.
            other = named.setdefault(re.sub(r"[-.]", "_", key), key)
            if other != key:
                raise ValueError(
                    f"SANDBOX_POD_LABEL_METADATA_KEYS: {other!r} and {key!r} differ only "
                    "in -, _ or ., and would be one label in the metrics"
                )
        try:
            self.templates()
        except TemplateError as exc:
            raise ValueError(f"SANDBOX_TEMPLATES_FILE: {exc}") from None
        return self


@dataclass(frozen=True)
class KubeOptions:
    """What the Kubernetes backend is told (Settings.kube_options builds it)."""

    namespace: str | None  # None: the pod's own namespace, else the kubeconfig's
    kubeconfig: str | None  # None: in-cluster config, else ~/.kube/config
    template_path: str | None  # None: the built-in devsandbox template
    template_configmap: str | None  # owner of every pod, so helm uninstall removes them
    qps: float
    burst: int
    max_concurrent_creates: int
    disruption_budget: str | None = None  # its name; None: no budget kept
    # Disk of the built-in template's sandbox (bytes; a template file says its own).
    tmp_dir_size_limit: int = 20 * 2**30
    rootfs_size_limit: int = 2 * 2**30
    # At most one write of the budget per interval (seconds): a burst of opens is one
    # write, a new session covered within it. Not an operator setting.
    budget_interval: float = 1.0
    direct_readiness: bool = True  # probe cold pods while sessions wait (kube_readiness)
    readiness_interval: float = 0.05  # between two probes of one pod
    # Retries of failed API calls and watches back off from retry_base to retry_cap
    # seconds. Not operator settings: tests shorten them to fail over quickly.
    retry_base: float = 0.2
    retry_cap: float = 10.0
    templates: tuple[Template, ...] = ()  # (): one, the pod template as it is


@dataclass(frozen=True)
class DockerOptions:
    """What the Docker backend is told (Settings.docker_options builds it)."""

    url: str | None
    image: str
    cpus: float
    memory: int  # bytes
    runtime: str | None
    network: str
    publish: bool
    instance: str
    reserved_memory: int  # bytes
    workspace_size: int  # bytes, of each writable tmpfs (/tmp, /workspace)
    user: str
    max_concurrent_creates: int
    # Not operator settings: tests shorten them.
    stop_grace: float = 5.0
    retry_base: float = 0.2
    retry_cap: float = 10.0
    templates: tuple[Template, ...] = ()  # (): one, these settings' own
    # The network must be internal (no route out): SANDBOX_EGRESS is not off.
    internal: bool = False
    subnet: str | None = None  # of the network, when the backend makes it


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment plus overrides; ConfigError names the bad variable.

    With ``SANDBOX_SECRETS_DIR`` set, a setting may also come from a file there named
    after its variable in lower case (``sandbox_token_secret``): the chart mounts secrets
    as files, so they are never in the environment. The environment wins over a file."""
    secrets_dir = os.environ.get("SANDBOX_SECRETS_DIR") or None
    try:
        return Settings(_secrets_dir=secrets_dir, **overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            name = "SANDBOX_" + loc[0].upper() if loc else ""
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{name}: {msg}" if name else msg)
        raise ConfigError("; ".join(problems)) from None


# SANDBOX_* variables that are no setting but have their own readers: the secrets
# directory (load_settings), a sandbox's claim secret (sandbox_contract), Compose's
# .env (env file, image name), and the test suite's switches.
NON_SETTING_VARIABLES = frozenset(
    {
        "SANDBOX_SECRETS_DIR",
        ENV_CLAIM_SECRET,
        "SANDBOX_ENV_FILE",
        "SANDBOX_CONTROLLER_IMAGE",
        "SANDBOX_TEST_POSTGRES",
        "SANDBOX_CONSOLE_SCREENSHOTS",
        "SANDBOX_CHAOS_SECONDS",
    }
)


def unknown_variables(environ: Mapping[str, str]) -> list[str]:
    """One warning for each SANDBOX_* variable that is no setting (a typo is otherwise
    ignored without a word), naming the closest setting when one is close."""
    settings = ["SANDBOX_" + name.upper() for name in Settings.model_fields]
    known = set(settings) | NON_SETTING_VARIABLES
    warnings = []
    for name in sorted(environ):
        if not name.startswith("SANDBOX_") or name in known:
            continue
        # A name cut short (SANDBOX_PREWARM_POOL) means the setting it begins, first.
        close = sorted((s for s in settings if s.startswith(name)), key=len)[:1]
        close = close or difflib.get_close_matches(name, settings, n=1, cutoff=0.75)
        hint = f"did you mean {close[0]}?" if close else "see the README's Configuration"
        warnings.append(f"{name} is not a setting and is ignored; {hint}")
    return warnings


# Secret settings, and what none of them may be outside `dev`.
SECRET_SETTINGS = (
    "api_token",
    "token_secret",
    "proxy_token",
    "hook_secret",
    "webhook_secret",
)
# Comma-separated lists of secrets, each entry held to the same test.
SECRET_LIST_SETTINGS = ("token_secret_previous", "hook_secret_previous")
MIN_SECRET_BYTES = 16
# Values from the repository's own examples (the Compose .env.example of old, the README,
# the chart) and the usual stand-ins, compared in lower case.
_PLACEHOLDERS = frozenset(
    {"secret", "password", "example", "changeme", "change-me", "change_me", "token",
     "change-me-too", "change-me-three", "test", "xxx", "..."}
)  # fmt: skip
_PLACEHOLDER_PREFIXES = ("change-me", "changeme", "change_me", "replace-me", "example")


def weak_secret(value: str) -> str | None:
    """Why ``value`` is no secret (a known placeholder, too short), or None."""
    folded = value.strip().lower()
    if folded in _PLACEHOLDERS or folded.startswith(_PLACEHOLDER_PREFIXES):
        return "is a known placeholder"
    size = len(value.encode())
    if size < MIN_SECRET_BYTES:
        return f"is too short ({size} bytes, at least {MIN_SECRET_BYTES} needed)"
    return None


def check_secrets(settings: Settings) -> None:
    """Outside `dev`: every secret set is a real one, and the proxies' credential is not
    the API token. ConfigError (one line, naming the variable) otherwise."""
    for name in SECRET_SETTINGS:
        value = getattr(settings, name)
        why = None if value is None else weak_secret(value)
        if why is not None:
            raise ConfigError(
                f"SANDBOX_{name.upper()}: {why}; set a random value, e.g. "
                "python3 -c 'import secrets; print(secrets.token_urlsafe(32))'"
            )
    if settings.webhook_url is not None and settings.webhook_secret is None:
        raise ConfigError("SANDBOX_WEBHOOK_SECRET: required with SANDBOX_WEBHOOK_URL (it signs)")
    listed = {name: split_list(getattr(settings, name)) for name in SECRET_LIST_SETTINGS}
    listed["api_tokens"] = tuple(t.token for t in parse_api_tokens(settings.api_tokens))
    for name, values in listed.items():
        for i, value in enumerate(values, 1):
            why = weak_secret(value)
            if why is not None:
                raise ConfigError(f"SANDBOX_{name.upper()}: entry {i} {why}")
    api = {t.token for t in settings.accepted_api_tokens}
    if settings.proxy_token is not None and settings.proxy_token in api:
        raise ConfigError(
            "SANDBOX_PROXY_TOKEN: must differ from SANDBOX_API_TOKEN (it opens /internal/* only)"
        )


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
