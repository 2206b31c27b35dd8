"""The other local ranks stop within seconds, with the reason, when local rank 0 fails or dies while building the
token caches (issue 21 A.10 a), instead of waiting out `LIGHTNING_T5_CACHE_WAIT_S` (24 h).

The fake rank 0 is a subprocess running the real rank-0 branch of `MixtureDataModule.prepare_training_data` with a
cache build that raises, or hangs until the test SIGKILLs it; the waiting rank is this process (LOCAL_RANK=1)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from test_train_helpers import TEST_MIXTURE

from mixtures import MixtureError

TESTS = Path(__file__).resolve().parent
DATA = {"sequence_length": {"inputs": 64, "targets": 16}, "batch_size": 4, "pack": False}
FAKE_RANK0 = """
import sys, time
sys.path.insert(0, {tests!r})
import test_train_helpers
import tasks
from lightning_t5.train.data import MixtureDataModule

def fake_build(self, *args, **kwargs):
    time.sleep(2)
    if {mode!r} == "raise":
        raise OSError("No space left on device (simulated)")
    time.sleep(600)  # until SIGKILLed, as the kernel's OOM killer would

tasks.Task.token_cache = fake_build
MixtureDataModule(test_train_helpers.TEST_MIXTURE, data={data!r}, mixing={{}}).prepare_training_data()
"""


def _statuses(cache: Path) -> list[dict]:
    out = []
    for path in (cache / "tokens" / ".build-status").glob("*.json"):
        try:
            out.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            pass
    return out


@pytest.fixture
def waiting_rank(fresh_cache: Path, monkeypatch: pytest.MonkeyPatch):
    from lightning_t5.train.data import MixtureDataModule

    monkeypatch.setenv("LOCAL_RANK", "1")
    monkeypatch.setenv("LIGHTNING_T5_CACHE_WAIT_S", "240")  # the old behaviour, shortened: fail the test, not hang
    monkeypatch.setenv("LIGHTNING_T5_CACHE_STALE_S", "90")
    return MixtureDataModule(TEST_MIXTURE, data=DATA, mixing={})


def _start_rank0(mode: str) -> subprocess.Popen:
    env = {**os.environ, "LOCAL_RANK": "0", "OMP_NUM_THREADS": "1"}
    code = FAKE_RANK0.format(tests=str(TESTS), mode=mode, data=DATA)
    return subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)


@pytest.mark.parametrize("mode, message", [
    ("raise", r"local rank 0 failed while building the token caches.*OSError: No space left on device \(simulated\)"),
    ("kill", r"local rank 0 \(pid \d+\) died while building the token caches"),
])
def test_waiting_ranks_stop_soon_when_local_rank_0_fails_or_dies(waiting_rank, fresh_cache: Path, mode: str,
                                                                    message: str) -> None:
    rank0 = _start_rank0(mode)
    killed_at: list[float] = []

    def kill_once_building() -> None:
        while rank0.poll() is None:
            if any(s.get("state") == "building" for s in _statuses(fresh_cache)):
                time.sleep(1.0)
                rank0.send_signal(signal.SIGKILL)
                killed_at.append(time.time())
                return
            time.sleep(0.1)

    killer = threading.Thread(target=kill_once_building, daemon=True)
    if mode == "kill":
        killer.start()
    try:
        with pytest.raises(MixtureError, match=message):
            waiting_rank.prepare_training_data()
        stopped = time.time()
    finally:
        if rank0.poll() is None:
            rank0.kill()
        rank0.wait(timeout=60)
    if mode == "kill":
        assert killed_at and stopped - killed_at[0] < 10  # not the stale timeout (90 s), not the deadline
    else:
        assert rank0.returncode != 0 and b"No space left on device" in rank0.stderr.read()
        failed = [s for s in _statuses(fresh_cache) if s["state"] == "failed"]
        assert stopped - failed[0]["time"] < 10


def test_waiting_ranks_stop_when_local_rank_0_never_reports(waiting_rank, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIGHTNING_T5_CACHE_STALE_S", "2")
    start = time.time()
    with pytest.raises(MixtureError, match=r"no sign of local rank 0 building the token caches for 2 s .*no status"):
        waiting_rank.prepare_training_data()
    assert time.time() - start < 30
