"""system_metrics() while child processes exit under it: a real child killed and reaped between the listing
and the read (the race, made deterministic), a zombie child, and children churning during many reads."""

from __future__ import annotations

import subprocess
import sys
import threading
import time

import psutil

from vlaforge.platform.metrics import system_metrics

KEYS = {"system/cpu_percent", "system/mem_used_gb", "system/driver_tree_rss_gb"}


def _child() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])


def test_a_child_that_exits_between_listing_and_reading(monkeypatch):
    child = _child()
    real = psutil.Process.children

    def children_then_exit(self, *a, **k):
        listed = real(self, *a, **k)
        if self.pid != child.pid:
            child.kill()
            child.wait()  # reaped: reading it now raises NoSuchProcess
        return listed

    monkeypatch.setattr(psutil.Process, "children", children_then_exit)
    try:
        assert any(c.pid == child.pid for c in real(psutil.Process()))
        with_gone = system_metrics()
    finally:
        child.kill()
        child.wait()
    assert set(with_gone) == KEYS and with_gone["system/driver_tree_rss_gb"] > 0


def test_a_zombie_child_and_children_churning():
    zombie = subprocess.Popen([sys.executable, "-c", "pass"])  # exits at once; not reaped until the end
    z = psutil.Process(zombie.pid)
    while z.status() != psutil.STATUS_ZOMBIE:
        time.sleep(0.01)
    stop = threading.Event()

    def churn():
        while not stop.is_set():
            subprocess.run(["true"], check=False)

    thread = threading.Thread(target=churn, daemon=True)
    thread.start()
    try:
        for _ in range(200):
            m = system_metrics()
            assert set(m) == KEYS and m["system/driver_tree_rss_gb"] > 0
    finally:
        stop.set()
        thread.join(timeout=30)
        zombie.wait()
