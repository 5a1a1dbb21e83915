"""`Gaussians`: the typed container for (optionally rigged) 3D Gaussians.

Conventions (see docs/ARCHITECTURE.md): metres, right-handed Z-up world; quaternions (w, x, y, z);
scales stored as log, opacity as logit, colour as real spherical-harmonics coefficients in the
3DGS layout (`sh[:, 0]` is the DC term; RGB = 0.5 + SH_C0 * dc for degree 0).
"""
from __future__ import annotations

import dataclasses
import math
from typing import Sequence

import torch

SH_C0 = 0.28209479177387814  # Y_0^0; the 3DGS PLY stores f_dc = (rgb - 0.5) / SH_C0


def sh_coeff_count(degree: int) -> int:
    if not 0 <= degree <= 3:
        raise ValueError(f"SH degree must be in 0..3, got {degree}")
    return (degree + 1) ** 2


def sh_degree_of(coeffs: int) -> int:
    degree = int(round(math.sqrt(coeffs))) - 1
    if (degree + 1) ** 2 != coeffs or not 0 <= degree <= 3:
        raise ValueError(f"SH coefficient count must be 1, 4, 9 or 16, got {coeffs}")
    return degree


@dataclasses.dataclass
class Gaussians:
    """N Gaussians in one space (canonical template space or posed world space).

    means:          (N, 3) float   centres, metres
    rotations:      (N, 4) float   unit quaternions (w, x, y, z), local-to-world
    log_scales:     (N, 3) float   log of the standard deviations along the local axes
    opacity_logits: (N,)   float   logit of opacity
    sh:             (N, S, 3) float  SH coefficients, S in {1, 4, 9, 16}
    skin_indices:   (N, k) long    joint indices of the top-k skin weights (None if unrigged)
    skin_weights:   (N, k) float   weights, rows sum to 1 (None if unrigged)
    """

    means: torch.Tensor
    rotations: torch.Tensor
    log_scales: torch.Tensor
    opacity_logits: torch.Tensor
    sh: torch.Tensor
    skin_indices: torch.Tensor | None = None
    skin_weights: torch.Tensor | None = None

    def __post_init__(self) -> None:
        self.validate(check_finite=False)

    # ------------------------------------------------------------------ checks
    def validate(self, check_finite: bool = True) -> "Gaussians":
        n = self.means.shape[0] if self.means.ndim == 2 else -1
        expect = {
            "means": (n, 3),
            "rotations": (n, 4),
            "log_scales": (n, 3),
            "opacity_logits": (n,),
        }
        if self.means.ndim != 2 or self.means.shape[1] != 3:
            raise ValueError(f"expected means of shape (N, 3), got {tuple(self.means.shape)}")
        for name, shape in expect.items():
            t = getattr(self, name)
            if tuple(t.shape) != shape:
                raise ValueError(f"expected {name} of shape {shape}, got {tuple(t.shape)}")
        if self.sh.ndim != 3 or self.sh.shape[0] != n or self.sh.shape[2] != 3:
            raise ValueError(f"expected sh of shape ({n}, S, 3), got {tuple(self.sh.shape)}")
        sh_degree_of(self.sh.shape[1])
        if (self.skin_indices is None) != (self.skin_weights is None):
            raise ValueError("skin_indices and skin_weights must both be set or both be None")
        if self.skin_indices is not None:
            assert self.skin_weights is not None
            if self.skin_indices.shape != self.skin_weights.shape or self.skin_indices.shape[0] != n:
                raise ValueError(
                    f"expected skin_indices and skin_weights of shape ({n}, k), got "
                    f"{tuple(self.skin_indices.shape)} and {tuple(self.skin_weights.shape)}"
                )
            if not 1 <= self.skin_indices.shape[1] <= 8:
                raise ValueError(f"expected 1 <= k <= 8 skin influences, got {self.skin_indices.shape[1]}")
        if check_finite:
            for f in dataclasses.fields(self):
                t = getattr(self, f.name)
                if t is not None and t.is_floating_point() and not bool(torch.isfinite(t).all()):
                    bad = int((~torch.isfinite(t)).any(dim=-1).sum()) if t.ndim > 1 else int((~torch.isfinite(t)).sum())
                    raise ValueError(f"Gaussians.{f.name} has {bad} non-finite rows (NaN or inf)")
        return self

    # --------------------------------------------------------------- properties
    def __len__(self) -> int:
        return self.means.shape[0]

    @property
    def device(self) -> torch.device:
        return self.means.device

    @property
    def sh_degree(self) -> int:
        return sh_degree_of(self.sh.shape[1])

    @property
    def is_rigged(self) -> bool:
        return self.skin_indices is not None

    @property
    def scales(self) -> torch.Tensor:  # (N, 3)
        return self.log_scales.exp()

    @property
    def opacities(self) -> torch.Tensor:  # (N,)
        return torch.sigmoid(self.opacity_logits)

    @property
    def base_rgb(self) -> torch.Tensor:  # (N, 3) view-independent colour from the DC term
        return (0.5 + SH_C0 * self.sh[:, 0]).clamp(0.0, 1.0)

    # ---------------------------------------------------------------- transforms
    def _map(self, fn) -> "Gaussians":
        kwargs = {f.name: (None if getattr(self, f.name) is None else fn(getattr(self, f.name)))
                  for f in dataclasses.fields(self)}
        return Gaussians(**kwargs)

    def to(self, device: torch.device | str | None = None, dtype: torch.dtype | None = None) -> "Gaussians":
        def move(t: torch.Tensor) -> torch.Tensor:
            if t.is_floating_point():
                return t.to(device=device, dtype=dtype or t.dtype)
            return t.to(device=device)
        return self._map(move)

    def detach(self) -> "Gaussians":
        return self._map(lambda t: t.detach())

    def __getitem__(self, index: slice | torch.Tensor | Sequence[int]) -> "Gaussians":
        if isinstance(index, int):
            index = slice(index, index + 1)
        return self._map(lambda t: t[index])

    def replace(self, **changes: torch.Tensor | None) -> "Gaussians":
        return dataclasses.replace(self, **changes)

    def with_sh_degree(self, degree: int) -> "Gaussians":
        """Truncate or zero-pad the SH coefficients to `degree`."""
        s = sh_coeff_count(degree)
        if s <= self.sh.shape[1]:
            return self.replace(sh=self.sh[:, :s])
        pad = self.sh.new_zeros(len(self), s - self.sh.shape[1], 3)
        return self.replace(sh=torch.cat([self.sh, pad], dim=1))

    @staticmethod
    def cat(parts: Sequence["Gaussians"]) -> "Gaussians":
        if not parts:
            raise ValueError("Gaussians.cat needs at least one part")
        degree = max(p.sh_degree for p in parts)
        parts = [p.with_sh_degree(degree) for p in parts]
        rigged = {p.is_rigged for p in parts}
        if len(rigged) != 1:
            raise ValueError("cannot concatenate rigged and unrigged Gaussians")
        kwargs = {}
        for f in dataclasses.fields(Gaussians):
            ts = [getattr(p, f.name) for p in parts]
            kwargs[f.name] = None if ts[0] is None else torch.cat(ts, dim=0)
        return Gaussians(**kwargs)

    def state_dict(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """Flat dict of tensors (for safetensors and the wire)."""
        return {prefix + f.name: getattr(self, f.name).contiguous()
                for f in dataclasses.fields(self) if getattr(self, f.name) is not None}

    @classmethod
    def from_state_dict(cls, tensors: dict[str, torch.Tensor], prefix: str = "") -> "Gaussians":
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names[:5] if prefix + n not in tensors]
        if missing:
            raise KeyError(f"missing Gaussian tensors: {', '.join(prefix + m for m in missing)}")
        return cls(**{n: tensors.get(prefix + n) for n in names})
