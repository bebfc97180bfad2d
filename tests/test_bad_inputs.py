"""A corpus of bad inputs, each given to the ``lodit`` command as a careless or hostile user would.

Every case must end with exit code 2, exactly one line on stderr (``lodit <command>: error: ...``)
that names the problem, no traceback, and nothing already on disk changed or added. The world the
cases run against (audio, manifests, configs, a tokenizer, a latent cache, a training run) is
built once; cases run in-process through :func:`lodit.cli.main` (a few also as real processes).
"""

from __future__ import annotations

import errno
import hashlib
import json
import shutil
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import soundfile as sf
import torch

import lodit.outputs as outputs_module
from lodit import cli
from lodit.config import load_yaml
from lodit.data.latent_cache import LatentCache
from lodit.dit.generator import check_tokenizer
from lodit.dit.train import DiTTask
from lodit.errors import LoditError
from lodit.latent_tokenizer.encode import encode_manifest
from lodit.latent_tokenizer.tokenizer import Tokenizer

SR = 16000
TINY_TOKENIZER = "configs/tokenizer/tiny.yaml"
QUICK = ["training.max_steps=1", "training.num_workers=0", "training.batch_size=1"]


def _wav(path: Path, data: np.ndarray, subtype: str = "PCM_16") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    sf.write(str(path), data, SR, subtype=subtype)
    return str(path)


def _lines(path: Path, rows: list, raw: bytes | None = None) -> str:
    path.write_bytes(raw if raw is not None else "".join(json.dumps(r) + "\n" for r in rows).encode())
    return str(path)


