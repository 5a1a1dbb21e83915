"""Session set-up for the main suite: a tiny random model package as the service's default model.

Tests of the service, the server and the CLI (also in subprocesses, which inherit the environment) run on
it through $GENLCA_MODEL, so they need neither the shipped checkpoint nor minutes of sampling; the shipped
model has tests of its own (tests/test_shipped_model.py). The add-on suite (tests/blender, no torch) makes
its own with the backend's Python.
"""
from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def tiny_default_model(tmp_path_factory):
    try:
        import torch  # noqa: F401
    except ImportError:  # the Blender suite's interpreter: its conftest makes the package with the backend's Python
        yield None
        return
    from tests.model_package import make_tiny_package

    saved = os.environ.get("GENLCA_MODEL")
    folder = make_tiny_package(tmp_path_factory.mktemp("tiny-model"))
    os.environ["GENLCA_MODEL"] = str(folder)
    yield folder
    if saved is None:
        os.environ.pop("GENLCA_MODEL", None)
    else:
        os.environ["GENLCA_MODEL"] = saved


@pytest.fixture(scope="module")
def one_thread():
    """One torch thread for a module (request it, or `pytestmark = pytest.mark.usefixtures("one_thread")`):
    on a shared, loaded CPU, multi-threaded kernels of small sizes run ~10x slower."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
