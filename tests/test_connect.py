"""cluster.connect without a cluster: which address `auto` resolves to, and whether workers' output
reaches the driver's console."""

from __future__ import annotations

import pytest
import ray

from dubline.cluster import connect as connect_module


@pytest.fixture
def fake_init(monkeypatch):
    calls = []
    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    monkeypatch.setattr(ray, "init", lambda **kwargs: calls.append(kwargs))
    monkeypatch.setattr(ray, "cluster_resources", lambda: {"CPU": 2.0})
    monkeypatch.setattr(ray, "get_runtime_context", lambda: type("C", (), {"gcs_address": "10.0.0.5:6379"})())
    monkeypatch.delenv("RAY_ADDRESS", raising=False)
    monkeypatch.setattr(connect_module, "_check_reachable", lambda address: None)
    return calls


def _running(monkeypatch, addresses: set[str], latest: str | None = None) -> None:
    from ray._private import services, utils

    found = lambda: frozenset(addresses)  # noqa: E731
    found.cache_clear = lambda: None
    monkeypatch.setattr(services, "find_gcs_addresses", found)
    monkeypatch.setattr(utils, "read_ray_address", lambda temp_dir=None: latest)


def test_workers_output_stays_off_the_driver_unless_asked(fake_init, monkeypatch):
    monkeypatch.delenv("RAY_LOG_TO_DRIVER", raising=False)
    connect_module.connect("10.0.0.5:6379")
    monkeypatch.setenv("RAY_LOG_TO_DRIVER", "1")  # what `dubline … --verbose` sets
    connect_module.connect("10.0.0.5:6379")
    assert [(c["address"], c["log_to_driver"]) for c in fake_init] == [("10.0.0.5:6379", False), ("10.0.0.5:6379", True)]


def test_auto_joins_the_only_cluster_of_the_node(fake_init, monkeypatch):
    _running(monkeypatch, {"127.0.0.1:6390"})
    connect_module.connect("auto")
    monkeypatch.setenv("RAY_ADDRESS", "auto")
    connect_module.connect()
    assert [c["address"] for c in fake_init] == ["127.0.0.1:6390", "127.0.0.1:6390"]


def test_auto_refuses_to_guess_between_clusters(fake_init, monkeypatch):
    _running(monkeypatch, {"127.0.0.1:6390", "127.0.0.1:41234"}, latest="127.0.0.1:6390")
    with pytest.raises(ConnectionError, match=r"2 Ray clusters are running on this node: 127\.0\.0\.1:41234, "
                       r"127\.0\.0\.1:6390 \(the last `ray start --head` here started 127\.0\.0\.1:6390\); pass the "
                       r"one to join, e\.g\. --ray-address 127\.0\.0\.1:6390"):
        connect_module.connect("auto")
    _running(monkeypatch, set())
    with pytest.raises(ConnectionError, match="no Ray cluster is running on this node"):
        connect_module.connect("auto")
    assert fake_init == []


def test_an_address_where_nothing_listens_fails_at_once(monkeypatch):
    """Ray itself would retry the connection for minutes."""
    import socket

    monkeypatch.setattr(ray, "is_initialized", lambda: False)
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    with pytest.raises(ConnectionError, match=f"no Ray cluster answers at 127.0.0.1:{port}"):
        connect_module.connect(f"127.0.0.1:{port}")
