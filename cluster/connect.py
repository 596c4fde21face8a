"""Join an existing Ray cluster or start a local one."""

from __future__ import annotations

import os

import ray


def connect(address: str | None = None, num_cpus: int | None = None) -> str:
    """Connect to ``address`` (or ``$RAY_ADDRESS``); without one, start a private local Ray.

    Returns a one-line description of the cluster for logs.
    """
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address:
            ray.init(address=address, logging_level="WARNING")
        else:
            # A private, token-less local cluster: address="local" never joins a running one.
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            ray.init(address="local", num_cpus=num_cpus, dashboard_host="127.0.0.1", logging_level="WARNING")
    resources = ray.cluster_resources()
    return f"Ray {ray.get_runtime_context().gcs_address}: {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU"


def disconnect() -> None:
    if ray.is_initialized():
        ray.shutdown()
