from __future__ import annotations

import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"

ENGLISH_DOCUMENTS = [
    [
        "The quick brown fox jumps over the lazy dog.",
        "Foxes are small omnivorous mammals; they live on every continent except Antarctica.",
        "A fox's diet includes rodents, birds, fruit and insects.",
    ],
    [
        "Café au lait is coffee with hot milk, served in France and elsewhere.",
        "NAÏVE spellings keep the diaeresis: naïve, coöperate, Zoë.",
    ],
    [
        "Python is a programming language.",
        "It emphasises readability, and its standard library is large.",
        "Guido van Rossum released the first version in 1991.",
        "Version 3.0, released in 2008, was not backward compatible.",
    ],
    ["Short document."],
]

CHINESE_DOCUMENTS = [
    ["数学是利用符号语言研究数量、结构、变化以及空间等概念的一门学科。", "数学家们拓展这些概念。"],
    ["客服工单需要尽快分配给正确的团队处理。", "退款问题交给财务组，物流问题交给仓储组。"],
]


def write_corpus(directory: Path, documents: list[list[str]], name: str = "corpus.txt") -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    (directory / name).write_text("\n\n".join("\n".join(doc) for doc in documents) + "\n", encoding="utf-8")
    return directory


def run_torchrun(*args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess:
    """Two processes on this machine's CPUs (gloo), one thread each. On failure (with `check`), the assertion shows
    what the processes themselves printed: torchrun's own report of a failed rank is a long traceback that says
    only how the process ended."""
    torchrun = shutil.which("torchrun")
    assert torchrun, "torchrun is not on PATH: it comes with torch, in the same bin folder as python"
    done = subprocess.run(
        [torchrun, "--standalone", "--nproc-per-node", "2", *args],
        capture_output=True,
        text=True,
        env={**os.environ, "OMP_NUM_THREADS": "1"},
        timeout=timeout,
    )
    ranks_said = re.split(r"^.*\] failed \(exitcode: ", done.stderr, maxsplit=1, flags=re.MULTILINE)[0]
    said = f"torchrun exited with {done.returncode}; the processes printed:\n{ranks_said[-4000:]}"
    assert done.returncode == 0 or not check, said
    return done


def shared_data(relative: str) -> Path:
    """A file or folder of the real data beside the project. Tests that need it skip where it is absent (a user's
    machine); CI sets ELECTRA_REQUIRE_SHARED_DATA, so that there a missing file fails instead of passing unseen."""
    path = SHARED_DATA / relative
    if not path.exists():
        message = f"real data {path} is absent (it ships beside the project as ../shared/data)"
        if os.environ.get("ELECTRA_REQUIRE_SHARED_DATA"):
            pytest.fail(f"{message}, and ELECTRA_REQUIRE_SHARED_DATA is set")
        pytest.skip(message)
    return path


@pytest.fixture
def english_corpus(tmp_path: Path) -> Path:
    # Repeated so that the vocabulary trainer sees words often enough to merge them.
    return write_corpus(tmp_path / "corpus_en", ENGLISH_DOCUMENTS * 3)


@pytest.fixture
def chinese_corpus(tmp_path: Path) -> Path:
    return write_corpus(tmp_path / "corpus_zh", CHINESE_DOCUMENTS * 3)


@pytest.fixture(scope="session")
def pretrain_data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A reference-style data dir (vocab.txt, pretrain_data/) small enough for many short training runs."""
    from electra.corpus import list_corpus_files
    from electra.pretrain_data import BuildSettings, build_pretraining_data
    from electra.tokenization import train_vocab, write_vocab

    data_dir = tmp_path_factory.mktemp("data_dir")
    corpus = write_corpus(data_dir / "corpus", ENGLISH_DOCUMENTS * 20)
    write_vocab(train_vocab(list_corpus_files(corpus), vocab_size=300, show_progress=False), data_dir / "vocab.txt")
    build_pretraining_data(
        corpus,
        data_dir / "vocab.txt",
        data_dir / "pretrain_data",
        BuildSettings(max_seq_length=32),
        show_progress=False,
    )
    return data_dir


@pytest.fixture(scope="session")
def finetuned_classifier(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A tiny sentiment classifier fine-tuned from random weights (labels neg/pos): its exported model folder."""
    from electra.finetune import run_finetuning
    from electra.tokenization import SPECIAL_TOKENS, write_vocab
    from tests.test_finetune import TINY_MODEL, WORDS, sentiment_rows, write_user_task

    root = tmp_path_factory.mktemp("classifier")
    write_vocab([*SPECIAL_TOKENS, *WORDS], root / "vocab.txt")
    write_user_task(root, {"train": sentiment_rows(320, 0), "dev": sentiment_rows(64, 1)})
    hparams = {**TINY_MODEL, "task_names": ["tickets"], "tasks": {"tickets": {}}, "vocab_file": str(root / "vocab.txt")}
    outcome = run_finetuning(root, "m", hparams)
    assert outcome["trials"][0]["scores"]["tickets/dev"]["accuracy"] > 90
    return outcome["trials"][0]["dir"] / "model"


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Worked examples at their documented budgets take minutes each: only on request (CI runs their
    small-budget variants, which are ordinary tests)."""
    if os.environ.get("ELECTRA_RUN_EXAMPLES") == "1":
        return
    skip = pytest.mark.skip(reason="a worked example at full budget: set ELECTRA_RUN_EXAMPLES=1 to run it")
    for item in items:
        if "example" in item.keywords:
            item.add_marker(skip)


def random_task_model(folder: Path, head, vocab: list[str], max_position_embeddings: int = 512) -> Path:
    """A fine-tuned model folder as `electra finetune` exports it, with tiny random weights: for tests of what reads
    such folders (prediction, serving, export), where training would only cost time."""
    from electra.config import ModelConfig
    from electra.task_model import FinetuningModel, export_task_model

    shape = {"hidden_size": 8, "num_hidden_layers": 1, "num_attention_heads": 1, "intermediate_size": 16}
    shape["max_position_embeddings"] = max_position_embeddings
    model = FinetuningModel(ModelConfig(vocab_size=len(vocab), embedding_size=8, **shape), [head])
    export_task_model(model, head, folder, vocab, {"max_seq_length": 16})
    return folder
