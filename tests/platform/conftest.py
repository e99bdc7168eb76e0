"""A real two-node Ray cluster on this machine, bound to 127.0.0.1, with token authentication ON.

Isolated from every other Ray on the machine (other test sessions run beside this one): its own temp
dir, its own free ports, its own token; torn down by process group -- never `ray stop`, which would stop
every Ray process of the machine.
"""

from __future__ import annotations

import asyncio
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests

HERE = Path(__file__).resolve().parent
RAY = str(Path(sys.executable).with_name("ray"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class LocalRayCluster:
    """Head (`ray start --head --node-ip-address=127.0.0.1`) + extra nodes joined at 127.0.0.1:PORT."""

    def __init__(self, cpus_per_node: int = 3):
        self.tmp = Path(tempfile.mkdtemp(prefix="vfray", dir="/tmp"))  # short: Ray's socket paths have a limit
        self.token = secrets.token_hex(32)  # what `ray` itself generates: 256 random bits
        self.env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": self.token,
                    "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}
        self.env.pop("RAY_ADDRESS", None)
        self.cpus = cpus_per_node
        self.procs: list[subprocess.Popen] = []
        self.gcs_port, self.dashboard_port = free_port(), free_port()
        self.address = f"http://127.0.0.1:{self.dashboard_port}"

    def _node_tmp(self) -> Path:
        d = self.tmp / f"n{len(self.procs)}"
        d.mkdir()
        return d

    def _agent_ports(self) -> list[str]:
        return [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                f"--metrics-export-port={free_port()}", f"--runtime-env-agent-port={free_port()}"]

    def _spawn(self, argv: list[str], log: str, cwd: Path, env: dict | None = None) -> None:
        out = open(self.tmp / log, "w")
        self.procs.append(subprocess.Popen(argv, env=env or self.env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT,
                                           start_new_session=True))  # own process group: torn down as one

    def start_head(self, resources: str = '{"head_node": 1}', timeout: float = 120) -> None:
        self._spawn([RAY, "start", "--head", "--node-ip-address=127.0.0.1", f"--port={self.gcs_port}",
                     "--dashboard-host=127.0.0.1", f"--dashboard-port={self.dashboard_port}",
                     f"--ray-client-server-port={free_port()}", *self._agent_ports(), f"--num-cpus={self.cpus}",
                     f"--resources={resources}", f"--temp-dir={self.tmp}", "--object-store-memory=300000000", "--disable-usage-stats", "--block"],
                    "head.log", self.tmp)
        self.wait_nodes(1, timeout)

    def add_node(self, cwd: Path, resources: str, timeout: float = 120) -> None:
        self._spawn([sys.executable, str(HERE / "loopback_ray_start.py"), "start",
                     f"--address=127.0.0.1:{self.gcs_port}", "--node-ip-address=127.0.0.1", *self._agent_ports(),
                     # its own temp dir: two nodes sharing one would share (and garbage-collect) each other's
                     # runtime_resources, e.g. the job's unpacked working dir
                     f"--num-cpus={self.cpus}", f"--resources={resources}", f"--temp-dir={self._node_tmp()}",
                     "--object-store-memory=300000000", "--disable-usage-stats", "--block"], f"node{len(self.procs)}.log", cwd,
                    # the wrapper must import Ray with multi-node joins allowed; it sets the switch for its children
                    env={k: v for k, v in self.env.items() if k != "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"})
        self.wait_nodes(len(self.procs), timeout)

    def nodes(self) -> list[dict]:
        return [n for n in self.state("nodes") if n["state"] == "ALIVE"]

    def state(self, kind: str, **filters: str) -> list[dict]:
        """Ray's state API over HTTP with the token: nodes, actors (alive and dead), ..."""
        params = {"limit": 1000, "detail": "true"}
        if filters:
            params.update(filter_keys=list(filters), filter_predicates=["="] * len(filters),
                          filter_values=list(filters.values()))
        r = requests.get(f"{self.address}/api/v0/{kind}", params=params, timeout=30,
                         headers={"Authorization": f"Bearer {self.token}"})
        r.raise_for_status()
        return r.json()["data"]["result"]["result"]

    def wait_nodes(self, n: int, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for p in self.procs:
                if p.poll() is not None:
                    logs = "\n".join(f.read_text()[-2000:] for f in self.tmp.glob("*.log"))
                    raise RuntimeError(f"ray start exited with {p.returncode}:\n{logs}")
            try:
                if len(self.nodes()) >= n:
                    return
            except (requests.RequestException, KeyError, ValueError):
                pass
            time.sleep(1)
        raise TimeoutError(f"{n} Ray nodes not up within {timeout} s (logs in {self.tmp})")

    def client_env(self, token: str | None = None) -> dict[str, str]:
        env = {**os.environ, "RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN": token or self.token}
        env.pop("RAY_ADDRESS", None)
        return env

    def stop(self) -> None:
        for p in self.procs:
            try:
                os.killpg(p.pid, signal.SIGTERM)
            except ProcessLookupError:
                pass
        deadline = time.monotonic() + 15
        for p in self.procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
            try:  # whatever of the group did not exit in time (raylet workers, agents)
                os.killpg(p.pid, signal.SIGKILL)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="session")
def ray_two_nodes(tmp_path_factory):
    """Head + a second node with its own resources and working directory; shared by the job tests."""
    cluster = LocalRayCluster(cpus_per_node=3)
    try:
        cluster.start_head()
        cluster.add_node(cwd=tmp_path_factory.mktemp("node2_cwd"), resources='{"node2": 1}')
        yield cluster
    finally:
        cluster.stop()


# -- headless Chromium over the DevTools protocol -----------------------------------------------------
# TensorBoard's pages are rendered by JavaScript (Angular + Polymer shadow DOM): --dump-dom sees the shell
# only, so the test drives a real Chromium and reads the rendered page, shadow roots included.
CHROMIUM_FLAGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                  "--disable-background-networking", "--disable-component-update", "--disable-sync",
                  "--window-size=1400,2400"]
RENDERED = """(() => { const text = [], imgs = []; const walk = (n) => { if (n.shadowRoot) walk(n.shadowRoot);
  for (const c of n.childNodes) { if (c.nodeType === 3) text.push(c.textContent);
    else if (c.nodeType === 1 && c.tagName !== 'STYLE' && c.tagName !== 'SCRIPT') {
      if (c.tagName === 'IMG') imgs.push(c.src); walk(c); } } };
  walk(document); return JSON.stringify({text: text.join(' ').replace(/\\s+/g, ' '), imgs}); })()"""


def chromium_render(url: str, until, timeout: float = 90, chromium: str = "chromium") -> dict:
    """Open ``url`` in headless Chromium; poll its rendered text and <img> sources until ``until(got)``."""
    import aiohttp

    port = free_port()
    profile = tempfile.mkdtemp(prefix="vfchrome")  # a fresh profile every time
    proc = subprocess.Popen([chromium, *CHROMIUM_FLAGS, f"--user-data-dir={profile}",
                             f"--remote-debugging-port={port}", "about:blank"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                pages = requests.get(f"http://127.0.0.1:{port}/json/list", timeout=5).json()
                break
            except requests.RequestException:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError(f"chromium did not open its DevTools port {port}")
                time.sleep(0.3)
        ws_url = next(p for p in pages if p["type"] == "page")["webSocketDebuggerUrl"]

        async def drive() -> dict:
            async with aiohttp.ClientSession() as sess, sess.ws_connect(ws_url, max_msg_size=0) as ws:
                n = 0

                async def call(method: str, **params):
                    nonlocal n
                    n += 1
                    await ws.send_json({"id": n, "method": method, "params": params})
                    while True:
                        msg = await asyncio.wait_for(ws.receive_json(), 30)
                        if msg.get("id") == n:
                            return msg.get("result", {})

                await call("Page.navigate", url=url)
                end, got = time.monotonic() + timeout, {"text": "", "imgs": []}
                while time.monotonic() < end:
                    r = await call("Runtime.evaluate", expression=RENDERED, returnByValue=True)
                    got = json.loads(r["result"]["value"])
                    if until(got):
                        break
                    await asyncio.sleep(1)
                return got

        return asyncio.run(drive())
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()


@pytest.fixture
def chromium():
    """-> chromium_render(url, until, timeout): a real headless Chromium driven over DevTools."""
    return chromium_render


@pytest.fixture
def port():
    return free_port()
