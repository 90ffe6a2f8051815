"""The `electra` command: one subcommand per job, flags named as in the reference's scripts."""

from __future__ import annotations

import argparse
import ctypes
import errno
import math
import os
import select
import signal
import socket
import sys
from collections.abc import Callable
from pathlib import Path

from safetensors import SafetensorError

from electra import __version__
from electra.config import COMPACT_SHAPE
from electra.errors import UserError

DEFAULT_QUICKSTART_DIR = "electra-quickstart"
QUICKSTART_MODEL = "electra_tiny"
MIN_VOCAB_SIZE = 6  # the five special tokens ([PAD] [UNK] [CLS] [SEP] [MASK]) and at least one more
QUICKSTART_VOCAB_SIZE = 8000
QUICKSTART_STEPS = 300
QUICKSTART_HPARAMS = {
    **COMPACT_SHAPE,
    "train_batch_size": 32,
    "eval_batch_size": 32,
    "num_eval_steps": 10,
    "learning_rate": 2e-4,
    "save_checkpoints_steps": 100,
    "log_every_steps": 10,
    "do_eval": True,
}


def _at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: an integer of at least `minimum` (a batch of 0 or a negative count is a mistake)."""

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a whole number, not {text!r}") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, not {value}")
        return value

    return parse


def _number(minimum: float | None = None) -> Callable[[str], float]:
    """An argparse type: a finite number, of at least `minimum` when one is given (nan and inf are mistakes)."""

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, not {text!r}") from None
        if not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"must be a finite number, not {text!r}")
        if minimum is not None and value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum:g}, not {text}")
        return value

    return parse


def _share(text: str) -> float:
    """An argparse type: a share of the rows, at least 0 and under 1."""
    value = _number(0)(text)
    if value >= 1:
        raise argparse.ArgumentTypeError(f"must be a share under 1 (0.1 is a tenth), not {text}")
    return value


def _port(text: str) -> int:
    """An argparse type: a TCP port number, 1 to 65535."""
    value = _at_least(1)(text)
    if value > 65535:
        raise argparse.ArgumentTypeError(f"must be a port number from 1 to 65535, not {value}")
    return value


def _check_model_name(name: str) -> None:
    """--model-name names one folder under <data-dir>/models: never that folder itself, nor one outside it."""
    separators = {"/", os.sep, os.altsep} - {None}
    if not name or name in (".", "..") or any(separator in name for separator in separators):
        raise UserError(
            f"--model-name {name!r} is not a folder name: give the model's name under <data-dir>/models, "
            "without / or .., e.g. --model-name electra_small"
        )


def _check_run_folder(data_dir: str | os.PathLike, model_name: str) -> None:
    """Where a training run writes: a model name that is one folder, and names TensorBoard's log writer can encode
    (a folder name that is not UTF-8 ended in its UnicodeEncodeError after the run had started)."""
    _check_model_name(model_name)
    for flag, value in (("--data-dir", os.fspath(data_dir)), ("--model-name", model_name)):
        try:
            os.fsencode(value).decode("utf-8")
        except UnicodeDecodeError:
            raise UserError(
                f"{flag} {value!r} is not valid UTF-8, which the training logs (TensorBoard) need: rename it"
            ) from None


def _check_port_free(host: str, port: int) -> None:
    """Bind `host`:`port` as uvicorn will (SO_REUSEADDR, IPv6 when the host has a colon) and let go: a port in
    use or an address this machine lacks is a one-line error before the model is loaded, not uvicorn's log."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_STREAM) as probe:
            if os.name != "nt":  # on Windows SO_REUSEADDR would let two servers share the port
                probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            probe.bind((host, port))
    except socket.gaierror as error:
        raise UserError(f"--host {host!r} is not an address of this machine ({error.strerror})") from None
    except OSError as error:
        if error.errno == errno.EADDRINUSE:
            raise UserError(f"port {port} is in use on {host}: stop what uses it or choose another --port") from None
        if error.errno in (errno.EACCES, errno.EPERM):
            why = " (ports below 1024 need privileges)" if port < 1024 else ""
            raise UserError(f"may not listen on port {port}{why}: choose another --port") from None
        raise UserError(
            f"cannot listen on {host}:{port} ({error.strerror or error}): check --host and --port"
        ) from None


def _truth_value(text: str) -> bool:
    values = {"true": True, "1": True, "yes": True, "false": False, "0": False, "no": False}
    if text.lower() not in values:
        raise argparse.ArgumentTypeError(f"expected true or false, not {text!r}")
    return values[text.lower()]


