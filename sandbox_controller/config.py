"""Settings from the environment (``SANDBOX_*``), built once by the CLI or an app factory."""

from __future__ import annotations

import ipaddress
from typing import Annotated, Literal

from pydantic import BeforeValidator, Field, ValidationError, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from .durations import parse_duration

Duration = Annotated[float, BeforeValidator(parse_duration)]


class ConfigError(Exception):
    """A setting is missing or malformed; the message names the variable."""


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="SANDBOX_", extra="ignore", frozen=True)

    prewarm_pool_size: int = Field(5, ge=0)
    max_total_jobs: int = Field(50, ge=1)
    max_sessions_per_user: int = Field(5, ge=1)
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
    backend: Literal["local", "kubernetes"] = "local"
    api_token: str | None = None
    token_secret: str | None = None
    # Long enough for a working day; GET /sessions/{id} hands out a fresh one.
    token_ttl: Duration = 43200.0
    proxy_public_url: str = "http://127.0.0.1:8081"
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
    # Ended sessions stay readable for this long, then their rows are deleted.
    ended_retention: Duration = 7 * 86400.0
    # How often the proxy flushes activity to the controller.
    activity_flush_interval: Duration = 2.0
    log_level: str = "info"

    # Kubernetes backend
    namespace: str | None = None
    kubeconfig: str | None = None
    pod_template_path: str | None = None
    pod_template_configmap: str | None = None
    kube_qps: float = Field(20.0, gt=0)
    kube_burst: int = Field(40, ge=1)

    @field_validator("api_token", "token_secret", mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # `SANDBOX_API_TOKEN=` in a manifest means "not set", never "the empty token".
        return None if isinstance(value, str) and not value.strip() else value

    @model_validator(mode="after")
    def _check(self) -> Settings:
        if self.prewarm_pool_size > self.max_total_jobs:
            raise ValueError(
                "SANDBOX_PREWARM_POOL_SIZE must not exceed SANDBOX_MAX_TOTAL_JOBS "
                f"({self.prewarm_pool_size} > {self.max_total_jobs})"
            )
        if self.idle_timeout <= 0:
            raise ValueError("SANDBOX_IDLE_TIMEOUT must be greater than zero")
        if self.startup_timeout <= 0:
            raise ValueError("SANDBOX_STARTUP_TIMEOUT must be greater than zero")
        return self


def load_settings(**overrides: object) -> Settings:
    """Settings from the environment plus overrides; ConfigError names the bad variable."""
    try:
        return Settings(**overrides)  # type: ignore[arg-type]
    except ValidationError as exc:
        problems = []
        for err in exc.errors():
            loc = [str(p) for p in err["loc"]]
            name = "SANDBOX_" + loc[0].upper() if loc else ""
            msg = err["msg"].removeprefix("Value error, ")
            problems.append(f"{name}: {msg}" if name else msg)
        raise ConfigError("; ".join(problems)) from None


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False
