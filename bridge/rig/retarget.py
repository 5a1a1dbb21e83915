"""Drive a template skeleton from another skeleton's posed bones, with or without fitting its proportions.
Pure numpy: the Blender add-on's binding builds a `RetargetPlan` once per bind and calls `solve` per frame.

Everything is in one world frame (Z up, metres). Bone matrices are 4x4 with rotation columns (X, Y, Z;
+Y from head to tail, Blender's convention) and the head in the last column.

Each mapped template joint j (driven by source bone s) turns by what the *positions* of the two
skeletons say, never by a source bone's own axis alone, since Blender's BVH importer points zero-length
bones (CMU's Hips, Spine1, LeftHand, RightHand) along +Z whatever the body does:

- "fit": two or more mapped descendants with their own place (heads away from j's and s's heads): the
  rotation is the best fit (Kabsch/Umeyama) of the template's rest points onto the source's posed points;
- "swing": one such descendant, or else the source's first descendant with its own place (any bone), or
  else the source bone's own tail when it is not degenerate: the template's segment is turned onto the
  source's rest segment (rest alignment: a T-pose source drives an A-pose template), then by the source
  bone's world rotation, then swung onto the posed segment exactly;
- "follow": nothing to aim at: the source bone's world rotation times the nearest aimed ancestor's
  rest alignment (the joint keeps its rest relation to its parent when the source bone does).

With `fit=True` each mapped joint also takes the source's place (its head; for "fit" joints the head as
carried by the point fit, so a template root that sits behind the hips lands behind them) and a uniform
scale: the ratio of the source's segment to the template's, so the limb reaches the next joint. Unmapped
joints follow their parent rigidly (scale included). With `fit=False` joints keep the template's
lengths: the root goes where the source's root goes, scaled by the ratio of the two hip heights.
"""
from __future__ import annotations

import dataclasses
from typing import Mapping, Sequence

import numpy as np

from bridge.geometry.rotations import matrix_to_quat, rotation_between

DEGENERATE = 0.01  # a source bone shorter than this fraction of the source's height has no direction
# A bone's uniform scale stays within this factor of the body's (source height / template height): the
# joints land on the source's all the same (they are placed), only the splats between them stretch less
# (a template neck of 3 cm driven by a 10 cm mocap neck would otherwise be 3x thicker).
MAX_STRETCH = 1.25


def _unit(v: np.ndarray) -> np.ndarray:
    n = np.linalg.norm(v, axis=-1, keepdims=True)
    return v / np.maximum(n, 1e-12)


