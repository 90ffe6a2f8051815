"""Pre-training examples from raw text: the reference's example builder, parallel and deterministic.

Examples are built as the reference's `build_pretraining_dataset.py` builds them: lines are
tokenized and accumulated until they reach a target length (the full `max_seq_length`, or with
probability 0.05 a random shorter one), split into segments A and B (one segment with probability
0.1) and written as `[CLS] A [SEP] B [SEP]`, padded; blank lines end documents.

Output (`--output-dir`): shards `shard-NNNNN.npy`, each a [examples, max_seq_length] array of token
ids (uint16 while the vocabulary fits, padded with [PAD]) that training memory-maps and reads at
random, and `pretrain_data.json`, written last, recording the settings, the vocabulary's checksum,
counts and the shards. Segment ids and the attention mask are recovered from the ids: segment B
starts after the first [SEP]; padding is [PAD]. Each work unit of the corpus gets its own seeded
random generator and the main process writes the units' examples in corpus order, so the output is
byte-for-byte the same for any number of processes.
"""

from __future__ import annotations

import functools
import hashlib
import json
import multiprocessing
import os
import random
import re
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from multiprocessing.pool import Pool
from pathlib import Path

import numpy as np
from tqdm import tqdm

from electra.corpus import UNIT_BYTES, CorpusUnit, InvalidUtf8Report, list_corpus_files, plan_units, read_unit
from electra.errors import UserError
from electra.fileio import atomic_output, folder_lock, is_temporary, read_json, write_text_atomic
from electra.tokenization import CLS, PAD, SEP, SPECIAL_TOKENS, UNK, build_tokenizer, read_vocab, vocab_checksum

FORMAT_NAME = "electra-pretrain-data"
FORMAT_VERSION = 1
METADATA_FILE = "pretrain_data.json"
SHARD_PATTERN = "shard-{:05d}.npy"
EXAMPLES_PER_SHARD = 65536
# Probabilities of the reference's example builder.
SINGLE_SEGMENT_PROB = 0.1
RANDOM_LENGTH_PROB = 0.05
MIN_RANDOM_LENGTH = 5
UNKNOWN_WARNING_SHARE = 0.01
DROPPED_WARNING_SHARE = 0.05
CASED_VOCAB_SHARE = 0.02  # of a vocabulary's tokens with capitals: it was built from cased text


class ExampleBuilder:
    """Accumulates tokenized lines into pre-training examples exactly as the reference does."""

    def __init__(self, max_length: int, rng: random.Random):
        self.max_length = max_length
        self.rng = rng
        # The reference draws the next target after each example, so a file's first example gets the draw its
        # previous file's last example left. A builder here reads one unit (a file, or a part of a large one):
        # it draws that first target itself, or no first example would ever be short.
        self.target_length = self._draw_target_length()
        self.sentences: list[list[int]] = []
        self.length = 0

    def _draw_target_length(self) -> int:
        if self.rng.random() < RANDOM_LENGTH_PROB:
            return self.rng.randint(MIN_RANDOM_LENGTH, self.max_length)
        return self.max_length

    def add_line(self, token_ids: list[int] | None) -> tuple[list[int], list[int]] | None:
        """Add a tokenized line, or None for a blank line; returns segments (A, B) when an example is done."""
        if token_ids is None:
            return self.finish_example() if self.length else None
        self.sentences.append(token_ids)
        self.length += len(token_ids)
        return self.finish_example() if self.length >= self.target_length else None

    def finish_example(self) -> tuple[list[int], list[int]]:
        rng = self.rng
        # Sometimes a single segment, as in classification; else half of the target, less [CLS] and two [SEP].
        single_segment = rng.random() < SINGLE_SEGMENT_PROB
        first_target = 100000 if single_segment else (self.target_length - 3) // 2
        first: list[int] = []
        second: list[int] = []
        for sentence in self.sentences:
            # A sentence goes to A if A is empty, if it fits, or half the time when it overflows A
            # while B is still empty; evaluation order matters, it decides when the generator is drawn.
            if (
                not first
                or len(first) + len(sentence) < first_target
                or (not second and len(first) < first_target and rng.random() < 0.5)
            ):
                first += sentence
            else:
                second += sentence
        first = first[: self.max_length - 2]
        second = second[: max(0, self.max_length - len(first) - 3)]
        self.sentences = []
        self.length = 0
        self.target_length = self._draw_target_length()
        return first, second