def _add_toggle(parser: argparse.ArgumentParser, on: str, off: str, dest: str, default: bool, what: str) -> None:
    """`on` alone or with a value (the reference's scripts take `--blanks-separate-docs False`), or `off`."""
    group = parser.add_mutually_exclusive_group()
    group.add_argument(
        on,
        dest=dest,
        nargs="?",
        const=True,
        type=_truth_value,
        metavar="BOOL",
        help=f"{what}{' (default)' if default else ''}",
    )
    group.add_argument(off, dest=dest, action="store_false", help=f"do not {what}{'' if default else ' (default)'}")
    parser.set_defaults(**{dest: default})


def _add_casing_flags(parser: argparse.ArgumentParser) -> None:
    _add_toggle(parser, "--do-lower-case", "--no-lower-case", "do_lower_case", True, "lower-case the text")
    _add_toggle(
        parser, "--do-strip-accents", "--no-strip-accents", "strip_accents", True, "strip accents when lower-casing"
    )


def _add_vocab_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "vocab",
        help="train a WordPiece vocabulary (vocab.txt) on a folder of raw text",
        description="Train a BERT-compatible WordPiece vocabulary with Hugging Face tokenizers. Chinese and "
        "Japanese ideographs become single-character tokens, as in BERT.",
    )
    parser.add_argument("--corpus-dir", required=True, help="folder of UTF-8 text files (searched recursively)")
    parser.add_argument("--output", required=True, help="where to write vocab.txt (a file, or a folder to hold it)")
    parser.add_argument(
        "--vocab-size",
        type=_at_least(MIN_VOCAB_SIZE),
        default=30522,
        help="number of tokens (default: 30522, as BERT)",
    )
    _add_casing_flags(parser)
    parser.add_argument(
        "--limit-alphabet",
        type=_at_least(1),
        default=None,
        help="most single characters to keep (default: those covering 99.99%% of the text)",
    )
    parser.add_argument(
        "--min-frequency", type=_at_least(0), default=2, help="least count of a merged piece (default: 2)"
    )
    parser.set_defaults(run=_run_vocab)


def _add_build_data_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "build-data",
        help="turn a folder of raw text into pre-training shards",
        description="Build pre-training examples as the reference's build_pretraining_dataset.py does and "
        "write them as memory-mappable shards plus pretrain_data.json.",
    )
    parser.add_argument("--corpus-dir", required=True, help="folder of raw text; blank lines separate documents")
    parser.add_argument("--vocab-file", required=True, help="WordPiece vocab.txt")
    parser.add_argument("--output-dir", required=True, help="where to write the shards")
    parser.add_argument("--max-seq-length", type=_at_least(8), default=128, help="tokens per example (default: 128)")
    parser.add_argument(
        "--num-processes",
        type=_at_least(1),
        default=1,
        help="parallel processes; the output does not depend on it (default: 1)",
    )
    _add_toggle(
        parser,
        "--blanks-separate-docs",
        "--no-blanks-separate-docs",
        "blanks_separate_docs",
        True,
        "treat blank lines as document boundaries",
    )
    _add_casing_flags(parser)
    parser.add_argument(
        "--seed", type=int, default=0, help="seed of the random example lengths and segment splits (default: 0)"
    )
    parser.add_argument(
        "--split-sentences",
        action="store_true",
        help="split lines into sentences first (for corpora with one article or paragraph per line, which the "
        "reference would cut to one example each)",
    )
    parser.add_argument("--overwrite", action="store_true", help="replace data built with other settings")
    parser.set_defaults(run=_run_build_data)


def _add_split_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "split",
        help="split a labelled CSV/TSV/JSONL into train/dev/test for electra finetune",
        description="Split a labelled table into <output-dir>/{train,dev,test}.<ext> (the input's format) with a "
        "fixed seed: stratified by label, exact duplicate texts kept once, optionally only N training examples "
        "per class (the same dev and test for every N). split.json records the source's checksum, the settings "
        "and the counts.",
    )
    parser.add_argument("--input", required=True, help="CSV or TSV with a header line, or JSONL")
    parser.add_argument(
        "--output-dir", required=True, help="task folder to write, e.g. <data-dir>/finetuning_data/NAME"
    )
    parser.add_argument("--label-column", required=True, help="column of the label")
    parser.add_argument("--text-column", required=True, help="column of the text (duplicates are found on it)")
    parser.add_argument("--dev", type=_share, default=0.1, help="share of each class for dev (default: 0.1)")
    parser.add_argument("--test", type=_share, default=0.1, help="share of each class for test (default: 0.1)")
    parser.add_argument("--seed", type=_at_least(0), default=0, help="seed of the shuffle (default: 0)")
    parser.add_argument(
        "--train-per-class", type=_at_least(1), default=None, help="keep only N training examples per class"
    )
    parser.set_defaults(run=_run_split)


