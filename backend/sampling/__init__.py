"""Flow-matching sampling: the time convention (path.py), ODE solvers (solvers.py), classifier-free
guidance as a model wrapper (guidance.py) and token-space editing (editing.py).

The three pieces do not know each other (after facebookresearch/flow_matching): a path draws training
pairs, a solver integrates any `velocity(x, t, **extras)`, a wrapper adds guidance.
"""
from backend.sampling.path import FlowPath, sample_logit_normal, shift_time, time_grid
from backend.sampling.solvers import SamplingCancelled, solve_ode

__all__ = ["FlowPath", "sample_logit_normal", "shift_time", "time_grid", "solve_ode", "SamplingCancelled"]
