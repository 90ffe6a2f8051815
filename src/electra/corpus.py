"""Raw-text corpora: finding the files, cutting them into work units, decoding them safely.

A corpus is a folder of UTF-8 text files (searched recursively, hidden files skipped) in which blank
lines separate documents, as in the reference. Files are cut into units of about `UNIT_BYTES` at
document boundaries; a unit is the grain of parallel work and of seeding, so that what is built from a
corpus does not depend on how many processes build it.

Compressed files (gzip, bzip2, xz) are read as the text they hold, and tar archives (compressed or not) as
one document per file inside, as the reference's OpenWebText builder reads the corpus's `urlsf_subset*.xz`
archives; each such file is one unit.
"""

from __future__ import annotations

import bz2
import gzip
import lzma
import mmap
import os
import sys
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from electra.errors import UserError
from electra.fileio import is_utf8, not_utf8_message

UNIT_BYTES = 1 << 20
DAMAGED = (OSError, EOFError, lzma.LZMAError, tarfile.TarError)  # what truncated or corrupt packed files raise
UNSUPPORTED_MAGIC = {b"\x28\xb5\x2f\xfd": "zstd", b"PK\x03\x04": "zip", b"7z\xbc\xaf\x27\x1c": "7z"}
# Without a blank line this far past the target, cut at a line end so one huge document cannot serialise work.
MAX_UNIT_STRETCH = 4
NOT_TEXT_MAGIC = {
    b"\x89PNG": "a PNG image",
    b"\xff\xd8\xff": "a JPEG image",
    b"GIF8": "a GIF image",
    b"%PDF": "a PDF document",
    b"\x7fELF": "a program",
    b"\x93NUMPY": "a NumPy array",
    b"SQLite format 3": "an SQLite database",
}
# Beyond this share of invalid UTF-8 sequences in its first HEAD_BYTES a file is in another encoding (or not text):
# decoding it anyway would train on mojibake. Fewer (a stray Latin-1 accent) are replaced and reported.
MOSTLY_NOT_UTF8 = 0.2
HEAD_BYTES = 1 << 16


@dataclass(frozen=True)
class CorpusUnit:
    path: Path
    start: int
    end: int
    packing: str | None = None  # "tar" or "compressed" (the whole file), as found when the units were planned

    @property
    def size(self) -> int:
        return self.end - self.start


@dataclass
class DecodedUnit:
    lines: list[str]
    invalid_utf8: int
    first_invalid_line: int  # 1-based line in the file; 0 when the bytes were valid or the line is unknown
    one_document_per_blank: bool = False  # from an archive: blank lines are exactly the ends of its files
    text_bytes: int = 0  # of text, once decompressed


def compression(head: bytes) -> Any:
    """The stdlib module that decompresses data starting with `head` (its first bytes), or None."""
    if head.startswith(b"\x1f\x8b\x08"):
        return gzip
    if head.startswith(b"BZh") and head[3:4].isdigit() and head[4:10] == b"1AY&SY":
        return bz2
    if head.startswith(b"\xfd7zXZ\x00"):
        return lzma
    return None


def packing(path: Path) -> str | None:
    """How a corpus file is packed: "tar", "compressed", or None for plain text; unreadable packings are errors."""
    with open(path, "rb") as handle:
        head = handle.read(512)
    _refuse_unopened_archive(path, head)
    if head[257:262] == b"ustar":
        return "tar"
    if compression(head):
        try:
            return "tar" if tarfile.is_tarfile(path) else "compressed"
        except DAMAGED:  # reading it says so, with the file's name
            return "compressed"
    return None


def _refuse_unopened_archive(path: Path, head: bytes) -> None:
    for magic, name in UNSUPPORTED_MAGIC.items():
        if head.startswith(magic):
            raise UserError(
                f"{path} is a {name} archive, which the corpus reader does not open: extract it, or repack it as "
                "tar, gzip, bzip2 or xz"
            )


def list_corpus_files(corpus_dir: str | os.PathLike) -> list[Path]:
    """The corpus's text files in a stable order, or a UserError saying what is wrong with the folder."""
    root = Path(corpus_dir)
    hint = "pass --corpus-dir a folder of UTF-8 text files, documents separated by blank lines"
    if not root.exists():
        raise UserError(f"corpus folder {root} does not exist: {hint}")
    if not root.is_dir():
        raise UserError(f"{root} is a file, not a folder: put it in a folder of its own and {hint}")
    files = []
    seen: set[str] = set()  # real paths: a linked folder or file that is also in the corpus is read once
    for path in sorted(_walk(root), key=lambda path: path.relative_to(root).as_posix()):
        real = os.path.realpath(path)
        if real not in seen:
            seen.add(real)
            files.append(path)
    if not files:
        raise UserError(f"corpus folder {root} holds no files: {hint}")
    if all(path.stat().st_size == 0 for path in files):
        raise UserError(f"all {len(files)} file(s) in corpus folder {root} are empty: {hint}")
    for path in files:
        _require_text(path)
    return files


def _walk(root: Path) -> Iterator[Path]:
    """Every file under `root`, following linked folders (each real folder once, so a link loop ends); hidden
    files and folders are skipped."""
    visited: set[str] = set()
    for folder, subfolders, names in os.walk(root, followlinks=True):
        real = os.path.realpath(folder)
        if real in visited:
            subfolders[:] = []
            continue
        visited.add(real)
        subfolders[:] = sorted(name for name in subfolders if not name.startswith("."))  # which alias wins: stable
        for name in names:
            path = Path(folder, name)
            if not name.startswith(".") and path.is_file():
                yield path


