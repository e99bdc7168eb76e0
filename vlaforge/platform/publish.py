"""``vlaforge publish CHECKPOINT --to DIR | hf://USER/REPO``: a self-contained, verifiable model folder.

The Hugging Face Hub layout (as LeRobot's ``push_to_hub`` writes it), with vlaforge's files::

    model.safetensors   the policy weights (verified against the checkpoint's own manifest first)
    config.json         policy config + spec (what ``load_pretrained`` builds the model from)
    processor.json      the processor: normalisation statistics, tokenizer settings
    run_card.json       env + eval blocks, so ``vlaforge eval FOLDER`` needs nothing else
    recipe.yaml         the run's resolved recipe
    eval.json           the evaluation of exactly these weights (when the run evaluated them)
    provenance.json     git commit, dataset fingerprints, reward-model version, parent checkpoint
    README.md           the model card: evaluation table and provenance for people
    MANIFEST.json       sha256 + size of every file above (vlaforge/manifest.py), written last

``vlaforge eval`` and ``vlaforge.from_pretrained`` refuse the folder when a file differs from MANIFEST.json.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import tempfile
from pathlib import Path

from vlaforge.errors import VlaforgeError
from vlaforge.manifest import build_manifest, recorded_hash, sha256_file, write_manifest

COPIED = ("model.safetensors", "config.json", "processor.json", "run_card.json")


def _run_root(policy_dir: Path) -> Path | None:
    """The run folder above a policy export (<run>/<stage>/checkpoints/step-N/policy), or None."""
    for parent in policy_dir.parents:
        if (parent / "recipe.yaml").exists() and ((parent / "run.log").exists() or (parent / "summary.json").exists()):
            return parent
    return None


def _file_hash(folder: Path, name: str) -> str | None:
    if not (folder / name).is_file():
        return None
    return recorded_hash(folder, name) or sha256_file(folder / name)


def dataset_fingerprint(path: Path) -> str | None:
    """sha256 over the sha256 of every file under a LeRobot dataset's meta/ (episode index, stats, tasks,
    info): identifies the dataset's content without hashing its videos."""
    meta = Path(path) / "meta"
    if not meta.is_dir():
        return None
    blob = json.dumps(build_manifest(meta)["files"], sort_keys=True).encode()
    return hashlib.sha256(blob).hexdigest()


def _evaluation(run: Path | None, policy_dir: Path) -> dict | None:
    """The eval.json of exactly this policy folder (its ``policy`` field names the folder evaluated)."""
    candidates = [policy_dir / "eval.json"]
    if run is not None:
        candidates += sorted(run.glob("*/eval*/eval.json"), key=lambda p: p.stat().st_mtime, reverse=True)
    for c in candidates:
        if c.is_file():
            res = json.loads(c.read_text())
            if Path(res.get("policy", "")).resolve() == policy_dir:
                return res
    return None


