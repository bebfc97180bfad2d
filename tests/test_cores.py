"""Thread and worker counts chosen from the cores (lodit.cores)."""

from __future__ import annotations

import pytest
import torch

from lodit.cores import AUTO_WORKERS, choose_threads, choose_workers, describe, use_chosen_threads
from lodit.errors import LoditError


@pytest.fixture
def no_overrides(monkeypatch):
    monkeypatch.delenv("LODIT_THREADS", raising=False)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)


@pytest.mark.parametrize(("cores", "busy", "threads"), [(2, 0.0, 2), (2, 0.4, 2), (2, 1.0, 1), (2, 1.7, 1),
                                                          (2, 3.0, 1), (16, 4.2, 12)])
def test_threads_are_the_idle_cores(no_overrides, cores, busy, threads):
    choice = choose_threads(cores=cores, busy=busy)
    assert choice.threads == threads
    assert f"{cores} cores available" in choice.reason and "LODIT_THREADS" in choice.reason


def test_environment_overrides_win(monkeypatch):
    monkeypatch.setenv("OMP_NUM_THREADS", "3")
    monkeypatch.delenv("LODIT_THREADS", raising=False)
    assert choose_threads(cores=2, busy=2.0).threads == 3
    monkeypatch.setenv("LODIT_THREADS", "5")
    choice = choose_threads(cores=2, busy=0.0)
    assert choice.threads == 5 and choice.reason == "LODIT_THREADS=5"


@pytest.mark.parametrize("value", ["zero", "0", "-2", "1.5"])
def test_bad_override_is_one_clear_error(monkeypatch, value):
    monkeypatch.setenv("LODIT_THREADS", value)
    with pytest.raises(LoditError, match="LODIT_THREADS"):
        choose_threads()


def test_use_chosen_threads_sets_torch_and_describe_says_why(monkeypatch):
    monkeypatch.setenv("LODIT_THREADS", "1")
    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(2)
        use_chosen_threads()
        assert torch.get_num_threads() == 1
        assert describe(0) == "1 CPU thread (LODIT_THREADS=1), 0 data workers (training.num_workers)"
        torch.set_num_threads(2)  # changed after the choice: no longer the chosen count's reason
        assert describe(1) == "2 CPU threads (set by the caller), 1 data worker (training.num_workers)"
    finally:
        torch.set_num_threads(previous)


def test_workers_are_chosen_for_the_device():
    assert choose_workers(AUTO_WORKERS, cores=2) == 0  # the CPU trains: no core to spare
    assert choose_workers(AUTO_WORKERS, cores=16) == 4
    assert choose_workers(AUTO_WORKERS, cores=2, on_gpu=True) == 1
    assert choose_workers(AUTO_WORKERS, cores=64, on_gpu=True) == 8
    assert choose_workers(3, cores=2) == 3  # an explicit count is kept


def test_loading_the_asr_model_keeps_the_chosen_threads():
    # CTranslate2 resets the process-wide OpenMP thread count when it loads, which torch shares.
    pytest.importorskip("faster_whisper", reason="faster-whisper is optional (lodit[offline])")
    from lodit.eval.asr import WERScorer

    previous = torch.get_num_threads()
    try:
        torch.set_num_threads(1)
        try:
            WERScorer("offline:tiny.en")
        except LoditError as exc:  # the offline bundle is not installed
            pytest.skip(str(exc))
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)


def test_a_load_seen_in_one_window_only_is_not_counted(monkeypatch):
    import lodit.cores as cores

    cpus = 2
    monkeypatch.setattr(cores.os, "cpu_count", lambda: cpus)

    def readings(busy_per_window):
        # (busy, total) jiffies: each window is 20 jiffies over the 2 cores, `busy` of them busy.
        state = {"busy": 0, "total": 0, "calls": 0}
        windows = iter(busy_per_window)

        def cpu_times():
            if state["calls"] % 2:  # the end of a window
                state["busy"] += next(windows)
                state["total"] += 20
            state["calls"] += 1
            return state["busy"], state["total"]

        return cpu_times

    monkeypatch.setattr(cores.time, "sleep", lambda seconds: None)
    monkeypatch.setattr(cores, "_cpu_times", readings([14, 0, 1]))  # a process ending in the first window
    assert cores.busy_cores() == pytest.approx(0.0)
    monkeypatch.setattr(cores, "_cpu_times", readings([10, 11, 10]))  # one core kept busy throughout
    assert cores.busy_cores() == pytest.approx(1.0)


def test_each_training_measures_again_while_the_measured_choice_is_in_force(no_overrides, monkeypatch):
    import lodit.cores as cores

    previous = torch.get_num_threads()
    monkeypatch.setattr(cores, "available_cores", lambda: 2)
    try:
        monkeypatch.setattr(cores, "busy_cores", lambda: 1.4)
        use_chosen_threads()
        assert torch.get_num_threads() == 1
        monkeypatch.setattr(cores, "busy_cores", lambda: 0.0)  # the other work has ended
        cores.rechoose_threads()
        assert torch.get_num_threads() == 2
        assert describe(0).startswith("2 CPU threads (2 cores available, 0.0 busy with other work")
        torch.set_num_threads(1)  # the caller's own count is kept
        cores.rechoose_threads()
        assert torch.get_num_threads() == 1
        monkeypatch.setenv("LODIT_THREADS", "1")  # an override is not measured again
        use_chosen_threads()
        monkeypatch.setattr(cores, "busy_cores", lambda: pytest.fail("measured despite LODIT_THREADS"))
        cores.rechoose_threads()
        assert torch.get_num_threads() == 1
    finally:
        torch.set_num_threads(previous)
