"""The batch-building pool (`MixtureDataset(num_workers=N)`) ends when its stream is closed mid-way, whatever
handlers the training process installed. Two ways it hung at the end of a run: the forked workers inherited
Lightning's SIGTERM handler (log and return), so `pool.terminate()` did not end them (1 of 8 resumes); and
`terminate()` with batches still in flight races the pool's result-handler thread ("Cannot have cache with
result_hander not alive"), leaving the workers running (3 of 4 runs of this test before the fix)."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

SCRIPT = textwrap.dedent("""
    import signal, threading, os
    from mixtures import Mixture, MixtureDataset
    from mixtures.testing import SyntheticTask

    signal.signal(signal.SIGTERM, lambda signum, frame: None)  # as Lightning's handler: log and return
    mix = Mixture("pool_mix", [SyntheticTask("a", 50), SyntheticTask("b", 80)])
    for i in range(8):
        ds = MixtureDataset(mix, sequence_length={"inputs": 16, "targets": 8}, batch_size=4, pack=True,
                            num_workers=2, seed=i)
        it = iter(ds)
        next(it), next(it)
        done = threading.Event()
        threading.Thread(target=lambda: (it.close(), done.set()), daemon=True).start()
        if not done.wait(20):
            print("pool did not end", flush=True)
            os.killpg(0, signal.SIGKILL)  # this process and its stuck workers (a session of their own)
    print("ok", flush=True)
""")


def test_the_pool_ends_under_a_sigterm_handler_that_returns() -> None:
    proc = subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, capture_output=True, text=True, timeout=300,
                          check=False, start_new_session=True)
    assert proc.returncode == 0 and proc.stdout.strip() == "ok", proc.stdout + proc.stderr[-2000:]
