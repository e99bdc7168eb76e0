"""The embedded Ray cluster is bound to loopback: node address, GCS, raylet and agents listen on 127.0.0.1."""

from __future__ import annotations

import psutil
import pytest

LOOPBACK = {"127.0.0.1", "::ffff:127.0.0.1", "::1"}


@pytest.mark.slow
def test_embedded_cluster_listens_on_loopback_only(ray_cluster):
    ray = ray_cluster
    assert ray.get_runtime_context().gcs_address.startswith("127.0.0.1:")
    assert {n["NodeManagerAddress"] for n in ray.nodes()} == {"127.0.0.1"}
    listening: dict[str, set[str]] = {}
    for proc in psutil.Process().children(recursive=True):  # gcs_server, raylet, agents, workers
        try:
            conns = proc.net_connections(kind="inet")
            name = proc.name()
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
        for c in conns:
            if c.status == psutil.CONN_LISTEN:
                listening.setdefault(name, set()).add(c.laddr.ip)
    assert any("gcs_server" in n for n in listening) and any("raylet" in n for n in listening), listening
    exposed = {n: ips - LOOPBACK for n, ips in listening.items() if ips - LOOPBACK}
    assert not exposed, f"Ray processes listening beyond loopback: {exposed}"
