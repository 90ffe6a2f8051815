"""Raw-text corpora: finding the files, cutting them into work units, decoding them safely.

A corpus is a folder of UTF-8 text files (searched recursively, hidden files skipped) in which blank
lines separate documents, as in the reference. Files are cut into units of about `UNIT_BYTES` at
document boundaries; a unit is the grain of parallel work and of seeding, so that what is built from a
corpus does not depend on how many processes build it.
"""

from __future__ import annotations

import mmap
import os
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

from electra.errors import UserError

UNIT_BYTES = 1 << 20
# Without a blank line this far past the target, cut at a line end so one huge document cannot serialise work.
MAX_UNIT_STRETCH = 4


@dataclass(frozen=True)
class CorpusUnit:
    path: Path
    start: int
    end: int

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class DecodedUnit:
    lines: list[str]
    invalid_utf8: int
    first_invalid_line: int  # 1-based line in the file; 0 when the bytes were valid


def list_corpus_files(corpus_dir: str | os.PathLike) -> list[Path]:
    """The corpus's text files in a stable order, or a UserError saying what is wrong with the folder."""
    root = Path(corpus_dir)
    hint = "pass --corpus-dir a folder of UTF-8 text files, documents separated by blank lines"
    if not root.exists():
        raise UserError(f"corpus folder {root} does not exist: {hint}")
    if not root.is_dir():
        raise UserError(f"{root} is a file, not a folder: put it in a folder of its own and {hint}")
    files = sorted(
        (
            path
            for path in root.rglob("*")
            if path.is_file() and not any(part.startswith(".") for part in path.relative_to(root).parts)
        ),
        key=lambda path: path.relative_to(root).as_posix(),
    )
    if not files:
        raise UserError(f"corpus folder {root} holds no files: {hint}")
    if all(path.stat().st_size == 0 for path in files):
        raise UserError(f"all {len(files)} file(s) in corpus folder {root} are empty: {hint}")
    return files


def plan_units(files: list[Path], unit_bytes: int = UNIT_BYTES, at_blank_lines: bool = True) -> list[CorpusUnit]:
    """Cut every file into consecutive units of about `unit_bytes`, ending after a blank line."""
    units = []
    for path in files:
        size = path.stat().st_size
        if size == 0:
            continue
        with open(path, "rb") as handle, mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ) as data:
            start = 0
            while start < size:
                end = _unit_end(data, start + unit_bytes, size, at_blank_lines, unit_bytes * MAX_UNIT_STRETCH)
                units.append(CorpusUnit(path, start, end))
                start = end
    return units


def _unit_end(data: mmap.mmap, target: int, size: int, at_blank_lines: bool, stretch: int) -> int:
    if target >= size:
        return size
    line_end = data.find(b"\n", target)
    while line_end != -1:
        if not at_blank_lines or line_end - target > stretch:
            return line_end + 1
        next_end = data.find(b"\n", line_end + 1)
        following_line = data[line_end + 1 : size if next_end == -1 else next_end]
        if not following_line.strip():
            return size if next_end == -1 else next_end + 1
        line_end = next_end
    return size


def read_unit(unit: CorpusUnit) -> DecodedUnit:
    """The unit's lines (any newline convention), with invalid UTF-8 replaced by U+FFFD and counted."""
    with open(unit.path, "rb") as handle:
        handle.seek(unit.start)
        data = handle.read(unit.size)
    try:
        text = data.decode("utf-8")
        invalid, first_line = 0, 0
    except UnicodeDecodeError as error:
        text = data.decode("utf-8", errors="replace")
        invalid = len(text) - len(data.decode("utf-8", errors="ignore"))
        first_line = _count_newlines(unit.path, unit.start) + data.count(b"\n", 0, error.start) + 1
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and not lines[-1]:
        lines.pop()
    return DecodedUnit(lines, invalid, first_line)


def _count_newlines(path: Path, end: int) -> int:
    count = 0
    with open(path, "rb") as handle:
        while handle.tell() < end:
            chunk = handle.read(min(1 << 24, end - handle.tell()))
            if not chunk:
                break
            count += chunk.count(b"\n")
    return count


@dataclass
class InvalidUtf8Report:
    """Invalid UTF-8 found per file, reported once at the end as a warning."""

    by_file: dict[Path, list[int]] = field(default_factory=dict)  # path -> [count, first line]

    def add(self, path: Path, decoded: DecodedUnit) -> None:
        if not decoded.invalid_utf8:
            return
        entry = self.by_file.setdefault(path, [0, decoded.first_invalid_line])
        entry[0] += decoded.invalid_utf8
        entry[1] = min(entry[1], decoded.first_invalid_line)

    @property
    def total(self) -> int:
        return sum(count for count, _ in self.by_file.values())

    def warn(self) -> None:
        for path, (count, first_line) in sorted(self.by_file.items()):
            print(
                f"warning: {path}: {count} invalid UTF-8 byte sequence(s) replaced by U+FFFD "
                f"(first at line {first_line}); re-encode the file as UTF-8 to keep that text",
                file=sys.stderr,
            )


def iter_corpus_lines(files: list[Path], report: InvalidUtf8Report) -> Iterator[str]:
    """Every line of the corpus in order, for single-pass consumers such as vocabulary training."""
    for unit in plan_units(files, at_blank_lines=False):
        decoded = read_unit(unit)
        report.add(unit.path, decoded)
        yield from decoded.lines