class BuiltWithOtherSettings(UserError):
    """An output folder already holds data built from other inputs or settings (`differing` says which)."""

    def __init__(self, output_dir: Path, differing: list[str]):
        self.output_dir, self.differing = output_dir, differing
        super().__init__(
            f"{output_dir} already holds pre-training data built with other settings "
            f"(differing: {', '.join(differing)}): pass --overwrite to replace it, or choose another --output-dir"
        )


@dataclass(frozen=True)
class BuildSettings:
    max_seq_length: int = 128
    blanks_separate_docs: bool = True
    do_lower_case: bool = True
    strip_accents: bool = True
    seed: int = 0
    split_sentences: bool = False  # ours: treat each sentence of a line as a line (see split_into_sentences)


@dataclass
class UnitResult:
    rows: np.ndarray  # [examples, max_seq_length]
    documents: int
    lines: int
    tokens: int
    unknown_tokens: int
    dropped_tokens: int  # past the room left in an example by the line that fills it: cut off, as in the reference
    text_bytes: int  # once decompressed
    invalid_utf8: int
    first_invalid_line: int


@dataclass
class BuildSummary:
    output_dir: Path
    documents: int = 0
    examples: int = 0
    tokens: int = 0
    unknown_tokens: int = 0
    dropped_tokens: int = 0
    lines: int = 0
    bytes: int = 0
    seconds: float = 0.0
    shards: list[dict] = field(default_factory=list)
    skipped: bool = False

    def describe(self) -> str:
        if self.skipped:
            return (
                f"{self.output_dir} already holds data built from this corpus with these settings: "
                "nothing to do (pass --overwrite to build it again)"
            )
        rate = self.bytes / 1e6 / max(self.seconds, 1e-9)
        return (
            f"built {self.examples:,} examples ({self.tokens:,} tokens) from {self.documents:,} documents "
            f"({self.bytes / 1e6:.1f} MB of text) into {len(self.shards)} shard(s) in {self.output_dir}: "
            f"{self.seconds:.1f} s, {rate:.2f} MB/s, {self.tokens / max(self.seconds, 1e-9):,.0f} tokens/s"
        )