def provenance(policy_dir: Path, run: Path | None) -> dict:
    from vlaforge.data.demos import demo_dataset_path
    from vlaforge.platform.recipe import load_recipe, stage_recipe
    from vlaforge.platform.stages import reward_model_dir, StageContext

    out: dict = {"policy": str(policy_dir), "weights_sha256": _file_hash(policy_dir, "model.safetensors"),
                 "run_dir": str(run) if run else None, "git_commit": None, "git_dirty": None,
                 "vlaforge_version": json.loads((policy_dir / "config.json").read_text()).get("vlaforge_version"),
                 "stage": None, "parent_checkpoint": None, "datasets": [], "reward_model": None}
    if run is None:
        return out
    meta = run / "run_meta.json"
    if meta.exists():
        start = json.loads(meta.read_text())["starts"][-1]
        out.update(git_commit=start.get("git_commit"), git_dirty=start.get("git_dirty"))
    recipe = load_recipe(run / "recipe.yaml")
    stage_name = policy_dir.relative_to(run).parts[0]
    names = [s.name for s in recipe.stages]
    if stage_name not in names:
        return out
    index = names.index(stage_name)
    out["stage"] = stage_name
    record = run / stage_name / "stage.json"
    if record.exists():
        init = json.loads(record.read_text()).get("init")
        if init:
            out["parent_checkpoint"] = {"path": init, "weights_sha256": _file_hash(Path(init), "model.safetensors")}
    for i, st in enumerate(recipe.stages[: index + 1]):  # the data every stage up to this one trained on
        if st.kind in ("bc", "reward_model"):
            r = stage_recipe(recipe, i)
            path = Path(r.data.path).expanduser() if r.data.path else demo_dataset_path(r.envs, r.demos)
            out["datasets"].append({"stage": st.name, "path": str(path), "fingerprint": dataset_fingerprint(path)})
    srecipe = stage_recipe(recipe, index)
    if recipe.stages[index].kind in ("ppo", "grpo") and srecipe.reward_model.enabled:
        ctx = StageContext(recipe=recipe, run_dir=run, metrics=None, timers=None, resume=False)
        rm = reward_model_dir(ctx, srecipe)
        refreshed = run / recipe.stages[index].name / "reward_model"  # refreshed during RL (platform/rl_reward.py)
        if srecipe.reward_model.refresh.every and refreshed.is_dir():
            rm = refreshed
        if rm is not None:
            version = json.loads((rm / "config.json").read_text()).get("vlaforge_version") if (rm / "config.json").exists() else None
            out["reward_model"] = {"path": str(rm), "mode": srecipe.reward_model.mode, "vlaforge_version": version,
                                   "weights_sha256": _file_hash(rm, "model.safetensors")}
    return out


def model_card(name: str, evaluation: dict | None, prov: dict) -> str:
    lines = ["---", "library_name: vlaforge", "tags: [robotics, vision-language-action, vlaforge]", "---", "",
             f"# {name}", "", "A vision-language-action policy trained with vlaforge "
             "(camera image + instruction + robot state -> action chunk).", "",
             "```python", "import vlaforge", "policy, processor, cfg, spec, extra = vlaforge.from_pretrained(\"PATH\")",
             "```", "", "`vlaforge eval PATH` re-evaluates it on the same fixed initial states; both verify "
             "every file against `MANIFEST.json` first.", "", "## Evaluation", ""]
    if evaluation is None:
        lines += ["Not evaluated: the run recorded no evaluation of these weights (`vlaforge eval` makes one).", ""]
    else:
        pct = int(round(evaluation["confidence"] * 100))
        seeds = evaluation["seeds"]
        lines += [f"Success on fixed, seeded initial states (seeds {seeds['offset']} .. "
                  f"{seeds['offset'] + seeds['episodes_per_task'] - 1} per task), {pct}% Wilson intervals, "
                  f"`{evaluation['instructions']}` instructions.", "",
                  f"| task | success | {pct}% CI | episodes | seeds |", "|---|---|---|---|---|"]
        for task, v in evaluation["tasks"].items():
            lines.append(f"| {task} | {v['success_rate']:.0%} | [{v['ci_low']:.0%}, {v['ci_high']:.0%}] | "
                         f"{v['episodes']} | {seeds['offset']}-{seeds['offset'] + v['episodes'] - 1} |")
        p = evaluation["pooled"]
        lines += [f"| **mean** | **{evaluation['mean_success_rate']:.0%}** | [{p['ci_low']:.0%}, {p['ci_high']:.0%}] | "
                  f"{p['episodes']} | |", "", "Instructions used:", ""]
        used: dict[str, set[str]] = {}
        for e in evaluation.get("episodes", []):
            used.setdefault(e["task"], set()).add(e["instruction"])
        lines += [f"- {t}: " + "; ".join(f'"{i}"' for i in sorted(s)) for t, s in used.items()] + [""]
    parent = prov["parent_checkpoint"]
    rm = prov["reward_model"]
    lines += ["## Provenance", "",
              f"- git commit: `{prov['git_commit'] or 'not recorded'}`" + (" (uncommitted changes)" if prov["git_dirty"] else ""),
              f"- vlaforge version: {prov['vlaforge_version']}",
              f"- stage: {prov['stage'] or 'unknown'} of run `{prov['run_dir'] or 'unknown'}`",
              f"- parent checkpoint: " + (f"`{parent['path']}` (weights sha256 `{parent['weights_sha256']}`)" if parent else "none (trained from scratch)"),
              "- reward model: " + (f"`{rm['path']}` ({rm['mode']}, vlaforge {rm['vlaforge_version']}, weights sha256 "
                                    f"`{rm['weights_sha256']}`)" if rm else "none (simulator reward or no RL)")]
    for d in prov["datasets"]:
        lines.append(f"- dataset ({d['stage']}): `{d['path']}` fingerprint `{d['fingerprint']}`")
    lines += [f"- weights sha256: `{prov['weights_sha256']}`", "", "Every file's sha256 is in `MANIFEST.json`.", ""]
    return "\n".join(lines)