def _tokenizer(folder: Path, seed: int) -> str:
    torch.manual_seed(seed)
    Tokenizer.from_config(load_yaml(TINY_TOKENIZER)["tokenizer"]).save_pretrained(folder)
    return str(folder)


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("world")
    rng = np.random.default_rng(0)
    audio = root / "audio"
    w = SimpleNamespace(root=root)
    w.good = [_wav(audio / f"good{i}.wav", 0.1 * rng.standard_normal(SR // 2)) for i in range(2)]
    nan = 0.1 * rng.standard_normal(SR // 2).astype(np.float32)
    nan[100] = np.nan
    w.nan = _wav(audio / "nan.wav", nan, subtype="FLOAT")
    w.text = str(audio / "text.wav")
    Path(w.text).write_text("this is not audio\n")
    w.empty = _wav(audio / "empty.wav", np.zeros(0))
    w.afile = str(root / "afile.txt")
    Path(w.afile).write_text("a plain file\n")

    good_rows = [{"audio": "audio/good0.wav", "id": "a", "caption": "noise"},
                 {"audio": "audio/good1.wav", "id": "b", "caption": "more noise"}]
    w.manifest = _lines(root / "manifest.jsonl", good_rows)
    w.m_invalid = _lines(root / "invalid.jsonl", [], b'{"audio": "audio/good0.wav"\n')
    w.m_unknown = _lines(root / "unknown.jsonl", [{"audio": "audio/good0.wav", "colour": "red"}])
    w.m_missing = _lines(root / "missing.jsonl", [{"audio": "audio/nowhere.wav"}])
    w.m_nan = _lines(root / "nan.jsonl", [good_rows[0], {"audio": "audio/nan.wav", "id": "n"}])
    w.m_dup = _lines(root / "dup.jsonl", [good_rows[0], {"audio": "audio/good1.wav", "id": "a"}])
    w.m_empty = _lines(root / "empty.jsonl", [], b"\n\n")
    w.m_utf8 = _lines(root / "utf8.jsonl", [], b'{"audio": "audio/good0.wav", "caption": "\xff\xfe"}\n')
    w.m_negative = _lines(root / "negative.jsonl", [{"audio": "audio/good0.wav", "duration": -1}])
    w.m_text = _lines(root / "text.jsonl", [{"audio": "audio/text.wav"}])
    w.m_emptyaudio = _lines(root / "emptyaudio.jsonl", [{"audio": "audio/empty.wav"}])

    configs = root / "configs"
    configs.mkdir()
    (configs / "empty.yaml").write_text("# nothing but a comment\n")
    (configs / "list.yaml").write_text("- a\n- b\n")
    (configs / "bad.yaml").write_text("training: {max_steps: [1,\n")
    w.configs = configs

    w.tok = _tokenizer(root / "tok", seed=0)
    w.tok_b = _tokenizer(root / "tok_b", seed=1)  # same config, other weights
    broken = root / "tok_broken"
    shutil.copytree(w.tok, broken)
    (broken / "model.safetensors").write_bytes(b"\x00" * 16)
    w.tok_broken = str(broken)
    badjson = root / "tok_badjson"
    shutil.copytree(w.tok, badjson)
    (badjson / "config.json").write_text("{not json")
    w.tok_badjson = str(badjson)

    w.cache = str(root / "cache")
    encode_manifest(w.tok, w.manifest, w.cache, progress=False)
    (root / "notacache").mkdir()
    (root / "notacache" / "notes.txt").write_text("mine\n")
    (root / "incomplete").mkdir()
    (root / "incomplete" / "index.jsonl").write_text("")

    w.run = str(root / "run")
    assert cli.main(["train-tokenizer", "--config", TINY_TOKENIZER, "--manifest", w.manifest, "--out", w.run,
                     *QUICK]) == 0
    evil = root / "run_evil"
    shutil.copytree(w.run, evil)
    for folder in (evil / "checkpoints").glob("step-*"):
        torch.save({"evil": object()}, folder / "optimizer.pt")
    w.run_evil = str(evil)

    w.prompts_bad = str(root / "prompts.jsonl")
    Path(w.prompts_bad).write_text('{"prompt": "a dog", "seconds": 1e9}\n')
    return w


def _snapshot(root: Path) -> dict[str, str]:
    state = {}
    for path in sorted(root.rglob("*")):
        key = str(path.relative_to(root))
        state[key] = "dir" if path.is_dir() else hashlib.sha256(path.read_bytes()).hexdigest()
    return state


# (name, argv from the world, text the one line must contain)
CASES = [
    # --- audio files
    ("reconstruct: missing input", lambda w: ["reconstruct", "--tokenizer", w.tok, "nowhere.wav", f"{w.root}/o.wav"],
     "audio file not found"),
    ("reconstruct: input is a folder", lambda w: ["reconstruct", "--tokenizer", w.tok, str(w.root / "audio"),
                                                  f"{w.root}/o.wav"], "is a folder, not an audio file"),
    ("reconstruct: text as audio", lambda w: ["reconstruct", "--tokenizer", w.tok, w.text, f"{w.root}/o.wav"],
     "cannot read audio"),
    ("reconstruct: NaN samples", lambda w: ["reconstruct", "--tokenizer", w.tok, w.nan, f"{w.root}/o.wav"],
     "1 of 8000 samples are NaN or infinite"),
    ("reconstruct: empty audio", lambda w: ["reconstruct", "--tokenizer", w.tok, w.empty, f"{w.root}/o.wav"],
     "holds no audio samples"),
    ("reconstruct: output under a file", lambda w: ["reconstruct", "--tokenizer", w.tok, w.good[0],
                                                    f"{w.afile}/o.wav"], "is a file, so no folder can be made"),
    ("reconstruct: output is a folder", lambda w: ["reconstruct", "--tokenizer", w.tok, w.good[0], str(w.configs)],
     "is a folder; give the name of a file"),
    ("reconstruct: output over the input", lambda w: ["reconstruct", "--tokenizer", w.tok, w.good[0], w.good[0]],
     "is the input file"),
    ("reconstruct: unknown suffix", lambda w: ["reconstruct", "--tokenizer", w.tok, w.good[0], f"{w.root}/o.xyz"],
     "use a .wav, .flac, .ogg or .mp3 name"),
    ("reconstruct: missing tokenizer", lambda w: ["reconstruct", "--tokenizer", f"{w.root}/nope", w.good[0],
                                                  f"{w.root}/o.wav"], "tokenizer folder not found"),
    ("reconstruct: truncated weights", lambda w: ["reconstruct", "--tokenizer", w.tok_broken, w.good[0],
                                                  f"{w.root}/o.wav"], "unreadable safetensors file"),
    ("reconstruct: config.json not JSON", lambda w: ["reconstruct", "--tokenizer", w.tok_badjson, w.good[0],
                                                     f"{w.root}/o.wav"], "not valid JSON"),
    # --- manifests (through encode)
    ("encode: missing manifest", lambda w: ["encode", "--tokenizer", w.tok, "--manifest", f"{w.root}/no.jsonl",
                                            "--out", f"{w.root}/c1"], "manifest not found"),
    ("encode: manifest is a folder", lambda w: ["encode", "--tokenizer", w.tok, "--manifest", str(w.configs),
                                                "--out", f"{w.root}/c1"], "is a folder, not a manifest"),
    ("encode: invalid JSON row", lambda w: ["encode", "--tokenizer", w.tok, "--manifest", w.m_invalid,
                                            "--out", f"{w.root}/c1"], "line 1: invalid JSON"),
    ("encode: unknown field", lambda w: ["encode", "--tokenizer", w.tok, "--manifest", w.m_unknown,
                                         "--out", f"{w.root}/c1"], "unknown field 'colour'"),
    ("encode: audio missing", lambda w: ["encode", "--tokenizer", w.tok, "--manifest", w.m_missing,
                                         "--out", f"{w.root}/c1"], "line 1: "),
    ("encode: NaN audio names its line", lambda w: ["encode", "--tokenizer", w.tok, "--manifest", w.m_nan,
                                                    "--out", f"{w.root}/c1"], "nan.jsonl line 2: "),
    ("encode: duplicate ids", lambda w: ["encode", "--tokenizer", w.tok, "--manifest", w.m_dup,
                                         "--out", f"{w.root}/c1"], "clip key 'a' is used again (first on line 1)"),
    ("encode: empty manifest", lambda w: ["encode", "--tokenizer", w.tok, "--manifest", w.m_empty,
                                          "--out", f"{w.root}/c1"], "no clip could be encoded"),
    ("encode: invalid UTF-8", lambda w: ["encode", "--tokenizer", w.tok, "--manifest", w.m_utf8,
                                         "--out", f"{w.root}/c1"], "not valid UTF-8"),
    ("encode: negative duration", lambda w: ["encode", "--tokenizer", w.tok, "--manifest", w.m_negative,
                                             "--out", f"{w.root}/c1"], "'duration' must be positive"),
    ("encode: text as audio", lambda w: ["encode", "--tokenizer", w.tok, "--manifest", w.m_text,
                                         "--out", f"{w.root}/c1"], "cannot read audio"),
    ("encode: empty audio", lambda w: ["encode", "--tokenizer", w.tok, "--manifest", w.m_emptyaudio,
                                       "--out", f"{w.root}/c1"], "no audio samples"),
    ("encode: batch size 0", lambda w: ["encode", "--tokenizer", w.tok, "--manifest", w.manifest,
                                        "--out", f"{w.root}/c1", "--batch-size", "0"], "between 1 and 4096"),
    ("encode: batch size 1e9", lambda w: ["encode", "--tokenizer", w.tok, "--manifest", w.manifest,
                                          "--out", f"{w.root}/c1", "--batch-size", "1000000000"], "between 1 and 4096"),
    ("encode: --out is a file", lambda w: ["encode", "--tokenizer", w.tok, "--manifest", w.manifest,
                                           "--out", w.afile], "exists and is a file"),
    ("encode: --out is someone's folder", lambda w: ["encode", "--tokenizer", w.tok, "--manifest", w.manifest,
                                                     "--out", str(w.root / "notacache")], "not a latent cache"),
    ("encode: cache exists", lambda w: ["encode", "--tokenizer", w.tok, "--manifest", w.manifest, "--out", w.cache],
     "already exists; pass overwrite"),
    ("encode: bad device", lambda w: ["encode", "--tokenizer", w.tok, "--manifest", w.manifest,
                                      "--out", f"{w.root}/c1", "--device", "tpu:9"], "not a device name"),
    # --- configs and overrides (through train-tokenizer / train-dit)
    ("config missing", lambda w: ["train-tokenizer", "--config", f"{w.root}/no.yaml", "--out", f"{w.root}/r1"],
     "config file not found"),
    ("config is a folder", lambda w: ["train-tokenizer", "--config", str(w.configs), "--out", f"{w.root}/r1"],
     "is a folder, not a config file"),
    ("config empty", lambda w: ["train-tokenizer", "--config", str(w.configs / "empty.yaml"), "--out",
                                f"{w.root}/r1"], "the config is empty"),
    ("config is a list", lambda w: ["train-tokenizer", "--config", str(w.configs / "list.yaml"), "--out",
                                    f"{w.root}/r1"], "top level must be a mapping"),
    ("config not YAML", lambda w: ["train-tokenizer", "--config", str(w.configs / "bad.yaml"), "--out",
                                   f"{w.root}/r1"], "not valid YAML"),
    ("override unknown key", lambda w: ["train-tokenizer", "--config", TINY_TOKENIZER, "--out", f"{w.root}/r1",
                                        "training.max_stepz=3"], "unknown key 'training.max_stepz'"),
    ("override wrong type", lambda w: ["train-tokenizer", "--config", TINY_TOKENIZER, "--out", f"{w.root}/r1",
                                       "training.max_steps=many"], "training.max_steps must be an integer"),
    ("override without =", lambda w: ["train-tokenizer", "--config", TINY_TOKENIZER, "--out", f"{w.root}/r1",
                                      "training.max_steps"], "must look like key.sub=value"),
    ("override into a value", lambda w: ["train-tokenizer", "--config", TINY_TOKENIZER, "--out", f"{w.root}/r1",
                                         "training.lr.x=1"], "training.lr is a value, not a section"),
    ("override bad choice", lambda w: ["train-tokenizer", "--config", TINY_TOKENIZER, "--out", f"{w.root}/r1",
                                       "training.mixed_precision=fp8"], "must be one of 'no'"),
    ("override zero batch", lambda w: ["train-tokenizer", "--config", TINY_TOKENIZER, "--out", f"{w.root}/r1",
                                       "training.batch_size=0"], "batch_size must be at least 1"),
    ("--max-steps 0", lambda w: ["train-tokenizer", "--config", TINY_TOKENIZER, "--out", f"{w.root}/r1",
                                 "--max-steps", "0"], "--max-steps must be at least 1"),
    ("train: --out is a file", lambda w: ["train-tokenizer", "--config", TINY_TOKENIZER, "--manifest", w.manifest,
                                          "--out", w.afile], "exists and is a file, not a folder"),
    ("train: --out under a file", lambda w: ["train-tokenizer", "--config", TINY_TOKENIZER, "--manifest",
                                             w.manifest, "--out", f"{w.afile}/run"], "is a file, so no folder"),
    ("train: empty manifest", lambda w: ["train-tokenizer", "--config", TINY_TOKENIZER, "--manifest", w.m_empty,
                                         "--out", f"{w.root}/r1", *QUICK], "the manifest has no rows"),
    ("train: bad row says --on-error", lambda w: ["train-tokenizer", "--config", TINY_TOKENIZER, "--manifest",
                                                  w.m_unknown, "--out", f"{w.root}/r1", *QUICK],
     "use --on-error skip"),
    ("train: duplicate ids", lambda w: ["train-tokenizer", "--config", TINY_TOKENIZER, "--manifest", w.m_dup,
                                        "--out", f"{w.root}/r1", *QUICK], "clip key 'a' is used again"),
    ("train: NaN audio names its line", lambda w: ["train-tokenizer", "--config", TINY_TOKENIZER, "--manifest",
                                                   w.m_nan, "--out", f"{w.root}/r1", *QUICK,
                                                   "training.max_steps=2", "training.batch_size=2"],
     "nan.jsonl line 2: "),
    ("train: resume with another config", lambda w: ["train-tokenizer", "--config", TINY_TOKENIZER, "--manifest",
                                                     w.manifest, "--out", w.run, *QUICK, "training.max_steps=2",
                                                     "tokenizer.latent_dim=8"], "does not fit the model"),
    ("train: pickled optimizer state", lambda w: ["train-tokenizer", "--config", TINY_TOKENIZER, "--manifest",
                                                  w.manifest, "--out", w.run_evil, *QUICK, "training.max_steps=2"],
     "holds Python objects other than tensors"),
    ("train-dit: missing cache", lambda w: ["train-dit", "--config", "configs/dit/tiny.yaml", "--cache",
                                            f"{w.root}/nocache", "--out", f"{w.root}/d1"], "latent cache"),
    ("train-dit: incomplete cache", lambda w: ["train-dit", "--config", "configs/dit/tiny.yaml", "--cache",
                                               str(w.root / "incomplete"), "--out", f"{w.root}/d1"],
     "not a complete latent cache"),
    # --- sizes and outputs of sample (refused before any model is loaded)
    ("sample: --seconds 1e9", lambda w: ["sample", "--checkpoint", f"{w.root}/nodit", "--prompt", "x",
                                         "--seconds", "1e9", "--out", f"{w.root}/s1"], "at most 600"),
    ("sample: --seconds nan", lambda w: ["sample", "--checkpoint", f"{w.root}/nodit", "--prompt", "x",
                                         "--seconds", "nan", "--out", f"{w.root}/s1"], "--seconds must be"),
    ("sample: --steps 1e6", lambda w: ["sample", "--checkpoint", f"{w.root}/nodit", "--prompt", "x",
                                       "--steps", "1000000", "--out", f"{w.root}/s1"], "between 1 and 1000"),
    ("sample: --batch-size 0", lambda w: ["sample", "--checkpoint", f"{w.root}/nodit", "--prompt", "x",
                                          "--batch-size", "0", "--out", f"{w.root}/s1"], "between 1 and 256"),
    ("sample: --out is a file", lambda w: ["sample", "--checkpoint", f"{w.root}/nodit", "--prompt", "x",
                                           "--out", w.afile], "exists and is a file"),
    ("sample: missing checkpoint", lambda w: ["sample", "--checkpoint", f"{w.root}/nodit", "--prompt", "x",
                                              "--out", f"{w.root}/s1"], "DiT checkpoint folder not found"),
    ("sample: prompts file seconds", lambda w: ["sample", "--checkpoint", f"{w.root}/nodit", "--prompts-file",
                                                w.prompts_bad, "--out", f"{w.root}/s1"], "at most 600"),
    ("sample: prompts file is a folder", lambda w: ["sample", "--checkpoint", f"{w.root}/nodit", "--prompts-file",
                                                    str(w.configs), "--out", f"{w.root}/s1"], "is a folder"),
    # --- other commands' outputs
    ("make-dataset: --out is a file", lambda w: ["make-dataset", "--out", w.afile], "exists and is a file"),
    ("make-dataset: a billion clips", lambda w: ["make-dataset", "--out", f"{w.root}/m3", "--counts",
                                                 "audio=1000000000"], "at most 100000"),
    ("make-dataset: clips of an hour", lambda w: ["make-dataset", "--out", f"{w.root}/m3", "--seconds", "3600"],
     "1-60 seconds"),
    ("prepare: --out is a folder", lambda w: ["prepare", "folder", str(w.root / "audio"), "--out", str(w.configs)],
     "is a folder; give the name of a file"),
    ("prepare: --out under a file", lambda w: ["prepare", "folder", str(w.root / "audio"), "--out",
                                               f"{w.afile}/m.jsonl"], "is a file, so no folder"),
]


# Cases whose error can only show once training has started: the trainer's start-up line (threads,
# workers) comes first, and the run folder may get its config.yaml and logs; nothing that was
# already there may change.
DURING_TRAINING = {"train: NaN audio names its line", "train: resume with another config",
                   "train: pickled optimizer state"}


@pytest.mark.parametrize("name,argv,expected", CASES, ids=[c[0] for c in CASES])
def test_bad_input_is_one_line_and_changes_nothing(world, capsys, name, argv, expected):
    args = argv(world)
    before = _snapshot(world.root)
    capsys.readouterr()
    code = cli.main(args)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    after = _snapshot(world.root)
    if name in DURING_TRAINING:
        assert [line for line in lines if "error" in line] == lines[-1:], err
        assert all(lines[i].startswith(("train: ", "resuming from")) for i in range(len(lines) - 1)), err
        assert {key: after.get(key) for key in before} == before
    else:
        assert len(lines) == 1, err
        assert after == before
    assert lines[-1].startswith(f"lodit {args[0]}: error: ") and expected in lines[-1], lines[-1]


def test_corpus_covers_forty_kinds():
    assert len(CASES) >= 40


@pytest.mark.parametrize("code,why", [(errno.EACCES, "permission denied"), (errno.EROFS, "read-only file system")])
def test_unwritable_out_folder_is_one_line(world, capsys, monkeypatch, code, why):
    # root (as in CI) may write anywhere, so the refusal of the file system is simulated at the probe
    def refuse(*args, **kwargs):
        raise OSError(code, "refused")

    monkeypatch.setattr(outputs_module.tempfile, "mkstemp", refuse)
    before = _snapshot(world.root)
    for args in (["train-tokenizer", "--config", TINY_TOKENIZER, "--manifest", world.manifest, "--out",
                  str(world.root / "r2")],
                 ["encode", "--tokenizer", world.tok, "--manifest", world.manifest, "--out", str(world.root / "c2")],
                 ["sample", "--checkpoint", str(world.root), "--prompt", "x", "--out", str(world.root / "s2")],
                 ["make-dataset", "--out", str(world.root / "m2")],
                 ["prepare", "folder", str(world.root / "audio"), "--out", str(world.root / "m2.jsonl")],
                 ["reconstruct", "--tokenizer", world.tok, world.good[0], str(world.root / "o2.wav")]):
        assert cli.main(args) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1 and f"cannot write into {world.root} ({why})" in lines[0], lines
    assert _snapshot(world.root) == before


def test_nan_audio_is_left_out_with_on_error_skip(world, tmp_path, capsys, caplog):
    code = cli.main(["train-tokenizer", "--config", TINY_TOKENIZER, "--manifest", world.m_nan, "--out",
                     str(tmp_path / "run"), "--on-error", "skip", *QUICK, "training.max_steps=2",
                     "training.batch_size=2"])
    captured = capsys.readouterr()
    assert code == 0, captured.err
    warnings = [r.getMessage() for r in caplog.records if "left out of training" in r.getMessage()]
    assert len(warnings) == 1 and "nan.jsonl line 2: " in warnings[0]  # named once, by manifest line
    # the clip is masked out, so no step was skipped and the loss stayed finite
    assert "trained 2 steps (model/loss=" in captured.out and "skipped as non-finite" not in captured.out


def test_nan_audio_in_a_data_worker_is_still_one_line(world, tmp_path, capsys):
    code = cli.main(["train-tokenizer", "--config", TINY_TOKENIZER, "--manifest", world.m_nan, "--out",
                     str(tmp_path / "run"), *QUICK, "training.num_workers=1", "training.max_steps=2",
                     "training.batch_size=2"])
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if "error:" in line]
    assert code == 2 and len(errors) == 1 and "Traceback" not in err
    assert "nan.jsonl line 2: " in errors[0] and "NaN or infinite" in errors[0]


def test_yaml_no_is_a_string_for_string_fields(world, tmp_path):
    from lodit.config import load_config
    from lodit.training.config import TrainingConfig

    config = load_config(TrainingConfig, None, ["mixed_precision=no", "compile=no", "ema_warmup=yes"])
    assert config.mixed_precision == "no" and config.compile is False and config.ema_warmup is True
    path = tmp_path / "c.yaml"
    path.write_text("mixed_precision: no\ncompile: off\n")
    config = load_config(TrainingConfig, path)
    assert config.mixed_precision == "no" and config.compile is False


def test_manifest_with_a_byte_order_mark_keeps_its_first_row(world, tmp_path):
    from lodit.data.manifest import read_manifest

    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + Path(world.manifest).read_bytes())
    manifest = read_manifest(path, on_error="skip")
    assert [row.id for row in manifest] == ["a", "b"] and not manifest.report.dropped


def test_cache_of_a_tokenizer_with_other_weights_is_refused(world):
    tok_a = Tokenizer.from_pretrained(world.tok)
    tok_b = Tokenizer.from_pretrained(world.tok_b)
    assert tok_a.identity()["config_hash"] == tok_b.identity()["config_hash"]
    assert tok_a.identity()["weights_hash"] != tok_b.identity()["weights_hash"]
    cache = LatentCache(world.cache)
    cache.check_producer(tok_a.identity())
    with pytest.raises(LoditError, match="weights_hash"):
        cache.check_producer(tok_b.identity())
    check_tokenizer(tok_a, cache.producer, "run")  # what sample and Generator.from_pretrained check
    with pytest.raises(LoditError, match="tokenizer's weights .* are not the ones the DiT's latents were made with"):
        check_tokenizer(tok_b, cache.producer, "run")


def test_train_dit_refuses_to_resume_on_a_cache_of_other_tokenizer_weights(world, tmp_path):
    folder = tmp_path / "step-00000010"
    folder.mkdir()
    producer = dict(LatentCache(world.cache).producer)
    (folder / "config.json").write_text(json.dumps({"latents": {"producer": producer}}))
    same = SimpleNamespace(cache=SimpleNamespace(producer=dict(producer), root=Path(world.cache)))
    DiTTask.check_resume(same, folder)
    other = SimpleNamespace(cache=SimpleNamespace(producer={**producer, "weights_hash": "0" * 16}, root=Path("c2")))
    with pytest.raises(LoditError, match="tokenizer with other weights"):
        DiTTask.check_resume(other, folder)


def test_failed_encode_says_what_it_keeps_and_resume_finishes_it(world, tmp_path, monkeypatch):
    import lodit.latent_tokenizer.encode as encode_module

    out = tmp_path / "cache"
    real_flush = encode_module._flush
    calls = {"n": 0}

    def flush_then_fail(window, *args):
        calls["n"] += 1
        if calls["n"] == 2:
            raise LoditError("disk trouble")
        return real_flush(window, *args)

    rows = [{"audio": f"{world.root}/audio/good{i % 2}.wav", "id": f"k{i}"} for i in range(5)]
    manifest = _lines(tmp_path / "m.jsonl", rows)
    monkeypatch.setattr(encode_module, "WINDOW_BATCHES", 2)  # windows of 2 clips at batch size 1
    monkeypatch.setattr(encode_module, "_flush", flush_then_fail)
    with pytest.raises(LoditError, match=r"disk trouble; the 2 clips encoded so far are kept in .*cache\.tmp-\d+: "
                                         r"run the same command with --resume"):
        encode_manifest(world.tok, manifest, out, batch_size=1, progress=False)
    monkeypatch.setattr(encode_module, "_flush", real_flush)
    (partial,) = tmp_path.glob("cache.tmp-*")
    partial.rename(tmp_path / "cache.tmp-999999999")  # its process is gone
    summary = encode_manifest(world.tok, manifest, out, batch_size=1, progress=False, resume=True)
    assert summary.resumed == 2 and summary.encoded == 3
    clean = encode_manifest(world.tok, manifest, tmp_path / "clean", batch_size=1, progress=False)
    assert clean.encoded == 5
    for path in (tmp_path / "clean").iterdir():
        assert (out / path.name).read_bytes() == path.read_bytes(), path.name


def test_a_few_cases_as_real_processes(world):
    """The same contract through the installed entry point: exit code, one line, no traceback."""
    for args, expected in (
        (["sample", "--checkpoint", str(world.root), "--prompt", "x", "--seconds", "1e9"], "at most 600"),
        (["train-tokenizer", "--config", TINY_TOKENIZER, "--out", world.afile], "exists and is a file"),
    ):
        proc = subprocess.run([sys.executable, "-m", "lodit.cli", *args], capture_output=True, text=True)
        lines = [line for line in proc.stderr.splitlines() if line.strip()]
        assert proc.returncode == 2 and len(lines) == 1 and expected in lines[0], proc.stderr
        assert "Traceback" not in proc.stderr
