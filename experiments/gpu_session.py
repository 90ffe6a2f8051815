"""One short GPU lease, end to end: pre-train at GPU budgets, run the fine-tuning learning check, check the GPU code.

In order, each stage with its own time limit inside an overall deadline, so a slow stage costs only the later ones:
  1. tests/test_gpu.py in the background (parity with `transformers` on CUDA, fused attention, bf16 and
     torch.compile against float32 eager, `electra pretrain` / `finetune` / `predict` on the GPU);
  2. side by side: ELECTRA-Small (the reference's preset at temperature 1; batch 512 and learning rate 1e-3 by
     default, --en-batch / --en-learning-rate) pre-trained for --en-seconds on the staged English data, and an
     ELECTRA-Small pre-trained for --zh-seconds on pretrain_zh (batch 256, learning rate 5e-4; --zh-seconds 0
     skips it);
  3. the fine-tuning learning check (finetune_learning_check.py): SST-2, CoLA, MRPC and waimai_10k from both
     models and from random weights of their shape, --trials seeds each, every trial a process of its own and 16
     side by side (a small model's eager step is bound by kernel launches, so the GPU has room for several);
  4. the SQuAD 1.1 learning check, if time is left;
  5. with --benchmarks: benchmarks/pretrain_step.py on the GPU (eager at batches 128 and 512, compiled, CUDA
     graphs), benchmarks/pretrain_padding.py and benchmarks/finetune.py (SST-2 fine-tuning and evaluation).
Each pre-training first runs 60 steps to measure the trainer's speed, then sets num_train_steps to fill its
seconds, so the learning-rate schedule runs to its end. Models come back as tar files (split into 15 MB parts), the
fine-tuning results as <out>/finetuning.tar, and every stage's output goes to <out>/session.log.

First build the stage where ../shared/data is (minutes on a CPU), then run on the GPU machine from the
repository root (the device tool: carry .gpu, which .git/info/exclude ignores):
  python experiments/gpu_session.py --build-stage --stage .gpu [--shared-data ../shared/data]
      [--en-init MODEL_DIR | --vocab-size N]
  PYTHONPATH=src python3 experiments/gpu_session.py --stage .gpu --out "$OUT" [--deadline 540] [--en-seconds 200]
      [--zh-seconds 200] [--trials 3] [--benchmarks]   (PYTHONPATH: the GPU machine's image has torch, not this package)
The vocabulary test (does a vocabulary of whole words let pre-training help SST-2?): build the stage with
--also-vocab-size 30522, which adds en-v30522/ (pretrain_en with a vocabulary of that size). The session then
pre-trains an English ELECTRA-Small on each English vocabulary side by side, from scratch at the same budget, and
runs the learning check on SST-2 alone for each (every model against random weights of its own shape); run it with
--zh-seconds 0 to give the GPU to the English models.
The stage holds en/ (a WordPiece vocabulary of --vocab-size pieces, 8,000 by default, and pre-training data of
pretrain_en split into sentences; with --en-init, a model brought back from an earlier lease, in bfloat16, under
en/init/, and its vocabulary: the English run then continues that model), zh/ (the same of pretrain_zh, as the CPU
check builds it) and data/ (squadv1, sst, cola, mrpc and zh_cls/waimai_10k); about 35 MB.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
# Session 11 continued ELECTRA-Small at batch 512 and twice the reference's learning rate (5e-4 at batch 128): the
# eager step is launch-bound, so four times the batch costs little more time. pretrain_zh is 1.1 M tokens, a
# hundredth of pretrain_en's examples: batch 256 keeps its epochs from being a handful of steps.
EN_RECIPE = {"model_size": "small", "train_batch_size": 512, "learning_rate": 1e-3}
ZH_RECIPE = {"model_size": "small", "train_batch_size": 256, "learning_rate": 5e-4}
CALIBRATION_STEPS = 60
FINETUNING_PROCESSES = 16  # one a CPU core of the lease's machine
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

    def run(self, name: str, command: list[str], limit: float, threads: int | None = None) -> bool:
        """Run a command with its output in the log; False (and the session goes on) if it fails or overruns.
        `threads` caps its CPU threads, for commands that share the machine's cores."""
        limit = min(limit, self.left())
        if limit < 10:
            self.say(f"{name}: skipped, {self.left():.0f}s left")
            return False
        self.say(f"{name}: {' '.join(command)[:300]} (limit {limit:.0f}s)")
        began = time.monotonic()
        # A session of its own, so that a stop reaches the command's children too: the learning check's fine-tuning
        # processes would otherwise go on using the GPU through the stages after it.
        environment = {**os.environ, "OMP_NUM_THREADS": str(threads)} if threads else None
        process = subprocess.Popen(
            command, stdout=self.log, stderr=subprocess.STDOUT, cwd=REPO, start_new_session=True, env=environment
        )
        try:
            process.wait(timeout=limit)
        except subprocess.TimeoutExpired:
            os.killpg(process.pid, signal.SIGKILL)
            process.wait()
            self.say(f"{name}: stopped at its limit after {time.monotonic() - began:.0f}s")
            return False
        self.say(f"{name}: exit {process.returncode} after {time.monotonic() - began:.0f}s")
        return process.returncode == 0


