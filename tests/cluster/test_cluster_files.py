"""cluster/: what can be checked without a cloud, Kubernetes or SLURM: the YAMLs parse and carry the keys
their tools need, the SLURM script passes `bash -n`, and its dry run prints every command it would run."""

from __future__ import annotations

import os
import shlex
import subprocess
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
CLUSTER = ROOT / "cluster"


def test_ray_cluster_launcher_yaml():
    cfg = yaml.safe_load((CLUSTER / "ray-cluster.yaml").read_text())
    for key in ("cluster_name", "max_workers", "provider", "auth", "available_node_types", "head_node_type",
                "setup_commands", "head_start_ray_commands", "worker_start_ray_commands"):
        assert key in cfg, key
    types = cfg["available_node_types"]
    assert cfg["head_node_type"] in types
    assert any("GPU" in t["resources"] for t in types.values()), "a GPU node type"
    assert any("GPU" not in t["resources"] and t["max_workers"] > 0 for t in types.values()), "a CPU worker type"
    for t in types.values():
        assert {"resources", "node_config", "min_workers", "max_workers"} <= set(t)
    assert "type" in cfg["provider"]
    assert any("scripts/setup.sh" in c for c in cfg["setup_commands"])
    head = " ".join(cfg["head_start_ray_commands"])
    assert "--head" in head and "--dashboard-host=127.0.0.1" in head and "RAY_AUTH_MODE=token" in head
    assert "RAY_AUTH_MODE=token" in " ".join(cfg["worker_start_ray_commands"])
    assert "disabled" not in (CLUSTER / "ray-cluster.yaml").read_text()  # auth is never turned off


def test_kuberay_rayjob_manifest():
    job = yaml.safe_load((CLUSTER / "rayjob.yaml").read_text())
    assert job["apiVersion"] == "ray.io/v1" and job["kind"] == "RayJob"
    spec = job["spec"]
    assert "vlaforge train" in spec["entrypoint"] and "ray.address=auto" in spec["entrypoint"]
    assert spec["shutdownAfterJobFinishes"] is True
    cluster = spec["rayClusterSpec"]
    assert cluster["rayVersion"] == "2.60.0"
    pods = [cluster["headGroupSpec"]["template"]] + [g["template"] for g in cluster["workerGroupSpecs"]]
    pods.append(spec["submitterPodTemplate"])
    for pod in pods:  # every container: token mode on, the token from a Kubernetes Secret
        for c in pod["spec"]["containers"]:
            env = {e["name"]: e for e in c["env"]}
            assert env["RAY_AUTH_MODE"]["value"] == "token"
            ref = env["RAY_AUTH_TOKEN"]["valueFrom"]["secretKeyRef"]
            assert ref["name"] == "vlaforge-ray-token" and ref["key"] == "token"
    for g in cluster["workerGroupSpecs"]:
        assert {"groupName", "replicas", "minReplicas", "maxReplicas", "rayStartParams", "template"} <= set(g)
    assert any("nvidia.com/gpu" in g["template"]["spec"]["containers"][0]["resources"]["limits"]
               for g in cluster["workerGroupSpecs"])


def test_slurm_script_syntax_and_dry_run(tmp_path):
    script = CLUSTER / "slurm.sh"
    assert subprocess.run(["bash", "-n", str(script)], capture_output=True).returncode == 0
    env = {**os.environ, "VLAFORGE_NODES": "node-a node-b node-c", "SLURM_JOB_ID": "77",
           "VLAFORGE_ROOT": str(tmp_path)}
    p = subprocess.run(["bash", str(script), "--dry-run", "configs/quickstart.yaml", "train.steps=10"],
                       capture_output=True, text=True, env=env, timeout=60)
    assert p.returncode == 0, p.stderr
    lines = [ln for ln in p.stdout.splitlines() if ln and not ln.startswith("#")]
    heads = [ln for ln in lines if "ray start --head" in ln]
    workers = [ln for ln in lines if "ray start" in ln and "--head" not in ln]
    assert len(heads) == 1 and "-w node-a" in heads[0] and "--dashboard-host=127.0.0.1" in heads[0]
    assert [w.split("-w ")[1].split()[0] for w in workers] == ["node-b", "node-c"]  # one worker per further node
    assert all("--address=" in w and w.endswith("&") for w in workers)
    train = [ln for ln in lines if "vlaforge train" in ln]
    assert len(train) == 1
    argv = shlex.split(train[0])
    assert argv[argv.index("train") + 1:] == ["configs/quickstart.yaml", "train.steps=10", "ray.address=auto",
                                               "--run-dir", f"{tmp_path}/runs/slurm-77"]
    assert any("token_hex" in ln and ".ray-token-77" in ln and "umask\\ 077" in ln for ln in lines)  # a per-job token
    # ordering: token, head, wait for the head, workers, then the driver
    order = [next(i for i, ln in enumerate(lines) if key in ln)
             for key in ("token_hex", "--head", "wait_port", "-w node-b", "vlaforge train")]
    assert order == sorted(order)
    assert not (tmp_path / "runs").exists()  # a dry run runs nothing


def test_slurm_script_usage_error():
    p = subprocess.run(["bash", str(CLUSTER / "slurm.sh"), "--dry-run"], capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and "usage: sbatch cluster/slurm.sh" in p.stderr