def _add_quickstart_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "quickstart",
        help="run the whole pipeline on a built-in corpus (no download)",
        description="The main job end to end: gather a default corpus (the Python standard library's "
        "documentation), train a vocabulary, build pre-training data, pre-train a tiny ELECTRA for a few "
        "minutes, evaluate it on held-out data and plot its curves, all under --data-dir.",
    )
    parser.add_argument(
        "--data-dir",
        default=DEFAULT_QUICKSTART_DIR,
        help=f"working folder, laid out as the reference's data-dir (default: ./{DEFAULT_QUICKSTART_DIR})",
    )
    parser.add_argument("--corpus-dir", default=None, help="use this folder of text instead of the built-in corpus")
    parser.add_argument(
        "--vocab-size",
        type=_at_least(MIN_VOCAB_SIZE),
        default=QUICKSTART_VOCAB_SIZE,
        help=f"vocabulary size (default: {QUICKSTART_VOCAB_SIZE}, enough for the small corpus)",
    )
    parser.add_argument("--num-processes", type=_at_least(1), default=1, help="processes for build-data (default: 1)")
    parser.add_argument(
        "--train-steps",
        type=_at_least(1),
        default=QUICKSTART_STEPS,
        help=f"pre-training steps (default: {QUICKSTART_STEPS})",
    )
    parser.set_defaults(run=_run_quickstart)


def _add_pretrain_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "pretrain",
        help="pre-train an ELECTRA (or MLM, or Electric) model",
        description="The reference's run_pretraining.py: reads <data-dir>/pretrain_data and <data-dir>/vocab.txt, "
        "writes <data-dir>/models/<model-name>. Re-running the same command resumes after any "
        "interruption. Several processes: torchrun --nproc-per-node N -m electra.cli pretrain ...",
    )
    parser.add_argument("--data-dir", required=True, help="folder with vocab.txt, pretrain_data/ and models/")
    parser.add_argument("--model-name", required=True, help="the model's folder name under <data-dir>/models")
    parser.add_argument(
        "--hparams",
        default="{}",
        help="JSON object or .json file of hparams with the reference's names, e.g. '{\"debug\": true}'",
    )
    parser.set_defaults(run=_run_pretrain)


def _add_finetune_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "finetune",
        help="fine-tune and evaluate on GLUE, chunking or your own task",
        description="The reference's run_finetuning.py: loads the pre-trained discriminator from "
        "<data-dir>/models/<model-name>/, data from <data-dir>/finetuning_data/<task>/, writes fine-tuned "
        "models and results/ under the model's folder. Your own task: "
        '\'{"task_names": ["tickets"], "tasks": {"tickets": {"type": "classification", '
        '"text_column": "text", "label_column": "label"}}}\' with finetuning_data/tickets/train.csv and dev.csv.',
    )
    parser.add_argument("--data-dir", required=True, help="folder with models/ and finetuning_data/")
    parser.add_argument("--model-name", required=True, help="the pre-trained model's folder name under models/")
    parser.add_argument(
        "--hparams",
        default="{}",
        help='JSON object or .json file with the reference\'s names, e.g. \'{"task_names": ["sst"]}\'',
    )
    parser.add_argument(
        "--task-module",
        action="append",
        default=[],
        metavar="FILE_OR_MODULE",
        help="a Python file (or importable module) defining tasks with @register_task, so that task_names can name "
        "them; may be given more than once",
    )
    parser.set_defaults(run=_run_finetune)


def _add_predict_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "predict",
        help="run a fine-tuned model over a file",
        description="Predict with a fine-tuned model (a finetuning_models/<tasks>_model_<trial>/model folder) "
        "over CSV/TSV/JSONL (named text columns) or plain text (one example a line; for a model of pairs, a tab "
        "between the two texts); writes one JSON line per example.",
    )
    parser.add_argument("--model-dir", required=True, help="a fine-tuned model folder (holds electra_task.json)")
    parser.add_argument("--input", required=True, help="CSV, TSV, JSONL or plain-text file")
    parser.add_argument(
        "--output",
        default=None,
        help="JSONL to write (default: beside the input, reviews.csv giving reviews.predictions.jsonl)",
    )
    parser.add_argument("--text-column", default=None, help="column of the text (default: the task's, or 'text')")
    parser.add_argument("--text-column-2", default=None, help="column of a pair's second text")
    parser.add_argument(
        "--label-column",
        default=None,
        help="column of the true labels (classification, regression): also print and write the scores",
    )
    parser.add_argument(
        "--no-header",
        action="store_true",
        help="the CSV/TSV file has no header line: name its columns by number from 0 (default: as the task was "
        'read in fine-tuning, where a task spec\'s "header": false says so)',
    )
    parser.add_argument("--batch-size", type=_at_least(1), default=32, help="examples per batch (default: 32)")
    parser.add_argument(
        "--precision",
        choices=("auto", "bf16", "fp32"),
        default="auto",
        help="auto: bf16 where the hardware has it (an ONNX export runs as exported)",
    )
    parser.set_defaults(run=_run_predict)