def build_folder(checkpoint: Path, out: Path) -> Path:
    """Write the published folder into ``out`` (must not exist); -> out."""
    from vlaforge.platform.driver import _find_policy_dir
    from vlaforge.policies.io import verify_folder

    policy_dir = verify_folder(_find_policy_dir(Path(checkpoint).expanduser().resolve()))
    run = _run_root(policy_dir)
    out.mkdir(parents=True)
    for name in COPIED:
        if (policy_dir / name).exists():
            shutil.copy2(policy_dir / name, out / name)
    if run is not None:
        shutil.copy2(run / "recipe.yaml", out / "recipe.yaml")
    evaluation = _evaluation(run, policy_dir)
    if evaluation is not None:
        (out / "eval.json").write_text(json.dumps({k: v for k, v in evaluation.items() if k != "videos"}, indent=2))
    prov = provenance(policy_dir, run)
    (out / "provenance.json").write_text(json.dumps(prov, indent=2))
    name = json.loads((policy_dir / "run_card.json").read_text()).get("name", "vlaforge policy") if (
        policy_dir / "run_card.json").exists() else "vlaforge policy"
    (out / "README.md").write_text(model_card(name, evaluation, prov))
    write_manifest(out)
    return out


def publish(checkpoint: Path, to: str, force: bool = False) -> str:
    if to.startswith("hf://"):
        return push_to_hub(checkpoint, to[len("hf://"):])
    out = Path(to).expanduser().resolve()
    if out.exists() and not force:
        raise VlaforgeError(f"{out} exists: choose another --to or pass --force to replace it")
    # build beside the target, then swap in: a failed publish leaves no half-written folder behind
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent))  # same file system: rename is atomic
    try:
        build_folder(checkpoint, tmp / "m")
        if out.exists():
            shutil.rmtree(out)
        os.replace(tmp / "m", out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return str(out)


def push_to_hub(checkpoint: Path, repo_id: str) -> str:
    """Build the folder in a temp dir and upload it with huggingface_hub (token: HF_TOKEN or `hf auth login`)."""
    if repo_id.count("/") != 1 or not all(repo_id.split("/")):
        raise VlaforgeError(f"hf://{repo_id}: expected hf://USER/REPO")
    from huggingface_hub import HfApi, get_token
    from huggingface_hub.errors import OfflineModeIsEnabled

    token = get_token()
    if not token:
        raise VlaforgeError("no Hugging Face token: set HF_TOKEN or run `hf auth login`, or publish to a folder "
                            "with --to DIR")
    with tempfile.TemporaryDirectory() as tmp:
        folder = build_folder(checkpoint, Path(tmp) / "m")
        api = HfApi(token=token)
        try:
            api.create_repo(repo_id, repo_type="model", exist_ok=True)
            api.upload_folder(folder_path=str(folder), repo_id=repo_id, repo_type="model",
                              commit_message="vlaforge publish")
        except OfflineModeIsEnabled:
            raise VlaforgeError("HF_HUB_OFFLINE=1 is set: unset it to push, or publish to a folder with --to DIR") from None
        except Exception as e:  # network / HTTP / auth errors of huggingface_hub and its HTTP client
            first = (str(e).strip().splitlines() or [type(e).__name__])[0]
            raise VlaforgeError(f"push to hf://{repo_id} failed ({type(e).__name__}): {first}") from None
    return f"https://huggingface.co/{repo_id}"
