"""Token caches and data fingerprints that can be trusted (issue 21 A.5, A.6, A.7, A.12, B; issue 24 items 3, 8):
durable versioned caches checked when opened, content hashes compared across ranks and on resume, fingerprints by
content, cache folders listed and pruned without touching one a running job has open, and the truncation report
read from the cache offsets."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mixtures import Mixture, MixtureDataset, MixtureError
from tasks import FileSource, InMemorySource, Task, TaskRegistry
from tasks import cache as token_cache
from tasks.errors import TaskError

REPO = Path(__file__).resolve().parents[1]
SEQ = {"inputs": 64, "targets": 16}


def _row_task(name: str, rows: list[dict] | FileSource) -> Task:
    source = rows if isinstance(rows, FileSource) else InMemorySource({"train": rows})
    return Task(name, source, [lambda r: {"inputs": r["text"], "targets": r["label"]}])


LENGTHS = [5, 7, 9, 11]  # the report: offsets said 5/7/9/11 tokens, rows served 5/5/0/0


def _lengths_task(fresh_cache) -> Task:
    """Four rows whose inputs are 5, 7, 9 and 11 tokens long with EOS."""
    texts = ["a b c d", "a b c d e f", "a b c d e f g h", "a b c d e f g h i k"]
    task = _row_task("cut_rows", [{"text": t, "label": "x"} for t in texts])
    cache = token_cache.build_cache(task, "train")
    assert np.diff(cache.column("inputs")[0]).tolist() == LENGTHS
    del cache  # closed: nothing of this process holds it
    return task


# ------------------------------------------------------------------------------------------- A.7: checked on open
def test_a_cut_token_file_is_refused_naming_the_file_and_the_command(fresh_cache):
    task = _lengths_task(fresh_cache)
    path = token_cache.open_cache(task, "train").path
    tokens = path / "inputs.tokens"
    with open(tokens, "r+b") as fh:  # cut after the second row: 12 of 32 tokens left
        fh.truncate(12 * np.dtype(np.uint16).itemsize)
    for opening in (lambda: token_cache.open_cache(task, "train"), lambda: task.token_cache("train"),
                    lambda: task.num_examples("train")):
        with pytest.raises(TaskError) as err:
            opening()
        msg = str(err.value)
        assert "inputs.tokens has 24 bytes; its offsets need 64" in msg and str(path) in msg
        assert "python -m tasks cache cut_rows --splits train" in msg
    with pytest.raises((TaskError, MixtureError), match="inputs.tokens has 24 bytes"):  # training stops too
        MixtureDataset(Mixture("cut_mix", [task]), sequence_length=SEQ, batch_size=2)
    # the command in the message rebuilds it: a new version, whole again; the damaged one is gone (unused)
    rebuilt = token_cache.build_cache(task, "train")
    assert rebuilt.path != path and np.diff(rebuilt.column("inputs")[0]).tolist() == LENGTHS
    assert rebuilt.get("inputs", 3).size == 11 and not path.exists()


def test_decreasing_offsets_and_a_bad_stats_file_are_refused(fresh_cache):
    task = _lengths_task(fresh_cache)
    path = token_cache.open_cache(task, "train").path
    offsets = np.fromfile(path / "targets.offsets", np.int64)
    bad = offsets.copy()
    bad[2] = bad[3] + 1  # same size, same end: only the order is wrong
    bad.tofile(path / "targets.offsets")
    with pytest.raises(TaskError, match="targets.offsets decreases at row 2"):
        token_cache.open_cache(task, "train")
    offsets.tofile(path / "targets.offsets")
    token_cache.open_cache(task, "train").close()  # restored: opens again
    stats = json.loads((path / "stats.json").read_text())
    (path / "stats.json").write_text(json.dumps({**stats, "rows": stats["rows"] + 1}))
    with pytest.raises(TaskError, match=r"inputs.offsets has 40 bytes; 5 rows need 48"):
        token_cache.open_cache(task, "train")
    (path / "stats.json").write_text("{")
    with pytest.raises(TaskError, match="stats.json cannot be read"):
        token_cache.open_cache(task, "train")


def test_a_build_is_fsynced_before_it_is_renamed_and_made_current(fresh_cache, monkeypatch):
    events: list[tuple[str, str]] = []
    real_fsync, real_rename, real_replace = os.fsync, os.rename, os.replace

    def fsync(fd):
        events.append(("fsync", os.readlink(f"/proc/self/fd/{fd}")))
        return real_fsync(fd)

    def rename(src, dst, *a, **k):
        events.append(("rename", f"{src} -> {dst}"))
        return real_rename(src, dst, *a, **k)

    def replace(src, dst, *a, **k):
        events.append(("rename", f"{src} -> {dst}"))
        return real_replace(src, dst, *a, **k)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "rename", rename)
    monkeypatch.setattr(os, "replace", replace)
    task = _row_task("durable_rows", [{"text": f"row {i}", "label": "y"} for i in range(30)])
    cache = token_cache.build_cache(task, "train", shard_rows=10)
    version, root = cache.path, cache.path.parent
    publish = next((i for i, (kind, what) in enumerate(events) if kind == "rename" and what.endswith(f"-> {version}")),
                   len(events))
    synced = {Path(what).name for kind, what in events[:publish] if kind == "fsync" and f".{version.name}.tmp" in what}
    assert synced >= {"inputs.tokens", "targets.tokens", "inputs.offsets", "targets.offsets", "stats.json",
                      token_cache.COMPLETE, f".{version.name}.tmp{os.getpid()}"}
    after = events[publish + 1:]
    assert ("fsync", str(root)) in after  # the rename itself is durable
    current = next(i for i, (kind, what) in enumerate(after) if what.endswith(f"-> {root / 'CURRENT'}"))
    assert ("fsync", str(root)) in after[current + 1:]  # ... and so is the switch of CURRENT, which comes last
    shards = [what for kind, what in events if kind == "rename" and "/shards/" in what]
    assert len(shards) == 3  # every shard renamed into place once complete ...
    assert all(("fsync", s.split(" -> ")[0] + "/meta.json") in events for s in shards)  # ... after its fsync


def test_a_build_killed_before_it_is_published_leaves_no_readable_cache(fresh_cache, monkeypatch):
    task = _row_task("killed_publish", [{"text": f"row {i}", "label": "y"} for i in range(8)])
    real_rename = os.rename

    def dies(src, dst, *a, **k):
        if Path(src).name.startswith(".v"):
            raise KeyboardInterrupt  # killed after writing every file, before the version is published
        return real_rename(src, dst, *a, **k)

    monkeypatch.setattr(os, "rename", dies)
    with pytest.raises(KeyboardInterrupt):
        token_cache.build_cache(task, "train")
    assert token_cache.open_cache(task, "train") is None  # nothing half-written is ever served
    monkeypatch.setattr(os, "rename", real_rename)
    assert len(token_cache.build_cache(task, "train")) == 8


# --------------------------------------------------------------------- A.7: rebuilds never pull an open cache away
def _stream_task(folder: Path, name: str = "stream_rows", files: int = 4, rows: int = 50) -> Task:
    from functools import partial

    from tasks import preprocessors
    from tasks.objectives.preprocessors import objective_preprocessors

    lines = (REPO / "data" / "english_corpus" / "validation.jsonl").read_text().splitlines()
    folder.mkdir(parents=True, exist_ok=True)
    for f in range(files):
        (folder / f"part-{f}.jsonl").write_text("".join(lines[(f * rows + i) % len(lines)] + "\n" for i in range(rows)))
    return Task(name, FileSource({"train": sorted(folder.glob("part-*.jsonl"))}, format="json", streaming=True),
                [partial(preprocessors.lm_text, text_key="text")],
                token_preprocessors=objective_preprocessors("span_corruption"))


def test_a_rebuild_with_another_budget_keeps_the_version_a_job_has_open(fresh_cache, tmp_path):
    task = _stream_task(tmp_path / "corpus")
    full = token_cache.build_cache(task, "train", SEQ, shard_rows=40)  # a running job holds this one
    first_rows = full.get("targets", len(full) - 1).tolist()
    capped = token_cache.build_cache(task, "train", SEQ, shard_rows=40, max_tokens=full.stats["total_tokens"] // 3)
    assert capped.path != full.path and capped.path.parent == full.path.parent
    assert (full.path / "targets.tokens").stat().st_size == full.stats["tokens"]["targets"] * 2  # untouched
    assert full.get("targets", len(full) - 1).tolist() == first_rows
    assert token_cache.open_cache(task, "train", SEQ).path == capped.path  # new runs read the new version
    assert [e.status for e in token_cache.list_caches({task.name: task})] == ["superseded", "current"]
    assert [e.in_use for e in token_cache.list_caches({task.name: task})] == [True, True]
    assert token_cache.prune_caches(token_cache.list_caches({task.name: task})) == []  # in use: nothing removed
    full.close()
    removed = token_cache.prune_caches(token_cache.list_caches({task.name: task}))
    assert [(e.path, ok) for e, ok in removed] == [(full.path, True)] and not full.path.exists()


# ------------------------------------------------------------------------ issue 24 item 8: list and prune folders
_HOLD = """
import sys, time
from tasks import cache
c = cache.TokenCache(sys.argv[1])
print("holding", flush=True)
time.sleep(120)
"""


def test_cache_list_and_prune_commands(fresh_cache, tmp_path, capsys, monkeypatch):
    """Old folders after edits: listed with size and use; --prune removes the unused ones, never one a running job
    (another process) has open, nor one of a task not registered here."""
    from tasks.__main__ import main

    data = tmp_path / "rows.jsonl"
    data.write_text("".join(json.dumps({"text": f"row {i}", "label": "a"}) + "\n" for i in range(20)))
    task = _row_task("pruned_rows", FileSource({"train": data}))
    TaskRegistry.add(task, replace=True)
    other = _row_task("gone_rows", [{"text": "x", "label": "b"}])
    try:
        stale = token_cache.build_cache(task, "train").path
        data.write_text(data.read_text() + json.dumps({"text": "edited", "label": "a"}) + "\n")  # the data changed
        held_here = token_cache.build_cache(task, "train")
        token_cache.build_cache(task, "train", max_tokens=10**6)  # a new version; the other one superseded ...
        superseded, newest = held_here.path, token_cache.open_cache(task, "train").path
        del held_here  # ... and kept while open; now unused
        unregistered = token_cache.build_cache(other, "train").path  # a task of a module not imported here
        held = subprocess.Popen([sys.executable, "-c", _HOLD, str(stale)], cwd=REPO, stdout=subprocess.PIPE,
                                text=True, env={**os.environ, "PYTHONPATH": str(REPO)})
        try:
            assert held.stdout.readline().strip() == "holding"
            capsys.readouterr()
            assert main(["cache", "--list"]) == 0
            out = capsys.readouterr().out
            line = {p: next(x for x in out.splitlines() if str(p.relative_to(fresh_cache / "tokens")) in x)
                    for p in (stale, superseded, newest, unregistered)}
            assert "stale" in line[stale] and " yes " in line[stale]
            assert "superseded" in line[superseded] and " no " in line[superseded]
            assert line[newest].rstrip().endswith("current, max_tokens=1,000,000")
            assert "not registered" in line[unregistered] and "MB" in line[newest]
            assert "removable (unused, nothing current reads them): 1," in out
            assert main(["cache", "--prune"]) == 0
            out = capsys.readouterr().out
            assert f"removed  {superseded.relative_to(fresh_cache / 'tokens')}" in out
            assert stale.exists() and not superseded.exists() and newest.exists() and unregistered.exists()
        finally:
            held.kill()
            held.wait()
        assert main(["cache", "--prune", "pruned_rows"]) == 0  # the job ended: its stale cache goes too
        assert not stale.exists() and not stale.parent.exists() and newest.exists()
        assert not stale.parent.with_name(stale.parent.name + ".lock").exists()
        assert main(["cache"]) == 2 and "--list / --prune" in capsys.readouterr().err
    finally:
        TaskRegistry.remove("pruned_rows")


# ------------------------------------------------------------------- issue 24 item 3: fingerprints by content
def test_putting_back_the_identical_file_keeps_the_fingerprint_and_the_run_resumable(fresh_cache, tmp_path):
    data, backup = tmp_path / "rows.jsonl", tmp_path / "backup.jsonl"
    data.write_text("".join(json.dumps({"text": f"row {i}", "label": "a"}) + "\n" for i in range(30)))
    shutil.copyfile(data, backup)
    task = _row_task("copied_rows", FileSource({"train": data}))
    key = token_cache.cache_key(task, "train")
    ds = MixtureDataset(Mixture("copied_mix", [task]), sequence_length=SEQ, batch_size=4, seed=0)
    it = iter(ds)
    next(it)
    state = ds.state_dict()
    time.sleep(0.01)
    data.write_text("edited\n")
    subprocess.run(["cp", str(backup), str(data)], check=True)  # byte-identical, new mtime
    assert token_cache.cache_key(task, "train") == key and token_cache.open_cache(task, "train") is not None
    MixtureDataset(Mixture("copied_mix", [task]), sequence_length=SEQ, batch_size=4, seed=0).load_state_dict(state)
    # an edit that keeps the size and puts the mtime back is still seen (the content is hashed)
    st = data.stat()
    data.write_text(data.read_text().replace("row 1", "row 9", 1))
    os.utime(data, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert data.stat().st_size == st.st_size and token_cache.cache_key(task, "train") != key


# ---------------------------------------------------------------- A.5: contents compared across ranks and on resume
class _UpstreamSource(InMemorySource):
    """A source identified by name only, like a hub dataset that changed upstream: same key, other rows."""

    def _raw_fingerprint(self, split: str) -> str:
        return "upstream-dataset@main"


def _node_dataset(cache_root: Path, rows: list[dict], monkeypatch):
    """What one node opens: its own cache directory, built from the rows its copy of the source gave it."""
    monkeypatch.setenv("LIGHTNING_T5_CACHE", str(cache_root))
    task = Task("upstream_rows", _UpstreamSource({"train": rows}),
                [lambda r: {"inputs": r["text"], "targets": r["label"]}])
    return task, MixtureDataset(Mixture("upstream_mix", [task]), sequence_length=SEQ, batch_size=2, seed=3)


def test_caches_with_the_same_key_and_counts_but_other_contents_disagree(tmp_path, monkeypatch):
    from lightning_t5.dist.rank_agreement import check_rank_agreement, rank_record
    from lightning_t5.errors import ConfigError

    a_rows = [{"text": "a good movie", "label": "yes"}, {"text": "red blue", "label": "no"}]
    b_rows = [{"text": "a movie good", "label": "yes"}, {"text": "blue red", "label": "no"}]
    task_a, ds_a = _node_dataset(tmp_path / "node0", a_rows, monkeypatch)
    state = ds_a.state_dict()
    task_b, ds_b = _node_dataset(tmp_path / "node1", b_rows, monkeypatch)
    ca, cb = ds_a._sources[0].store, ds_b._sources[0].store
    # the situation of the issue: same key, same rows and token counts, other tokens
    assert task_a.cache_fingerprint("train") == task_b.cache_fingerprint("train")
    assert (len(ca), ca.stats["total_tokens"]) == (len(cb), cb.stats["total_tokens"])

    class _DM:
        mixture, sequence_length, data_cfg = Mixture("upstream_mix", [task_a]), SEQ, {"batch_size": 2}

        def __init__(self, ds):
            self.train_dataset = ds

    records = [rank_record(3, "v", _DM(ds_a), 1), rank_record(3, "v", _DM(ds_b), 1)]
    with pytest.raises(ConfigError, match=r"Ranks disagree on 'cache_fingerprints' \(differs for: upstream_rows\)"):
        check_rank_agreement(records)
    with pytest.raises(MixtureError, match=r"data of task\(s\) \['upstream_rows'\] changed"):
        ds_b.load_state_dict(state)  # resuming node 0's run on node 1's cache
    ds_a.load_state_dict(state)
    assert ca.content_hash != cb.content_hash and ca.stats["content_hash"] == ca.content_hash  # kept in stats.json


# ----------------------------------------------------------------------------- A.6: supervised + token objectives
def test_a_supervised_task_with_token_preprocessors_is_refused_when_built():
    from tasks.objectives.preprocessors import objective_preprocessors

    with pytest.raises(TaskError, match=r"supervised=True with token preprocessors \(chunk_corpus, span"):
        Task("sup_obj", InMemorySource({"train": [{"text": "x"}]}), [lambda r: {"inputs": "", "targets": r["text"]}],
             token_preprocessors=objective_preprocessors("span_corruption"), supervised=True)
    ok = Task("obj", InMemorySource({"train": [{"text": "x"}]}), [lambda r: {"inputs": "", "targets": r["text"]}],
              token_preprocessors=objective_preprocessors("span_corruption"))
    assert not ok.supervised


# ------------------------------------------------------------------------------------ A.12: the repetition hint
def test_repetition_hint_says_what_would_give_the_corpus_more_tokens(fresh_cache, tmp_path):
    task = _stream_task(tmp_path / "corpus", name="hint_corpus", files=2, rows=40)
    mix = Mixture("hint_mix", [task])
    # cached with the command the missing-cache error gives (a budget of 10^9 tokens): the whole source fits in it
    whole = token_cache.build_cache(task, "train", SEQ, max_tokens=10**9)
    ds = MixtureDataset(mix, sequence_length=SEQ, batch_size=8, pack=False)
    with pytest.raises(MixtureError) as err:
        ds.check_passes(100_000, max_passes=10)
    msg = str(err.value)
    assert f"already holds its whole source ({whole.stats['total_tokens']:,} tokens)" in msg
    assert "--max-tokens 1000000000" not in msg and "more files" in msg
    # a cache cut by its budget: a larger budget, about passes / max_passes times the tokens, is the fix
    capped = token_cache.build_cache(task, "train", SEQ, max_tokens=whole.stats["total_tokens"] // 4, shard_rows=10)
    ds = MixtureDataset(mix, sequence_length=SEQ, batch_size=8, pack=False)
    with pytest.raises(MixtureError) as err:
        ds.check_passes(100_000, max_passes=10)
    msg = str(err.value)
    budget = int(msg.split("--max-tokens ")[2].split()[0])
    passes = ds.planned_passes(100_000)[task.name]["passes"]
    assert budget >= capped.stats["total_tokens"] * passes / 10 and budget > capped.stats["max_tokens"]
    assert f"stopped at --max-tokens {capped.stats['max_tokens']:,}" in msg


# ------------------------------------------------------------------------- B: truncation from the cache offsets
def test_truncation_report_reads_the_cache_offsets_not_a_second_tokenization(monkeypatch):
    from lightning_t5.eval.truncation import truncation_report

    rte = TaskRegistry.get("glue_rte")
    expected = {s: np.array([len(x) for x in rte.tokenized(s)["inputs"]]) for s in ("train", "validation")}

    def no_second_tokenization(*a, **k):
        raise AssertionError("the truncation report tokenized a split again")

    monkeypatch.setattr(Task, "tokenized", no_second_tokenization)
    report = truncation_report([rte], [rte], {"inputs": 128, "targets": 8})
    assert "glue_rte" in report, "no report: it was computed by tokenizing the splits again"
    entries = {e["split"]: e for e in report["glue_rte"]}
    for split, lengths in expected.items():
        assert entries[split]["examples"] == len(lengths)
        assert entries[split]["inputs"]["truncated"] == int((lengths > 128).sum())
        assert entries[split]["inputs"]["p95"] == int(np.ceil(np.percentile(lengths, 95)))
