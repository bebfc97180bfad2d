"""The compare report's understanding section: probe/cluster scores, grouping of seeds, paths."""

import json

import numpy as np
import pytest
import torch

from lodit.data.audio import save_audio
from lodit.eval.understanding import (
    ProbeTask,
    RepresentationSpec,
    UnderstandingConfig,
    run_understanding,
    understanding_scores,
    understanding_table,
)


def test_scores_of_perfectly_separated_tokens_and_of_mixed_ones():
    # class a uses tokens {0, 1}, class b tokens {2, 3}: histograms separate the classes exactly
    rng = np.random.default_rng(0)
    labels = ["a"] * 6 + ["b"] * 6
    tokens = [torch.tensor(rng.integers(0, 2, 20)) for _ in range(6)] + [
        torch.tensor(rng.integers(2, 4, 20)) for _ in range(6)
    ]
    scores = understanding_scores(tokens, 4, labels, folds=3)
    assert scores["purity"] == 1.0 and scores["probe_accuracy"] == 1.0 and scores["silhouette"] > 0.5
    assert scores["vocab"] == 4 and scores["n_classes"] == 2 and scores["n_clips"] == 12
    # every clip the same histogram: clustering can do no better than the majority (purity 0.5)
    same = [torch.tensor([0, 1, 2, 3] * 5) for _ in range(12)]
    assert understanding_scores(same, 4, labels, folds=3)["purity"] == pytest.approx(0.5)


def test_continuous_frames_are_quantised_before_clustering():
    g = torch.Generator().manual_seed(0)
    labels = ["x"] * 5 + ["y"] * 5
    frames = [torch.randn(15, 3, generator=g) + (0 if lab == "x" else 8) for lab in labels]
    scores = understanding_scores(frames, None, labels, folds=5, codebook_size=4)
    assert scores["purity"] == 1.0 and scores["probe_accuracy"] == 1.0 and scores["dim"] == 3 and scores["vocab"] == 4


def test_run_understanding_on_arm_latents_and_the_report_table(tmp_path):
    from lodit.config import load_yaml
    from lodit.latent_tokenizer.tokenizer import Tokenizer

    torch.manual_seed(0)
    ae = Tokenizer.from_config(load_yaml("configs/tokenizer/tiny.yaml")["tokenizer"]).save_pretrained(tmp_path / "ae")
    t = np.arange(8000) / 16000
    with open(tmp_path / "m.jsonl", "w") as handle:
        for i in range(8):
            event = "low" if i % 2 else "high"
            freq = 200 if event == "low" else 3000
            save_audio(
                tmp_path / f"{i}.wav",
                torch.from_numpy((0.3 * np.sin(2 * np.pi * (freq + 10 * i) * t)).astype(np.float32))[None],
                16000,
            )
            handle.write(json.dumps({"audio": f"{i}.wav", "labels": {"event": event, "pitch": i % 4}}) + "\n")
    config = UnderstandingConfig(
        tasks=[
            ProbeTask(name="event", manifest=str(tmp_path / "m.jsonl"), label="event"),
            ProbeTask(name="pitch", manifest=str(tmp_path / "m.jsonl"), label="pitch"),
        ],
        folds=2,
        codebook_size=4,
        representations=[
            RepresentationSpec(name="ae_s0", group="ae", kind="latents", model=str(ae)),
            RepresentationSpec(name="ae_s1", group="ae", kind="latents", model=str(ae)),
        ],
    )
    results = run_understanding(config, tmp_path / "out", {"tiny": str(ae)})
    saved = json.loads((tmp_path / "out" / "metrics.json").read_text())
    assert saved["tasks"][1] == {
        "name": "pitch",
        "manifest": str(tmp_path / "m.jsonl"),
        "label": "pitch",
        "n_clips": 8,
        "n_classes": 4,
    }
    names = [row["name"] for row in results["representations"]]
    assert names == ["ae_s0", "ae_s1", "arm tiny"]
    assert results["representations"][0]["scores"]["event"]["n_classes"] == 2
    table = understanding_table(results)
    assert [row[:2] for row in table.rows] == [
        ["ae (×2)", "event"],
        ["ae (×2)", "pitch"],
        ["arm tiny", "event"],
        ["arm tiny", "pitch"],
    ]
    assert "probe accuracy" in table.markdown() and understanding_table(None) is None


def test_experiment_resolves_understanding_paths_but_not_teacher_names(tmp_path):
    from lodit.eval.experiment_config import load_experiment

    (tmp_path / "exp.yaml").write_text(
        "arms: [{name: a, checkpoint: tok}]\ndit: {config: d.yaml}\n"
        "understanding:\n  tasks: [{name: e, manifest: probe.jsonl, label: event}]\n  representations:\n"
        "    - {name: u, kind: tokens, model: runs/u}\n    - {name: w, kind: teacher, model: 'offline:tiny.en'}\n"
    )
    config = load_experiment(tmp_path / "exp.yaml")
    assert config.understanding.tasks[0].manifest == str(tmp_path / "probe.jsonl")
    assert config.understanding.representations[0].model == str(tmp_path / "runs" / "u")
    assert config.understanding.representations[1].model == "offline:tiny.en"


def test_shipped_demo_experiment_loads():
    from lodit.eval.experiment_config import load_experiment

    config = load_experiment("configs/experiments/uniaudio_f3_demo.yaml")
    groups = [r.group or r.name for r in config.understanding.representations]
    assert (
        len(config.understanding.tasks) == 2
        and groups.count("uniaudio_sae") == 2
        and groups.count("uniaudio_nosae") == 2
    )
    assert {r.kind for r in config.understanding.representations} == {"tokens", "features", "teacher"}