def best_rotation(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Rotation K (3, 3) minimising sum |K (a_i - mean a) - (b_i - mean b)|² (Kabsch), a, b (n, 3)."""
    h = (a - a.mean(0)).T @ (b - b.mean(0))
    u, _, vt = np.linalg.svd(h)
    d = np.sign(np.linalg.det(vt.T @ u.T)) or 1.0
    return vt.T @ np.diag([1.0, 1.0, d]) @ u.T


def inverse_similarity(m: np.ndarray) -> np.ndarray:
    """Inverse of 4x4 matrices (..., 4, 4) whose 3x3 part is a rotation times a uniform scale (bone rest
    and pose frames), in closed form: LAPACK per small matrix costs far more (and its threads compete)."""
    m = np.asarray(m, np.float64)
    lin = m[..., :3, :3]
    scale2 = np.einsum("...ij,...ij->...", lin, lin) / 3.0  # s² from the Frobenius norm of s·R
    inv_lin = np.swapaxes(lin, -1, -2) / scale2[..., None, None]
    out = np.zeros_like(m)
    out[..., :3, :3] = inv_lin
    out[..., :3, 3] = -np.einsum("...ij,...j->...i", inv_lin, m[..., :3, 3])
    out[..., 3, 3] = 1.0
    return out


def _rot(m: np.ndarray) -> np.ndarray:
    r = np.asarray(m, np.float64)[..., :3, :3]
    return r / np.maximum(np.linalg.norm(r, axis=-2, keepdims=True), 1e-12)


@dataclasses.dataclass
class RetargetPlan:
    """What `solve` needs, fixed at bind time. Build with `plan_retarget`."""

    tpl_rest: np.ndarray              # (J, 4, 4) template rest, world
    tpl_parents: np.ndarray           # (J,)
    source_of: np.ndarray             # (J,) source bone index or -1
    kind: list[str]                   # per joint: "fit", "swing", "follow" or "" (unmapped)
    tpl_points: list[np.ndarray]      # per joint: (n, 3) template rest points (fit) / (1, 3) (swing)
    src_points: list[list[tuple[int, str]]]  # per joint: source points (bone, "head" | "tail")
    align: np.ndarray                 # (J, 3, 3) rest alignment (template rest -> source rest), world
    scale: np.ndarray                 # (J,) uniform scale of each joint when fitting
    src_rest: np.ndarray              # (B, 4, 4) source rest, world
    src_lengths: np.ndarray           # (B,) source bone lengths in their armature's units
    hip_ratio: float                  # template hip height / source hip height (fit=False root motion)
    src_root: int                     # source bone driving the template root, or -1


def _source_point(src: np.ndarray, lengths: np.ndarray, bone: int, which: str) -> np.ndarray:
    """A bone's head, or its tail (lengths in the bone's own units: the matrix's Y column scales them)."""
    m = src[bone]
    return m[:3, 3] if which == "head" else m[:3, 3] + m[:3, 1] * lengths[bone]


def plan_retarget(tpl_rest: np.ndarray, tpl_parents: Sequence[int], tpl_tails: np.ndarray,
                  src_rest: np.ndarray, src_parents: Sequence[int], src_lengths: np.ndarray,
                  mapping: Mapping[int, int]) -> RetargetPlan:
    """tpl_rest (J, 4, 4), tpl_tails (J, 3), src_rest (B, 4, 4), src_lengths (B,): world rest frames;
    mapping: source bone index -> template joint index."""
    tpl_rest = np.asarray(tpl_rest, np.float64)
    src_rest = np.asarray(src_rest, np.float64)
    j_count, b_count = len(tpl_rest), len(src_rest)
    parents = np.asarray(tpl_parents, np.int64)
    src_parents = [int(p) for p in src_parents]
    source_of = np.full(j_count, -1, np.int64)
    for s, t in mapping.items():
        if source_of[t] < 0:
            source_of[t] = s
    tpl_heads, src_heads = tpl_rest[:, :3, 3], src_rest[:, :3, 3]
    tpl_tails = np.asarray(tpl_tails, np.float64)
    all_tpl = np.concatenate([tpl_heads, tpl_tails])
    src_lengths = np.asarray(src_lengths, np.float64)
    world_lengths = src_lengths * np.linalg.norm(src_rest[:, :3, 1], axis=-1)
    all_src = np.concatenate([src_heads, src_heads + src_rest[:, :3, 1] * src_lengths[:, None]])
    tpl_height = float(np.ptp(all_tpl[:, 2])) or 1.0
    src_height = float(np.ptp(all_src[:, 2])) or 1.0
    tpl_eps, src_eps = DEGENERATE * tpl_height, DEGENERATE * src_height
    children: list[list[int]] = [[] for _ in range(j_count)]
    for j, p in enumerate(parents):
        if p >= 0:
            children[p].append(j)
    src_children: list[list[int]] = [[] for _ in range(b_count)]
    for b, p in enumerate(src_parents):
        if p >= 0:
            src_children[p].append(b)

    def src_descends(b: int, ancestor: int) -> bool:
        while b >= 0:
            if b == ancestor:
                return True
            b = src_parents[b]
        return False

    def pairs(j: int, s: int) -> list[tuple[int, int]]:
        out, stack = [], list(children[j])
        while stack:
            c = stack.pop()
            sc = int(source_of[c])
            if (sc >= 0 and src_descends(sc, s) and np.linalg.norm(tpl_heads[c] - tpl_heads[j]) > tpl_eps
                    and np.linalg.norm(src_heads[sc] - src_heads[s]) > src_eps):
                out.append((c, sc))
            else:
                stack.extend(children[c])
        return out

    def descendants(j: int) -> list[int]:
        out, stack = [], list(children[j])
        while stack:
            c = stack.pop()
            out.append(c)
            stack.extend(children[c])
        return out

    body = src_height / tpl_height
    limits = (body / MAX_STRETCH, body * MAX_STRETCH)
    kind, tpl_points, src_points = [""] * j_count, [np.zeros((0, 3))] * j_count, [[] for _ in range(j_count)]
    align = np.tile(np.eye(3), (j_count, 1, 1))
    scale = np.full(j_count, body)
    for j in range(j_count):
        p = parents[j]
        s = int(source_of[j])
        if s < 0:
            if p >= 0:
                align[j], scale[j] = align[p], scale[p]
            continue
        found = pairs(j, s)
        if len(found) >= 2:
            a = tpl_heads[[c for c, _ in found]]
            b = src_heads[[sc for _, sc in found]]
            pts_src = [(sc, "head") for _, sc in found]
            if len(found) == 2:  # two points and the joint itself: a plane
                a = np.vstack([a, tpl_heads[j]])
                b = np.vstack([b, src_heads[s]])
                pts_src.append((s, "head"))
            kind[j], tpl_points[j], src_points[j] = "fit", a, pts_src
            align[j] = best_rotation(a, b)
            spread_a = np.sqrt(((a - a.mean(0)) ** 2).sum())
            spread_b = np.sqrt(((b - b.mean(0)) ** 2).sum())
            scale[j] = np.clip(spread_b / spread_a if spread_a > 1e-9 else body, *limits)
            continue
        target: tuple[np.ndarray, tuple[int, str]] | None = None
        if found:
            c, sc = found[0]
            target = (tpl_heads[c], (sc, "head"))
        else:
            # the template's own aim: where its descendants are (a hand's fingers) when they lie roughly
            # along the bone, else its tail (a head whose only children are the eyes)
            below = descendants(j)
            aim = tpl_tails[j]
            if below:
                mean = tpl_heads[below].mean(0)
                if np.dot(_unit(mean - tpl_heads[j]), _unit(tpl_tails[j] - tpl_heads[j])) > 0.5:
                    aim = mean
            queue = list(src_children[s])  # breadth first: the nearest source bone with its own place
            while queue and target is None:
                b = queue.pop(0)
                if np.linalg.norm(src_heads[b] - src_heads[s]) > src_eps:
                    target = (aim, (b, "head"))
                queue.extend(src_children[b])
            if target is None and world_lengths[s] > src_eps:
                target = (aim, (s, "tail"))
        if target is not None and np.linalg.norm(target[0] - tpl_heads[j]) > 1e-9:
            a_vec = target[0] - tpl_heads[j]
            b_vec = _source_point(src_rest, src_lengths, *target[1]) - src_heads[s]
            kind[j], tpl_points[j], src_points[j] = "swing", target[0][None], [target[1]]
            align[j] = rotation_between(a_vec, b_vec)
            # a length only where both ends are joints of both skeletons; else the parent's
            scale[j] = (np.clip(np.linalg.norm(b_vec) / np.linalg.norm(a_vec), *limits) if found
                        else (scale[p] if p >= 0 else body))
        else:
            kind[j] = "follow"
            if p >= 0:
                align[j], scale[j] = align[p], scale[p]
    root = int(np.flatnonzero(parents < 0)[0])
    src_root = int(source_of[root])
    hip_ratio = 1.0
    if src_root >= 0:
        src_hip = src_heads[src_root, 2] - all_src[:, 2].min()
        tpl_hip = tpl_heads[root, 2] - all_tpl[:, 2].min()
        hip_ratio = tpl_hip / src_hip if src_hip > 1e-9 and tpl_hip > 1e-9 else 1.0
    return RetargetPlan(tpl_rest, parents, source_of, kind, tpl_points, src_points, align, scale, src_rest,
                        src_lengths, float(hip_ratio), src_root)


def solve(plan: RetargetPlan, src_pose: np.ndarray, fit: bool = True) -> np.ndarray:
    """World pose matrices (J, 4, 4) of the template (rotation times a uniform scale, and the head) from
    the source's posed world matrices src_pose (B, 4, 4)."""
    src_pose = np.asarray(src_pose, np.float64)
    rest = plan.tpl_rest
    tpl_rot = _rot(rest)
    delta = _rot(src_pose) @ np.swapaxes(_rot(plan.src_rest), -1, -2)  # (B, 3, 3) world rotation deltas
    out = np.empty_like(rest)
    inv_rest = inverse_similarity(rest)
    for j, p in enumerate(plan.tpl_parents):
        s = int(plan.source_of[j])
        carried = out[p] @ inv_rest[p] @ rest[j] if p >= 0 else rest[j].copy()
        if s < 0:
            out[j] = carried
            continue
        kind = plan.kind[j]
        posed = [_source_point(src_pose, plan.src_lengths, b, w) for b, w in plan.src_points[j]]
        if kind == "fit":
            a, b = plan.tpl_points[j], np.array(posed)
            k = best_rotation(a, b)
            world = k @ tpl_rot[j]
            sigma = plan.scale[j] if fit else 1.0
            head = b.mean(0) + sigma * k @ (rest[j, :3, 3] - a.mean(0))
        else:
            world = delta[s] @ plan.align[j] @ tpl_rot[j]
            if kind == "swing":
                b_rest = _source_point(plan.src_rest, plan.src_lengths, *plan.src_points[j][0]) - plan.src_rest[s, :3, 3]
                b_pose = posed[0] - src_pose[s, :3, 3]
                world = rotation_between(delta[s] @ b_rest, b_pose) @ world
            sigma = plan.scale[j] if fit else 1.0
            head = src_pose[s, :3, 3]
        if not fit:
            sigma = 1.0
            if p >= 0:
                head = carried[:3, 3]
            elif plan.src_root >= 0:
                head = rest[j, :3, 3] + plan.hip_ratio * (src_pose[plan.src_root, :3, 3] -
                                                          plan.src_rest[plan.src_root, :3, 3])
        out[j] = np.eye(4)
        out[j, :3, :3] = sigma * world
        out[j, :3, 3] = head
    return out


def pose_basis(tpl_rest: np.ndarray, tpl_parents: Sequence[int], pose: np.ndarray) -> tuple[
        np.ndarray, np.ndarray, np.ndarray]:
    """Pose matrices (J, 4, 4) in armature space -> Blender pose channels per joint: location (J, 3),
    rotation (J, 4) wxyz, uniform scale (J,), with pose = parent_pose · rest_parent⁻¹ · rest · basis."""
    rest = np.asarray(tpl_rest, np.float64)
    parents = np.asarray(tpl_parents)
    has = parents >= 0
    p = np.where(has, parents, 0)
    # each joint's frame when its basis is identity: parent pose · parent rest⁻¹ · rest (or its rest)
    frame = np.where(has[:, None, None], pose[p] @ inverse_similarity(rest[p]) @ rest, rest)
    basis = inverse_similarity(frame) @ pose
    scale = np.cbrt(np.linalg.det(basis[:, :3, :3]))
    rot = basis[:, :3, :3] / scale[:, None, None]
    return basis[:, :3, 3], matrix_to_quat(rot), scale
