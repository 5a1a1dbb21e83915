"""Build the body fitter's pose prior (`backend/perception/pose_prior.py`) from the synthetic people's motion.

    python -m training.data.pose_prior [--bvh PATH] [--out backend/perception/data/pose_prior.json]

Frames: CMU 01_01.bvh (`make testdata`) frames [0, HELD_OUT_FROM) every 2nd, retargeted onto the template as
the synthetic generator does (`training/data/motion.py`), and one period of the MPFB2 walk cycle, repeated so
that the two sources weigh 60 : 40 as in the generator (`SynthConfig.bvh_probability`). Frames from
HELD_OUT_FROM on are never in the prior: `fit_eval.mocap_clip` measures the fit on them.
"""
from __future__ import annotations

import argparse
import json

import numpy as np

HELD_OUT_FROM = 1650   # BVH frames from here on are held out of the prior (01_01.bvh has 2,752)
STRIDE = 2


def prior_frames(template, bvh_path=None) -> tuple[np.ndarray, str]:
    """(N, J, 4) local joint rotations the prior is learnt from, and a description of them."""
    from training.data import motion
    from training.data.synthetic import default_bvh_path

    path = bvh_path or default_bvh_path()
    bvh = motion.BvhSource(path, template)
    n = min(HELD_OUT_FROM, bvh.num_frames) // STRIDE
    parts = [bvh.window(0, n, STRIDE).joint_rotations]
    source = f"{path.name if hasattr(path, 'name') else path} frames 0-{n * STRIDE - 1} every {STRIDE}"
    wc = motion.walkcycle_path()
    if wc is not None:
        walk = motion.WalkCycle(wc, template)
        cycle = walk.window(0.0, int(walk.period), 1.0).joint_rotations
        repeat = max(1, round(0.4 / 0.6 * n / len(cycle)))
        parts.append(np.tile(cycle, (repeat, 1, 1)))
        source += f"; {wc.name} one period ({len(cycle)} frames) x {repeat}"
    return np.concatenate(parts), source


def main(argv: list[str] | None = None) -> None:
    from backend.avatar.template import load_template
    from backend.perception.fitting import FIT_JOINTS
    from backend.perception.pose_prior import DEFAULT_PATH, build_pose_prior, save_pose_prior

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--bvh", default=None, help="CMU BVH (default: the test data's 01_01.bvh)")
    parser.add_argument("--out", default=str(DEFAULT_PATH))
    parser.add_argument("--ridge", type=float, default=0.01, help="radians^2 added to the covariance diagonal")
    args = parser.parse_args(argv)
    template = load_template("anny")
    frames, source = prior_frames(template, args.bvh)
    prior = build_pose_prior(frames, template.joint_names, FIT_JOINTS, args.ridge, source)
    path = save_pose_prior(prior, args.out)
    sd = np.sqrt(np.diag(np.linalg.inv(prior.precision)))
    print(json.dumps({"out": str(path), "frames": prior.frames, "source": source,
                      "largest_std_deg": round(float(np.degrees(sd.max())), 1)}))


if __name__ == "__main__":
    main()
