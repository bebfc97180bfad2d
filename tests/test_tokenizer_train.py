"""Tokenizer training, `lodit train-tokenizer`, `lodit encode` (the latent cache) and `lodit reconstruct`:
overfitting one clip through the real Trainer, exact resume across the GAN phase, the encode -> cache
-> read round trip, the commands end to end on generated audio, and one clear error per bad input."""

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from lodit.cli import main
from lodit.config import load_config, load_yaml
from lodit.data.audio import load_audio, save_audio
from lodit.data.dataset import collate_audio
from lodit.data.latent_cache import LatentCache
from lodit.data.synthetic import make_demo_dataset
from lodit.errors import LoditError
from lodit.latent_tokenizer.encode import encode_manifest
from lodit.latent_tokenizer.losses import MultiResolutionMelLoss
from lodit.latent_tokenizer.reconstruct import si_sdr_db
from lodit.latent_tokenizer.tokenizer import Tokenizer, TokenizerConfig
from lodit.latent_tokenizer.train import TokenizerTrainConfig, build_dataset, build_task
from lodit.training.data import ResumableLoader
from lodit.training.loop import Trainer

TINY = Path(__file__).resolve().parent.parent / "configs" / "tokenizer" / "tiny.yaml"
SR = 16000


@pytest.fixture(scope="module")
def demo(tmp_path_factory) -> Path:
    """Four generated 1-s clips (two sound events, two music clips) and their manifest."""
    return make_demo_dataset(tmp_path_factory.mktemp("demo"), n_audio=2, n_music=2, n_speech=0, seconds=1.0)


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A randomly initialised tiny tokenizer saved as a pretrained folder."""
    torch.manual_seed(0)
    config = load_yaml(TINY)["tokenizer"]
    return Tokenizer.from_config(config).save_pretrained(tmp_path_factory.mktemp("tok") / "tiny")


def run_cli(capsys, *argv) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([str(a) for a in argv])
    out, err = capsys.readouterr()
    return code, out, err


def write_manifest(path: Path, rows: list) -> Path:
    path.write_text("".join((row if isinstance(row, str) else json.dumps(row)) + "\n" for row in rows))
    return path


# ----------------------------------------------------------------------------- training


def test_tiny_autoencoder_overfits_one_clip_through_the_trainer(demo, tmp_path):
    """120 steps on one 1-s music clip cut the multi-resolution mel distance at least 3x (6.7x seen)."""
    manifest = write_manifest(tmp_path / "one.jsonl", [{"audio": str(demo.parent / "audio" / "music_000.wav")}])
    config = load_config(TokenizerTrainConfig, TINY, [
        f"data.manifest={manifest}", "data.segment_seconds=1.0", "data.random_crop=false",
        "training.max_steps=120", "training.batch_size=1", "training.lr=1e-2", "training.lr_schedule=constant",
        "training.checkpoint_every=1000", "training.log_every=1000", "loss.adversarial_start_step=100000",
    ])
    dataset = build_dataset(config)
    task = build_task(config)
    wav = dataset[0]["wav"][None]  # (1, 1, S)
    mel = MultiResolutionMelLoss(SR, [(256, 64, 32), (512, 128, 64), (1024, 256, 80)])

    def distance(model):
        with torch.no_grad():
            return mel(model.reconstruct(wav), wav).item()

    before = distance(task.tokenizer.eval())
    loader = ResumableLoader.from_config(dataset, collate_audio, config.training)
    result = Trainer(config.training, tmp_path / "run", task, loader, resolved_config=config).fit()
    after = distance(Tokenizer.from_pretrained(result.final))
    assert result.step == 120 and result.skipped_steps == {}
    assert after < before / 3, (before, after)


def test_resume_across_the_gan_phase_equals_an_uninterrupted_run(demo, tmp_path, capsys):
    common = ["--config", TINY, "--manifest", demo, "training.max_steps=6", "training.checkpoint_every=2",
              "training.ema_decay=0.9", "loss.adversarial_start_step=2", "training.log_every=1"]
    code, out, err = run_cli(capsys, "train-tokenizer", *common, "--out", tmp_path / "straight")
    assert code == 0, err
    assert "final tokenizer in" in out
    code, out, err = run_cli(capsys, "train-tokenizer", *common, "--out", tmp_path / "resumed", "--max-steps", 3)
    assert code == 0, err
    assert "stopped at step 3 of 6" in out and not (tmp_path / "resumed" / "final").exists()
    code, out, err = run_cli(capsys, "train-tokenizer", *common, "--out", tmp_path / "resumed")
    assert code == 0, err
    assert "resuming from" in err and "step-00000003" in err

    straight = tmp_path / "straight" / "checkpoints" / "step-00000006"
    resumed = tmp_path / "resumed" / "checkpoints" / "step-00000006"
    state = json.loads((straight / "state.json").read_text())
    assert state["modules"] == ["model", "discriminator"]
    for name in ("model", "discriminator", "ema"):
        a, b = load_file(straight / f"{name}.safetensors"), load_file(resumed / f"{name}.safetensors")
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{name}: {key}"
    # the discriminator really trained (GAN from step 2: steps 4 and 5 changed it); checkpoints load as tokenizers
    late = load_file(straight / "discriminator.safetensors")
    early = load_file(tmp_path / "straight" / "checkpoints" / "step-00000004" / "discriminator.safetensors")
    assert any(not torch.equal(late[key], early[key]) for key in late)
    for folder in (straight, tmp_path / "straight" / "final"):
        assert Tokenizer.from_pretrained(folder).config == load_config(TokenizerTrainConfig, TINY).tokenizer


@pytest.mark.parametrize("path", sorted(TINY.parent.glob("*.yaml")), ids=lambda p: p.name)
def test_shipped_configs_are_complete_training_configs(path):
    config = load_config(TokenizerTrainConfig, path)
    assert set(load_yaml(path)) >= {"tokenizer", "loss", "discriminator", "training", "data"}
    assert config.training.betas == (0.8, 0.99)
    cpu_sized = path.stem.endswith("tiny") or path.stem == "default" or path.stem.endswith("_demo")
    if not cpu_sized:  # GPU-size ones train as LoSATok did
        assert config.training.batch_size == 64 and config.training.lr == 1e-4
        assert config.training.mixed_precision == "bf16"
    gan = config.loss.adversarial or config.loss.feature_matching
    if gan:  # a GAN phase, where there is one, starts inside the run (not after max_steps)
        assert config.loss.adversarial_start_step < config.training.max_steps
    if path.stem == "default" or path.stem.endswith("_demo"):  # the CPU recipe (benchmarks/RESULTS.md)
        assert not gan and config.loss.phase > 0 and config.loss.dynamic_range_db == 80.0


# ----------------------------------------------------------------------------- the latent cache


def test_encode_writes_a_cache_equal_to_encoding_each_clip(demo, tokenizer_dir, tmp_path):
    audio = demo.parent / "audio"
    rows = [json.loads(line) for line in demo.read_text().splitlines()]
    for row in rows:
        row["audio"] = str(audio / Path(row["audio"]).name)
    rows[0].update(offset=0.25, duration=0.5)  # a shorter clip inside its file: encoded alone
    rows.append({"audio": str(audio / "music_001.wav"), "id": "again", "offset": 0.1, "duration": 0.33})
    manifest = write_manifest(tmp_path / "m.jsonl", rows)
    summary = encode_manifest(tokenizer_dir, manifest, tmp_path / "cache", batch_size=2, progress=False)
    assert summary.encoded == 5 and summary.report.n_dropped == 0

    tokenizer = Tokenizer.from_pretrained(tokenizer_dir)
    cache = LatentCache(tmp_path / "cache")
    assert cache.keys == [row["id"] for row in rows]  # manifest order
    assert cache.producer == {**tokenizer.identity(), "checkpoint": str(tokenizer_dir.resolve())}
    everything = []
    for i, row in enumerate(rows):
        wav = load_audio(row["audio"], SR, offset=row.get("offset", 0.0), duration=row.get("duration"))
        expected = tokenizer.encode(wav)[0]  # (T, D), this clip alone
        got = cache.read(i)
        assert got.shape == (tokenizer.num_frames(wav.shape[-1]), tokenizer.latent_dim)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
        everything.append(got)
        fields = cache.fields(i)
        assert fields["duration"] == pytest.approx(wav.shape[-1] / SR)
        assert fields.get("caption") == row.get("caption")
        assert Path(fields["audio"]).is_file()
    frames = torch.cat(everything).double()  # (sum T, D)
    torch.testing.assert_close(cache.mean.double(), frames.mean(0), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(cache.std.double(), frames.std(0, correction=0), rtol=1e-5, atol=1e-6)

    other = Tokenizer(TokenizerConfig(**{**vars(tokenizer.config), "latent_dim": 8}))
    with pytest.raises(LoditError, match="re-run `lodit encode`"):
        cache.check_producer(other.identity())
    cache.check_producer(tokenizer.identity())


def test_batched_encoding_matches_encoding_one_clip_at_a_time(demo, tokenizer_dir, tmp_path):
    one = encode_manifest(tokenizer_dir, demo, tmp_path / "b1", batch_size=1, progress=False)
    four = encode_manifest(tokenizer_dir, demo, tmp_path / "b4", batch_size=4, progress=False)
    assert one.frames == four.frames
    a, b = LatentCache(tmp_path / "b1"), LatentCache(tmp_path / "b4")
    for i in range(len(a)):  # batched kernels may sum in another order: equal up to float rounding
        torch.testing.assert_close(a.read(i), b.read(i), rtol=1e-5, atol=1e-5)


# ----------------------------------------------------------------------------- the commands


def test_prepare_train_encode_reconstruct_end_to_end(tmp_path, capsys):
    code, out, err = run_cli(capsys, "make-dataset", "--out", tmp_path / "demo", "--counts", "audio=2,music=2",
                             "--seconds", 1)
    assert code == 0, err
    folder = tmp_path / "folder"  # a plain folder of audio files with same-name .txt captions
    folder.mkdir()
    for line in (tmp_path / "demo" / "manifest.jsonl").read_text().splitlines():
        row = json.loads(line)
        wav = folder / Path(row["audio"]).name
        shutil.copy(tmp_path / "demo" / row["audio"], wav)
        wav.with_suffix(".txt").write_text(row["caption"])
    manifest = tmp_path / "data" / "manifest.jsonl"
    code, out, err = run_cli(capsys, "prepare", "folder", folder, "--out", manifest, "--no-progress")
    assert code == 0, err

    run = tmp_path / "run"
    code, out, err = run_cli(capsys, "train-tokenizer", "--config", TINY, "--manifest", manifest, "--out", run,
                             "--seed", 3, "training.max_steps=3", "loss.adversarial_start_step=2",
                             "training.preview_every=3")
    assert code == 0, err
    assert list((run / "logs").glob("events.out.tfevents.*"))  # scalars and the step-3 audio preview
    assert f"final tokenizer in {run / 'final'}" in out
    resolved = load_config(TokenizerTrainConfig, run / "config.yaml")
    assert resolved.training.seed == 3 and resolved.training.max_steps == 3
    assert Path(resolved.data.manifest) == manifest.resolve()

    cache = tmp_path / "cache"
    code, out, err = run_cli(capsys, "encode", "--tokenizer", run / "final", "--manifest", manifest, "--out", cache,
                             "--dtype", "float16", "--no-progress")
    assert code == 0, err
    assert "encoded 4 clips" in out
    latents = LatentCache(cache)
    assert len(latents) == 4 and latents.meta["dtype"] == "float16"
    assert sorted(latents.fields(i)["caption"] for i in range(4)) == sorted(
        p.read_text() for p in folder.glob("*.txt"))

    source = next(folder.glob("*.wav"))
    code, out, err = run_cli(capsys, "reconstruct", "--tokenizer", run / "final", source, tmp_path / "out.wav")
    assert code == 0, err
    assert "mel distance" in out and "SI-SDR" in out
    recon, ref = load_audio(tmp_path / "out.wav"), load_audio(source)
    assert recon.shape == ref.shape
    printed = float(out.split("SI-SDR ")[1].split(" dB")[0])
    assert printed == pytest.approx(si_sdr_db(ref, recon), abs=0.2)  # the file is 16-bit: a little rounding


def test_si_sdr_hand_values():
    ref = torch.tensor([1.0, -1.0, 1.0, -1.0])
    assert si_sdr_db(ref, 0.5 * ref) > 70  # scale-invariant: a scaled copy is perfect
    noise = torch.tensor([1.0, 1.0, -1.0, -1.0])  # orthogonal to ref, zero mean
    assert si_sdr_db(ref, ref + 0.1 * noise) == pytest.approx(20.0, abs=1e-4)  # 10 log10(1 / 0.01)


# ----------------------------------------------------------------------------- bad input


def error_line(code: int, err: str, command: str) -> str:
    assert code == 2
    line = err.strip().splitlines()[-1]
    assert line.startswith(f"lodit {command}: error: ")
    return line


def test_bad_inputs_give_one_line_errors(demo, tokenizer_dir, tmp_path, capsys):
    train = ["train-tokenizer", "--config", TINY, "--out", tmp_path / "run"]

    line = error_line(*run_cli(capsys, "train-tokenizer", "--config", tmp_path / "nope.yaml", "--manifest", demo)[::2],
                      "train-tokenizer")
    assert "nope.yaml" in line and "not found" in line
    line = error_line(*run_cli(capsys, *train, "--manifest", demo, "training.learning_rate=1")[::2], "train-tokenizer")
    assert "unknown key 'training.learning_rate'" in line and "tiny.yaml" in line
    line = error_line(*run_cli(capsys, *train, "--manifest", tmp_path / "missing.jsonl")[::2], "train-tokenizer")
    assert "missing.jsonl" in line and "manifest not found" in line
    line = error_line(*run_cli(capsys, *train)[::2], "train-tokenizer")
    assert "--manifest" in line

    good = json.loads(demo.read_text().splitlines()[0])
    good["audio"] = str(demo.parent / good["audio"])
    bad_row = write_manifest(tmp_path / "bad_row.jsonl", [good, '{"audio": "x.wav", "colour": "red"}'])
    encode = ["encode", "--tokenizer", tokenizer_dir, "--no-progress"]
    line = error_line(*run_cli(capsys, *encode, "--manifest", bad_row, "--out", tmp_path / "c1")[::2], "encode")
    assert "bad_row.jsonl line 2" in line and "colour" in line and "--on-error skip" in line

    broken = tmp_path / "broken.wav"
    broken.write_bytes(b"RIFF, but not really a wav file")
    unreadable = write_manifest(tmp_path / "unreadable.jsonl", [{"audio": "broken.wav"}, good])
    line = error_line(*run_cli(capsys, *encode, "--manifest", unreadable, "--out", tmp_path / "c2")[::2], "encode")
    assert "unreadable.jsonl line 1" in line and "broken.wav" in line and "cannot read audio" in line
    code, out, err = run_cli(capsys, *encode, "--manifest", unreadable, "--out", tmp_path / "c3", "--on-error", "skip")
    assert code == 0, err
    assert "encoded 1 clips" in out and "skipped 1 bad rows (line 1:" in out

    line = error_line(*run_cli(capsys, *encode, "--manifest", unreadable, "--out", tmp_path / "c3",
                               "--on-error", "skip")[::2], "encode")
    assert "already exists" in line and "--overwrite" in line
    code, out, err = run_cli(capsys, *encode, "--manifest", unreadable, "--out", tmp_path / "c3", "--on-error", "skip",
                             "--overwrite")
    assert code == 0, err

    no_weights = tmp_path / "no_weights"
    shutil.copytree(tokenizer_dir, no_weights)
    (no_weights / "model.safetensors").unlink()
    line = error_line(*run_cli(capsys, "encode", "--tokenizer", no_weights, "--manifest", demo, "--out",
                               tmp_path / "c4")[::2], "encode")
    assert "model.safetensors" in line and "missing" in line
    line = error_line(*run_cli(capsys, "reconstruct", "--tokenizer", no_weights, broken, tmp_path / "o.wav")[::2],
                      "reconstruct")
    assert "model.safetensors" in line
    line = error_line(*run_cli(capsys, "reconstruct", "--tokenizer", tokenizer_dir, broken, tmp_path / "o.wav")[::2],
                      "reconstruct")
    assert "broken.wav" in line and "cannot read audio" in line
    if not torch.cuda.is_available():
        line = error_line(*run_cli(capsys, *encode, "--manifest", demo, "--out", tmp_path / "c5", "--device",
                                   "cuda")[::2], "encode")
        assert "CUDA is not available" in line and "--device cpu" in line
    save_audio(tmp_path / "in.wav", torch.zeros(1, 800), SR)
    line = error_line(*run_cli(capsys, "reconstruct", "--tokenizer", tokenizer_dir, tmp_path / "in.wav",
                               tmp_path / "in.wav")[::2], "reconstruct")
    assert "input file" in line