def electra(*args: str) -> list[str]:
    return [sys.executable, "-m", "electra.cli", *args]


def real_tokens_per_example(data_dir: Path) -> float:
    """Mean non-padding tokens of an example, as the trainer counts them in tokens_per_second (10,000 spread out)."""
    from electra.pretrain_data import PretrainingData
    from electra.tokenization import read_vocab

    data = PretrainingData(data_dir / "pretrain_data", read_vocab(data_dir / "vocab.txt"))
    return float(data.real_lengths(np.linspace(0, len(data) - 1, min(len(data), 10_000)).astype(np.int64)).mean())


def pretrain(
    session: Session, data_dir: Path, name: str, recipe: dict[str, Any], seconds: float, threads: int
) -> Path | None:
    """Calibrate the speed on 60 steps, then pre-train for about `seconds` with `threads` CPU threads (pre-trainings
    side by side would otherwise each start one a core, and spinning threads that share cores stall); returns the
    model folder."""
    calibration = f"{name}-calibration"
    quick = {**recipe, "num_train_steps": CALIBRATION_STEPS, "num_warmup_steps": 6, "log_every_steps": 20}
    hparams = json.dumps({**quick, "save_checkpoints_steps": 10**6})
    args = ["pretrain", "--data-dir", str(data_dir), "--model-name", calibration, "--hparams", hparams]
    if not session.run(f"{name} calibration", electra(*args), 120, threads):
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
        "save_checkpoints_steps": max(100, steps // 8),  # what an overrun loses
        "keep_checkpoint_max": 1,
        "log_every_steps": 100,
        "do_eval": True,
        "num_eval_steps": 20,
        "eval_batch_size": 256,
    }
    args = ["pretrain", "--data-dir", str(data_dir), "--model-name", name, "--hparams", json.dumps(full)]
    model_dir = data_dir / "models" / name
    finished = session.run(f"{name} pre-training", electra(*args), seconds * 1.3 + 60, threads)
    if not finished and (model_dir / "checkpoints").is_dir():
        # Stopped at its limit (a slower step than calibrated): the same run asking for fewer steps than its
        # newest checkpoint holds trains none and exports that checkpoint, so the lease keeps a model.
        args[-1] = json.dumps({**full, "num_train_steps": 1})
        session.run(f"{name}: export of its newest checkpoint", electra(*args), 120, threads)
    return model_dir if (model_dir / "discriminator").exists() else None