class _UnitBuilder:
    """Turns corpus units into example rows; one per process, holding that process's tokenizer."""

    def __init__(self, vocab: list[str], settings: BuildSettings):
        self.settings = settings
        self.tokenizer = build_tokenizer(vocab, settings.do_lower_case, settings.strip_accents)
        ids = {token: index for index, token in enumerate(vocab)}
        self.cls_id, self.sep_id, self.pad_id, self.unk_id = ids[CLS], ids[SEP], ids[PAD], ids[UNK]
        self.dtype = ids_dtype(len(vocab))

    def __call__(self, indexed_unit: tuple[int, CorpusUnit]) -> UnitResult:
        unit_index, unit = indexed_unit
        settings = self.settings
        decoded = read_unit(unit)
        lines = [line.strip() for line in decoded.lines]
        if settings.split_sentences:
            lines = [sentence for line in lines for sentence in split_into_sentences(line)]
        if not settings.blanks_separate_docs and not decoded.one_document_per_blank:
            lines = [line for line in lines if line]
        encodings = self.tokenizer.encode_batch_fast([line for line in lines if line], add_special_tokens=False)
        token_ids = (encoding.ids for encoding in encodings)
        fed_tokens = sum(len(encoding.ids) for encoding in encodings)
        rng = random.Random(f"{settings.seed}:{unit_index}")
        builder = ExampleBuilder(settings.max_seq_length, rng)
        rows = []
        documents = 0
        previous_blank = True
        for line in [*lines, ""]:
            if line and previous_blank:
                documents += 1
            previous_blank = not line
            segments = builder.add_line(next(token_ids) if line else None)
            if segments is not None:
                rows.append(self._row(*segments))
        array = np.stack(rows) if rows else np.empty((0, settings.max_seq_length), self.dtype)
        tokens = int((array != self.pad_id).sum())
        special_tokens = int((array == self.cls_id).sum() + (array == self.sep_id).sum())
        return UnitResult(
            rows=array,
            documents=documents,
            lines=sum(1 for line in lines if line),
            tokens=tokens,
            unknown_tokens=int((array == self.unk_id).sum()),
            dropped_tokens=fed_tokens - (tokens - special_tokens),
            text_bytes=decoded.text_bytes,
            invalid_utf8=decoded.invalid_utf8,
            first_invalid_line=decoded.first_invalid_line,
        )

    def _row(self, first: list[int], second: list[int]) -> np.ndarray:
        ids = [self.cls_id, *first, self.sep_id]
        if second:
            ids += [*second, self.sep_id]
        row = np.full(self.settings.max_seq_length, self.pad_id, dtype=self.dtype)
        row[: len(ids)] = ids
        return row


SENTENCE_END = re.compile(r"(?<=[。！？；])|(?<=[.!?;])\s+")


def split_into_sentences(line: str) -> list[str]:
    """A line's sentences (a blank line stays one blank line, a document boundary).

    The reference expects one sentence per line and cuts a line longer than an example, dropping its
    rest: a corpus with one article or paragraph per line (news, Wikipedia dumps) loses most of its
    text. Splitting at sentence ends (。！？； and . ! ? ; before a space) keeps it.
    """
    if not line:
        return [""]
    return [sentence.strip() for sentence in SENTENCE_END.split(line) if sentence.strip()]


def settings_record(settings: BuildSettings) -> dict:
    """The settings as recorded in pretrain_data.json; the later `split_sentences` only when on, so data
    built before it existed still matches."""
    record = asdict(settings)
    if not settings.split_sentences:
        del record["split_sentences"]
    return record


def ids_dtype(vocab_size: int) -> np.dtype:
    return np.dtype(np.uint16 if vocab_size <= np.iinfo(np.uint16).max + 1 else np.uint32)


_WORKER: _UnitBuilder | None = None


def _init_worker(vocab: list[str], settings: BuildSettings) -> None:
    global _WORKER
    os.environ["RAYON_NUM_THREADS"] = "1"  # one tokenizer thread a process: --num-processes is the knob
    _WORKER = _UnitBuilder(vocab, settings)


def _build_in_worker(indexed_unit: tuple[int, CorpusUnit]) -> UnitResult:
    assert _WORKER is not None
    return _WORKER(indexed_unit)


def _unit_results(
    units: list[CorpusUnit], vocab: list[str], settings: BuildSettings, num_processes: int
) -> Iterator[UnitResult]:
    """Unit results in corpus order, from this process or a pool of worker processes."""
    indexed = list(enumerate(units))
    num_processes = min(num_processes, len(units))  # a worker per unit at most: each starts a tokenizer
    if num_processes <= 1:
        # One tokenizer thread a process, here too (takes effect if no tokenizer has run in this process yet).
        os.environ.setdefault("RAYON_NUM_THREADS", "1")
        builder = _UnitBuilder(vocab, settings)
        yield from map(builder, indexed)
        return
    pool, caught = _start_pool(num_processes, vocab, settings)
    with pool:  # leaving it stops the workers, as an interruption does
        for signum in caught:
            signal.raise_signal(signum)
        yield from pool.imap(_build_in_worker, indexed, chunksize=1)


