"""scripts/gpu_checks.py: the GPU checks run end to end (tiny sizes, on the CPU) and report failures."""

import importlib.util
import json
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def _script():
    spec = importlib.util.spec_from_file_location("gpu_checks", REPO / "scripts" / "gpu_checks.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_the_smoke_run_trains_encodes_and_benchmarks_with_every_step_recorded(tmp_path):
    script = _script()
    out = tmp_path / "out"
    assert script.main(["--smoke", "--out", str(out), "--work", str(tmp_path / "work")]) == 0
    results = json.loads((out / "gpu_checks.json").read_text())
    assert results["env"]["gpus"] == 0 and results["env"]["cuda"] is None
    for name in ("tokenizer_bf16", "encode", "dit_bf16", "dit_fp32", "tokenizer_speed", "dit_speed"):
        assert results[name]["ok"] is True, (name, results[name])
    for name in ("tokenizer_bf16", "dit_bf16", "dit_fp32"):
        assert results[name]["steps_per_second"] > 0
        assert results[name]["precision"] == "no"  # no bf16 autocast without a GPU
    assert results["multi_gpu"] == {"ok": None, "skipped": "needs two or more GPUs; this machine has 0"}
    # The latent cache holds every generated clip, and the DiT runs reached their last step.
    assert len((tmp_path / "work" / "cache" / "index.jsonl").read_text().splitlines()) == 8
    assert (tmp_path / "work" / "dit_bf16" / "checkpoints" / "step-00000004").is_dir()
    log = (out / "gpu_checks.log").read_text()
    assert "===== dit_fp32:" in log and "training.mixed_precision=no" in log


def test_a_failing_check_is_recorded_with_its_last_lines_and_the_run_fails(tmp_path):
    script = _script()
    checks = script.Checks(tmp_path)
    result = checks.command("broken", ["-c", "import sys; print('first'); sys.exit('the reason')"])
    checks.record("skipped", ok=None, skipped="why")
    path = checks.write()
    assert result["ok"] is False and result["error"][-1] == "the reason"
    assert json.loads(path.read_text())["skipped"] == {"ok": None, "skipped": "why"}
