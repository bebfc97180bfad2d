"""How many CPU threads and data-loading workers a lodit process uses.

On a small machine the wrong count costs an order of magnitude: two intra-op threads on 2 cores
that another process keeps busy run training ~9x slower than one thread (benchmarks/RESULTS.md,
"Threads and workers"), because every parallel region waits for the thread that was descheduled.
So the compute threads are chosen from the cores this process may run on minus the cores other
processes are using *right now* (sampled from ``/proc/stat`` over a fraction of a second, not the
load average, which still counts a run that ended a minute ago).

Overrides, in order: the ``LODIT_THREADS`` environment variable, then ``OMP_NUM_THREADS`` (the
convention every BLAS honours); data workers come from ``training.num_workers`` (``-1`` = choose).

Owns :func:`available_cores`, :func:`busy_cores`, :func:`choose_threads`, :func:`choose_workers`,
:func:`use_chosen_threads` (what the ``lodit`` command runs at start-up), :func:`rechoose_threads`
(what each training runs when it starts) and :func:`describe`
(the line a trainer prints when it starts).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

THREADS_ENV = "LODIT_THREADS"
AUTO_WORKERS = -1


def available_cores() -> int:
    """Cores this process may run on (its CPU affinity where the OS reports one)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


def busy_cores(seconds: float = 0.1, samples: int = 3) -> float:
    """How many cores other processes keep busy: the least over ``samples`` windows of ``seconds``
    (0 where unknown).

    A process that keeps cores busy does so in every window, one that is just ending (the tail of a
    test run, a shell command) in one only, and the count chosen from it may hold for an hour.
    Sampled while this process sleeps, so its own work is not counted."""
    readings = []
    for _ in range(samples):
        first = _cpu_times()
        time.sleep(seconds)
        second = _cpu_times()
        if first is None or second is None or second[1] <= first[1]:
            return 0.0
        readings.append((second[0] - first[0]) / (second[1] - first[1]) * (os.cpu_count() or 1))
    return min(readings)


def _cpu_times() -> tuple[int, int] | None:
    """``(busy, total)`` jiffies over all cores from ``/proc/stat``, or None off Linux."""
    try:
        with open("/proc/stat", encoding="ascii") as stat:
            fields = stat.readline().split()
    except OSError:
        return None
    if not fields or fields[0] != "cpu":
        return None
    values = [int(v) for v in fields[1:]]
    idle = values[3] + (values[4] if len(values) > 4 else 0)  # idle + iowait
    return sum(values) - idle, sum(values)


@dataclass(frozen=True)
class ThreadChoice:
    threads: int
    reason: str  # what the count was derived from, for the start-up line
    measured: bool = False  # from the other processes' load (not an override): worth measuring again


def choose_threads(cores: int | None = None, busy: float | None = None) -> ThreadChoice:
    """Intra-op threads for this process: an override, or the cores left idle by other processes."""
    for name in (THREADS_ENV, "OMP_NUM_THREADS"):
        value = os.environ.get(name, "").strip()
        if value:
            if not value.isdigit() or int(value) < 1:
                from lodit.errors import LoditError

                raise LoditError(
                    f"{name}={value!r} is not a positive whole number; set it to a thread count or unset it"
                )
            return ThreadChoice(int(value), f"{name}={value}")
    cores = available_cores() if cores is None else cores
    busy = busy_cores() if busy is None else busy
    # Half a core of background noise is not worth giving up a thread for.
    taken = int(busy + 0.5)
    threads = max(1, cores - taken)
    return ThreadChoice(
        threads, f"{cores} cores available, {busy:.1f} busy with other work; set {THREADS_ENV} to choose",
        measured=True,
    )


def choose_workers(requested: int, *, cores: int | None = None, on_gpu: bool = False) -> int:
    """DataLoader worker processes for ``training.num_workers=requested`` (``-1`` = choose).

    Chosen: on a GPU the CPU cores are free for loading, so up to 8 workers, one core left for the
    main process; on CPU the cores train the model, and workers would take them from it, so none
    below 8 cores and a quarter of the cores above. An explicit count is kept as it is."""
    if requested != AUTO_WORKERS:
        return requested
    cores = available_cores() if cores is None else cores
    if on_gpu:
        return max(0, min(8, cores - 1))
    return 0 if cores < 8 else cores // 4


_chosen: ThreadChoice | None = None  # what use_chosen_threads set, for describe()


def use_chosen_threads() -> ThreadChoice:
    """Set torch's intra-op threads to :func:`choose_threads` (remembered for :func:`describe`)."""
    import torch

    global _chosen
    _chosen = choose_threads()
    torch.set_num_threads(_chosen.threads)
    return _chosen


def rechoose_threads() -> None:
    """Measure the other processes' load again and reset torch's threads, where lodit's own measured
    choice is still in force (not an override, not a count the caller set since). A command that
    trains many times (`lodit compare`, `lodit demo`) then follows the machine's load from one
    training to the next instead of keeping what it saw at start-up."""
    import torch

    if _chosen is not None and _chosen.measured and torch.get_num_threads() == _chosen.threads:
        use_chosen_threads()


def describe(workers: int) -> str:
    """One line on the CPU threads and data workers in use, e.g. for a trainer's start-up."""
    import torch

    threads = torch.get_num_threads()
    why = _chosen.reason if _chosen is not None and _chosen.threads == threads else "set by the caller"
    return (f"{threads} CPU thread{'s' if threads > 1 else ''} ({why}), "
            f"{workers} data worker{'' if workers == 1 else 's'} (training.num_workers)")