def _start_pool(num_processes: int, vocab: list[str], settings: BuildSettings) -> tuple[Pool, list[int]]:
    """The worker pool, started with Ctrl-C and SIGTERM held back, and the signals that came meanwhile. A pool
    stopped while starting leaves workers that were reading their start-up data from it, each printing a
    traceback; once it is started, leaving its `with` block stops them all."""
    context = multiprocessing.get_context("spawn")
    caught: list[int] = []
    signals = (signal.SIGINT, signal.SIGTERM)
    holding = threading.current_thread() is threading.main_thread()  # only the main thread handles signals
    previous = [signal.signal(signum, lambda signum, frame: caught.append(signum)) for signum in signals if holding]
    try:
        return context.Pool(num_processes, initializer=_init_worker, initargs=(vocab, settings)), caught
    finally:
        for signum, handler in zip(signals, previous, strict=False):  # none held outside the main thread
            signal.signal(signum, handler)


class _ShardWriter:
    """Cuts the stream of example rows into fixed-size shards, each written atomically."""

    def __init__(self, output_dir: Path, examples_per_shard: int):
        self.output_dir = output_dir
        self.examples_per_shard = examples_per_shard
        self.pending: list[np.ndarray] = []
        self.pending_count = 0
        self.shards: list[dict] = []

    def add(self, rows: np.ndarray) -> None:
        if len(rows):
            self.pending.append(rows)
            self.pending_count += len(rows)
        while self.pending_count >= self.examples_per_shard:
            self._flush(self.examples_per_shard)

    def close(self) -> list[dict]:
        if self.pending_count:
            self._flush(self.pending_count)
        return self.shards

    def _flush(self, count: int) -> None:
        rows = np.concatenate(self.pending)
        name = SHARD_PATTERN.format(len(self.shards))
        with atomic_output(self.output_dir / name) as tmp, open(tmp, "wb") as handle:
            np.save(handle, rows[:count])
        self.shards.append({"file": name, "examples": count})
        rest = rows[count:]
        self.pending = [rest] if len(rest) else []
        self.pending_count = len(rest)


def _our_files(output_dir: Path) -> list[Path]:
    return [
        path
        for path in output_dir.iterdir()
        if path.name == METADATA_FILE
        or (path.name.startswith("shard-") and path.suffix == ".npy")
        or is_temporary(path)
    ]


def corpus_entry(path: Path, root: Path) -> dict:
    """How pretrain_data.json records a corpus file: its name (JSON-safe: a name that is not UTF-8 keeps its bytes
    as \\x escapes), size and modification time, so that a rebuild notices a file changed in place."""
    status = path.stat()
    name = os.fsencode(path.relative_to(root).as_posix()).decode("utf-8", errors="backslashreplace")
    return {"file": name, "bytes": status.st_size, "modified_ns": status.st_mtime_ns}


def corpus_change(before: list, now: list[dict]) -> str | None:
    """What differs between a recorded corpus and the present one, naming a file; None if nothing does. A record
    written before modification times were kept matches on names and sizes."""
    old = {entry.get("file"): entry for entry in before if isinstance(entry, dict)}
    new = {entry["file"]: entry for entry in now}
    added, removed = [name for name in new if name not in old], [name for name in old if name not in new]
    if added or removed:
        changes = [f"{name} added" for name in added] + [f"{name} removed" for name in removed]
        return ", ".join(changes[:3]) + (f" and {len(changes) - 3} more" if len(changes) > 3 else "")
    for name, entry in new.items():
        recorded, modified = old[name], entry["modified_ns"]
        if recorded.get("bytes") != entry["bytes"] or recorded.get("modified_ns", modified) != modified:
            return f"{name} changed"
    return None


