"""Servers keep idle connections longer than the clients and balancers in front."""

from __future__ import annotations

from fastapi import FastAPI

from sandbox_controller.serving import KEEP_ALIVE_SECONDS, make_server

# nginx's keepalive_timeout and the common cloud load balancers' idle timeout.
LOAD_BALANCER_IDLE_SECONDS = 60


def test_an_idle_connection_outlives_the_load_balancers_and_clients_in_front() -> None:
    # If the server closed first, a client reusing the connection at that moment would
    # lose its request: the race kube_bench hit with uvicorn's default of 5 s.
    server = make_server(FastAPI())
    assert server.config.timeout_keep_alive == KEEP_ALIVE_SECONDS
    assert KEEP_ALIVE_SECONDS > LOAD_BALANCER_IDLE_SECONDS
