"""Corpus-scale data path benchmark: memory and speed flat in corpus size, cache build vs SentencePiece alone.

    python bench/scale.py [--sizes 10M 100M 1B] [--build-tokens 50M] [--batches 200] [--json]

1. Synthetic span-corruption corpora of 10M, 100M, 1B tokens written directly in the cache format (tasks/cache.py);
   packed 512/114 batches of 128... (``--batch-size``) through the real MixtureDataset with 2 dataloader workers
   (the dataset plans once and its pool of 2 processes materializes, as under MixtureDataModule): examples/s and
   RssAnon of the main process and of each worker (/proc/<pid>/status).
   The 1B corpus is skipped (with a message) when less than 10 GB of disk is free.
2. Resume seek: load_state_dict of a cursor at step 10 and at step 10^6, time to the first batch.
3. Real text: the shipped English corpus repeated to >= ``--build-tokens`` tokens, cached with ``python -m tasks
   cache`` code (build_cache) with --num-proc 1 and 2, beside SentencePiece alone batch-encoding the same text with
   all cores; tokens/s of each.
The last line with ``--json`` is one JSON object with every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

SEQ = {"inputs": 512, "targets": 114}


def rss_anon_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("RssAnon:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def parse_size(text: str) -> int:
    mult = {"K": 10**3, "M": 10**6, "B": 10**9, "G": 10**9}
    return int(float(text[:-1]) * mult[text[-1].upper()]) if text[-1].upper() in mult else int(text)


def corpus_task(name: str):
    from tasks import InMemorySource, Task
    from tasks.objectives.preprocessors import objective_preprocessors

    return Task(name, InMemorySource({"train": [{"text": name}]}), [lambda r: {"inputs": "", "targets": r["text"]}],
                token_preprocessors=objective_preprocessors("span_corruption"), supervised=False)


def write_synthetic(task, num_tokens: int) -> None:
    """Raw windows of 568 tokens (span corruption into 512/114), written in chunks (bounded memory)."""
    from tasks import cache as tc

    window = task.token_preprocessors[0].window_length(SEQ)
    rows = num_tokens // window
    if tc.open_cache(task, "train", SEQ) is not None:
        return
    rng = np.random.default_rng(0)
    chunk = 1 << 24
    tokens = (rng.integers(3, 8000, min(chunk, rows * window - start), dtype=np.uint16)
              for start in range(0, rows * window, chunk))
    offsets = (np.arange(start, min(rows + 1, start + (1 << 22)), dtype=np.int64) * window
               for start in range(0, rows + 1, 1 << 22))
    tc.write_flat(tc.cache_dir(task, "train", SEQ),
                  {"inputs": (np.zeros(rows + 1, np.int64), np.zeros(0, np.uint16)), "targets": (offsets, tokens)},
                  np.dtype(np.uint16), {"fingerprint": tc.cache_key(task, "train", SEQ)})


def child_pids() -> list[int]:
    out = []
    for task_dir in Path("/proc/self/task").iterdir():
        out += [int(p) for p in (task_dir / "children").read_text().split()]
    return sorted(set(out))


def sample(task, batches: int, batch_size: int, workers: int) -> dict:
    """As training reads it (MixtureDataModule): the dataset plans once, its pool of ``workers`` materializes."""
    from torchdata.stateful_dataloader import StatefulDataLoader

    from mixtures import Mixture, MixtureDataset

    ds = MixtureDataset(Mixture(f"m_{task.name}", [task]), sequence_length=SEQ, batch_size=batch_size, pack=True,
                        seed=0, num_batches=batches + 20, num_workers=workers)
    loader = StatefulDataLoader(ds, batch_size=None, num_workers=0)
    it = iter(loader)
    for _ in range(20):  # warm-up (workers started, page cache)
        next(it)
    start, examples = time.perf_counter(), 0
    for _ in range(batches):
        b = next(it)
        examples += int((b["decoder_segment_ids"].max(dim=1).values).sum())
    took = time.perf_counter() - start
    pids = child_pids()
    rss = {"main": rss_anon_mb(os.getpid()), **{f"worker{i}": rss_anon_mb(p) for i, p in enumerate(pids)}}
    del it, loader
    return {"examples_per_s": examples / took, "batches_per_s": batches / took, "rss_anon_mb": rss}


def resume_seek(task, batch_size: int) -> dict:
    """Time from load_state_dict (a cursor at step s) to the first batch, for s = 10 and 10^6."""
    from mixtures import Mixture, MixtureDataset

    mix = Mixture(f"r_{task.name}", [task])
    ds = MixtureDataset(mix, sequence_length=SEQ, batch_size=batch_size, pack=True, seed=0)
    it = iter(ds)
    next(it)
    state = ds.state_dict()
    out = {}
    for step in (10, 10**6):
        st = dict(state)
        st["step"] = step
        st["counts"] = [step * 200]  # examples drawn so far (~200 per packed batch of 128)
        fresh = MixtureDataset(mix, sequence_length=SEQ, batch_size=batch_size, pack=True, seed=0)
        t0 = time.perf_counter()
        fresh.load_state_dict(st)
        next(iter(fresh))
        out[f"step_{step}"] = time.perf_counter() - t0
    return out


def real_text_build(target_tokens: int, workdir: Path) -> dict:
    """Cache build of >= target_tokens real tokens with --num-proc 1 and 2, beside SentencePiece alone."""
    from tasks import FileSource, Task, get_default_vocabulary, preprocessors
    from tasks.cache import build_cache

    vocab = get_default_vocabulary()
    lines = (REPO / "data" / "english_corpus" / "train.jsonl").read_text().splitlines()
    texts = [json.loads(x)["text"] for x in lines]
    per_pass = sum(len(x) for x in vocab.encode_batch(texts))
    repeats = -(-target_tokens // per_pass)
    path = workdir / "corpus.jsonl"
    with open(path, "w") as fh:
        fh.writelines("\n".join(lines) + "\n" for _ in range(repeats))
    all_texts = texts * repeats
    t0 = time.perf_counter()
    n_tokens = 0
    for i in range(0, len(all_texts), 20_000):  # SentencePiece alone, all cores
        n_tokens += sum(map(len, vocab.encode_batch(all_texts[i:i + 20_000], num_threads=-1)))
    spm_rate = n_tokens / (time.perf_counter() - t0)
    del all_texts
    import functools

    task = Task("scale_real_text", FileSource({"train": path}, format="json"),
                [functools.partial(preprocessors.lm_text, text_key="text")], supervised=True)
    out = {"tokens": n_tokens, "sentencepiece_tokens_per_s": spm_rate}
    task._raw("train")  # Arrow conversion of the JSONL once (datasets' cache), outside the timings
    for nproc in (1, 2):
        shutil.rmtree(Path(os.environ["LIGHTNING_T5_CACHE"]) / "tokens" / task.name, ignore_errors=True)
        t0 = time.perf_counter()
        cache = build_cache(task, "train", num_proc=nproc, progress=lambda m: None)
        took = time.perf_counter() - t0
        built = cache.stats["tokens"]["targets"] - len(cache)  # EOS appended per row is not tokenizer output
        out[f"build_num_proc_{nproc}_tokens_per_s"] = built / took
    out["build_vs_sentencepiece"] = max(out["build_num_proc_1_tokens_per_s"], out["build_num_proc_2_tokens_per_s"]) \
        / spm_rate
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--sizes", nargs="+", default=["10M", "100M", "1B"])
    ap.add_argument("--build-tokens", default="50M")
    ap.add_argument("--batches", type=int, default=100)
    ap.add_argument("--batch-size", type=int, default=128)
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--workdir", default=None, help="default: a temporary directory (removed)")
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="scale_bench_"))
    work.mkdir(parents=True, exist_ok=True)
    os.environ["LIGHTNING_T5_CACHE"] = str(work / "cache")
    import datasets

    datasets.disable_progress_bars()
    result: dict = {"cpus": os.cpu_count(), "sizes": {}}
    try:
        for size in args.sizes:
            n = parse_size(size)
            free = shutil.disk_usage(work).free
            if n >= 10**9 and free < 10 * 2**30:
                print(f"{size}: skipped, only {free / 2**30:.1f} GB of disk free (needs 10 GB)")
                result["sizes"][size] = {"skipped": f"{free / 2**30:.1f} GB free"}
                continue
            task = corpus_task(f"scale_{size}")
            t0 = time.perf_counter()
            # written by a child process, so the writer's buffers never count in this process's memory
            import multiprocessing

            writer = multiprocessing.get_context("fork").Process(target=write_synthetic, args=(task, n))
            writer.start()
            writer.join()
            if writer.exitcode != 0:
                raise RuntimeError(f"writing the {size} corpus failed (exit code {writer.exitcode})")
            os.sync()  # measure reading, not the write-back of the corpus just written
            write_s = time.perf_counter() - t0
            r = sample(task, args.batches, args.batch_size, args.workers)
            r["write_s"] = write_s
            r["resume_seek_s"] = resume_seek(task, args.batch_size)
            result["sizes"][size] = r
            print(f"{size}: {r['examples_per_s']:.0f} examples/s, RssAnon MB {r['rss_anon_mb']}, resume seek "
                  f"{r['resume_seek_s']}", flush=True)
        sizes = sorted({s for s in args.sizes if "skipped" not in result["sizes"][s]}, key=parse_size)
        if len(sizes) >= 2:  # the largest corpus against the smallest
            a, b = result["sizes"][sizes[0]], result["sizes"][sizes[-1]]
            result["rss_growth_mb"] = {k: b["rss_anon_mb"][k] - a["rss_anon_mb"].get(k, 0) for k in b["rss_anon_mb"]}
            result["examples_per_s_ratio"] = b["examples_per_s"] / a["examples_per_s"]
            print(f"{sizes[-1]} vs {sizes[0]}: RssAnon growth MB {result['rss_growth_mb']}, examples/s ratio "
                  f"{result['examples_per_s_ratio']:.3f}")
        if parse_size(args.build_tokens) > 0:
            result["build"] = real_text_build(parse_size(args.build_tokens), work)
            print(f"cache build: {json.dumps(result['build'])}")
    finally:
        if args.workdir is None:
            shutil.rmtree(work, ignore_errors=True)
    if args.json:
        print(json.dumps(result))


if __name__ == "__main__":
    main()
