"""Typed config loading: YAML + overrides, unknown keys and wrong types named with their file."""

import os
import shutil
import subprocess
import sys
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from lodit.config import (
    apply_overrides,
    config_hash,
    from_dict,
    load_config,
    resolve_config_path,
    save_config,
    to_dict,
)
from lodit.errors import ConfigError, LoditError
from lodit.registry import Registry


@dataclass
class Inner:
    width: int = 8
    kind: Literal["a", "b"] = "a"
    rates: list[float] = field(default_factory=lambda: [1.0, 2.0])


@dataclass
class Outer:
    name: str = "x"
    lr: float = 1e-3
    inner: Inner = field(default_factory=Inner)
    betas: tuple[float, float] = (0.9, 0.99)
    extra: Optional[int] = None
    flags: dict[str, bool] = field(default_factory=dict)


def test_yaml_and_overrides(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: run\nlr: 1e-4\ninner:\n  width: 16\n  rates: [3, 4]\n")
    cfg = load_config(Outer, path, ["inner.kind=b", "extra=5", "betas=[0.8, 0.99]", "flags.ema=true"])
    assert cfg.name == "run"
    assert cfg.lr == pytest.approx(1e-4)  # YAML reads "1e-4" as a string; the loader converts it
    assert cfg.inner == Inner(width=16, kind="b", rates=[3.0, 4.0])
    assert cfg.extra == 5 and cfg.betas == (0.8, 0.99) and cfg.flags == {"ema": True}


def test_unknown_key_names_key_and_file(tmp_path):
    path = tmp_path / "bad.yaml"
    path.write_text("inner:\n  widht: 3\n")
    with pytest.raises(ConfigError, match=r"bad\.yaml.*'inner\.widht'"):
        load_config(Outer, path)


@pytest.mark.parametrize(
    "override, pattern",
    [
        ("inner.width=abc", r"inner\.width must be an integer, got 'abc'"),
        ("inner.kind=c", r"inner\.kind must be one of 'a', 'b'"),
        ("lr=fast", r"lr must be a number"),
        ("betas=[1]", r"betas must have 2 items"),
        ("inner=3", r"inner must be a mapping"),
        ("flags.ema=maybe", r"flags\.ema must be true or false"),
    ],
)
def test_wrong_types_are_named(tmp_path, override, pattern):
    path = tmp_path / "c.yaml"
    path.write_text("name: run\n")
    with pytest.raises(ConfigError, match=pattern) as info:
        load_config(Outer, path, [override])
    assert "c.yaml" in str(info.value)


def test_bad_override_syntax_and_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="key.sub=value"):
        apply_overrides({}, ["no-equals-sign"])
    with pytest.raises(ConfigError, match="name is a value, not a section"):
        apply_overrides({"name": "x"}, ["name.sub=1"])
    with pytest.raises(ConfigError, match="not found"):
        load_config(Outer, tmp_path / "missing.yaml")
    (tmp_path / "broken.yaml").write_text("a: [1, 2\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(Outer, tmp_path / "broken.yaml")


def test_save_round_trip_and_hash(tmp_path):
    cfg = from_dict(Outer, {"inner": {"width": 4}, "extra": 2})
    saved = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config(Outer, saved) == cfg
    assert to_dict(cfg)["inner"]["width"] == 4
    assert config_hash(cfg) == config_hash(from_dict(Outer, to_dict(cfg)))
    assert config_hash(cfg) != config_hash(from_dict(Outer, {"extra": 3}))


def test_registry_lists_choices():
    reg = Registry("bottleneck")
    reg.register("noise_norm")(object)
    assert reg.get("noise_norm") is object
    with pytest.raises(LoditError, match="unknown bottleneck 'nope'; choose one of: noise_norm"):
        reg.get("nope")
    with pytest.raises(ValueError):
        reg.register("noise_norm")(int)


# --------------------------------------------------------------------------- shipped configs

REPO = Path(__file__).resolve().parent.parent


def test_shipped_configs_resolve_from_any_folder(tmp_path, monkeypatch):
    from lodit.dit.train_config import DiTTrainConfig
    from lodit.eval.experiment_config import load_experiment

    monkeypatch.chdir(tmp_path)  # no configs/ here
    config = load_config(DiTTrainConfig, "configs/dit/tiny.yaml")
    assert config.dit.width > 0
    experiment = load_experiment("configs/experiments/tiny.yaml")
    assert experiment.arms and all(Path(arm.tokenizer).is_file() for arm in experiment.arms)
    # A local file of that name wins over the shipped one.
    (tmp_path / "configs" / "dit").mkdir(parents=True)
    (tmp_path / "configs" / "dit" / "tiny.yaml").write_text("dit: {width: 8}\n")
    assert resolve_config_path("configs/dit/tiny.yaml") == Path("configs/dit/tiny.yaml")
    with pytest.raises(ConfigError, match="configs/dit/nope.yaml: config file not found"):
        load_config(DiTTrainConfig, "configs/dit/nope.yaml")


def test_wheel_ships_every_config_and_finds_them_installed(tmp_path):
    # Build from a copy of the sources: an in-tree build would leave build/ in the checkout.
    source = tmp_path / "source"
    source.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(REPO / name, source / name)
    for name in ("lodit", "configs"):
        shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    wheel_dir = tmp_path / "wheel"
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(wheel_dir),
            str(source),
        ],
        capture_output=True,
        text=True,
    )
    assert build.returncode == 0, build.stderr[-2000:]
    (wheel,) = wheel_dir.glob("lodit-*.whl")
    installed = tmp_path / "site"
    with zipfile.ZipFile(wheel) as archive:
        archive.extractall(installed)
    shipped = sorted(p.relative_to(REPO / "configs") for p in (REPO / "configs").rglob("*.yaml"))
    packaged = sorted(
        p.relative_to(installed / "lodit" / "configs") for p in (installed / "lodit" / "configs").rglob("*.yaml")
    )
    assert shipped and packaged == shipped
    # Imported from the unpacked wheel (outside the checkout), lodit finds its own copy.
    probe = subprocess.run(
        [sys.executable, "-c", "from lodit.config import shipped_configs_dir; print(shipped_configs_dir())"],
        capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(installed)},
    )
    assert probe.returncode == 0, probe.stderr[-2000:]
    assert Path(probe.stdout.strip()) == installed / "lodit" / "configs"
    # The HTML report's template is package data too.
    assert (installed / "lodit" / "eval" / "templates" / "report.html.j2").is_file()