def _add_score_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "score",
        help="pseudo-log-likelihood of texts under a pre-trained model (Electric or masked LM)",
        description="Score each text (plain text, one a line, or JSONL with a text field) with a pre-trained "
        "model: an Electric model's discriminator in one pass a text (the sum of -energy over its tokens), or a "
        "masked LM's classic pseudo-log-likelihood (one masked copy per token). Writes one JSON line per text: "
        "score, mean_score, tokens, token_scores.",
    )
    _add_scoring_arguments(parser)
    parser.add_argument("--input", required=True, help="plain text (one text a line) or JSONL")
    parser.add_argument(
        "--output", default=None, help="JSONL to write (default: beside the input, texts.txt giving texts.scores.jsonl)"
    )
    parser.add_argument("--text-field", default="text", help="JSONL field holding the text (default: text)")
    parser.set_defaults(run=_run_score)


def _add_rerank_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "rerank",
        help="re-rank n-best lists by first-pass score + weight x language-model score",
        description='Re-rank n-best lists (JSONL, one a line: {"id": ..., "hypotheses": [{"text": ..., "score": '
        "first-pass score}, ...]}) by first-pass score + WEIGHT x the model's pseudo-log-likelihood; prints what "
        "changed, writes the new order, and with references the word error rate before and after.",
    )
    _add_scoring_arguments(parser)
    parser.add_argument("--nbest", required=True, help="n-best lists, JSONL")
    parser.add_argument("--weight", type=_number(), default=1.0, help="weight of the language-model score (default: 1)")
    parser.add_argument(
        "--references",
        default=None,
        help='reference transcripts: JSONL {"id", "text"} or plain text, one line per list (or a "reference" '
        "field in each n-best row)",
    )
    parser.add_argument(
        "--output",
        default=None,
        help="JSONL to write (default: beside the n-best file, nbest.jsonl giving nbest.reranked.jsonl)",
    )
    parser.set_defaults(run=_run_rerank)


def _add_scoring_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--model-dir",
        required=True,
        help="a pre-trained model folder (<data-dir>/models/<name>), or its discriminator/ or generator/",
    )
    parser.add_argument(
        "--method",
        choices=("auto", "electric", "mlm"),
        default="auto",
        help="auto: Electric if the model was pre-trained as Electric, else its masked LM",
    )
    parser.add_argument(
        "--batch-size",
        type=_at_least(1),
        default=64,
        help="texts (Electric) or masked copies (MLM) per batch (default: 64)",
    )
    parser.add_argument(
        "--max-seq-length",
        type=_at_least(3),
        default=128,
        help="tokens per window: a longer text is scored in windows of this length overlapping by half "
        "(default: 128; [CLS] x [SEP] needs 3)",
    )
    parser.add_argument(
        "--precision", choices=("auto", "bf16", "fp32"), default="auto", help="auto: bf16 where the hardware has it"
    )


def _add_serve_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "serve",
        help="serve a fine-tuned model over HTTP (JSON)",
        description='An HTTP JSON service for a fine-tuned model: POST /predict with {"texts": [...]} '
        '(or "pairs", "tokens" for taggers, "questions" for question answering), GET /health, OpenAPI docs at '
        '/docs. Concurrent requests share batches. Needs the serve extra: pip install "electra[serve]".',
    )
    parser.add_argument("--model-dir", required=True, help="a fine-tuned model folder (holds electra_task.json)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default: 127.0.0.1, this machine only)")
    parser.add_argument("--port", type=_port, default=8000, help="port, 1 to 65535 (default: 8000)")
    parser.add_argument("--max-examples", type=_at_least(1), default=64, help="examples per request (default: 64)")
    parser.add_argument("--max-chars", type=_at_least(1), default=10_000, help="characters per text (default: 10000)")
    parser.add_argument(
        "--max-batch-size", type=_at_least(1), default=64, help="examples per model batch (default: 64)"
    )
    parser.add_argument(
        "--batch-wait-ms",
        type=_number(0),
        default=2.0,
        help="how long a batch waits for more requests, 0 or more (default: 2)",
    )
    parser.set_defaults(run=_run_serve)