def pack(session: Session, model_dir: Path) -> None:
    """Both exported models (in bfloat16: two ELECTRA-Smalls in float32 exceed the lease's 64 MiB return limit),
    config, metrics and results as <out>/<name>.tar, split into parts the lease returns (the generator too, so that a
    later lease can continue pre-training from the pair: --build-stage --en-init)."""
    half = session.out.parent / f"{model_dir.name}-bfloat16"
    stage_init_model(model_dir, half)
    tar_path = session.out / f"{model_dir.name}.tar"
    with tarfile.open(tar_path, "w") as tar:
        for part in ("discriminator", "generator"):
            if (half / part).exists():
                tar.add(half / part, arcname=f"{model_dir.name}/{part}")
        for relative in ("pretrain_config.json", "logs/metrics.jsonl", "results"):
            if (model_dir / relative).exists():
                tar.add(model_dir / relative, arcname=f"{model_dir.name}/{relative}")
    shutil.rmtree(half)
    data = tar_path.read_bytes()
    if len(data) > PART_BYTES:
        tar_path.unlink()
        for index in range(0, len(data), PART_BYTES):
            (session.out / f"{model_dir.name}.tar.part{index // PART_BYTES}").write_bytes(
                data[index : index + PART_BYTES]
            )
    session.say(f"packed {model_dir.name} ({len(data) / 2**20:.1f} MiB)")


def stage_init_model(source: Path, target: Path) -> None:
    """A model's discriminator/ and generator/ (where present) as bfloat16 Hugging Face folders, half the size for
    the lease's carry and return limits; `electra pretrain` continues from them (init_checkpoint) and `electra
    finetune` loads them into float32 weights."""
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


def build_stage(
    shared: Path, stage: Path, en_init: Path | None = None, en_vocab_size: int = 8000, also: list[int] | None = None
) -> None:
    if en_init is not None:  # continuing a model: its vocabulary, not a new one
        stage_init_model(en_init, stage / "en" / "init")
        shutil.copyfile(en_init / "discriminator" / "vocab.txt", stage / "en" / "vocab.txt")
    # Both corpora have a paragraph a line, which the reference's reading cuts to one example each (30% of
    # pretrain_en dropped, 76% of pretrain_zh): split into sentences, 12% and 20% are (the end of each example).
    for language, extra in (("en", ["--num-processes", "2"]), ("zh", [])):
        source = shared / f"pretrain_{language}"
        folder = stage / language
        folder.mkdir(parents=True, exist_ok=True)
        if not (language == "en" and en_init is not None):
            vocab = ["vocab", "--corpus-dir", str(source), "--output", str(folder / "vocab.txt")]
            size = en_vocab_size if language == "en" else 8000
            subprocess.run(electra(*vocab, "--vocab-size", str(size)), check=True)
        data = ["build-data", "--corpus-dir", str(source), "--vocab-file", str(folder / "vocab.txt")]
        data += ["--output-dir", str(folder / "pretrain_data"), "--overwrite", "--split-sentences", *extra]
        subprocess.run(electra(*data), check=True)
    for size in also or []:  # the vocabulary test: the same text under another vocabulary
        folder = stage / f"en-v{size}"
        vocab = ["vocab", "--corpus-dir", str(shared / "pretrain_en"), "--output", str(folder / "vocab.txt")]
        subprocess.run(electra(*vocab, "--vocab-size", str(size)), check=True)
        data = ["build-data", "--corpus-dir", str(shared / "pretrain_en"), "--vocab-file", str(folder / "vocab.txt")]
        data += [
            "--output-dir",
            str(folder / "pretrain_data"),
            "--overwrite",
            "--split-sentences",
            "--num-processes",
            "2",
        ]
        subprocess.run(electra(*data), check=True)
    for task in ("squadv1", "sst", "cola", "mrpc", "zh_cls/waimai_10k"):
        shutil.copytree(shared / task, stage / "data" / task, dirs_exist_ok=True)


