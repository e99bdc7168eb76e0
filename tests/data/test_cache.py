"""The demonstration cache under concurrency, with real processes and real flock: two builders of one entry
-> one build, both get the same dataset; a SIGKILLed builder leaves a temp folder that the next one cleans;
a builder that never finishes makes the waiter fail with a clear message after its timeout."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from vlaforge.data.cache import CacheLockTimeout, build_once, file_lock
from vlaforge.data.reader import DatasetReader
from vlaforge.manifest import build_manifest

BUILDER = textwrap.dedent("""
    import importlib.util, logging, os, sys, time
    from pathlib import Path
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    spec = importlib.util.spec_from_file_location("synth", {synth!r})
    synth = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(synth)
    from vlaforge.data import format as F
    from vlaforge.data.cache import build_once
    from vlaforge.data.writer import DatasetWriter

    dest, log, mode = Path(sys.argv[1]), Path(sys.argv[2]), sys.argv[3]

    def build():
        with open(log, "a") as f:
            f.write(f"build {{os.getpid()}}\\n")
        w = DatasetWriter(dest, 20, synth.features())
        for e in range(3):
            w.add_episode(synth.episode(e, 6), task="x")
            while mode == "first" and not (log.parent / "arrived").exists():  # the other one arrives mid-build
                time.sleep(0.05)
            if mode == "die":
                (log.parent / "ready").write_text("x")
                time.sleep(600)  # SIGKILLed here, holding the lock, its temp folder half written
        return w.finalize()

    if mode == "second":
        (log.parent / "arrived").write_text("x")
    path = build_once(dest, lambda p: (p / F.INFO_PATH).is_file(), build, timeout_s=float(sys.argv[4]))
    print("RESULT", path, flush=True)
""")


def _spawn(tmp_path, synth, dest, mode, timeout_s=120):
    script = tmp_path / "builder.py"
    script.write_text(BUILDER.format(synth=str(synth.path)))
    return subprocess.Popen([sys.executable, str(script), str(dest), str(tmp_path / "builds.log"), mode, str(timeout_s)],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _builds(tmp_path) -> list[str]:
    log = tmp_path / "builds.log"
    return log.read_text().splitlines() if log.exists() else []


def test_two_processes_building_one_cache_entry_share_one_build(tmp_path, synth):
    dest = tmp_path / "cache" / "0123abcd"
    stale = dest.parent / f"{dest.name}.tmp-deadbeef"  # a crashed builder's leftovers, not locked by anyone
    (stale / "data").mkdir(parents=True)
    first = _spawn(tmp_path, synth, dest, "first")  # builds, and waits mid-build until the second arrives
    deadline = time.monotonic() + 60
    while not _builds(tmp_path) and time.monotonic() < deadline:  # the first one holds the lock and builds
        time.sleep(0.05)
    second = _spawn(tmp_path, synth, dest, "second")
    outs = [p.communicate(timeout=180)[0] for p in (first, second)]
    assert [p.returncode for p in (first, second)] == [0, 0], outs
    results = [line.split(" ", 1)[1] for out in outs for line in out.splitlines() if line.startswith("RESULT")]
    assert results == [str(dest), str(dest)]
    assert len(_builds(tmp_path)) == 1, _builds(tmp_path)  # the second waited and reused the result
    assert "is building it; waiting up to" in outs[1] and "built meanwhile by another run; reusing it" in outs[1]
    assert "removed 1 stale folder(s) of crashed builders: 0123abcd.tmp-deadbeef" in outs[0]
    assert not stale.exists() and sorted(p.name for p in dest.parent.iterdir()) == [dest.name, f"{dest.name}.lock"]
    assert DatasetReader(dest).num_episodes == 3
    before = build_manifest(dest)
    assert build_once(dest, lambda p: True, lambda: pytest.fail("rebuilt"), 1) == dest and build_manifest(dest) == before


def test_a_killed_builder_releases_the_lock_and_its_leftovers_are_cleaned(tmp_path, synth):
    dest = tmp_path / "cache" / "0123abcd"
    dying = _spawn(tmp_path, synth, dest, "die")
    deadline = time.monotonic() + 60
    while not (tmp_path / "ready").exists():
        assert dying.poll() is None and time.monotonic() < deadline, dying.communicate()[0]
        time.sleep(0.05)
    dying.send_signal(signal.SIGKILL)
    dying.wait(timeout=30)
    leftovers = list(dest.parent.glob(f"{dest.name}.tmp-*"))
    assert len(leftovers) == 1 and not dest.exists()
    nxt = _spawn(tmp_path, synth, dest, "fast")
    out = nxt.communicate(timeout=180)[0]
    assert nxt.returncode == 0, out
    assert not leftovers[0].exists() and DatasetReader(dest).num_episodes == 3 and len(_builds(tmp_path)) == 2


def test_waiting_past_the_timeout_names_the_holder(tmp_path):
    dest = tmp_path / "cache" / "entry"
    with file_lock(dest.parent / f"{dest.name}.lock", 1, "holder"):  # this process holds it
        t0 = time.monotonic()
        script = textwrap.dedent(f"""
            from pathlib import Path
            from vlaforge.data.cache import build_once
            build_once(Path({str(dest)!r}), lambda p: False, lambda: 1 / 0, timeout_s=0.5)
        """)
        proc = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert proc.returncode != 0 and "CacheLockTimeout" in proc.stderr
    assert f"pid {os.getpid()}" in proc.stderr and "demos.lock_timeout_s" in proc.stderr
    assert time.monotonic() - t0 < 60
    with pytest.raises(CacheLockTimeout):  # in-process too: flock is per open file description
        with file_lock(dest.parent / f"{dest.name}.lock", 1, "a"):
            with file_lock(dest.parent / f"{dest.name}.lock", 0.3, "b"):
                pass
    assert not Path(dest).exists()
