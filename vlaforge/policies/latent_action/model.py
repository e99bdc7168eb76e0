"""The latent action model (LAM): inverse dynamics through a discrete bottleneck, and a forward model.

    LAM_FRAMES o_t, LAM_NEXT_FRAMES o_{t+k}  (B, 3V, S, S) in [0, 1]  (LAMProcessor output)
      -> IDM: conv over [o_t, o_{t+k}, (o_{t+k} - o_t) at unit RMS] (9V channels) -> MLP -> z (B, N, D)
      -> quantizer (quantizers.py) -> codes (B, N) in [0, C), q (B, N, D)
      -> forward model: U-Net over o_t, FiLM-conditioned on q at the bottleneck -> delta (B, 3V, S, S)
      -> LAM_PRED = o_t + delta  (the model predicts the CHANGE: a static camera makes most pixels
                                  unchanged, so the codes carry the motion and nothing else)

The forward model predicts pixels (LAPA, LAPO): a feature target can be made trivially predictable by the
encoder that produces it; pixels cannot, and they are what the inspection images compare.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
from tensordict import TensorDict, TensorDictBase

from vlaforge import keys
from vlaforge.policies.latent_action.config import LatentActionConfig
from vlaforge.policies.latent_action.quantizers import build_quantizer


def _down(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.Conv2d(cin, cout, 4, stride=2, padding=1), nn.GroupNorm(1, cout), nn.GELU())


def _up(cin: int, cout: int) -> nn.Module:
    return nn.Sequential(nn.ConvTranspose2d(cin, cout, 4, stride=2, padding=1), nn.GroupNorm(1, cout), nn.GELU())


class LatentActionModel(nn.Module):
    """``cameras``: V (the frames stack cameras on the channel axis); ``action_dim``: A of the LAOM action decoder
    (built when cfg.action_loss_coef > 0: code vectors (B, N*D) -> MLP -> LAM_ACTION_PRED (B, A))."""

    def __init__(self, cfg: LatentActionConfig, cameras: int = 1, action_dim: int = 0):
        super().__init__()
        self.cfg, self.cameras, self.action_dim = cfg, int(cameras), int(action_dim)
        if (cfg.action_loss_coef > 0) != (self.action_dim > 0):
            raise ValueError(f"latent.model.action_loss_coef = {cfg.action_loss_coef} needs an action dim of the "
                             f"labelled data exactly when it is > 0 (got action_dim {action_dim})")
        c_img, ch = 3 * self.cameras, list(cfg.channels)
        side = cfg.image_size // 2 ** len(ch)  # bottleneck side
        # inverse dynamics
        widths = [3 * c_img, *ch]
        self.idm = nn.Sequential(*[_down(a, b) for a, b in zip(widths[:-1], widths[1:])], nn.Flatten(),
                                 nn.Linear(ch[-1] * side * side, cfg.hidden), nn.GELU(),
                                 nn.Linear(cfg.hidden, cfg.num_codes * cfg.code_dim))
        self.quantizer = build_quantizer(cfg)
        # forward model: encoder over o_t with skips, FiLM from the codes at the bottleneck, decoder
        enc = [c_img, *ch]
        self.enc = nn.ModuleList(_down(a, b) for a, b in zip(enc[:-1], enc[1:]))
        self.film = nn.Sequential(nn.Linear(cfg.num_codes * cfg.code_dim, cfg.hidden), nn.GELU(),
                                  nn.Linear(cfg.hidden, 2 * ch[-1]))
        dec_in = [ch[-1]] + [2 * c for c in reversed(ch[:-1])]  # after the first up: concat with the skip
        dec_out = list(reversed(ch[:-1])) + [ch[0]]
        self.dec = nn.ModuleList(_up(a, b) for a, b in zip(dec_in, dec_out))
        self.action_head = nn.Sequential(nn.Linear(cfg.num_codes * cfg.code_dim, cfg.hidden), nn.GELU(),
                                         nn.Linear(cfg.hidden, self.action_dim)) if self.action_dim else None
        self.out = nn.Conv2d(ch[0] + c_img, c_img, 3, padding=1)
        nn.init.zeros_(self.out.weight)  # starts as "nothing changes": the copy baseline
        nn.init.zeros_(self.out.bias)

    def _check(self, x: torch.Tensor, what) -> None:
        s, c = self.cfg.image_size, 3 * self.cameras
        if x.ndim != 4 or tuple(x.shape[1:]) != (c, s, s):
            raise ValueError(f"{what} must be (B, 3V={c}, {s}, {s}) (LAMProcessor output), got {tuple(x.shape)}")

    def encode(self, o_t: torch.Tensor, o_tk: torch.Tensor) -> torch.Tensor:
        """Inverse dynamics: -> z (B, N, D) before quantisation. The change o_{t+k} - o_t enters scaled to unit RMS
        per pair: raw, a few moving pixels are swamped by the frames in the first conv + GroupNorm, and the latent
        pathway never engages (measured: shuffling the latent changed nothing after 150-300 steps; with the
        scaled change the latent carries the motion from the first hundred steps)."""
        d = o_tk - o_t
        d = d / d.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt().clamp_min(1e-3)
        z = self.idm(torch.cat([o_t, o_tk, d], dim=1))
        return z.reshape(len(z), self.cfg.num_codes, self.cfg.code_dim)

    def predict(self, o_t: torch.Tensor, q: torch.Tensor) -> torch.Tensor:
        """Forward model: o_t (B, 3V, S, S), code vectors q (B, N, D) -> predicted o_{t+k}."""
        skips, h = [], o_t
        for layer in self.enc:
            h = layer(h)
            skips.append(h)
        gamma, beta = self.film(q.reshape(len(q), -1)).chunk(2, dim=-1)  # (B, C_last) each
        h = h * (1 + gamma[:, :, None, None]) + beta[:, :, None, None]
        skips.pop()  # the bottleneck itself
        for i, layer in enumerate(self.dec):
            h = layer(h)
            if skips:
                h = torch.cat([h, skips.pop()], dim=1)
        return o_t + self.out(torch.cat([h, o_t], dim=1))

    def forward(self, td: TensorDictBase) -> TensorDict:
        o_t, o_tk = td.get(keys.LAM_FRAMES), td.get(keys.LAM_NEXT_FRAMES)
        self._check(o_t, keys.LAM_FRAMES)
        self._check(o_tk, keys.LAM_NEXT_FRAMES)
        qz = self.quantizer(self.encode(o_t, o_tk))
        out = TensorDict({keys.LAM_PRED: self.predict(o_t, qz.out), keys.LATENT_CODES: qz.codes,
                          keys.LAM_AUX_LOSS: qz.aux_loss.expand(len(o_t))}, batch_size=[len(o_t)])
        if self.action_head is not None:
            out.set(keys.LAM_ACTION_PRED, self.action_head(qz.out.reshape(len(o_t), -1)))
        return out

    @torch.no_grad()
    def label(self, o_t: torch.Tensor, o_tk: torch.Tensor) -> torch.Tensor:
        """Codes (B, N) of frame pairs (inference: no usage accounting, no noise)."""
        was = self.training
        self.eval()
        try:
            return self.quantizer(self.encode(o_t, o_tk)).codes
        finally:
            self.train(was)

    @torch.no_grad()
    def predict_from_codes(self, o_t: torch.Tensor, codes: torch.Tensor) -> torch.Tensor:
        """The forward model driven by chosen codes (B, N): what a latent action does to o_t."""
        return self.predict(o_t, self.quantizer.codebook_vectors()[codes])


class LAMProcessor:
    """Raw frame pairs -> LAM inputs. IMAGE / NEXT_IMAGE uint8 (B, V, H, W, 3) -> LAM_FRAMES / LAM_NEXT_FRAMES
    float (B, 3V, S, S) in [0, 1], resized by area averaging. Passes LAOM's LAM_ACTIONS / LAM_HAS_ACTIONS through."""

    def __init__(self, image_size: int):
        self.image_size = int(image_size)

    def frames(self, image: torch.Tensor, device=None) -> torch.Tensor:
        if image.dtype != torch.uint8 or image.ndim != 5 or image.shape[-1] != 3:
            raise ValueError(f"frames must be uint8 (B, V, H, W, 3), got {image.dtype} {tuple(image.shape)}")
        b, v, h, w, _ = image.shape
        x = image.to(device).permute(0, 1, 4, 2, 3).reshape(b, 3 * v, h, w).float().div_(255.0)
        if (h, w) != (self.image_size, self.image_size):
            x = F.interpolate(x, size=(self.image_size, self.image_size), mode="area")
        return x

    def __call__(self, td: TensorDictBase, train: bool = False, device=None) -> TensorDict:
        out = {keys.LAM_FRAMES: self.frames(td.get(keys.IMAGE), device),
               keys.LAM_NEXT_FRAMES: self.frames(td.get(keys.NEXT_IMAGE), device)}
        for k in (keys.LAM_ACTIONS, keys.LAM_HAS_ACTIONS):  # LAOM's labelled rows (learners/latent_learner.py)
            if k in td.keys():
                out[k] = td.get(k).to(device)
        return TensorDict(out, batch_size=td.batch_size[:1], device=device)

    def to_dict(self) -> dict:
        return {"image_size": self.image_size}

    @classmethod
    def from_dict(cls, d: dict) -> "LAMProcessor":
        return cls(int(d["image_size"]))
