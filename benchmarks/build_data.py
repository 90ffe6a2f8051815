"""Pre-training data build speed: ours (Rust WordPiece, parallel units) vs the reference's pure-Python pipeline.

Both run the reference's example builder over the same sample of ../shared/data/pretrain_en with the
same 30,522-token vocabulary, at 1 and 2 processes. The peer tokenizes with transformers'
`BertTokenizerLegacy` (the algorithm of the reference's tokenization.py) and, like the reference,
parallelises over files, so the sample is split into two files; it writes nothing, which only flatters it.
Neither side's time includes starting Python or importing its modules (ours: `build_pretraining_data`'s own clock;
the peer: `transformers` is imported, in the parent and in each pool worker, before its clock starts). Ours includes
starting its worker pool, the peer's does not: that also flatters the peer.
Usage: python benchmarks/build_data.py [--sample-mb 16]. The last line is JSON with the headline figures.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import random
import subprocess
import sys
import tempfile
import time
from multiprocessing.synchronize import Barrier
from pathlib import Path

import numpy as np

from electra.corpus import list_corpus_files
from electra.pretrain_data import ExampleBuilder, build_pretraining_data
from electra.tokenization import train_vocab, write_vocab

CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pretrain_en"


def write_sample(sample_dir: Path, sample_bytes: int) -> int:
    """The corpus's first documents up to `sample_bytes`, as two files of about equal size."""
    text = (CORPUS / "enwiki_sample.txt").read_text(encoding="utf-8")
    documents, size = [], 0
    for document in text.split("\n\n"):
        if size >= sample_bytes:
            break
        documents.append(document)
        size += len(document.encode()) + 2
    half = len(documents) // 2
    sample_dir.mkdir(parents=True)
    for name, part in (("part0.txt", documents[:half]), ("part1.txt", documents[half:])):
        (sample_dir / name).write_text("\n\n".join(part) + "\n", encoding="utf-8")
    return sum(path.stat().st_size for path in sample_dir.iterdir())


def ours(sample_dir: Path, vocab: Path, output: Path, processes: int) -> dict:
    # A fresh interpreter per run: the tokenizer's thread setting is fixed at its first use in a process.
    code = (
        "import json, sys; from electra.pretrain_data import build_pretraining_data as build;"
        f"s = build({str(sample_dir)!r}, {str(vocab)!r}, {str(output)!r}, num_processes={processes}, "
        "show_progress=False); print(json.dumps({'seconds': s.seconds, 'tokens': s.tokens}))"
    )
    result = subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, text=True)
    return json.loads(result.stdout.strip().splitlines()[-1])


def _peer_file(job: tuple[str, str, int]) -> int:
    from transformers import BertTokenizerLegacy

    path, vocab, max_length = job
    tokenizer = BertTokenizerLegacy(vocab, do_lower_case=True)
    builder = ExampleBuilder(max_length, random.Random(0))
    pad = np.zeros(max_length, dtype=np.int64)
    tokens = 0

    def emit(segments):
        nonlocal tokens
        if segments is not None:
            first, second = segments
            row = pad.copy()
            ids = [2, *first, 3, *second, 3] if second else [2, *first, 3]
            row[: len(ids)] = ids
            tokens += len(ids)

    with open(path, encoding="utf-8") as handle:
        for line in handle:
            line = line.strip()
            if not line:
                emit(builder.add_line(None))
                continue
            # basic + wordpiece directly, as the reference's FullTokenizer (no special-token matching)
            words = tokenizer.basic_tokenizer.tokenize(line)
            pieces = [piece for word in words for piece in tokenizer.wordpiece_tokenizer.tokenize(word)]
            emit(builder.add_line(tokenizer.convert_tokens_to_ids(pieces)))
    emit(builder.add_line(None))
    return tokens


def _import_peer(started: Barrier | None = None) -> None:
    import transformers  # noqa: F401 (imported before the clock starts, as ours is)

    if started is not None:
        started.wait()


def peer(sample_dir: Path, vocab: Path, processes: int) -> dict:
    jobs = [(str(path), str(vocab), 128) for path in sorted(sample_dir.iterdir())]
    if processes == 1:
        _import_peer()
        started = time.perf_counter()
        tokens = sum(map(_peer_file, jobs))
        return {"seconds": time.perf_counter() - started, "tokens": tokens}
    context = multiprocessing.get_context("spawn")
    ready = context.Barrier(processes + 1)  # every worker has imported `transformers`, and this process waits too
    with context.Pool(processes, initializer=_import_peer, initargs=(ready,)) as pool:
        ready.wait()
        started = time.perf_counter()
        tokens = sum(pool.map(_peer_file, jobs))
        return {"seconds": time.perf_counter() - started, "tokens": tokens}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sample-mb", type=float, default=16.0)
    args = parser.parse_args()
    if not CORPUS.exists():
        sys.exit(f"{CORPUS} is absent: this benchmark needs ../shared/data/pretrain_en")
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        sample_bytes = write_sample(work / "sample", int(args.sample_mb * 1e6))
        vocab = work / "vocab.txt"
        write_vocab(train_vocab(list_corpus_files(CORPUS), vocab_size=30522, show_progress=False), vocab)
        build_pretraining_data(work / "sample", vocab, work / "warmup", show_progress=False)  # page cache
        rows = []
        for processes in (1, 2):
            mine = ours(work / "sample", vocab, work / f"ours{processes}", processes)
            theirs = peer(work / "sample", vocab, processes)
            rows.append((processes, mine, theirs))
    megabytes = sample_bytes / 1e6
    print(f"sample: {megabytes:.1f} MB of English Wikipedia, vocab 30,522, max_seq_length 128")
    print(f"{'processes':>9} | {'ours MB/s':>9} | {'ours tok/s':>10} | {'peer MB/s':>9} | {'peer tok/s':>10} | ratio")
    headline = {}
    for processes, mine, theirs in rows:
        ours_rate, peer_rate = megabytes / mine["seconds"], megabytes / theirs["seconds"]
        print(
            f"{processes:>9} | {ours_rate:9.2f} | {mine['tokens'] / mine['seconds']:10,.0f} | {peer_rate:9.2f} | "
            f"{theirs['tokens'] / theirs['seconds']:10,.0f} | {ours_rate / peer_rate:5.2f}x"
        )
        headline |= {
            f"ours_mb_s_{processes}p": round(ours_rate, 3),
            f"peer_mb_s_{processes}p": round(peer_rate, 3),
            f"ratio_{processes}p": round(ours_rate / peer_rate, 2),
        }
    headline["ours_scaling_2p"] = round(headline["ours_mb_s_2p"] / headline["ours_mb_s_1p"], 2)
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