def test_encoder_keys_of_another_encoder_are_errors_naming_the_file(tmp_path):
    from lodit.latent_tokenizer.tokenizer import Tokenizer
    from lodit.latent_tokenizer.train import TokenizerTrainConfig

    path = tmp_path / "tok.yaml"
    path.write_text((REPO / "configs" / "tokenizer" / "tiny.yaml").read_text())
    load_config(TokenizerTrainConfig, path)  # the shipped config itself is fine
    with pytest.raises(ConfigError, match=r"tok.yaml.*'tokenizer.encoder.strides' does not apply when "
                                          r"tokenizer.encoder.name is 'mel_convnext' \(that takes: .*mel_hop.*\); "
                                          r"remove it"):
        load_config(TokenizerTrainConfig, path, ["tokenizer.encoder.strides=[4,4,40]"])
    losatok = "'tokenizer.encoder.dim' does not apply when tokenizer.encoder.name is 'losatok'"
    with pytest.raises(ConfigError, match=losatok):
        load_config(TokenizerTrainConfig, REPO / "configs" / "tokenizer" / "losatok_tiny.yaml",
                    ["tokenizer.encoder.dim=64"])
    # A key of another encoder left at its default is accepted (resolved configs list every field) ...
    load_config(TokenizerTrainConfig, path, ["tokenizer.encoder.channels=32"])
    # ... and so is anything in a config lodit saved itself (older checkpoints wrote every field as set).
    config = load_config(TokenizerTrainConfig, path).tokenizer
    saved = to_dict(config)
    saved["encoder"]["channels"] = 8
    assert Tokenizer.from_config(saved, saved=True).config.encoder.channels == 8


def test_dit_config_errors_name_the_yaml_file_when_it_is_read(tmp_path):
    from lodit.dit.train_config import DiTTrainConfig

    path = tmp_path / "dit.yaml"
    path.write_text((REPO / "configs" / "dit" / "tiny.yaml").read_text())
    with pytest.raises(ConfigError, match=r"dit.yaml.*dit.width=30 must be divisible by dit.heads=4"):
        load_config(DiTTrainConfig, path, ["dit.width=30"])
    with pytest.raises(ConfigError, match=r"dit.yaml.*dit.depth=0 must be >= 1"):
        load_config(DiTTrainConfig, path, ["dit.depth=0"])