def _add_export_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "export",
        help="export a model to a Hugging Face folder, to ONNX, or to a checkpoint of Google's reference code",
        description="hf: a folder transformers loads with from_pretrained (model and tokenizer), for a fine-tuned "
        "model or a pre-trained model's discriminator and generator. onnx: a fine-tuned model as model.onnx "
        "(dynamic batch and sequence axes), checked against PyTorch with onnxruntime; --quantize int8 stores "
        "its weights as 8-bit integers (smaller, faster on CPUs). tf: a pre-trained model (ELECTRA, masked LM or "
        "Electric) as a TensorFlow checkpoint of the reference (google-research/electra), with its optimizer state "
        "and step, which its run_finetuning.py starts from and its run_pretraining.py continues.",
    )
    parser.add_argument("--model-dir", required=True, help="a fine-tuned model folder or a pre-trained model folder")
    parser.add_argument("--format", choices=("hf", "onnx", "tf"), required=True, help="what to write")
    parser.add_argument("--output", required=True, help="folder to write")
    parser.add_argument(
        "--quantize",
        choices=("int8",),
        default=None,
        help="onnx only: dynamically quantised int8 weights (ONNX Runtime), checked against PyTorch",
    )
    parser.set_defaults(run=_run_export)


def _add_convert_tf_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "convert-tf",
        help="convert a released TensorFlow ELECTRA checkpoint (no TensorFlow needed)",
        description="Convert a checkpoint of Google's reference code (electra_small, electra_base, electra_large, or "
        "one you trained with it) into a model folder: model.safetensors (for continued pre-training with "
        "init_checkpoint), discriminator/ and generator/ (Hugging Face folders, for fine-tuning). Put it at "
        "<data-dir>/models/<name> to fine-tune it with --model-name <name>.",
    )
    parser.add_argument("--checkpoint", required=True, help="checkpoint prefix, one of its files, or its folder")
    parser.add_argument("--output", required=True, help="model folder to write")
    parser.add_argument("--vocab-file", default=None, help="the model's vocab.txt (default: beside the checkpoint)")
    parser.set_defaults(run=_run_convert_tf)


def _add_plot_parser(commands: argparse._SubParsersAction) -> None:
    parser = commands.add_parser(
        "plot",
        help="draw a model's training curves to a PNG",
        description="Plot the total, generator (MLM) and discriminator losses, the accuracies, the learning rate "
        "and the throughput from <model-dir>/logs/metrics.jsonl.",
    )
    parser.add_argument("model_dir", help="a model folder written by `electra pretrain`")
    parser.add_argument("--output", default=None, help="PNG path (default: <model-dir>/logs/curves.png)")
    parser.set_defaults(run=_run_plot)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="electra",
        description="ELECTRA in PyTorch: vocabulary, pre-training data, pre-training, "
        "fine-tuning and serving of text encoders.",
    )
    parser.add_argument("--version", action="version", version=f"electra {__version__}")
    commands = parser.add_subparsers(title="commands", metavar="COMMAND", required=True)
    _add_vocab_parser(commands)
    _add_build_data_parser(commands)
    _add_pretrain_parser(commands)
    _add_split_parser(commands)
    _add_finetune_parser(commands)
    _add_predict_parser(commands)
    _add_score_parser(commands)
    _add_rerank_parser(commands)
    _add_serve_parser(commands)
    _add_export_parser(commands)
    _add_convert_tf_parser(commands)
    _add_plot_parser(commands)
    _add_quickstart_parser(commands)
    for command in commands.choices.values():  # so that a flag it does not know is reported with its usage
        command.set_defaults(command_parser=command)
    return parser


def _vocab_path(output: str) -> Path:
    path = Path(output)
    return path / "vocab.txt" if path.is_dir() or output.endswith(("/", os.sep)) else path


def _train_and_write_vocab(
    corpus_dir: str | Path,
    output: Path,
    vocab_size: int,
    do_lower_case: bool,
    strip_accents: bool,
    limit_alphabet: int | None = None,
    min_frequency: int = 2,
) -> None:
    from electra.corpus import InvalidUtf8Report, list_corpus_files
    from electra.tokenization import train_vocab, write_vocab

    if output.resolve().is_relative_to(Path(corpus_dir).resolve()):
        raise UserError(
            f"--output {output} is inside --corpus-dir {corpus_dir}: the vocabulary would be read as text next time; "
            "write it outside the corpus (the reference's layout: <data-dir>/vocab.txt)"
        )
    report = InvalidUtf8Report()
    tokens = train_vocab(
        list_corpus_files(corpus_dir),
        vocab_size=vocab_size,
        do_lower_case=do_lower_case,
        strip_accents=strip_accents,
        limit_alphabet=limit_alphabet,
        min_frequency=min_frequency,
        report=report,
        show_progress=sys.stderr.isatty(),
    )
    report.warn()
    write_vocab(tokens, output)
    shortfall = "" if len(tokens) == vocab_size else f" (the corpus supports no more than {len(tokens):,})"
    print(f"wrote {len(tokens):,} tokens to {output}{shortfall}")