def _prepare_output(output_dir: Path, identity: dict, overwrite: bool) -> bool:
    """Make `output_dir` ready for a build; False if it already holds this exact build."""
    metadata_path = output_dir / METADATA_FILE
    if metadata_path.exists() and not overwrite:
        try:
            existing = json.loads(metadata_path.read_text(encoding="utf-8"))
        except (json.JSONDecodeError, UnicodeDecodeError):
            existing = {}
        differing = []
        for key in sorted(identity):
            before, now = existing.get(key), identity[key]
            if isinstance(before, dict) and isinstance(now, dict):  # the flags: name each one that changed
                differing += [
                    f"{name} {before[name]!r} -> {now[name]!r}" if name in before else f"{name} {now[name]!r} (new)"
                    for name in now
                    if before.get(name) != now[name]
                ]
            elif key == "corpus":
                change = corpus_change(before if isinstance(before, list) else [], now)
                differing += [f"the corpus files ({change})"] if change else []
            elif before != now:
                differing.append("the vocabulary" if key == "vocab_sha256" else key)
        if not differing:
            return False
        raise BuiltWithOtherSettings(output_dir, differing)
    leftovers = _our_files(output_dir)
    if leftovers and not metadata_path.exists():
        print(f"note: removing {len(leftovers)} file(s) of an unfinished build in {output_dir}", file=sys.stderr)
    for path in leftovers:
        path.unlink()
    return True


