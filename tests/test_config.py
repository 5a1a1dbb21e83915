"""backend.config: YAML into typed dataclasses; every bad value is named by its dotted path."""
from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Literal

import pytest

from backend.config import ConfigError, apply_overrides, from_dict, load_config, to_dict
from backend.service.cli import parser, service_config
from backend.service.config import ServiceConfig

ROOT = Path(__file__).resolve().parents[1]


@dataclasses.dataclass
class Optim:
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.99)


@dataclasses.dataclass
class Model:
    depth: int = 4
    kind: Literal["dit", "unet"] = "dit"
    heads: list[int] = dataclasses.field(default_factory=lambda: [4, 8])
    dropout: float | None = None


@dataclasses.dataclass
class Train:
    name: str = "tiny"
    model: Model = dataclasses.field(default_factory=Model)
    optim: Optim = dataclasses.field(default_factory=Optim)
    tags: dict[str, str] = dataclasses.field(default_factory=dict)
    resume: bool = False


def test_yaml_round_trip_with_nested_sections(tmp_path):
    path = tmp_path / "train.yaml"
    path.write_text("name: small\nmodel:\n  depth: 12\n  heads: [2, 2]\n  dropout: 0.1\noptim:\n  lr: 1\n"
                    "  betas: [0.8, 0.95]\ntags: {site: studio}\n")
    cfg = load_config(path, Train)
    assert cfg == Train(name="small", model=Model(depth=12, heads=[2, 2], dropout=0.1),
                        optim=Optim(lr=1.0, betas=(0.8, 0.95)), tags={"site": "studio"})
    assert isinstance(cfg.optim.lr, float) and isinstance(cfg.optim.betas, tuple)
    assert from_dict(to_dict(cfg), Train) == cfg
    assert load_config(_write(tmp_path, ""), Train) == Train()          # an empty file: all defaults


def _write(tmp_path, text: str) -> Path:
    p = tmp_path / "c.yaml"
    p.write_text(text)
    return p


@pytest.mark.parametrize("text, message", [
    ("model:\n  depht: 3\n", "model.depht: unknown key for Model"),
    ("model:\n  depth: deep\n", "model.depth: expected int, got str 'deep'"),
    ("model:\n  depth: true\n", "model.depth: expected int, got bool True"),
    ("model:\n  kind: gan\n", "model.kind: expected one of ['dit', 'unet']"),
    ("model:\n  heads: [4, x]\n", "model.heads[1]: expected int"),
    ("optim:\n  betas: [0.9]\n", "optim.betas: expected 2 items, got 1"),
    ("optim: 3\n", "optim: expected a mapping for Optim, got int 3"),
    ("model:\n  dropout: high\n", "model.dropout: expected float"),
    ("[1, 2]\n", "<root>: expected a mapping for Train"),
    ("name: [unclosed\n", "not valid YAML"),
])
def test_errors_name_the_dotted_path(tmp_path, text, message):
    path = _write(tmp_path, text)
    with pytest.raises(ConfigError) as info:
        load_config(path, Train)
    assert str(path) in str(info.value) and message in str(info.value), str(info.value)


def test_missing_file_is_named(tmp_path):
    with pytest.raises(ConfigError, match="nope.yaml: cannot read"):
        load_config(tmp_path / "nope.yaml", Train)


def test_overrides_are_parsed_as_yaml_and_checked():
    cfg = apply_overrides(Train(), ["model.depth=24", "optim.lr=3e-4", "resume=true", "model.heads=[1, 2, 3]"])
    assert cfg.model.depth == 24 and cfg.optim.lr == 3e-4 and cfg.resume is True and cfg.model.heads == [1, 2, 3]
    for bad, message in [("model.width=3", "model.width: unknown key"), ("depth", "expected key=value"),
                         ("name.x=1", "name: not a section"), ("model.depth=1.5", "model.depth: expected int")]:
        with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
            apply_overrides(Train(), [bad])


def test_the_service_config_checks_its_own_values():
    with pytest.raises(ConfigError, match="ServiceConfig: max_steps must be positive"):
        from_dict({"max_steps": 0}, ServiceConfig)
    with pytest.raises(ConfigError, match="device: expected one of"):
        from_dict({"device": "tpu"}, ServiceConfig)
    # dimensions are the checkpoint's, not the service's: naming one is an unknown key
    with pytest.raises(ConfigError, match="resolution: unknown key for ServiceConfig"):
        from_dict({"resolution": 64}, ServiceConfig)
    assert from_dict({"model": "/models/x", "device": "cpu"}, ServiceConfig).model == "/models/x"


def test_every_serve_flag_is_the_twin_of_a_config_field_and_overrides_the_file(tmp_path):
    path = _write(tmp_path, "queue_size: 4\nheartbeat_s: 0.5\nbind: tcp://127.0.0.1:6001\nsend_hwm: 9\n"
                            "persist: false\n")
    from_file = service_config(parser().parse_args(["serve", "--config", str(path)]))
    assert (from_file.queue_size, from_file.heartbeat_s, from_file.bind, from_file.send_hwm, from_file.persist) == \
        (4, 0.5, "tcp://127.0.0.1:6001", 9, False)
    flags = service_config(parser().parse_args(["serve", "--config", str(path), "--queue-size", "7", "--bind",
                                                "tcp://127.0.0.1:6002", "--max-message-mb", "8", "--keys-dir", "K",
                                                "--avatar-dir", "A", "--set", "max_client_jobs=3"]))
    assert (flags.queue_size, flags.bind, flags.max_message_bytes, flags.keys_dir, flags.avatar_dir,
            flags.max_client_jobs, flags.heartbeat_s) == (7, "tcp://127.0.0.1:6002", 8 << 20, "K", "A", 3, 0.5)
    assert service_config(parser().parse_args(["serve"])) == ServiceConfig()
    assert service_config(parser().parse_args(["serve", "--no-persist"])).persist is False
    with pytest.raises(ValueError, match="queue_size must be positive"):
        service_config(parser().parse_args(["serve", "--queue-size", "0"]))


def test_serve_refuses_a_bad_config_with_a_named_error(tmp_path):
    path = _write(tmp_path, "device: cpu\nsh_degre: 2\n")
    done = subprocess.run([sys.executable, "-m", "backend.service.cli", "serve", "--no-persist", "--config", str(path)],
                          cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "sh_degre: unknown key for ServiceConfig" in done.stderr