def _run_vocab(args: argparse.Namespace) -> None:
    _train_and_write_vocab(
        args.corpus_dir,
        _vocab_path(args.output),
        args.vocab_size,
        args.do_lower_case,
        args.strip_accents,
        args.limit_alphabet,
        args.min_frequency,
    )


def _run_build_data(args: argparse.Namespace) -> None:
    from electra.pretrain_data import BuildSettings, build_pretraining_data

    settings = BuildSettings(
        max_seq_length=args.max_seq_length,
        blanks_separate_docs=args.blanks_separate_docs,
        do_lower_case=args.do_lower_case,
        strip_accents=args.strip_accents,
        seed=args.seed,
        split_sentences=args.split_sentences,
    )
    summary = build_pretraining_data(
        args.corpus_dir,
        args.vocab_file,
        args.output_dir,
        settings,
        num_processes=args.num_processes,
        overwrite=args.overwrite,
    )
    print(summary.describe())


def _run_split(args: argparse.Namespace) -> None:
    from electra.datasplit import SplitSettings, describe_split, split_table

    settings = SplitSettings(args.label_column, args.text_column, args.dev, args.test, args.seed, args.train_per_class)
    print(describe_split(split_table(args.input, args.output_dir, settings), args.output_dir))


def _run_pretrain(args: argparse.Namespace) -> None:
    _check_run_folder(args.data_dir, args.model_name)  # before the slow imports
    from electra.config import is_first_process, parse_hparams
    from electra.pretrain import describe, run_pretraining

    outcome = run_pretraining(args.data_dir, args.model_name, parse_hparams(args.hparams))
    if ("train" in outcome or "eval" in outcome) and is_first_process():
        print(describe(outcome))


def _run_finetune(args: argparse.Namespace) -> None:
    _check_run_folder(args.data_dir, args.model_name)  # before the slow imports
    from electra.config import is_first_process, parse_hparams
    from electra.finetune import describe_finetuning, run_finetuning
    from electra.tasks import import_task_module

    for source in args.task_module:
        import_task_module(source)
    outcome = run_finetuning(args.data_dir, args.model_name, parse_hparams(args.hparams))
    if is_first_process():
        print(describe_finetuning(outcome))


def _run_predict(args: argparse.Namespace) -> None:
    from electra.predict import run_prediction

    columns = {"text_column": args.text_column, "text_column_2": args.text_column_2, "label_column": args.label_column}
    header = False if args.no_header else None
    done = run_prediction(
        args.model_dir, args.input, args.output, args.batch_size, columns, precision=args.precision, header=header
    )
    print(f"wrote {done.count:,} prediction{'s' * (done.count != 1)} to {done.path}")
    if done.scores is not None:
        listed = ", ".join(f"{name} {value:.2f}" for name, value in done.scores.items())
        print(f"against {args.label_column}: {listed} (written to {done.path.with_suffix('.scores.json')})")


def _run_score(args: argparse.Namespace) -> None:
    from electra.scoring import run_scoring

    path, method, count = run_scoring(
        args.model_dir,
        args.input,
        args.output,
        args.method,
        args.batch_size,
        args.max_seq_length,
        args.text_field,
        args.precision,
    )
    print(f"wrote {count:,} {method} scores to {path}")


def _run_rerank(args: argparse.Namespace) -> None:
    from electra.scoring import describe_rerank, run_rerank

    summary = run_rerank(
        args.model_dir,
        args.nbest,
        args.weight,
        args.references,
        args.output,
        args.method,
        args.batch_size,
        args.max_seq_length,
        args.precision,
    )
    print(describe_rerank(summary))


def _run_serve(args: argparse.Namespace) -> None:
    _check_port_free(args.host, args.port)  # before importing the serving stack and loading the model
    from electra.serving import ServeLimits, serve

    limits = ServeLimits(
        max_examples=args.max_examples,
        max_chars=args.max_chars,
        max_batch_size=args.max_batch_size,
        batch_wait_ms=args.batch_wait_ms,
    )
    serve(args.model_dir, args.host, args.port, limits)


def _run_export(args: argparse.Namespace) -> None:
    from electra.export import export_hf, export_onnx

    if args.format == "onnx":
        print(f"wrote {export_onnx(args.model_dir, args.output, args.quantize or 'fp32')}")
    elif args.quantize:
        raise UserError("--quantize applies to --format onnx only (the other formats keep the trained weights)")
    elif args.format == "tf":
        from electra.tf_checkpoint import export_tf_checkpoint

        prefix = export_tf_checkpoint(args.model_dir, args.output)
        print(f"wrote {prefix}.index and .data-00000-of-00001 (with checkpoint, vocab.txt and the --hparams files)")
    else:
        for path in export_hf(args.model_dir, args.output):
            print(f"wrote {path}")