def build_pretraining_data(
    corpus_dir: str | os.PathLike,
    vocab_file: str | os.PathLike,
    output_dir: str | os.PathLike,
    settings: BuildSettings = BuildSettings(),
    num_processes: int = 1,
    overwrite: bool = False,
    examples_per_shard: int = EXAMPLES_PER_SHARD,
    unit_bytes: int = UNIT_BYTES,
    show_progress: bool | None = None,
) -> BuildSummary:
    """Build pre-training shards from a folder of raw text (the `electra build-data` command)."""
    if settings.max_seq_length < 8:
        raise UserError(
            f"--max-seq-length {settings.max_seq_length} is too short: use at least 8 (the reference default is 128)"
        )
    if num_processes < 1:
        raise UserError(f"--num-processes {num_processes} must be at least 1")
    corpus_root, out = Path(corpus_dir), Path(output_dir)
    files = list_corpus_files(corpus_root)
    vocab = read_vocab(vocab_file)
    capitalised = sum(1 for token in vocab if token not in SPECIAL_TOKENS and token != token.lower())
    if settings.do_lower_case and capitalised > CASED_VOCAB_SHARE * len(vocab):
        print(
            f"warning: {capitalised:,} tokens of {vocab_file} hold capitals, which lower-cased text never produces: "
            "if the vocabulary was built with --no-lower-case, build the data with --no-lower-case too",
            file=sys.stderr,
        )
    if settings.max_seq_length > 65535:
        raise UserError(f"--max-seq-length {settings.max_seq_length} is too long (at most 65535)")
    identity = {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "settings": settings_record(settings),
        "unit_bytes": unit_bytes,
        "vocab_size": len(vocab),
        "vocab_sha256": vocab_checksum(vocab),
        "corpus": [corpus_entry(path, corpus_root) for path in files],
    }
    if out.resolve().is_relative_to(corpus_root.resolve()):
        raise UserError(
            f"--output-dir {out} is inside --corpus-dir {corpus_root}: the shards would be "
            "read as text next time; choose an output folder outside the corpus"
        )
    with folder_lock(out, "electra build-data"):  # two builds into one folder would mix their shards
        summary = BuildSummary(output_dir=out)
        if not _prepare_output(out, identity, overwrite):
            summary.skipped = True
            return summary

        started = time.perf_counter()
        units = plan_units(files, unit_bytes, at_blank_lines=settings.blanks_separate_docs)
        writer = _ShardWriter(out, examples_per_shard)
        report = InvalidUtf8Report()
        progress = tqdm(
            total=sum(unit.size for unit in units),
            unit="B",
            unit_scale=True,
            unit_divisor=1000,
            desc="build-data",
            disable=None if show_progress is None else not show_progress,
            file=sys.stderr,
        )
        with progress:
            for unit, result in zip(units, _unit_results(units, vocab, settings, num_processes), strict=True):
                writer.add(result.rows)
                summary.documents += result.documents
                summary.lines += result.lines
                summary.examples += len(result.rows)
                summary.tokens += result.tokens
                summary.unknown_tokens += result.unknown_tokens
                summary.dropped_tokens += result.dropped_tokens
                summary.bytes += result.text_bytes
                if result.invalid_utf8:
                    report.by_file.setdefault(unit.path, [0, result.first_invalid_line])[0] += result.invalid_utf8
                progress.update(unit.size)  # bytes read from the corpus file, as the bar's total counts them
                progress.set_postfix(examples=f"{summary.examples:,}", refresh=False)
        if not summary.examples:
            raise UserError(
                f"no text found in corpus folder {corpus_root}: its {len(files)} file(s) hold only "
                "blank lines or characters the tokenizer drops"
            )
        summary.shards = writer.close()
        ids = {token: index for index, token in enumerate(vocab)}
        metadata = {
            **identity,
            "dtype": ids_dtype(len(vocab)).name,
            "special_token_ids": {token: ids[token] for token in SPECIAL_TOKENS},
            "counts": {
                "documents": summary.documents,
                "lines": summary.lines,
                "examples": summary.examples,
                "tokens": summary.tokens,
                "unknown_tokens": summary.unknown_tokens,
                "dropped_tokens": summary.dropped_tokens,
                "bytes": summary.bytes,
                "invalid_utf8": report.total,
            },
            "shards": summary.shards,
        }
        write_text_atomic(out / METADATA_FILE, json.dumps(metadata, indent=1, ensure_ascii=False) + "\n")
        summary.seconds = time.perf_counter() - started
        report.warn()
        if summary.unknown_tokens > UNKNOWN_WARNING_SHARE * summary.tokens:
            print(
                f"warning: {summary.unknown_tokens / summary.tokens:.1%} of the tokens are {UNK}: check that "
                "--do-lower-case/--no-lower-case matches how the vocabulary was built, and that the vocabulary "
                "was trained on text like this corpus",
                file=sys.stderr,
            )
        kept = summary.tokens - 2 * summary.examples  # less [CLS] and at least one [SEP] an example
        if summary.dropped_tokens > DROPPED_WARNING_SHARE * (kept + summary.dropped_tokens):
            share = summary.dropped_tokens / (kept + summary.dropped_tokens)
            remedy = (
                "the sentence that fills an example is cut at its end, as the reference builds examples (a longer "
                "--max-seq-length loses less)"
                if settings.split_sentences
                else "the reference expects a sentence a line and cuts longer lines; `electra build-data "
                "--split-sentences` keeps them"
            )
            print(
                f"warning: {summary.dropped_tokens:,} tokens ({share:.0%} of the text) did not fit into the examples "
                f"and were dropped: {remedy}",
                file=sys.stderr,
            )
        return summary


