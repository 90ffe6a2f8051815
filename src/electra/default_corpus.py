"""The built-in default corpus: documentation strings of Python's standard library.

Every machine that runs the toolkit has this real English text, so the quick start needs no download.
Sources are parsed, never imported (some standard modules act on import), one module a document,
one docstring paragraph a line.
"""

from __future__ import annotations

import ast
import os
import sysconfig
import warnings
from collections.abc import Iterator
from pathlib import Path

from electra.errors import UserError
from electra.fileio import write_text_atomic

SKIPPED_DIRS = {"site-packages", "dist-packages", "test", "tests", "idle_test", "__pycache__"}
DOCSTRING_OWNERS = (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)


def stdlib_documents(stdlib_dir: str | os.PathLike | None = None) -> Iterator[list[str]]:
    """One list of paragraphs per standard-library module that has docstrings, in a stable order."""
    root = Path(stdlib_dir or sysconfig.get_paths()["stdlib"])
    for path in sorted(root.rglob("*.py")):
        if SKIPPED_DIRS.intersection(path.relative_to(root).parts):
            continue
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", SyntaxWarning)
                tree = ast.parse(path.read_bytes(), filename=str(path))
        except (SyntaxError, ValueError, OSError):
            continue  # the library ships a few deliberately broken files for its own tests
        paragraphs = []
        for node in ast.walk(tree):
            if isinstance(node, DOCSTRING_OWNERS):
                docstring = ast.get_docstring(node, clean=True)
                if docstring:
                    paragraphs.extend(" ".join(block.split()) for block in docstring.split("\n\n"))
        paragraphs = [paragraph for paragraph in paragraphs if paragraph]
        if paragraphs:
            yield paragraphs


def write_stdlib_corpus(output_dir: str | os.PathLike, stdlib_dir: str | os.PathLike | None = None) -> Path:
    """Write the default corpus as one text file, blank lines between documents; returns its path."""
    documents = ["\n".join(paragraphs) for paragraphs in stdlib_documents(stdlib_dir)]
    if not documents:
        raise UserError(
            "found no Python standard-library sources to build the default corpus from: "
            "pass --corpus-dir a folder of your own text"
        )
    path = Path(output_dir) / "python_stdlib_docstrings.txt"
    text = "\n\n".join(documents) + "\n"
    # Rewritten only when it differs: a rewrite's new modification time would tell build-data the corpus changed.
    if not path.is_file() or path.read_text(encoding="utf-8") != text:
        path.parent.mkdir(parents=True, exist_ok=True)
        write_text_atomic(path, text)
    return path