def _run_convert_tf(args: argparse.Namespace) -> None:
    from electra.tf_checkpoint import convert_tf_checkpoint

    print(f"wrote {convert_tf_checkpoint(args.checkpoint, args.output, args.vocab_file)}")


def _run_plot(args: argparse.Namespace) -> None:
    from electra.plotting import plot_training_curves

    print(f"wrote {plot_training_curves(args.model_dir, args.output)}")


def _run_quickstart(args: argparse.Namespace) -> None:
    _check_run_folder(args.data_dir, QUICKSTART_MODEL)
    from electra.default_corpus import write_stdlib_corpus
    from electra.fileio import read_json
    from electra.plotting import plot_training_curves
    from electra.pretrain import run_pretraining
    from electra.pretrain_data import BuiltWithOtherSettings, build_pretraining_data
    from electra.tokenization import read_vocab
    from electra.trainer import checkpoint_dirs, checkpoint_step

    data_dir = Path(args.data_dir)
    if args.corpus_dir is None:
        corpus_dir = data_dir / "corpus"
        corpus_file = write_stdlib_corpus(corpus_dir)
        print(
            f"[1/5] default corpus: {corpus_file} ({corpus_file.stat().st_size / 1e6:.1f} MB of Python "
            "standard-library documentation)"
        )
    else:
        corpus_dir = Path(args.corpus_dir)
        print(f"[1/5] corpus: {corpus_dir}")
    vocab_file = data_dir / "vocab.txt"
    model_dir = data_dir / "models" / QUICKSTART_MODEL
    if vocab_file.exists():
        tokens = len(read_vocab(vocab_file))
        print(
            f"[2/5] vocabulary: keeping {vocab_file} ({tokens:,} tokens; delete it to train a new one, for another "
            "corpus or --vocab-size)"
        )
    else:
        print("[2/5] vocabulary: ", end="", flush=True)
        _train_and_write_vocab(corpus_dir, vocab_file, args.vocab_size, do_lower_case=True, strip_accents=True)
    print("[3/5] pre-training data: ", end="", flush=True)
    data_path = data_dir / "pretrain_data"
    try:
        summary = build_pretraining_data(corpus_dir, vocab_file, data_path, num_processes=args.num_processes)
    except BuiltWithOtherSettings as error:  # build-data's own advice names flags that quickstart does not have
        also = f" (and {model_dir}, pre-trained on the old data)" if model_dir.exists() else ""
        raise UserError(
            f"{data_path} already holds pre-training data built with other settings (differing: "
            f"{', '.join(error.differing)}): delete {data_path}{also} to build it again (and {vocab_file} to train "
            "the vocabulary on a new corpus too), or choose another --data-dir"
        ) from None
    if summary.skipped:
        print(
            f"keeping {data_path}, built from this corpus with these settings: nothing to do "
            "(delete it to build it again)"
        )
    else:
        print(summary.describe())
    checkpoints = checkpoint_dirs(model_dir)
    reached = checkpoint_step(checkpoints[-1]) if checkpoints else 0
    if reached >= args.train_steps:
        print(
            f"[4/5] {model_dir} is already pre-trained for {reached} steps: nothing to train (give more "
            "--train-steps to go on, or delete it to start again)"
        )
        hparams = {**QUICKSTART_HPARAMS, "do_train": False}  # evaluated with the settings it was trained with
    else:
        print(f"[4/5] pre-training a tiny ELECTRA for {args.train_steps} steps (re-run to resume if interrupted)")
        # Going on keeps the warm-up the run began with: another one is refused on resuming.
        record = model_dir / "pretrain_config.json"
        warmup = read_json(record)["num_warmup_steps"] if record.is_file() else max(1, args.train_steps // 10)
        hparams = {**QUICKSTART_HPARAMS, "num_train_steps": args.train_steps, "num_warmup_steps": warmup}
    outcome = run_pretraining(data_dir, QUICKSTART_MODEL, hparams)
    results = outcome["eval"]
    print(
        "[5/5] held-out evaluation of the discriminator (chance: AUC 0.5, accuracy "
        f"{1 - results['replaced_share']:.3f}): AUC {results['disc_auc']:.3f}, accuracy "
        f"{results['disc_accuracy']:.3f}, precision {results['disc_precision']:.3f}, recall "
        f"{results['disc_recall']:.3f}; generator accuracy {results['masked_lm_accuracy']:.3f}"
    )
    print(f"      results: {outcome['results_file']}")
    print(f"      curves: {plot_training_curves(outcome['model_dir'])}")


def retain_freed_memory() -> bool:
    """Make glibc keep the memory a training step frees for the next step instead of handing it back to the
    operating system. By default blocks over a threshold (128 KiB, rising to at most 32 MiB) are mmaps, unmapped when
    freed, and the heap's free top is trimmed, so each step faults its activations in again as zeroed pages: about
    240,000 page faults a step of ELECTRA-Small on a CPU, 350,000 of the tiny model at batch 64. With mmap off and the
    heap left untrimmed, steps reuse the same pages. Process-wide, so `electra`'s commands call it (a program using
    the package may too); returns whether the allocator took the settings."""
    if not sys.platform.startswith("linux"):
        return False
    try:
        mallopt = ctypes.CDLL("libc.so.6").mallopt
    except (OSError, AttributeError):  # not glibc (musl, ...)
        return False
    trim_threshold, mmap_max = -1, -4  # glibc's M_TRIM_THRESHOLD, M_MMAP_MAX
    return bool(mallopt(trim_threshold, 2**31 - 1)) and bool(mallopt(mmap_max, 0))


class Terminated(KeyboardInterrupt):
    """SIGTERM, as `kill`, a batch scheduler's time limit or torchrun stopping its workers send it."""


def _raise_terminated(signum: int, frame: object) -> None:
    raise Terminated


def main(argv: list[str] | None = None) -> int:
    if hasattr(sys.stdout, "reconfigure"):  # a path that is not UTF-8 is printed escaped, as on stderr, not a crash
        sys.stdout.reconfigure(errors="backslashreplace")
    args, unknown = build_parser().parse_known_args(argv)
    if unknown:
        args.command_parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    retain_freed_memory()
    # SIGTERM stops a command as Ctrl-C does: unfinished outputs are discarded and worker processes are stopped
    # (without this, build-data's workers outlived it and printed a broken pipe each).
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        args.run(args)
    except UserError as error:
        print(f"electra: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:
        terminated = isinstance(stop, Terminated)
        print(
            f"electra: {'terminated' if terminated else 'interrupted'}; finished files are complete, unfinished ones "
            "were discarded",
            file=sys.stderr,
        )
        return 128 + (signal.SIGTERM if terminated else signal.SIGINT)
    except BrokenPipeError as error:
        if not stdout_reader_gone():
            print(f"electra: error: {file_system_message(error)}", file=sys.stderr)
            return 2
        # The reader of our output left (`| head`, `| true`): stop quietly, as shell tools do. The files are written.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())  # so that exiting does not flush into it
        return 128 + signal.SIGPIPE
    except OSError as error:  # the file system refused: read-only, full, a file where a folder belongs, ...
        print(f"electra: error: {file_system_message(error)}", file=sys.stderr)
        return 2
    except SafetensorError as error:  # its own type, also when the disk fills while writing weights
        full = "os error 28" in str(error) or "os error 122" in str(error)
        hint = FILE_SYSTEM_HINTS[errno.ENOSPC] if full else "check the path and the disk"
        print(f"electra: error: {str(error).splitlines()[0]}; {hint}", file=sys.stderr)
        return 2
    finally:
        signal.signal(signal.SIGTERM, previous)
    return 0


def stdout_reader_gone() -> bool:
    """Whether stdout is a pipe whose reading end was closed (the pipe reports an error to a poll)."""
    try:
        poller = select.poll()
        poller.register(sys.stdout.fileno(), select.POLLOUT)
        return any(events & select.POLLERR for _, events in poller.poll(0))
    except (AttributeError, OSError, ValueError):  # no poll (Windows), or stdout is not a file
        return False


FILE_SYSTEM_HINTS = {
    errno.ENOSPC: "free some space (or write elsewhere), then run the same command again: it resumes or redoes",
    errno.EDQUOT: "free some space (or write elsewhere), then run the same command again: it resumes or redoes",
    errno.EROFS: "write the output to a writable folder",
    errno.EACCES: "write the output where you may write, or fix the permissions",
    errno.EPERM: "write the output where you may write, or fix the permissions",
    errno.ENOTDIR: "a file stands where a folder is needed: move it away or choose another path",
    errno.EEXIST: "a file stands where a folder is needed: move it away or choose another path",
    errno.EISDIR: "a folder stands where a file is needed: give a file name",
    errno.ENOENT: "check the path",
}


def file_system_message(error: OSError) -> str:
    """What the operating system refused, on which path, and what to do about it, in one line."""
    paths = " -> ".join(str(path) for path in (error.filename, error.filename2) if path)
    what = error.strerror or str(error)
    hint = FILE_SYSTEM_HINTS.get(error.errno, "check the path and the disk")
    return f"{what}{f': {paths}' if paths else ''}; {hint}"


if __name__ == "__main__":
    sys.exit(main())