class PretrainingData:
    """Read access to a built data folder: memory-mapped shards addressed by one global example index."""

    def __init__(self, directory: str | os.PathLike, vocab: list[str] | None = None):
        self.directory = Path(directory)
        metadata_path = self.directory / METADATA_FILE
        if not metadata_path.exists():
            raise UserError(
                f"{self.directory} holds no finished pre-training data ({METADATA_FILE} is missing): "
                "run `electra build-data --output-dir "
                f"{self.directory}` (an interrupted build leaves no {METADATA_FILE})"
            )
        self.metadata = read_json(metadata_path)
        if self.metadata.get("format") != FORMAT_NAME or self.metadata.get("format_version") != FORMAT_VERSION:
            raise UserError(
                f"{metadata_path} is not {FORMAT_NAME} version {FORMAT_VERSION}: rebuild the data "
                "with this version's `electra build-data`"
            )
        if vocab is not None and vocab_checksum(vocab) != self.metadata["vocab_sha256"]:
            raise UserError(
                f"the data in {self.directory} was built with another vocabulary than the one given "
                "to training: rebuild it with `electra build-data --vocab-file` pointing at that "
                "vocabulary, or train with the vocabulary the data was built with"
            )
        self.max_seq_length = self.metadata["settings"]["max_seq_length"]
        special = self.metadata["special_token_ids"]
        self.pad_id, self.sep_id = special[PAD], special[SEP]
        self.shards = []
        for shard in self.metadata["shards"]:
            path = self.directory / shard["file"]
            if not path.exists():
                raise UserError(f"shard {path} listed in {metadata_path} is missing: rebuild the data")
            try:
                array = np.load(path, mmap_mode="r")
            except (ValueError, OSError) as error:  # cut off or overwritten
                raise UserError(f"shard {path} is damaged ({error}): rebuild the data") from None
            expected = (shard["examples"], self.max_seq_length)
            if array.shape != expected or array.dtype.name != self.metadata["dtype"]:
                raise UserError(
                    f"shard {path} holds {array.dtype}{list(array.shape)}, not "
                    f"{self.metadata['dtype']}{list(expected)} as {metadata_path} says: rebuild the data"
                )
            self.shards.append(array)
        self.shard_starts = np.cumsum([0] + [len(shard) for shard in self.shards])

    def __len__(self) -> int:
        return int(self.shard_starts[-1])

    @functools.cached_property
    def fingerprint(self) -> str:
        """What the data was built from and how, and what it holds (not when its files were written: the same
        corpus built again gives the same data, and the same fingerprint)."""
        meta = self.metadata
        described = {
            "corpus": [(entry["file"], entry["bytes"]) for entry in meta["corpus"]],
            **{key: meta[key] for key in ("settings", "vocab_sha256", "counts", "shards")},
        }
        return hashlib.sha256(json.dumps(described, sort_keys=True).encode()).hexdigest()[:16]

    def input_ids(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """Token ids [len(indices), max_seq_length] as int64, in the order of `indices`."""
        indices = np.asarray(indices, dtype=np.int64)
        if len(indices) and (indices.min() < 0 or indices.max() >= len(self)):
            raise IndexError(f"example index out of range 0..{len(self) - 1}")
        shard_of = np.searchsorted(self.shard_starts, indices, side="right") - 1
        out = np.empty((len(indices), self.max_seq_length), dtype=np.int64)
        for shard_index in np.unique(shard_of):
            chosen = shard_of == shard_index
            out[chosen] = self.shards[shard_index][indices[chosen] - self.shard_starts[shard_index]]
        return out

    def segment_ids(self, input_ids: np.ndarray) -> np.ndarray:
        """0 for [CLS] A [SEP], 1 for B [SEP], 0 for padding, as the reference writes them."""
        positions = np.arange(input_ids.shape[1])
        first_sep = np.argmax(input_ids == self.sep_id, axis=1)
        return ((positions[None, :] > first_sep[:, None]) & (input_ids != self.pad_id)).astype(np.int64)

    def attention_mask(self, input_ids: np.ndarray) -> np.ndarray:
        return (input_ids != self.pad_id).astype(np.int64)

    def real_lengths(self, indices: np.ndarray | list[int]) -> np.ndarray:
        """Non-padding tokens of each example at `indices`: what training counts as tokens."""
        return self.attention_mask(self.input_ids(indices)).sum(1)

    def partition(self, part: int, num_parts: int) -> range:
        """Contiguous, disjoint example ranges covering everything, one for each rank or loader worker."""
        if not 0 <= part < num_parts:
            raise ValueError(f"part {part} is not in 0..{num_parts - 1}")
        total = len(self)
        return range(total * part // num_parts, total * (part + 1) // num_parts)