def collect_results(session: Session, check_dir: Path) -> None:
    """Every fine-tuning run's results and log added to <out>/finetuning.tar, finished or not (a run stopped at the
    deadline still has the trials it completed in its log); one file, as the lease returns at most 8, two folders
    down."""
    with tarfile.open(session.out / "finetuning.tar", "a") as tar:
        for path in [*check_dir.glob("*/models/*/results/*"), *check_dir.glob("logs/*.log")]:
            tar.add(path, arcname=f"{check_dir.name}/{path.relative_to(check_dir)}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", type=Path, required=True)
    parser.add_argument("--build-stage", action="store_true", help="build --stage from --shared-data, then stop")
    parser.add_argument("--shared-data", type=Path, default=REPO.parent / "shared" / "data")
    parser.add_argument(
        "--en-init", type=Path, help="with --build-stage: an English model of an earlier lease to continue pre-training"
    )
    parser.add_argument(
        "--vocab-size",
        type=int,
        default=8000,
        help="with --build-stage, without --en-init: the English vocabulary's size (the reference's is 30,522)",
    )
    parser.add_argument(
        "--also-vocab-size",
        type=int,
        action="append",
        default=[],
        help="with --build-stage: stage pretrain_en under a vocabulary of this size too (the vocabulary test)",
    )
    parser.add_argument("--out", type=Path)
    parser.add_argument("--work", type=Path, default=Path("/tmp/gpu-session"))
    parser.add_argument("--deadline", type=float, default=540, help="seconds for the whole session")
    parser.add_argument("--en-seconds", type=float, default=200)
    parser.add_argument("--zh-seconds", type=float, default=200)
    parser.add_argument("--en-batch", type=int, default=EN_RECIPE["train_batch_size"])
    parser.add_argument("--en-learning-rate", type=float, default=EN_RECIPE["learning_rate"])
    parser.add_argument("--trials", type=int, default=3, help="fine-tuning seeds of each learning-check run")
    parser.add_argument("--benchmarks", action="store_true", help="time the pre-training step on the GPU at the end")
    parser.add_argument(
        "--compile", nargs="?", const=True, default=False, help='pre-train with "compile": true, or with a mode'
    )
    args = parser.parse_args()
    if args.build_stage:
        if args.en_init is not None and args.vocab_size != 8000:
            parser.error("--vocab-size builds a new vocabulary; --en-init continues a model with its own")
        build_stage(args.shared_data, args.stage, args.en_init, args.vocab_size, args.also_vocab_size)
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
    other_vocabularies = sorted(path.name for path in args.stage.glob("en-v*") if path.is_dir())
    for folder in ("en", "zh", *other_vocabularies):
        (work / folder).mkdir(parents=True, exist_ok=True)
        for item in ("vocab.txt", "pretrain_data"):
            link = work / folder / item
            if not link.exists():
                link.symlink_to((args.stage / folder / item).resolve())

    with open(args.out / "gpu_tests.log", "w", encoding="utf-8") as tests_log:
        tests = subprocess.Popen(
            [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "tests/test_gpu.py"],
            stdout=tests_log,
            stderr=subprocess.STDOUT,
            cwd=REPO,
        )
        session.say("GPU tests started in the background")
        compile_flag = {"compile": args.compile} if args.compile else {}
        en_recipe = {
            **EN_RECIPE,
            "train_batch_size": args.en_batch,
            "learning_rate": args.en_learning_rate,
            **compile_flag,
        }
        if (args.stage / "en" / "init").is_dir():  # staged with --en-init: continue that model
            en_recipe["init_checkpoint"] = str((args.stage / "en" / "init").resolve())
            session.say(f"English model continues from {en_recipe['init_checkpoint']}")
        plans = [(work / "en", "en-small-gpu", en_recipe, args.en_seconds)]
        # The vocabulary test: the same recipe from scratch under each other vocabulary (never from --en-init's model).
        fresh = {key: value for key, value in en_recipe.items() if key != "init_checkpoint"}
        plans += [(work / name, f"en-small-{name[3:]}", fresh, args.en_seconds) for name in other_vocabularies]
        if args.zh_seconds > 0:
            plans.append((work / "zh", "zh-small-gpu", {**ZH_RECIPE, **compile_flag}, args.zh_seconds))
        threads = max(1, (os.cpu_count() or 1) // len(plans))
        with ThreadPoolExecutor(len(plans)) as pool:  # side by side: each eager step leaves the GPU mostly idle
            models = list(pool.map(lambda plan: pretrain(session, *plan, threads), plans))
        en_model, english_models = models[0], [model for model in models[: 1 + len(other_vocabularies)] if model]
        zh_model = models[-1] if args.zh_seconds > 0 else None
        for model in models:
            if model:
                pack(session, model)
        try:
            tests.wait(timeout=max(1.0, min(120.0, session.left() - 300)))
            session.say(f"GPU tests: exit {tests.returncode} (tail of gpu_tests.log below)")
        except subprocess.TimeoutExpired:
            tests.kill()
            session.say("GPU tests: stopped at their limit")
    session.log.write("".join((args.out / "gpu_tests.log").read_text().splitlines(keepends=True)[-15:]))

    def learning_check(model_dir: Path) -> list[str]:
        """finetune_learning_check.py on a model pre-trained above (<work>/<folder>/models/<name>)."""
        script = str(HERE / "finetune_learning_check.py")
        model = ["--pretrain-workdir", str(model_dir.parents[1]), "--model-name", model_dir.name]
        return [sys.executable, script, *model, "--shared-data", str(args.stage.resolve() / "data")]

    # Every trial a process of its own: run by run, SST-2's three 1-epoch trials alone outlasted session 16's four
    # minutes of fine-tuning, eight runs side by side (65 ms a step each).
    side_by_side = ["--trials", str(args.trials), "--split-trials"]
    if other_vocabularies:  # the vocabulary test: SST-2 alone, for each English model, all at once
        parallel = str(max(1, FINETUNING_PROCESSES // max(1, len(english_models))))
        sst = ["--tasks", "sst", *side_by_side, "--parallel", parallel]
        folders = {model.parents[1].name: model for model in english_models}  # under <work>: en, en-v30522, ...
        commands = {
            folder: [*learning_check(model), "--workdir", str(work / f"ft-{folder}"), *sst]
            for folder, model in folders.items()
        }

        def sst_check(folder: str) -> bool:
            return session.run(f"SST-2 check of {folder}", commands[folder], session.left() - 30)

        with ThreadPoolExecutor(max(1, len(commands))) as pool:
            list(pool.map(sst_check, commands))
        for folder in commands:
            collect_results(session, work / f"ft-{folder}")
    elif en_model:
        check = learning_check(en_model)
        tasks = "sst,cola,mrpc" + (",waimai" if zh_model else "")
        zh = ["--zh-model", str(zh_model)] if zh_model else []
        glue = [*check, "--workdir", str(work / "ft"), "--tasks", tasks, *zh, *side_by_side]
        glue += ["--parallel", str(FINETUNING_PROCESSES)]
        if not session.run("learning check", glue, session.left() - 30):
            session.run("learning check's table so far", [*glue, "--report"], 20)
        collect_results(session, work / "ft")
        squad = [*check, "--workdir", str(work / "ft-squad"), "--tasks", "squadv1", "--parallel", "2"]
        session.run("SQuAD 1.1 learning check", squad, 200)
        collect_results(session, work / "ft-squad")
    if args.benchmarks:
        benchmark = [sys.executable, "benchmarks/pretrain_step.py", "--device", "cuda", "--size", "small"]
        eager = ["--steps", "30", "--variants", "peer-bf16,ours-bf16"]
        for batch in ("128", "512"):  # eager steps of small models are bound by launches: does a bigger batch pay?
            session.run(f"pre-training step benchmark, batch {batch}", [*benchmark, "--batch", batch, *eager], 60)
        # Compiling a training step of ELECTRA-Small takes most of a minute per variant on that machine (session 6).
        compiled = ["--batch", "128", "--steps", "30", "--variants", "ours-bf16-compile,ours-bf16-graphs"]
        session.run("compiled step benchmark", [*benchmark, *compiled], 200)
        padding = ["benchmarks/pretrain_padding.py", "--data-dir", str(work / "zh"), "--shape", "small"]
        padding += ["--batch", "256", "--groups", "1,2,4", "--steps", "30"]
        session.run("length_groups benchmark", [sys.executable, *padding], 120)  # its peer too
        finetuning = ["benchmarks/finetune.py", "--device", "cuda", "--train-steps", "50"]
        finetuning += ["--vocab", str(work / "en" / "vocab.txt"), "--data", str(args.stage.resolve() / "data" / "sst")]
        finetuning += ["--variants", "peer-fp32,peer-bf16,ours-fp32,ours-auto"]
        session.run("fine-tuning benchmark", [sys.executable, *finetuning], 120)
    session.say("done")


if __name__ == "__main__":
    main()
