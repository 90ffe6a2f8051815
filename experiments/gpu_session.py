"""One short GPU lease, end to end: pre-train at GPU budgets, check transfer, check and time the GPU code paths.

In order, each stage with its own time limit inside an overall deadline, so a slow stage costs only the later ones:
  1. tests/test_gpu.py in the background (parity with `transformers` on CUDA, fused attention, bf16 and
     torch.compile against float32 eager, `electra pretrain` / `finetune` / `predict` on the GPU);
  2. a compact Chinese ELECTRA (4 layers, hidden 128: the ticket router's shape) pre-trained for --zh-seconds
     on the staged Chinese data (pretrain_zh plus unlabelled reviews; skipped with --zh-seconds 0);
  3. ELECTRA-Small (the reference's preset and recipe; --en-batch and --en-learning-rate change its batch and
     peak learning rate) pre-trained for --en-seconds on the staged English data;
  4. benchmarks/pretrain_step.py on the GPU, eager (ours against the `transformers` peer, bf16) at batches 128
     and 512, then our step compiled, and with CUDA graphs;
  5. SQuAD 1.1 learning check (finetune_learning_check.py) from the English model and from random weights;
  6. benchmarks/pretrain_padding.py (length_groups 1, 2, 4 on the staged Chinese data) and the CoLA and MRPC
     learning checks, if time is left.
Each pre-training first runs 60 steps to measure the trainer's speed, then sets num_train_steps to fill its
seconds, so the learning-rate schedule runs to its end. Models come back as tar files (split into 15 MB parts)
and every stage's output goes to <out>/session.log.

First build the stage where ../shared/data is (minutes on a CPU), then run on the GPU machine from the
repository root (the device tool: carry .gpu, which .git/info/exclude ignores):
  python experiments/gpu_session.py --build-stage --stage .gpu [--shared-data ../shared/data] [--en-init MODEL_DIR]
  PYTHONPATH=src python3 experiments/gpu_session.py --stage .gpu --out "$OUT" [--deadline 540] [--en-seconds 200]
      [--zh-seconds 70]                 (PYTHONPATH: the GPU machine's image has torch, not this package)
The stage holds en/ (an 8,000-WordPiece vocabulary and pre-training data of pretrain_en, as the learning checks
use; with --en-init, a model brought back from an earlier lease, in bfloat16, under en/init/, and its vocabulary:
the English run then continues that model), zh/ (a vocabulary and data of pretrain_zh plus the unlabelled
reviews of online_shopping_10_cats that are in no dev or test split of the ticket study's seeds 0-2) and
data/{squadv1,sst,cola,mrpc}/.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np

from electra.config import COMPACT_SHAPE

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
ZH_RECIPE = {**COMPACT_SHAPE, "train_batch_size": 256, "learning_rate": 7e-4, "temperature": 2.0}
EN_RECIPE = {"model_size": "small", "train_batch_size": 256, "learning_rate": 5e-4}
CALIBRATION_STEPS = 60
PART_BYTES = 15 * 2**20


class Session:
    def __init__(self, out: Path, deadline: float):
        self.out = out
        self.started = time.monotonic()
        self.deadline = self.started + deadline
        self.log = open(out / "session.log", "a", encoding="utf-8")  # noqa: SIM115 (open for the whole session)

    def left(self) -> float:
        return self.deadline - time.monotonic()

    def say(self, message: str) -> None:
        line = f"== [{time.monotonic() - self.started:5.0f}s] {message}"
        print(line, flush=True)
        self.log.write(line + "\n")
        self.log.flush()

    def run(self, name: str, command: list[str], limit: float) -> bool:
        """Run a command with its output in the log; False (and the session goes on) if it fails or overruns."""
        limit = min(limit, self.left())
        if limit < 10:
            self.say(f"{name}: skipped, {self.left():.0f}s left")
            return False
        self.say(f"{name}: {' '.join(command)[:300]} (limit {limit:.0f}s)")
        began = time.monotonic()
        try:
            done = subprocess.run(command, stdout=self.log, stderr=subprocess.STDOUT, timeout=limit, cwd=REPO)
        except subprocess.TimeoutExpired:
            self.say(f"{name}: stopped at its limit after {time.monotonic() - began:.0f}s")
            return False
        self.say(f"{name}: exit {done.returncode} after {time.monotonic() - began:.0f}s")
        return done.returncode == 0


def electra(*args: str) -> list[str]:
    return [sys.executable, "-m", "electra.cli", *args]


def real_tokens_per_example(data_dir: Path) -> float:
    """Mean non-padding tokens of an example, as the trainer counts them in tokens_per_second (10,000 spread out)."""
    from electra.pretrain_data import PretrainingData
    from electra.tokenization import read_vocab

    data = PretrainingData(data_dir / "pretrain_data", read_vocab(data_dir / "vocab.txt"))
    return float(data.real_lengths(np.linspace(0, len(data) - 1, min(len(data), 10_000)).astype(np.int64)).mean())


def pretrain(session: Session, data_dir: Path, name: str, recipe: dict[str, Any], seconds: float) -> Path | None:
    """Calibrate the speed on 60 steps, then pre-train for about `seconds`; returns the model folder."""
    calibration = f"{name}-calibration"
    quick = {**recipe, "num_train_steps": CALIBRATION_STEPS, "num_warmup_steps": 6, "log_every_steps": 20}
    hparams = json.dumps({**quick, "save_checkpoints_steps": 10**6})
    args = ["pretrain", "--data-dir", str(data_dir), "--model-name", calibration, "--hparams", hparams]
    if not session.run(f"{name} calibration", electra(*args), 120):
        return None
    metrics = (data_dir / "models" / calibration / "logs" / "metrics.jsonl").read_text().splitlines()
    tokens_per_second = json.loads(metrics[-1])["tokens_per_second"]  # steps 41-60: warmed up
    shutil.rmtree(data_dir / "models" / calibration)
    seconds = min(seconds, session.left() - 60)
    if seconds < 30:
        session.say(f"{name}: skipped, {session.left():.0f}s left")
        return None
    # tokens_per_second counts real tokens only: padded data (one short review an example) runs more steps a second.
    step_tokens = recipe["train_batch_size"] * real_tokens_per_example(data_dir)
    steps = max(500, int(0.85 * seconds * tokens_per_second / step_tokens))
    session.say(f"{name}: {tokens_per_second:,.0f} tokens/s -> {steps:,} steps for {seconds:.0f}s")
    full = {
        **recipe,
        "num_train_steps": steps,
        "num_warmup_steps": steps // 10,
        "save_checkpoints_steps": max(100, steps // 4),
        "keep_checkpoint_max": 1,
        "log_every_steps": 100,
        "do_eval": True,
        "num_eval_steps": 20,
        "eval_batch_size": 256,
    }
    args = ["pretrain", "--data-dir", str(data_dir), "--model-name", name, "--hparams", json.dumps(full)]
    session.run(f"{name} pre-training", electra(*args), seconds * 1.3 + 60)
    model_dir = data_dir / "models" / name
    return model_dir if (model_dir / "discriminator").exists() else None


def pack(session: Session, model_dir: Path) -> None:
    """Both exported models, config, metrics and results as <out>/<name>.tar, split into parts the lease returns
    (the generator too, so that a later lease can continue pre-training from the pair: --build-stage --en-init)."""
    tar_path = session.out / f"{model_dir.name}.tar"
    with tarfile.open(tar_path, "w") as tar:
        for relative in ("discriminator", "generator", "pretrain_config.json", "logs/metrics.jsonl", "results"):
            if (model_dir / relative).exists():
                tar.add(model_dir / relative, arcname=f"{model_dir.name}/{relative}")
    data = tar_path.read_bytes()
    if len(data) > PART_BYTES:
        tar_path.unlink()
        for index in range(0, len(data), PART_BYTES):
            (session.out / f"{model_dir.name}.tar.part{index // PART_BYTES}").write_bytes(
                data[index : index + PART_BYTES]
            )
    session.say(f"packed {model_dir.name} ({len(data) / 2**20:.1f} MiB)")


def held_out_reviews(reviews: Path, seeds: range) -> set[str]:
    """The review texts in the dev or test split of any of the ticket study's seeds (its `electra split` settings)."""
    from electra.datasplit import SplitSettings, split_table
    from electra.tasks import read_table_rows

    texts: set[str] = set()
    with tempfile.TemporaryDirectory() as scratch:
        for seed in seeds:
            folder = Path(scratch) / f"seed-{seed}"
            split_table(reviews, folder, SplitSettings(label_column="cat", text_column="review", seed=seed))
            for split in ("dev", "test"):
                texts.update(row["review"] for _, row in read_table_rows(next(folder.glob(f"{split}.*")), header=True))
    return texts


