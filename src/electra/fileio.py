"""Atomic file output: a reader never sees a half-written file under its final name."""

from __future__ import annotations

import fnmatch
import functools
import glob
import json
import os
import shutil
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, TextIO

from electra.errors import UserError

TMP_MARKER = ".tmp-"


@contextmanager
def atomic_output(path: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary path beside `path`; rename it onto `path` only if the block finishes."""
    final = Path(path)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = final.with_name(f".{final.name}{TMP_MARKER}{os.getpid()}")
    remove_abandoned_temporaries(final)
    try:
        yield tmp
        with open(tmp, "rb") as written:
            os.fsync(written.fileno())
        os.chmod(tmp, new_file_mode())
        os.replace(tmp, final)
    finally:
        tmp.unlink(missing_ok=True)


@functools.cache
def new_file_mode() -> int:
    """The permissions open() gives a new file under this process's umask. Outputs get them whatever library wrote
    them: safetensors creates its files readable by their owner only, which a server run as another user cannot
    load."""
    umask = os.umask(0o022)
    os.umask(umask)
    return 0o666 & ~umask


def choose_output_file(given: str | os.PathLike | None, default: Path, *inputs: Path) -> Path:
    """The file a command writes its results to: `given` (its --output), else `default`. Never a folder, and never
    one of the command's inputs, which writing would replace."""
    target = Path(given) if given else default
    if target.is_dir():
        raise UserError(f"--output {target} is a folder: give a file name, e.g. {target / default.name}")
    for source in inputs:
        if target.exists() and source.exists() and target.resolve() == source.resolve():
            raise UserError(
                f"--output {target} is the input {source}: writing there would replace it; name another file"
            )
    return target


def remove_abandoned_temporaries(final: Path) -> None:
    """Delete the temporaries of `final` that killed processes left behind (each can be a whole model copy);
    those of a live process, e.g. another run's, stay."""
    for path in final.parent.glob(f".{glob.escape(final.name)}{TMP_MARKER}*"):
        pid = path.name.rsplit(TMP_MARKER, 1)[-1]
        if not pid.isdigit() or int(pid) == os.getpid():
            continue
        try:
            os.kill(int(pid), 0)
            continue  # alive
        except ProcessLookupError:
            pass
        except PermissionError:
            continue  # alive, another user's
        if path.is_dir():
            shutil.rmtree(path, ignore_errors=True)
        else:
            path.unlink(missing_ok=True)


def write_text_atomic(path: str | os.PathLike, text: str) -> None:
    with atomic_output(path) as tmp:
        tmp.write_text(text, encoding="utf-8")


def is_temporary(path: Path) -> bool:
    """True for a leftover of an interrupted `atomic_output`."""
    return path.name.startswith(".") and TMP_MARKER in path.name


@contextmanager
def folder_lock(folder: Path, command: str, name: str = ".lock") -> Iterator[None]:
    """Hold an exclusive lock on `folder` (its file `name`) while `command` writes in it, so that a second run on
    the same output (a forgotten terminal, an orphaned worker) stops at once instead of both writing there. The
    operating system drops the lock when the process ends, however it ends."""
    try:
        import fcntl
    except ImportError:  # not a POSIX system: no lock
        yield
        return
    created = not folder.exists()
    folder.mkdir(parents=True, exist_ok=True)
    with open(folder / name, "a+", encoding="utf-8") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            raise UserError(
                f"{folder} is in use by another {command} ({holder}): wait for it to finish, or stop it, then run "
                "this again"
            ) from None
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid {os.getpid()}\n")
        handle.flush()
        try:
            yield
        finally:  # a run that failed before writing anything leaves no folder behind that it made for its lock
            if created and [path.name for path in folder.iterdir()] == [name]:
                (folder / name).unlink()
                folder.rmdir()


def check_replaceable(folder: Path, marker: str, inputs: list[Path], ours: list[str]) -> None:
    """Refuse to replace `folder` (as `atomic_directory` does) unless it is new, empty, or an earlier output of the
    same command: it holds `marker`, nothing but names matching the patterns `ours` (what the command writes), and
    none of the command's `inputs`. Never delete a user's own files."""
    if folder.exists() and not folder.is_dir():
        raise UserError(f"{folder} is a file, where the output folder would go: remove it or choose another --output")
    if not folder.is_dir() or not any(folder.iterdir()):
        return
    for source in inputs:
        if source.resolve() == folder.resolve() or source.resolve().is_relative_to(folder.resolve()):
            raise UserError(f"{folder} holds the input {source}: write the output to another folder")
    if not (folder / marker).exists():
        names = ", ".join(sorted(path.name for path in folder.iterdir())[:3])
        raise UserError(
            f"{folder} already holds other files ({names}, ...), which writing there would delete: choose a new "
            "or empty folder"
        )
    foreign = sorted(
        path.name
        for path in folder.iterdir()
        if not is_temporary(path) and not any(fnmatch.fnmatchcase(path.name, pattern) for pattern in ours)
    )
    if foreign:
        raise UserError(
            f"{folder} is an earlier output but also holds {', '.join(foreign[:3])}, which replacing it would "
            "delete: move them away, or write to another folder"
        )


@contextmanager
def atomic_directory(path: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty temporary folder beside `path`; once the block finishes, its files are synced and it
    replaces `path` (whatever was there before) by a rename, so `path` is always absent or complete."""
    final = Path(path)
    tmp = final.with_name(f".{final.name}{TMP_MARKER}{os.getpid()}")
    # The earlier output is renamed aside, not deleted in place: a deletion that fails half-way (or is interrupted)
    # would leave a folder that is neither the old output nor the new one.
    replaced = final.with_name(f"{final.name}.old")
    aside = final.with_name(f".{replaced.name}{TMP_MARKER}{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    remove_abandoned_temporaries(final)
    remove_abandoned_temporaries(replaced)
    tmp.mkdir(parents=True)
    try:
        yield tmp
        for written in tmp.rglob("*"):
            if written.is_file():
                with open(written, "rb") as handle:
                    os.fsync(handle.fileno())
                os.chmod(written, new_file_mode())
        if final.exists():
            os.replace(final, aside)
        try:
            os.replace(tmp, final)
        except BaseException:
            if aside.exists() and not final.exists():
                os.replace(aside, final)
            raise
        if aside.is_dir():
            shutil.rmtree(aside, ignore_errors=True)
        else:
            aside.unlink(missing_ok=True)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def read_weights(path: str | os.PathLike) -> dict:
    """Tensors by name from a safetensors file, or from a PyTorch state dict (`pytorch_model.bin`, as Hugging
    Face's older ELECTRA releases ship), loaded without running any pickled code."""
    import torch  # here, not at the top: the data-building processes import this module and never need torch
    from safetensors.torch import load_file

    path = Path(path)
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as error:  # truncated, corrupt, or not safetensors at all
            raise UserError(f"cannot read weights from {path}: {str(error).splitlines()[0][:200]}") from None
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception:  # torch's message is pages about weights_only; the cause is the file
        raise UserError(
            f"cannot read weights from {path}: it is not a PyTorch state dict that loads without running pickled "
            "code; give a model.safetensors or pytorch_model.bin of an ELECTRA model"
        ) from None
    if not isinstance(state, dict) or not all(isinstance(value, torch.Tensor) for value in state.values()):
        raise UserError(f"{path} is not a state dict of tensors (a PyTorch pytorch_model.bin or .pt file)")
    return state


@contextmanager
def open_text(path: str | os.PathLike, newline: str | None = None) -> Iterator[TextIO]:
    """An input text file, read as UTF-8 (a byte-order mark is skipped). A file in another encoding stops with
    the first line that is not UTF-8 and how to convert it, instead of a decoding traceback."""
    try:
        with open(path, encoding="utf-8-sig", newline=newline) as handle:
            yield handle
    except UnicodeDecodeError:
        raise UserError(not_utf8_message(Path(path))) from None


def read_text(path: str | os.PathLike) -> str:
    with open_text(path) as handle:
        return handle.read()


def require_file(path: Path, what: str, hint: str = "") -> None:
    """A UserError unless `path` is a file: a folder given for a file is said so, not called missing."""
    if path.is_dir():
        raise UserError(f"{what} {path} is a folder: give the file itself")
    if not path.is_file():
        raise UserError(f"{what} {path} does not exist{hint and f': {hint}'}")


def read_json(path: str | os.PathLike) -> Any:
    """A JSON file's content; a damaged one (cut off, hand-edited) is a UserError naming the file and the place."""
    try:
        return json.loads(read_text(path))
    except json.JSONDecodeError as error:
        raise UserError(
            f"{path} is damaged: not valid JSON ({error.msg} at line {error.lineno} column {error.colno}); "
            "restore it, or write it again with the command that made it"
        ) from None


def is_utf8(data: bytes) -> bool:
    try:
        data.decode("utf-8")
    except UnicodeDecodeError:
        return False
    return True


def not_utf8_message(path: Path) -> str:
    with open(path, "rb") as handle:  # UTF-8 never uses the newline byte inside a character: lines decode alone
        number = next((number for number, line in enumerate(handle, 1) if not is_utf8(line)), 1)
    try:  # Chinese text is often saved as GBK; GB18030 is its superset
        path.read_bytes().decode("gb18030")
        source = "GB18030"
    except UnicodeDecodeError:
        source = "<its encoding>"
    return (
        f"{path}:{number}: not UTF-8 text; save the file as UTF-8, e.g. "
        f"`iconv -f {source} -t UTF-8 {path.name} > {path.stem}.utf8{path.suffix}`"
    )
