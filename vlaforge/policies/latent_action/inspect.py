"""Looking inside a trained latent action model: PNG grids of validation frame pairs.

    recon.png         one row per pair: o_t | real o_{t+k} | predicted o_{t+k} | |error| x 4   (camera 0)
    codes_pos<p>.png  one row (strip) per code c: pairs whose code at position p is c, each tile o_t | o_{t+k};
                      a grey tile: fewer pairs than asked, a grey row: the code never occurs at p
Plus the validation numbers: the forward model's MSE with each pair's own codes, with the codes of other pairs
(code_gain = shuffled / own: 1.0 means the codes carry nothing about the change), and the copy baseline (o_t).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from tensordict import TensorDictBase

from vlaforge import keys
from vlaforge.policies.latent_action.model import LAMProcessor, LatentActionModel

GREY = 96


def _rgb(x: torch.Tensor) -> np.ndarray:
    """(3V, S, S) float [0, 1] -> uint8 (S, S, 3) of camera 0."""
    return (x[:3].clamp(0, 1).permute(1, 2, 0).numpy() * 255).round().astype(np.uint8)


def _save(img: np.ndarray, path: Path) -> Path:
    from PIL import Image

    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(img).save(path)
    return path


def _pad(tile: np.ndarray, px: int = 2) -> np.ndarray:
    return np.pad(tile, ((px, px), (px, px), (0, 0)), constant_values=255)


@torch.no_grad()
def inspect_lam(lam: LatentActionModel, processor: LAMProcessor, batch: TensorDictBase, out_dir: str | Path,
                n_pairs: int, per_code: int) -> dict:
    """``batch``: validation frame pairs (FramePairDataset.get_batch). Writes the PNGs into ``out_dir``;
    -> {"val_mse", "copy_mse", "usage": per-position code histograms, "images": {name: path}}."""
    out_dir = Path(out_dir)
    inp = processor(batch)
    o_t, o_tk = inp.get(keys.LAM_FRAMES), inp.get(keys.LAM_NEXT_FRAMES)
    lam.eval()
    codes = lam.label(o_t, o_tk)  # (M, N)
    pred = lam.predict_from_codes(o_t, codes)
    # the same frames with the codes of other pairs: no worse when the codes carry nothing about the change
    shuffled = lam.predict_from_codes(o_t, codes[torch.randperm(len(codes), generator=torch.Generator().manual_seed(0))])
    mse, shuffled_mse = float((pred - o_tk).pow(2).mean()), float((shuffled - o_tk).pow(2).mean())
    result = {"val_mse": mse, "shuffled_mse": shuffled_mse, "code_gain": shuffled_mse / max(mse, 1e-12),
              "copy_mse": float((o_t - o_tk).pow(2).mean()),
              "pairs": len(o_t), "usage": [torch.bincount(codes[:, p], minlength=lam.cfg.codebook_size).tolist()
                                           for p in range(codes.shape[1])], "images": {}}
    if n_pairs > 0:
        rows = [np.concatenate([_pad(_rgb(o_t[i])), _pad(_rgb(o_tk[i])), _pad(_rgb(pred[i])),
                                _pad(_rgb(((pred[i] - o_tk[i]).abs() * 4)))], axis=1) for i in range(min(n_pairs, len(o_t)))]
        result["images"]["recon"] = str(_save(np.concatenate(rows, axis=0), out_dir / "recon.png"))
    if per_code > 0:
        s = o_t.shape[-1]
        blank = _pad(np.full((s, 2 * s, 3), GREY, np.uint8))
        for p in range(codes.shape[1]):
            strips = []
            for c in range(lam.cfg.codebook_size):
                idx = torch.nonzero(codes[:, p] == c).flatten()[:per_code].tolist()
                tiles = [_pad(np.concatenate([_rgb(o_t[i]), _rgb(o_tk[i])], axis=1)) for i in idx]
                strips.append(np.concatenate(tiles + [blank] * (per_code - len(tiles)), axis=1))
            result["images"][f"codes_pos{p}"] = str(_save(np.concatenate(strips, axis=0), out_dir / f"codes_pos{p}.png"))
    return result
