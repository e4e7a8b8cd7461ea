"""A pytest plugin that writes each test's CPU seconds, over its pytest process and every process below it (the
session's Ray cluster, its workers and actors, a test's own clusters and subprocesses), to `CPU_LOG`.

On 2 cores the suite is CPU-bound, so its time is its CPU over 2, and a test's wall time says little: one that
waits costs nothing while the other process computes. Run the whole suite with it:

    CPU_LOG=runs/cpu_tests.log PYTHONPATH=tests .venv/bin/python -m pytest -q -n 2 --dist loadfile -p cpu_profile

Each line: CPU seconds, wall seconds, the pytest process, the test. Every process of the tree is sampled from
/proc every half second and keeps the CPU it was last seen with, so a process that ends (a Ray worker, reaped
without adding its time to its parent's) still counts; one that lives less than half a second may not. A process
that leaves the tree (a `ray start` head daemonizes) is not counted.
"""

import os
import threading
import time

import pytest

HZ = os.sysconf("SC_CLK_TCK")
ROOT = os.getpid()
_seen: dict[tuple[int, int], float] = {}  # (pid, start time) -> CPU seconds last seen
_lock = threading.Lock()


def _sample() -> None:
    children, cpu = {}, {}
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        children.setdefault(int(fields[1]), []).append(int(pid))
        cpu[int(pid)] = ((int(fields[11]) + int(fields[12])) / HZ, int(fields[19]))  # utime + stime, start time
    below = [ROOT]
    with _lock:
        while below:
            pid = below.pop()
            if pid in cpu:
                _seen[(pid, cpu[pid][1])] = cpu[pid][0]
            below.extend(children.get(pid, []))


def _sample_forever() -> None:
    while True:
        _sample()
        time.sleep(0.5)


threading.Thread(target=_sample_forever, daemon=True, name="cpu-profile").start()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    _sample()
    with _lock:
        before = dict(_seen)
    start = time.monotonic()
    yield
    _sample()
    with _lock:
        spent = sum(cpu - before.get(key, 0.0) for key, cpu in _seen.items())
    with open(os.environ.get("CPU_LOG", "cpu_tests.log"), "a") as f:
        f.write(f"{spent:.1f}\t{time.monotonic() - start:.1f}\t{os.getpid()}\t{item.nodeid}\n")
