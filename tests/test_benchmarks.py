"""The benchmarks are not run in CI (they need minutes and a quiet machine), but they
must keep importing: a benchmark that rots silently measures nothing next time."""

from __future__ import annotations

import importlib

import pytest


@pytest.mark.parametrize(
    "module",
    [
        "benchmarks.claim_bench",
        "benchmarks.claim_env_bench",
        "benchmarks.bench_app",
        "benchmarks.proxy_bench",
        "benchmarks.kube_bench",
        "benchmarks.cold_bench",
        "benchmarks.failover_bench",
        "benchmarks.sim_bench",
        "benchmarks.docker_bench",
        "benchmarks.console_clients",
        "benchmarks.budget_bench",
        "benchmarks.token_bench",
        "benchmarks.recovery_bench",
        "benchmarks.suspend_bench",
        "benchmarks.egress_bench",
        "benchmarks.egress_origin",
        "benchmarks.resume_bench",
        "benchmarks.template_rounds_bench",
    ],
)
def test_benchmark_imports_against_the_current_code(module: str) -> None:
    loaded = importlib.import_module(module)
    assert callable(getattr(loaded, "main", None) or getattr(loaded, "build", None))