def _require_text(path: Path) -> None:
    """A UserError for a file that is not text, or whose text is not UTF-8: both would become training text."""
    with open(path, "rb") as handle:
        head = handle.read(HEAD_BYTES)
    _refuse_unopened_archive(path, head)  # before the UTF-8 test, whose advice (iconv) does not fit an archive
    kind = next((kind for magic, kind in NOT_TEXT_MAGIC.items() if head.startswith(magic)), None)
    if kind:
        raise UserError(f"{path} is {kind}, not text: move it out of the corpus folder")
    if not head or compression(head) or head[257:262] == b"ustar" or is_utf8(head):
        return  # compressed text is tested once unpacked (read_unit)
    if _mostly_not_utf8(head):
        raise UserError(not_utf8_message(path) + " (or move it out of the corpus folder if it is not text)")


def _mostly_not_utf8(data: bytes) -> bool:
    """Whether the start of `data` is mostly not UTF-8 (another encoding, e.g. GBK, or not text at all)."""
    head = data[:HEAD_BYTES]
    decoded = head.decode("utf-8", errors="replace")
    return len(decoded) - len(head.decode("utf-8", errors="ignore")) > MOSTLY_NOT_UTF8 * len(decoded)


def _refuse_packed_non_utf8(path: Path, data: bytes, member: str = "") -> None:
    if _mostly_not_utf8(data):
        inside = f" ({member})" if member else ""
        raise UserError(
            f"{path}{inside} holds text that is mostly not UTF-8 (e.g. GBK): unpack it, convert it (e.g. `iconv -f "
            "GB18030 -t UTF-8`) and pack it again, or move it out of the corpus folder if it is not text"
        )


def plan_units(files: list[Path], unit_bytes: int = UNIT_BYTES, at_blank_lines: bool = True) -> list[CorpusUnit]:
    """Cut every file into consecutive units of about `unit_bytes`, ending after a blank line."""
    units = []
    for path in files:
        size = path.stat().st_size
        if size == 0:
            continue
        kind = packing(path)
        if kind:  # no random access into compressed bytes: the whole file is one unit
            units.append(CorpusUnit(path, 0, size, kind))
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
    kind = unit.packing
    try:
        if kind == "tar":
            return _read_archive(unit.path)
        if kind == "compressed":
            packed = unit.path.read_bytes()
            data = compression(packed[:10]).decompress(packed)
            _refuse_packed_non_utf8(unit.path, data)
            lines, invalid, first_line = _decode(data)
            return DecodedUnit(lines, invalid, first_line, text_bytes=len(data))
    except DAMAGED as error:
        raise UserError(f"{unit.path} is a damaged {kind} file ({error}): download or copy it again") from None
    with open(unit.path, "rb") as handle:
        handle.seek(unit.start)
        data = handle.read(unit.size)
    lines, invalid, first_line = _decode(data)
    if invalid:
        first_line += _count_newlines(unit.path, unit.start)
    return DecodedUnit(lines, invalid, first_line, text_bytes=len(data))


def _decode(data: bytes) -> tuple[list[str], int, int]:
    """Lines of `data`, the count of invalid UTF-8 sequences replaced, and the line of the first (0 if none)."""
    try:
        text = data.decode("utf-8")
        invalid, first_line = 0, 0
    except UnicodeDecodeError as error:
        text = data.decode("utf-8", errors="replace")
        invalid = len(text) - len(data.decode("utf-8", errors="ignore"))
        first_line = data.count(b"\n", 0, error.start) + 1
    lines = text.replace("\r\n", "\n").replace("\r", "\n").split("\n")
    if lines and not lines[-1]:
        lines.pop()
    return lines, invalid, first_line


def _read_archive(path: Path) -> DecodedUnit:
    """Every file in a tar archive, in name order, as one document: its non-blank lines, then a blank line."""
    lines: list[str] = []
    invalid = text_bytes = 0
    with tarfile.open(path) as archive:
        members = sorted((member for member in archive.getmembers() if member.isfile()), key=lambda item: item.name)
        for member in members:
            data = archive.extractfile(member).read()
            if compression(data[:10]) or data.startswith(tuple(UNSUPPORTED_MAGIC)):
                raise UserError(
                    f"{path} holds compressed archives ({member.name}, ...): extract it first (`tar xf {path.name}`, "
                    "as for OpenWebText's openwebtext.tar.xz) and pass the extracted folder as --corpus-dir"
                )
            _refuse_packed_non_utf8(path, data, member.name)
            member_lines, member_invalid, _ = _decode(data)
            invalid += member_invalid
            text_bytes += len(data)
            lines += [line for line in member_lines if line.strip()] + [""]
    return DecodedUnit(lines, invalid, 0, one_document_per_blank=True, text_bytes=text_bytes)


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
            where = f" (first at line {first_line})" if first_line else ""
            print(
                f"warning: {path}: {count} invalid UTF-8 byte sequence(s) replaced by U+FFFD{where}; "
                "re-encode the text as UTF-8 to keep it",
                file=sys.stderr,
            )


def iter_corpus_lines(files: list[Path], report: InvalidUtf8Report) -> Iterator[str]:
    """Every line of the corpus in order, for single-pass consumers such as vocabulary training."""
    for unit in plan_units(files, at_blank_lines=False):
        decoded = read_unit(unit)
        report.add(unit.path, decoded)
        yield from decoded.lines
