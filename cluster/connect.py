"""Join an existing Ray cluster or start a private local one.

The private cluster (no address given) is closed two ways, so nobody else can submit work to it:

- **loopback only**: every Ray port of it (GCS, raylet, object manager, workers, its agents and
  metrics endpoints) listens on 127.0.0.1. Ray binds to the node's address, and takes
  the loopback address as the node's one in its single-machine mode (the default on macOS and
  Windows, ``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``), which dubline turns on for this cluster;
- **token authentication**: ``RAY_AUTH_MODE=token`` with a fresh random token (256 bits) per
  cluster, held only in the environment of this process and of the Ray processes it starts. It is
  never printed, logged or written to a file; other local users cannot read it (a process's
  environment is readable by its own user only).

Both are undone by ``disconnect()``, so a later ``connect(address)`` in the same process joins a
cluster with the user's own settings. It has no dashboard (nobody could open it without the
token), so a Ray head started by hand (``ray start --head``) while a run goes on finds Ray's
default port 8265 free.

``auto`` joins the one Ray cluster running on this node; with several (a head started by hand, a
colleague's, the private cluster of another dubline run), it refuses and lists their addresses
instead of joining the latest one with a warning, as Ray itself would.

Workers' output (MediaPipe's native logs, prints, Ray's log-deduplication notices) stays in Ray's
session logs (``<temp dir>/ray/session_*/logs``) and is not copied to the driver's console unless
``RAY_LOG_TO_DRIVER=1`` (``dubline … --verbose`` sets it).
"""

from __future__ import annotations

import os
import secrets
import socket

import ray
from ray._private import ray_constants
from ray._raylet import AuthenticationTokenLoader, Config

#: Ray's switch between its single-machine mode (False: the node's address is 127.0.0.1) and the
#: cluster mode (True on Linux: the node's network address). Read by Ray's own processes at start.
_CLUSTER_MODE_VAR = ray_constants.ENABLE_RAY_CLUSTERS_ENV_VAR

#: Environment of the private cluster's processes; values replaced here are restored on disconnect.
_saved_env: dict[str, str | None] | None = None


def connect(address: str | None = None, num_cpus: int | None = None) -> str:
    """Connect to ``address`` (or ``$RAY_ADDRESS``); without one, start a private local Ray
    (loopback only, token-authenticated; see the module docstring).

    Returns a one-line description of the cluster for logs.
    """
    if not ray.is_initialized():
        address = address or os.environ.get("RAY_ADDRESS")
        if address == "auto":
            address = resolve_auto()
        if address:
            _check_reachable(address)
            ray.init(address=address, logging_level="WARNING", log_to_driver=_log_to_driver())
        else:
            _start_private(num_cpus)
    resources = ray.cluster_resources()
    return f"Ray {ray.get_runtime_context().gcs_address}: {resources.get('CPU', 0):g} CPU, {resources.get('GPU', 0):g} GPU"


def _log_to_driver() -> bool:
    """Copy the workers' output to this process's console only when ``RAY_LOG_TO_DRIVER`` says so."""
    return os.environ.get("RAY_LOG_TO_DRIVER", "0").strip().lower() in ("1", "true", "yes", "on")


def resolve_auto() -> str:
    """The GCS address of the one Ray cluster running on this node, for ``--ray-address auto``.

    Raises ConnectionError when none runs, or when several do (naming each, and the one the last
    ``ray start --head`` wrote, so the user can pass it explicitly).
    """
    from ray._private import services, utils

    services.find_gcs_addresses.cache_clear()
    found = sorted(services.find_gcs_addresses())
    if len(found) == 1:
        return found[0]
    if not found:
        raise ConnectionError("--ray-address auto: no Ray cluster is running on this node (start one with "
                              "`ray start --head`, or pass the address of a cluster)")
    try:
        latest = utils.read_ray_address(None)
    except OSError:
        latest = None
    hint = f" (the last `ray start --head` here started {latest})" if latest in found else ""
    raise ConnectionError(f"--ray-address auto: {len(found)} Ray clusters are running on this node: "
                          f"{', '.join(found)}{hint}; pass the one to join, e.g. --ray-address {latest or found[0]}")


def _check_reachable(address: str, timeout_s: float = 10.0) -> None:
    """Fail now when nothing listens at a GCS address (HOST:PORT): Ray itself would retry the
    connection for as long as the run's limits allow. ``ray://`` addresses fail fast on their own."""
    if "://" in address or ":" not in address:
        return
    from ray._private.services import resolve_ip_for_localhost

    host, _, port = address.rpartition(":")
    target = resolve_ip_for_localhost(host.strip("[]"))  # Ray joins 127.0.0.1 as the node's address
    try:
        with socket.create_connection((target, int(port)), timeout=timeout_s):
            pass
    except (OSError, ValueError) as exc:
        where = address if target == host else f"{address} ({target}:{port})"
        raise ConnectionError(f"no Ray cluster answers at {where}: {exc}. Is its head running "
                              "(`ray status --address ...`)?") from exc


def _start_private(num_cpus: int | None) -> None:
    """Start a private cluster: address="local" never joins a running one."""
    _set_env({
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_AUTH_TOKEN_PATH": None,  # the token above, not a file of the user's
        _CLUSTER_MODE_VAR: "0",
        "RAY_USAGE_STATS_ENABLED": os.environ.get("RAY_USAGE_STATS_ENABLED", "0"),
    })
    # This process read Ray's settings when it imported ray: the child processes get them from the
    # environment, this one needs its cached ones refreshed.
    cluster_mode = ray_constants.ENABLE_RAY_CLUSTER
    ray_constants.ENABLE_RAY_CLUSTER = False
    try:
        # No dashboard: it would ask for the run's token, which nobody is shown, and it costs
        # ~1.6 s of every start (measured: ray.init 4.3 s with it, 2.6 s without).
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False,
                 logging_level="WARNING", log_to_driver=_log_to_driver())
    except BaseException:
        _restore_env()
        raise
    finally:
        # Only the start needs it (the node's address is fixed from then on); a later join of a
        # real cluster from this process must see the network address again.
        ray_constants.ENABLE_RAY_CLUSTER = cluster_mode


def disconnect() -> None:
    """Leave the cluster (stopping it when it is the private one) and restore the environment."""
    if ray.is_initialized():
        ray.shutdown()
    _restore_env()


def _set_env(values: dict[str, str | None]) -> None:
    global _saved_env
    if _saved_env is None:
        _saved_env = {name: os.environ.get(name) for name in values}
    for name, value in values.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _reload_ray_auth()


def _restore_env() -> None:
    global _saved_env
    if _saved_env is None:
        return
    saved, _saved_env = _saved_env, None
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    _reload_ray_auth()


def _reload_ray_auth() -> None:
    """Make this process's Ray core see the authentication mode and token now in the environment
    (it caches both; Ray's own ``ray.init`` path refreshes them the same way)."""
    Config.initialize("")
    AuthenticationTokenLoader.instance().reset_cache()
