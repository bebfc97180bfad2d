"""`lodit demo`: its profiles and its arms agree with the shipped configs (the run itself is measured
in benchmarks/RESULTS.md; the pipeline is exercised end to end by tests/test_compare.py)."""

from __future__ import annotations

import pytest

from lodit.config import load_config, resolve_config_path
from lodit.demo import DEMO_CONFIG, PROFILES, run_demo
from lodit.errors import LoditError
from lodit.eval.experiment_config import load_experiment
from lodit.latent_tokenizer.sembo_train import SemBoTrainConfig
from lodit.latent_tokenizer.train import TokenizerTrainConfig


@pytest.mark.parametrize("profile", list(PROFILES))
def test_every_profile_loads_with_the_demo_experiment(profile):
    config = load_experiment(DEMO_CONFIG, ["data.train_manifest=x.jsonl", *PROFILES[profile].overrides])
    assert {arm.name for arm in config.arms} == {"losatok_128", "dasheng_like_512", "noise_norm_128"}
    assert config.eval_steps[-1] == config.dit_steps and len(config.eval_steps) >= 2
    assert len(config.seeds) == (3 if profile == "long" else 1)


def test_the_arms_share_one_decoder_and_recipe_and_differ_in_the_latent():
    config = load_experiment(DEMO_CONFIG, ["data.train_manifest=x.jsonl"])
    arms = {arm.name: (arm, load_config(TokenizerTrainConfig, arm.tokenizer, arm.overrides)) for arm in config.arms}
    decoders = {name: tok.tokenizer.decoder for name, (_, tok) in arms.items()}
    assert len({repr(d) for d in decoders.values()}) == 1
    recipes = {name: (tok.training.lr, tok.training.batch_size, tok.data.segment_seconds, tok.loss.mel, tok.loss.phase,
                      tok.loss.adversarial_start_step, tok.loss.dynamic_range_db) for name, (_, tok) in arms.items()}
    assert len(set(recipes.values())) == 1
    widths = {name: tok.tokenizer.latent_dim for name, (_, tok) in arms.items()}
    assert widths == {"losatok_128": 128, "dasheng_like_512": 512, "noise_norm_128": 128}
    fused = arms["dasheng_like_512"][1].tokenizer
    assert fused.encoder.semantic.latent_level == "fused_high" and fused.bottleneck.name == "identity"
    # LoSATok's SemBo is trained for exactly its teacher and widths
    losatok_arm, losatok = arms["losatok_128"]
    sembo = load_config(SemBoTrainConfig, losatok_arm.sembo, losatok_arm.sembo_overrides)
    semantic = losatok.tokenizer.encoder.semantic
    assert (sembo.sembo.in_dim, sembo.sembo.hidden_dim, sembo.sembo.low_dim) == (
        semantic.teacher_dim, semantic.sembo_hidden_dim, semantic.low_dim)
    assert sembo.teacher.model == semantic.teacher.model == fused.encoder.semantic.teacher.model


def test_unknown_profile_is_one_clear_error(tmp_path):
    with pytest.raises(LoditError, match="unknown demo profile 'huge'; choose one of quick, default, long"):
        run_demo(tmp_path, profile="huge")
    assert resolve_config_path(DEMO_CONFIG).is_file()


def test_demo_dataset_is_reused_only_with_the_same_groups(tmp_path):
    """A demo dataset (here the judged beeps) is generated once and regenerated when a group's count changes."""
    from lodit.data.manifest import read_manifest
    from lodit.demo import demo_dataset

    sizes = {"n_audio": 0, "n_music": 0, "n_speech": 0, "n_beeps": 3, "seconds": 1.0}
    manifest = demo_dataset(tmp_path / "beeps", sizes, seed=1)
    assert [row.labels["event"] for row in read_manifest(manifest).rows] == ["beep"] * 3
    written = manifest.stat().st_mtime_ns
    assert demo_dataset(tmp_path / "beeps", sizes, seed=1) == manifest and manifest.stat().st_mtime_ns == written
    more = demo_dataset(tmp_path / "beeps", {**sizes, "n_beeps": 4}, seed=1)
    assert len(read_manifest(more).rows) == 4