def stage_init_model(source: Path, target: Path) -> None:
    """A previous lease's model (discriminator/ and, when brought back, generator/) as bfloat16 Hugging Face
    folders, half the size for the carry limit; `electra pretrain` continues from them (init_checkpoint)."""
    import torch
    from safetensors.torch import load_file, save_file

    for part in ("discriminator", "generator"):
        if not (source / part / "model.safetensors").is_file():
            continue
        (target / part).mkdir(parents=True, exist_ok=True)
        weights = load_file(str(source / part / "model.safetensors"))
        save_file(
            {name: value.to(torch.bfloat16) for name, value in weights.items()},
            str(target / part / "model.safetensors"),
        )
        for name in ("config.json", "vocab.txt"):
            shutil.copyfile(source / part / name, target / part / name)
    print(f"staged {source} in {target} (bfloat16)")


def build_stage(shared: Path, stage: Path, en_init: Path | None = None) -> None:
    reviews = shared / "zh_cls" / "online_shopping_10_cats" / "online_shopping_10_cats.csv"
    corpus = stage / "zh" / "corpus"
    corpus.mkdir(parents=True, exist_ok=True)
    for article_file in sorted((shared / "pretrain_zh").glob("*.txt")):
        shutil.copyfile(article_file, corpus / article_file.name)
    held_out = held_out_reviews(reviews, range(3))
    with open(reviews, encoding="utf-8-sig", newline="") as handle:
        unlabelled = [row["review"].strip() for row in csv.DictReader(handle)]
    kept = [text for text in unlabelled if text and text not in held_out]
    # One review a document: blank lines separate documents in a corpus file.
    (corpus / "reviews_unlabelled.txt").write_text("\n\n".join(kept) + "\n", encoding="utf-8")
    print(f"{len(kept):,} unlabelled reviews ({len(held_out):,} dev/test texts of seeds 0-2 left out)")
    if en_init is not None:  # continuing a model: its vocabulary, not a new one
        stage_init_model(en_init, stage / "en" / "init")
        shutil.copyfile(en_init / "discriminator" / "vocab.txt", stage / "en" / "vocab.txt")
    for language, source, extra in (
        ("en", shared / "pretrain_en", ["--num-processes", "2"]),
        ("zh", corpus, ["--split-sentences"]),
    ):
        folder = stage / language
        folder.mkdir(parents=True, exist_ok=True)
        if not (language == "en" and en_init is not None):
            vocab = [
                "vocab",
                "--corpus-dir",
                str(source),
                "--output",
                str(folder / "vocab.txt"),
                "--vocab-size",
                "8000",
            ]
            subprocess.run(electra(*vocab), check=True)
        data = ["build-data", "--corpus-dir", str(source), "--vocab-file", str(folder / "vocab.txt")]
        subprocess.run(electra(*data, "--output-dir", str(folder / "pretrain_data"), "--overwrite", *extra), check=True)
    for task in ("squadv1", "sst", "cola", "mrpc"):
        shutil.copytree(shared / task, stage / "data" / task, dirs_exist_ok=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", type=Path, required=True)
    parser.add_argument("--build-stage", action="store_true", help="build --stage from --shared-data, then stop")
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument(
        "--en-init", type=Path, help="with --build-stage: an English model of an earlier lease to continue pre-training"
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-session"))
    parser.add_argument("--deadline", type=float, default=540, help="seconds for the whole session")
    parser.add_argument("--zh-seconds", type=float, default=70)
    parser.add_argument("--en-seconds", type=float, default=200)
    parser.add_argument("--en-batch", type=int, default=EN_RECIPE["train_batch_size"])
    parser.add_argument("--en-learning-rate", type=float, default=EN_RECIPE["learning_rate"])
    parser.add_argument(
        "--compile", nargs="?", const=True, default=False, help='pre-train with "compile": true, or with a mode'
    )
    args = parser.parse_args()
    if args.build_stage:
        build_stage(args.shared_data, args.stage, args.en_init)
        return
    if args.out is None:
        parser.error("--out is required to run the session")
    args.out.mkdir(parents=True, exist_ok=True)
    session = Session(args.out, args.deadline)
    os.environ["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO / "src"), os.environ.get("PYTHONPATH")]))
    os.environ["PYTHONUNBUFFERED"] = "1"
    import torch

    session.say(f"torch {torch.__version__}, {torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}")
    work = args.work
    for language in ("en", "zh"):
        (work / language).mkdir(parents=True, exist_ok=True)
        for item in ("vocab.txt", "pretrain_data"):
            link = work / language / item
            if not link.exists():
                link.symlink_to((args.stage / language / item).resolve())

    with open(args.out / "gpu_tests.log", "w", encoding="utf-8") as tests_log:
        tests = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"],
            stdout=tests_log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        session.say("GPU tests started in the background")
        compile_flag = {"compile": args.compile} if args.compile else {}
        if args.zh_seconds > 0:
            zh_recipe = {**ZH_RECIPE, **compile_flag}
            zh_model = pretrain(session, work / "zh", "zh-compact-gpu", zh_recipe, args.zh_seconds)
            if zh_model:
                pack(session, zh_model)
        en_recipe = {
            **EN_RECIPE,
            "train_batch_size": args.en_batch,
            "learning_rate": args.en_learning_rate,
            **compile_flag,
        }
        if (args.stage / "en" / "init").is_dir():  # staged with --en-init: continue that model
            en_recipe["init_checkpoint"] = str((args.stage / "en" / "init").resolve())
            session.say(f"English model continues from {en_recipe['init_checkpoint']}")
        en_model = pretrain(session, work / "en", "en-small-gpu", en_recipe, args.en_seconds)
        if en_model:
            pack(session, en_model)
        try:
            tests.wait(timeout=max(1.0, min(120.0, session.left() - 120)))
            session.say(f"GPU tests: exit {tests.returncode} (tail of gpu_tests.log below)")
        except subprocess.TimeoutExpired:
            tests.kill()
            session.say("GPU tests: stopped at their limit")
    session.log.write("".join((args.out / "gpu_tests.log").read_text().splitlines(keepends=True)[-15:]))

    check = [
        sys.executable,
        str(HERE / "finetune_learning_check.py"),
        "--pretrain-workdir",
        str(work / "en"),
        "--model-name",
        "en-small-gpu",
        "--shape-hparams",
        json.dumps({"model_size": "small"}),
        "--shared-data",
        str(args.stage.resolve() / "data"),
    ]
    benchmark = [sys.executable, "benchmarks/pretrain_step.py", "--device", "cuda", "--size", "small"]
    eager = ["--steps", "30", "--variants", "peer-bf16,ours-bf16"]
    for batch in ("128", "512"):  # eager steps of small models are bound by launches: does a bigger batch pay?
        session.run(f"pre-training step benchmark, batch {batch}", [*benchmark, "--batch", batch, *eager], 60)
    # Compiling a training step of ELECTRA-Small takes most of a minute per variant on that machine (session 6).
    compiled = ["--batch", "128", "--steps", "30", "--variants", "ours-bf16-compile,ours-bf16-graphs"]
    session.run("compiled step benchmark", [*benchmark, *compiled], 200)
    if en_model:
        session.run(
            "SQuAD 1.1 learning check", [*check, "--workdir", str(work / "ft-squad"), "--tasks", "squadv1"], 200
        )
    # Does length_groups pay on a GPU too? The CPU default is 4 pieces, the GPU's 1 (unmeasured until then).
    padding = ["benchmarks/pretrain_padding.py", "--data-dir", str(work / "zh"), "--shape", "small", "--batch", "256"]
    session.run("length_groups benchmark", [sys.executable, *padding, "--groups", "1,2,4", "--steps", "30"], 90)
    if en_model:
        session.run(
            "CoLA and MRPC learning check", [*check, "--workdir", str(work / "ft-glue"), "--tasks", "cola,mrpc"], 200
        )
    session.say("done")


if __name__ == "__main__":
    main()
