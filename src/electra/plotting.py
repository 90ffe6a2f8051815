"""`electra plot`: training curves from a model folder's metrics.jsonl, drawn with matplotlib."""

from __future__ import annotations

import json
from pathlib import Path

from electra.errors import UserError
from electra.fileio import atomic_output

PANELS = (
    ("total loss", ("loss",)),
    ("generator (MLM) loss", ("mlm_loss",)),
    ("discriminator loss", ("disc_loss",)),
    ("accuracy", ("mlm_accuracy", "sampled_accuracy", "disc_accuracy", "replaced_share")),
    ("learning rate", ("learning_rate",)),
    ("throughput (tokens/s)", ("tokens_per_second",)),
)
COLUMNS = 3


def plot_training_curves(model_dir: str | Path, output: str | Path | None = None) -> Path:
    """Draw every logged metric against the step; returns the PNG's path."""
    log_file = Path(model_dir) / "logs" / "metrics.jsonl"
    if not log_file.exists():
        raise UserError(f"{log_file} does not exist: plot a folder written by `electra pretrain`")
    records = []
    for number, line in enumerate(log_file.read_text(encoding="utf-8", errors="replace").splitlines(), start=1):
        if line.strip():
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                record = None
            if not isinstance(record, dict) or not isinstance(record.get("step"), int):
                raise UserError(f"{log_file}, line {number}: not a logged step ({line[:40]!r}): fix or delete the line")
            records.append(record)
    if not records:
        raise UserError(f"{log_file} holds no logged steps yet")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise UserError("plotting needs matplotlib: pip install matplotlib") from None
    panels = [(title, [key for key in keys if any(key in record for record in records)]) for title, keys in PANELS]
    panels = [(title, keys) for title, keys in panels if keys]
    rows = -(-len(panels) // COLUMNS)
    figure, axes = plt.subplots(rows, COLUMNS, figsize=(4.5 * COLUMNS, 3.4 * rows), squeeze=False)
    for axis in axes.flat[len(panels) :]:
        axis.set_visible(False)
    for axis, (title, keys) in zip(axes.flat, panels, strict=False):
        for key in keys:
            points = [(record["step"], record[key]) for record in records if key in record]
            axis.plot([step for step, _ in points], [value for _, value in points], label=key)
        axis.set_title(title)
        axis.set_xlabel("step")
        axis.grid(alpha=0.3)
        axis.legend(fontsize="small")
    figure.suptitle(Path(model_dir).name)
    figure.tight_layout()
    path = Path(output) if output else log_file.with_name("curves.png")
    path = path if path.suffix or path.is_dir() else path.with_suffix(".png")
    kind = path.suffix[1:].lower()
    formats = figure.canvas.get_supported_filetypes()
    try:
        if path.is_dir():
            raise UserError(f"--output {path} is a folder: give the picture's file name, e.g. {path / 'curves.png'}")
        if kind not in formats:
            raise UserError(
                f"--output {path}: cannot draw .{kind} files; end the name with one of .{', .'.join(formats)}"
            )
        with atomic_output(path) as tmp:  # an interrupted plot never leaves half a picture under the name
            figure.savefig(tmp, dpi=110, format=kind)
    finally:
        plt.close(figure)
    return path
