"""Body parts of the template and the six edit regions of the product (head, torso, arms, hands, legs, feet).

A vertex belongs to the part of the bone that carries most of its skin weight; a texel takes the label
of the nearest corner of its UV triangle (see `uv_layout`). Parts are finer than regions so that the
add-on can offer e.g. "left forearm" later; region masks are unions of parts.
"""
from __future__ import annotations

import numpy as np

PART_NAMES: tuple[str, ...] = (
    "head", "neck", "torso",
    "upper_arm.L", "lower_arm.L", "hand.L",
    "upper_arm.R", "lower_arm.R", "hand.R",
    "upper_leg.L", "lower_leg.L", "foot.L",
    "upper_leg.R", "lower_leg.R", "foot.R",
)
PART_IDS: dict[str, int] = {name: i for i, name in enumerate(PART_NAMES)}

REGION_NAMES: tuple[str, ...] = ("head", "torso", "arms", "hands", "legs", "feet")
REGION_PARTS: dict[str, tuple[str, ...]] = {
    "head": ("head", "neck"),
    "torso": ("torso",),
    "arms": ("upper_arm.L", "lower_arm.L", "upper_arm.R", "lower_arm.R"),
    "hands": ("hand.L", "hand.R"),
    "legs": ("upper_leg.L", "lower_leg.L", "upper_leg.R", "lower_leg.R"),
    "feet": ("foot.L", "foot.R"),
}

# Distinct colours for the part-coloured turntable (sRGB in [0, 1]).
PART_COLORS: np.ndarray = np.array([
    [0.95, 0.80, 0.65], [0.85, 0.65, 0.50], [0.30, 0.55, 0.85],
    [0.90, 0.35, 0.30], [0.95, 0.60, 0.20], [0.98, 0.85, 0.25],
    [0.55, 0.30, 0.75], [0.75, 0.45, 0.85], [0.85, 0.70, 0.95],
    [0.20, 0.65, 0.45], [0.45, 0.80, 0.35], [0.70, 0.90, 0.40],
    [0.15, 0.50, 0.60], [0.30, 0.70, 0.80], [0.55, 0.85, 0.90],
], dtype=np.float32)


def part_of_bone(bone: str) -> str:
    """Part of a bone of the anny rig (MakeHuman names); SMPL-X names are mapped in smplx_template."""
    side = bone[-2:] if bone[-2:] in (".L", ".R") else ""
    stem = bone[:-2] if side else bone
    if stem in ("head", "eye") or stem.startswith(("jaw", "tongue")):
        return "head"
    if stem.startswith("neck"):
        return "neck"
    if stem.startswith(("shoulder", "upperarm")):
        return "upper_arm" + side
    if stem.startswith("lowerarm"):
        return "lower_arm" + side
    if stem.startswith(("wrist", "metacarpal", "finger")):
        return "hand" + side
    if stem.startswith("upperleg"):
        return "upper_leg" + side
    if stem.startswith("lowerleg"):
        return "lower_leg" + side
    if stem.startswith(("foot", "toe")):
        return "foot" + side
    return "torso"  # root, spine*, pelvis.*, clavicle.*, breast.*


def vertex_parts(skin_weights: np.ndarray, joint_names: list[str]) -> np.ndarray:
    """(V, J) dense skin weights -> (V,) int64 part ids (the part of the dominant bone)."""
    if skin_weights.ndim != 2 or skin_weights.shape[1] != len(joint_names):
        raise ValueError(f"expected skin weights of shape (V, {len(joint_names)}), got {skin_weights.shape}")
    bone_part = np.array([PART_IDS[part_of_bone(n)] for n in joint_names], dtype=np.int64)  # (J,)
    return bone_part[skin_weights.argmax(1)]


def region_of_part(part: str) -> str:
    for region, parts in REGION_PARTS.items():
        if part in parts:
            return region
    raise KeyError(f"unknown body part {part!r}; expected one of {PART_NAMES}")


def part_ids_for_region(region: str) -> list[int]:
    if region not in REGION_PARTS:
        raise KeyError(f"unknown edit region {region!r}; expected one of {REGION_NAMES}")
    return [PART_IDS[p] for p in REGION_PARTS[region]]


def region_mask(part_id_map: np.ndarray, atlas_mask: np.ndarray, regions: str | list[str]) -> np.ndarray:
    """Per-texel mask (R, R) bool of one or more edit regions (True = texel belongs to the regions).

    part_id_map: (R, R) int part id per texel (-1 outside the atlas); atlas_mask: (R, R) bool.
    """
    names = [regions] if isinstance(regions, str) else list(regions)
    ids = [i for r in names for i in part_ids_for_region(r)]
    return np.isin(part_id_map, ids) & atlas_mask


def all_region_masks(part_id_map: np.ndarray, atlas_mask: np.ndarray) -> dict[str, np.ndarray]:
    return {r: region_mask(part_id_map, atlas_mask, r) for r in REGION_NAMES}
