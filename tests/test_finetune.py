from __future__ import annotations

import csv
import json
import random
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from electra.config import ModelConfig, build_finetuning_config, encoder_config
from electra.errors import UserError
from electra.finetune import describe_finetuning, prepare_finetuning, run_finetuning
from electra.finetune_data import Features, Featurizer, FinetuningBatches, TaskHead, collate, truncated_pair_lengths
from electra.predict import read_prediction_inputs, run_prediction
from electra.task_model import FinetuningModel, layerwise_param_groups, load_encoder_weights, load_task_model
from electra.tasks import Example, get_task
from electra.tokenization import SPECIAL_TOKENS, build_tokenizer, read_vocab, write_vocab
from tests.conftest import run_torchrun

WORDS = [
    "good",
    "great",
    "fine",
    "bad",
    "awful",
    "poor",
    "movie",
    "film",
    "plot",
    "actor",
    "the",
    "a",
    "is",
    "was",
    "very",
    "not",
    "好",
    "差",
    "服",
    "务",
    "态",
    "度",
]


def reference_truncation(length_a: int, length_b: int, budget: int) -> tuple[int, int]:
    """The reference's _truncate_seq_pair, one pop at a time."""
    while length_a + length_b > budget:
        if length_a > length_b:
            length_a -= 1
        else:
            length_b -= 1
    return length_a, length_b


def test_pair_truncation_matches_reference() -> None:
    rng = random.Random(0)
    for _ in range(2000):
        a, b, budget = rng.randint(0, 60), rng.randint(0, 60), rng.randint(1, 80)
        assert truncated_pair_lengths(a, b, budget) == reference_truncation(a, b, budget)


def small_config(layers: int = 2) -> ModelConfig:
    return ModelConfig(
        vocab_size=len(SPECIAL_TOKENS) + len(WORDS),
        embedding_size=16,
        hidden_size=32,
        num_hidden_layers=layers,
        num_attention_heads=2,
        intermediate_size=64,
        max_position_embeddings=64,
    )


def test_layerwise_learning_rates_follow_reference() -> None:
    model = FinetuningModel(small_config(layers=3), [TaskHead("t", "classification", ["0", "1"])])
    scale_of = {}
    for group in layerwise_param_groups(model, 0.01, 0.8):
        for param in group["params"]:
            scale_of[id(param)] = (group["lr_scale"], group["weight_decay"])
    named = dict(model.named_parameters())
    n = 3
    assert scale_of[id(named["electra.embeddings.word_embeddings.weight"])] == (pytest.approx(0.8 ** (n + 2)), 0.01)
    assert scale_of[id(named["electra.embeddings_project.weight"])][0] == pytest.approx(0.8 ** (n + 2))
    for layer in range(n):
        weight = named[f"electra.encoder.layer.{layer}.attention.self.query.weight"]
        assert scale_of[id(weight)] == (pytest.approx(0.8 ** (n + 1 - layer)), 0.01)
        bias = named[f"electra.encoder.layer.{layer}.output.LayerNorm.bias"]
        assert scale_of[id(bias)] == (pytest.approx(0.8 ** (n + 1 - layer)), 0.0)
    assert scale_of[id(named["heads.t.out_proj.weight"])] == (1.0, 0.01)
    assert scale_of[id(named["heads.t.out_proj.bias"])] == (1.0, 0.0)
    off = layerwise_param_groups(model, 0.01, 0.0)
    assert {group["lr_scale"] for group in off} == {1.0}


def test_the_optimizer_moves_each_group_by_its_learning_rate_scale() -> None:
    from electra.trainer import AdamWeightDecay

    gradient = torch.tensor([1.0, -2.0, 0.5])
    top, deep = torch.nn.Parameter(torch.zeros(3)), torch.nn.Parameter(torch.zeros(3))
    optimizer = AdamWeightDecay([{"params": [top], "lr_scale": 1.0}, {"params": [deep], "lr_scale": 0.8**4}], lr=0.1)
    top.grad, deep.grad = gradient.clone(), gradient.clone()
    optimizer.step()
    # Adam's first bias-corrected step moves each element by the learning rate against its gradient's sign.
    torch.testing.assert_close(top.detach(), -0.1 * gradient.sign(), atol=1e-5, rtol=0)
    torch.testing.assert_close(deep.detach(), -0.1 * 0.8**4 * gradient.sign(), atol=1e-5, rtol=0)


@pytest.fixture
def vocab_file(tmp_path: Path) -> Path:
    path = tmp_path / "vocab.txt"
    write_vocab([*SPECIAL_TOKENS, *WORDS], path)
    return path


def test_dynamic_padding_equals_static_padding(vocab_file: Path) -> None:
    from electra.tasks import Example

    vocab = vocab_file.read_text().split()
    featurizer = Featurizer(vocab, max_seq_length=40)
    torch.manual_seed(0)
    for head in (TaskHead("c", "classification", ["0", "1"]), TaskHead("r", "regression", [])):
        model = FinetuningModel(small_config(), [head]).eval()
        examples = [Example(i, text_a=" ".join(random.Random(i).choices(WORDS, k=3 + 4 * i))) for i in range(5)]
        features = featurizer.features(examples, head, 0)
        dynamic = model.outputs(collate(features, featurizer.pad_id, torch.device("cpu")), 0)
        static = model.outputs(collate(features, featurizer.pad_id, torch.device("cpu"), pad_to=40), 0)
        torch.testing.assert_close(dynamic, static, atol=1e-5, rtol=1e-5)
    # Per-token heads: tagging, and question answering on pairs (question, then context), at every real position.
    rng = random.Random(0)
    tagged = [Example(i, words=rng.choices(WORDS, k=2 + 5 * i), label=None) for i in range(5)]
    pairs = [
        Example(i, text_a=" ".join(rng.choices(WORDS, k=3)), text_b=" ".join(rng.choices(WORDS, k=4 + 6 * i)))
        for i in range(5)
    ]
    for head, examples in (
        (TaskHead("t", "tagging", ["B-X", "I-X", "E-X", "S-X", "O"]), tagged),
        (TaskHead("q", "qa", []), pairs),
    ):
        model = FinetuningModel(small_config(), [head]).eval()
        features = featurizer.features(
            examples, TaskHead("c", "classification", ["0"]) if head.kind == "qa" else head, 0
        )
        dynamic = model.outputs(collate(features, featurizer.pad_id, torch.device("cpu")), 0)
        static = model.outputs(collate(features, featurizer.pad_id, torch.device("cpu"), pad_to=40), 0)
        assert dynamic.shape[1] < static.shape[1] == 40
        for row, feature in enumerate(features):
            real = len(feature.input_ids)
            torch.testing.assert_close(dynamic[row, :real], static[row, :real], atol=1e-5, rtol=1e-5)


def test_multi_task_heads_absent_from_a_batch_get_a_zero_gradient_as_in_the_reference() -> None:
    """The reference runs every task's head on every example and masks the other tasks' losses out, so a head whose
    task is missing from a batch gets a zero gradient (and Adam still moves it), never none. Every head kind here,
    including both question-answering heads, with only the classification task's rows in the batch."""
    from electra.modeling import QAHeadConfig

    heads = [
        TaskHead("c", "classification", ["0", "1"]),
        TaskHead("r", "regression", []),
        TaskHead("t", "tagging", ["B", "I", "O"]),
        TaskHead("q", "qa", []),
        TaskHead("q2", "qa", [], qa=QAHeadConfig(joint_prediction=True, answerable_classifier=True)),
    ]
    torch.manual_seed(0)
    model = FinetuningModel(small_config(), heads)
    ids = np.array([2, 7, 8, 9, 3], dtype=np.int32)
    rows = [Features(ids, np.zeros(5, np.int8), task_id=0, label=float(i % 2)) for i in range(4)]
    loss = model(collate(rows, 0, torch.device("cpu")))["task_loss"]
    loss.backward()
    assert loss.item() > 0
    for name, param in model.heads.named_parameters():
        assert param.grad is not None, name
        if not name.startswith("c."):
            assert not param.grad.any(), name
    assert any(param.grad.any() for param in model.heads["c"].parameters())


def test_sentence_pairs_and_an_empty_second_text(vocab_file: Path) -> None:
    """[CLS] a [SEP] b [SEP] with segment ids 0/1; an empty second text is one segment, as in the reference."""
    from electra.tasks import Example

    vocab = vocab_file.read_text().split()
    featurizer = Featurizer(vocab, max_seq_length=40)
    head = TaskHead("c", "classification", ["0", "1"])
    examples = [Example(0, "good film", "bad"), Example(1, "good film", ""), Example(2, "good film", " \t")]
    pair, empty, blank = featurizer.features(examples, head, 0)
    cls, sep, good, film, bad = (vocab.index(token) for token in ("[CLS]", "[SEP]", "good", "film", "bad"))
    assert pair.input_ids.tolist() == [cls, good, film, sep, bad, sep]
    assert pair.token_type_ids.tolist() == [0, 0, 0, 0, 1, 1]
    for single in (empty, blank):  # a blank second text has no tokens: one segment too (it gave [SEP] [SEP])
        assert single.input_ids.tolist() == [cls, good, film, sep] and not single.token_type_ids.any()


def test_a_word_of_several_pieces_is_labelled_and_read_at_its_first_piece() -> None:
    """As the reference tags: the label sits on a word's first piece, the other pieces are not trained on, and a
    prediction reads the first piece's output."""
    from electra.task_model import decode

    vocab = [*SPECIAL_TOKENS, "the", "play", "##ing", "##s", "cat"]
    head = TaskHead("t", "tagging", ["B-NP", "I-NP", "E-NP", "S-NP", "S-VP", "O"])
    words = ["the", "cats", "playing"]
    example = Example(0, words=words, label=["B-NP", "I-NP", "B-VP"])
    feature = Featurizer(vocab, 16).features([example], head, 0)[0]
    pieces = [vocab[i] for i in feature.input_ids]
    assert pieces == ["[CLS]", "the", "cat", "##s", "play", "##ing", "[SEP]"]
    ignored = -100
    # IOB2 is trained as BIOES: B-NP I-NP -> B-NP E-NP; a lone B-VP -> S-VP
    assert feature.token_labels.tolist() == [ignored, 0, 2, ignored, 4, ignored, ignored]
    assert feature.word_starts.tolist() == [1, 2, 4]
    output = np.zeros((len(pieces), len(head.labels)), dtype=np.float32)
    for position, tag in {1: "B-NP", 2: "E-NP", 3: "O", 4: "S-VP", 5: "O"}.items():
        output[position, head.labels.index(tag)] = 1.0  # the later pieces say "O": they must not count
    assert decode(head, output, feature)["tags"] == ["B-NP", "I-NP", "B-VP"]


def test_length_bucketing_covers_every_example_once_per_epoch(vocab_file: Path) -> None:
    lengths = np.random.default_rng(0).integers(3, 100, size=400)
    features = [Features(np.zeros(n, dtype=np.int32), np.zeros(n, dtype=np.int8), 0) for n in lengths]
    batches = FinetuningBatches(features, batch_size=8, seed=1, bucketing=True, pad_id=0)
    epoch = np.concatenate([batches.batch_indices(step) for step in range(50)])
    assert sorted(epoch.tolist()) == list(range(400))
    spread = np.mean([np.ptp(lengths[batches.batch_indices(step)]) for step in range(50)])
    plain = FinetuningBatches(features, batch_size=8, seed=1, bucketing=False, pad_id=0)
    plain_spread = np.mean([np.ptp(lengths[plain.batch_indices(step)]) for step in range(50)])
    assert spread < plain_spread / 4
    assert not np.array_equal(batches.batch_indices(0), batches.batch_indices(50))  # a new order each epoch


def test_finetune_config_precedence() -> None:
    assert build_finetuning_config({"task_names": ["rte"]}).num_train_epochs == 10.0
    assert build_finetuning_config({"task_names": ["chunk"]}).max_seq_length == 256
    for qa in ("squad", "squadv1", "newsqa", "triviaqa", "naturalqs"):  # naturalqs too, which the reference missed
        config = build_finetuning_config({"task_names": [qa]})
        assert (config.max_seq_length, config.num_train_epochs) == (512, 2.0)
    large = build_finetuning_config({"task_names": ["sst"], "model_size": "large"})
    assert (large.learning_rate, large.layerwise_lr_decay) == (5e-5, 0.9)
    assert build_finetuning_config({"task_names": "sst,cola", "learning_rate": 3e-4}).learning_rate == 3e-4
    # Several tasks: batches mix them as the reference's shuffle does (length buckets gave most batches one task).
    assert build_finetuning_config({"task_names": ["sst"]}).length_bucketing
    assert not build_finetuning_config({"task_names": ["cola", "mrpc"]}).length_bucketing
    assert build_finetuning_config({"task_names": ["cola", "mrpc"], "length_bucketing": True}).length_bucketing
    with pytest.raises(UserError, match="did you mean 'layerwise_lr_decay'"):
        build_finetuning_config({"layerwise_lr_decy": 0.8})
    with pytest.raises(UserError, match=r"'raw_data_dir' sets one of the reference's paths; here .*--data-dir"):
        build_finetuning_config({"raw_data_dir": "glue"})


# ----------------------------------------------------------------------------------------------- data files
def write_glue(folder: Path) -> Path:
    root = folder / "finetuning_data"
    (root / "cola").mkdir(parents=True)
    (root / "cola" / "train.tsv").write_text("gj04\t1\t\tThe dog barked.\ngj04\t0\t*\tDog the barked.\n")
    (root / "mrpc").mkdir()
    header = "\ufeffQuality\t#1 ID\t#2 ID\t#1 String\t#2 String\n"
    (root / "mrpc" / "train.tsv").write_text(header + "1\t1\t2\tA cat sat.\tThe cat sat.\n0\t3\t4\tIt rains.\n")
    (root / "mnli").mkdir()
    mnli_header = "\t".join(["index", *[f"c{i}" for i in range(7)], "sentence1", "sentence2", "gold_label"])
    row = "\t".join(["0", *["x"] * 7, "A man sleeps.", "Nobody sleeps.", "contradiction"])
    for split in ("dev_matched", "dev_mismatched"):
        (root / "mnli" / f"{split}.tsv").write_text(f"{mnli_header}\n{row}\n")
    return root


def test_glue_layouts(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    root = write_glue(tmp_path)
    cola = get_task("cola", root, {}).examples("train")
    assert [(e.text_a, e.label) for e in cola] == [("The dog barked.", "1"), ("Dog the barked.", "0")]
    mrpc = get_task("mrpc", root, {}).examples("train")  # one good row, swapped copy added; the short row skipped
    assert [(e.text_a, e.text_b, e.label) for e in mrpc] == [
        ("A cat sat.", "The cat sat.", "1"),
        ("The cat sat.", "A cat sat.", "1"),
    ]
    assert "skipped 1 malformed row(s), line(s) 3" in capsys.readouterr().err
    assert len(get_task("mrpc", root, {}, double_unordered=False).examples("train")) == 1
    mnli = get_task("mnli", root, {})
    assert mnli.eval_splits() == ["dev", "dev_mismatched"]
    assert mnli.examples("dev")[0].label == "contradiction"
    with pytest.raises(UserError, match=r"sst/train\.tsv not found.*finetuning_data/<task>/"):
        get_task("sst", root, {}).examples("train")
    # A label the task cannot have is refused with its row (it was skipped, so dev scores covered fewer rows).
    (root / "cola" / "dev.tsv").write_text("gj04\t1\t\tThe dog barked.\ngj04\t2\t\tDog the barked.\n")
    with pytest.raises(UserError, match=r"cola/dev\.tsv:2: label '2' is not one of cola's labels \(0, 1\)"):
        get_task("cola", root, {}).examples("dev")
    (root / "sts").mkdir()
    sts_header = "\t".join(["index", *[f"c{i}" for i in range(6)], "sentence1", "sentence2", "score"]) + "\n"
    for score in ("7.5", "nan", "-1"):  # the reference asserts 0 <= score <= 5; nan trained as skipped steps
        row = "\t".join(["0", *["x"] * 6, "A man sleeps.", "A man is asleep.", score])
        (root / "sts" / "train.tsv").write_text(f"{sts_header}{row}\n")
        with pytest.raises(UserError, match=rf"sts/train\.tsv:2: score {score} is outside sts's range 0 to 5"):
            get_task("sts", root, {}).examples("train")
    with pytest.raises(UserError, match="did you mean 'cola'"):
        get_task("colla", root, {})


def write_user_task(root: Path, rows: dict[str, list[tuple[str, str]]], name: str = "tickets") -> None:
    folder = root / "finetuning_data" / name
    folder.mkdir(parents=True, exist_ok=True)
    for split, pairs in rows.items():
        lines = ["text,label"] + [f"{text},{label}" for text, label in pairs]
        (folder / f"{split}.csv").write_text("\n".join(lines) + "\n", encoding="utf-8")


def test_user_task_errors_name_file_and_line(tmp_path: Path) -> None:
    spec = {"tickets": {"type": "classification"}}
    write_user_task(tmp_path, {"train": [("服务态度好", "好评"), ("差", "差评")], "dev": [("好", "中评")]})
    task = get_task("tickets", tmp_path / "finetuning_data", spec)
    labels = task.label_list()
    assert labels == ["好评", "差评"]
    with pytest.raises(UserError, match=r"dev\.csv:2: label '中评'"):
        task.check_labels(task.examples("dev"), labels, "dev")
    bad = tmp_path / "finetuning_data" / "tickets" / "train.csv"
    bad.write_text("text,label\nfine,1\ntoo,many,fields\n")
    with pytest.raises(UserError, match=r"train\.csv:3: 3 field\(s\) where the header has 2"):
        task.examples("train")
    bad.write_text("text,label\nfine,1\n")
    with pytest.raises(UserError, match="no text in column 'review'"):
        get_task("tickets", tmp_path / "finetuning_data", {"tickets": {"text_column": "review"}}).examples("train")
    with pytest.raises(UserError, match="unknown spec key"):
        get_task("tickets", tmp_path / "finetuning_data", {"tickets": {"text_colum": "x"}})
    # A misnamed label column or an empty label cell is an error where it is needed (train, dev), not a class
    # "None"; test splits may be unlabelled.
    with pytest.raises(UserError, match=r"train\.csv:2: no label in column 'category'"):
        get_task("tickets", tmp_path / "finetuning_data", {"tickets": {"label_column": "category"}}).examples("train")
    bad.write_text("text,label\nfine,1\nsome text,\n")
    with pytest.raises(UserError, match=r"train\.csv:3: no label in column 'label'"):
        task.examples("train")
    (tmp_path / "finetuning_data" / "tickets" / "test.csv").write_text("text,label\nfine,\n")
    assert task.examples("test")[0].label is None
    (tmp_path / "finetuning_data" / "tickets" / "train.tsv").write_text("text\tlabel\nfine\t1\n")
    with pytest.raises(UserError, match=r"holds train\.tsv and train\.csv: keep one train file"):
        task.examples("train")
    (tmp_path / "finetuning_data" / "tickets" / "train.tsv").unlink()
    with pytest.raises(UserError, match="column 'text' is named as both text and label"):
        get_task("tickets", tmp_path / "finetuning_data", {"tickets": {"label_column": "text"}})
    jsonl = tmp_path / "finetuning_data" / "tickets" / "train.jsonl"
    bad.unlink()
    jsonl.write_text('{"text": "fine", "label": "1"\n')
    with pytest.raises(UserError, match=r"train\.jsonl:1: not valid JSON \(Expecting ',' delimiter at column 30\)"):
        task.examples("train")
    jsonl.write_text('{"text": "fine", "label": ["x"]}\n')
    with pytest.raises(UserError, match=r"train\.jsonl:1: the label in column 'label' must be a string or number"):
        task.examples("train")
    # A whole number is one class however JSON writes it.
    labels = ["1", "1.0", '"1"', "0.5"]
    jsonl.write_text("".join(f'{{"text": "t", "label": {label}}}\n' for label in labels))
    assert [example.label for example in task.examples("train")] == ["1", "1", "1", "0.5"]
    jsonl.write_text('{"text": {"a": 3}, "label": "pos"}\n')
    with pytest.raises(UserError, match=r"train\.jsonl:1: the text in column 'text' must be a string or number"):
        task.examples("train")
    jsonl.write_text('{"text": "fine", "label": "nan"}\n')
    regression = get_task("tickets", tmp_path / "finetuning_data", {"tickets": {"type": "regression"}})
    with pytest.raises(UserError, match=r"train\.jsonl:1: label 'nan' is not a finite number"):
        regression.examples("train")
    # Spec values of the wrong type, and metrics that do not exist, are refused before anything trains.
    for spec, message in [
        ({"labels": "pos"}, "spec key 'labels' must be a list"),
        ({"header": "no"}, "spec key 'header' must be true or false"),
        ({"metrics": ["auc"]}, "unknown metric\\(s\\) 'auc'; known: accuracy, f1, macro_f1, mcc"),
        ({"type": "regression", "metrics": ["mcc"]}, "a regression task reports Pearson"),
    ]:
        with pytest.raises(UserError, match=message):
            get_task("tickets", tmp_path / "finetuning_data", {"tickets": spec})
    spec_labels = get_task("tickets", tmp_path / "finetuning_data", {"tickets": {"labels": ["neg", "pos"]}})
    jsonl.write_text('{"text": "fine", "label": "meh"}\n')
    with pytest.raises(UserError, match=r"'meh' of the train split .* is not among the task spec's labels"):
        spec_labels.check_labels(spec_labels.examples("train"), ["neg", "pos"], "train")
    tags = tmp_path / "finetuning_data" / "tags"
    tags.mkdir()
    (tags / "train.jsonl").write_text('{"tokens": ["a", "b"], "tags": ["B-NP", "X-Y"]}\n')
    tagging = get_task("tags", tmp_path / "finetuning_data", {"tags": {"type": "tagging"}})
    with pytest.raises(UserError, match=r"train\.jsonl:1: tag 'X-Y' is neither O nor B-, I-, E- or S-"):
        tagging.examples("train")
    plain = get_task("tags", tmp_path / "finetuning_data", {"tags": {"type": "tagging", "span_labels": False}})
    assert plain.examples("train")[0].label == ["B-NP", "X-Y"]
    chunk = tmp_path / "finetuning_data" / "chunk"
    chunk.mkdir()
    (chunk / "train.txt").write_text("The DT B-NP\ncat NN I-NP\n\nsat VBD\n")  # the last line lost its tag
    with pytest.raises(UserError, match=r"train\.txt:4: 2 field\(s\) where line 1 has 3"):
        get_task("chunk", tmp_path / "finetuning_data", {}).examples("train")


def test_hand_made_tables_are_read_as_their_authors_meant(tmp_path: Path) -> None:
    from electra.tasks import read_table_rows

    table = tmp_path / "t.tsv"
    # A TSV whose text starts with a quote mark: read as CSV quoting, the rows ran together into one.
    table.write_text('text\tlabel\n"Wow she said\tpos\nhe said "no" ok\tneg\nthird\tneg\n')
    rows = read_table_rows(table, header=True)
    assert [(n, r["text"]) for n, r in rows] == [(2, '"Wow she said'), (3, 'he said "no" ok'), (4, "third")]
    table.write_text('text\tlabel\nfine\tneg\n"an unclosed quote\tpos\n')
    assert [r["text"] for _, r in read_table_rows(table, header=True)] == ["fine", '"an unclosed quote']
    # What csv and pandas write (quoted tabs, line breaks, doubled quotes) still reads as written.
    table.write_text('text\tlabel\n"a\ttab"\tpos\n"two\nlines"\tneg\n"said ""no"""\tneg\nlast\tpos\n')
    rows = read_table_rows(table, header=True)
    assert [(n, r["text"]) for n, r in rows] == [(2, "a\ttab"), (3, "two\nlines"), (5, 'said "no"'), (6, "last")]
    # Even where each line, quotes read as text, would also be a row of two fields: csv wrote this file.
    written = [["review", "label"], ["第一行\t第二段\n第二行", "1"], ['say "hi"', "0"]]
    for ending in ("\n", "\r\n"):
        with open(table, "w", newline="", encoding="utf-8") as handle:
            csv.writer(handle, delimiter="\t", lineterminator=ending).writerows(written)
        assert [list(row.values()) for _, row in read_table_rows(table, header=True)] == written[1:]
    # A CSV record over several lines is numbered by the line it starts on; header names lose stray spaces.
    table = tmp_path / "t.csv"
    table.write_text('text , label \n"first\nsecond",pos\nthird,neg\n')
    assert [(n, sorted(r)) for n, r in read_table_rows(table, header=True)] == [
        (2, ["label", "text"]),
        (4, ["label", "text"]),
    ]
    table.write_text(f"text,label\n{'word ' * 40_000},pos\n")  # 200,000 characters in a cell: csv's limit is 128 KiB
    assert len(read_table_rows(table, header=True)[0][1]["text"]) == 200_000
    table.write_text("text,text,label\na,b,pos\n")
    with pytest.raises(UserError, match=r"t\.csv:1: the header names column 'text' twice"):
        read_table_rows(table, header=True)
    table.write_text('text,label\n"unclosed,pos\nnext,neg\n')
    with pytest.raises(UserError, match=r"t\.csv:2: a quote mark opened on this line is not closed .* end of the file"):
        read_table_rows(table, header=True)
    # With one column every row has its one field: the rows after an open quote were silently its text.
    table.write_text('text\n"unclosed quote, here\nnext\n')
    with pytest.raises(UserError, match=r"t\.csv:2: a quote mark opened on this line is not closed .* end of the file"):
        read_table_rows(table, header=True)
    table.write_text('text\n"two\nlines"\nnext\n')
    assert [row["text"] for _, row in read_table_rows(table, header=True)] == ["two\nlines", "next"]
    # Labels lose stray spaces too ("good, pos" is class "pos"), and JSON true is no text.
    write_user_task(tmp_path, {"train": [("good film", " pos"), ("bad", "neg")]})
    task = get_task("tickets", tmp_path / "finetuning_data", {"tickets": {}})
    assert task.label_list() == ["neg", "pos"]
    (tmp_path / "finetuning_data" / "tickets" / "train.csv").unlink()
    (tmp_path / "finetuning_data" / "tickets" / "train.jsonl").write_text('{"text": "fine", "label": true}\n')
    with pytest.raises(UserError, match=r"train\.jsonl:1: the label in column 'label' must be a string or number"):
        task.examples("train")


def test_training_rows_are_checked_against_the_labels_a_task_can_learn(tmp_path: Path, vocab_file: Path) -> None:
    write_user_task(tmp_path, {"train": [*sentiment_rows(30, 0), ("meh film", "neutral")], "dev": sentiment_rows(8, 1)})
    spec = {"tickets": {"labels": ["neg", "pos"]}}
    hparams = {**TINY_MODEL, "task_names": ["tickets"], "tasks": spec, "vocab_file": str(vocab_file)}
    with pytest.raises(UserError, match=r"train\.csv:32: label 'neutral' of the train split .* task spec's labels"):
        run_finetuning(tmp_path, "m", hparams)
    write_user_task(tmp_path, {"train": [("good", "pos"), ("fine", "pos")]})
    with pytest.raises(UserError, match="every training row has the label 'pos', and a classifier needs two"):
        run_finetuning(tmp_path, "m", {**hparams, "tasks": {"tickets": {}}})
    write_user_task(tmp_path, {"train": [("good", "1"), ("fine", "1.0"), ("bad", "0")]})  # as pandas may write them
    with pytest.raises(UserError, match=r"the training labels '1' and '1\.0' are one number written two ways"):
        run_finetuning(tmp_path, "m", {**hparams, "tasks": {"tickets": {}}})
    # A test file to predict is read before training: a malformed row stops the run before it has trained.
    write_user_task(tmp_path, {"train": sentiment_rows(30, 0), "dev": sentiment_rows(8, 1)})
    (tmp_path / "finetuning_data" / "tickets" / "test.csv").write_text("text,label\nfine,\ntoo,many,fields\n")
    with pytest.raises(UserError, match=r"test\.csv:3: 3 field\(s\) where the header has 2"):
        run_finetuning(tmp_path, "m", {**hparams, "tasks": {"tickets": {}}, "write_test_outputs": True})
    assert not (tmp_path / "models" / "m" / "finetuning_models").exists()
    (tmp_path / "finetuning_data" / "tickets" / "test.csv").unlink()
    write_user_task(tmp_path, {"train": [("good", "pos"), ("fine", "pos")]})
    with pytest.raises(UserError, match='the task spec\'s "labels" lists one label'):
        run_finetuning(tmp_path, "m", {**hparams, "tasks": {"tickets": {"labels": ["pos"]}}})
    write_user_task(tmp_path, {"train": [("good", "pos"), ("bad", "neg"), ("fine", "neutral")]})
    with pytest.raises(UserError, match=r'"f1" is the F1 of the second of two labels .* has 3 \(neg, neutral, pos\)'):
        run_finetuning(tmp_path, "m", {**hparams, "tasks": {"tickets": {"metrics": ["accuracy", "f1"]}}})
    with pytest.raises(UserError, match=r"task_names: 'a/b' is not a task name"):
        run_finetuning(tmp_path, "m", {**hparams, "task_names": ["a/b"]})
    with pytest.raises(UserError, match=r"task_names: 'tickets\.v2' holds a '\.', .* \(e\.g\. 'tickets_v2'\)"):
        run_finetuning(tmp_path, "m", {**hparams, "task_names": ["tickets.v2"], "tasks": {"tickets.v2": {}}})
    # A tagger's "labels" name the corpus's tags; the model learns their BIOES forms.
    write_tagging(tmp_path, "chunk", 20, 0, "train")
    tags = {"chunk": {"type": "tagging", "labels": ["O", "B-NP", "I-NP", "B-VP"]}}
    task = get_task("chunk", tmp_path / "finetuning_data", tags)
    labels = task.label_list()
    assert labels == ["B-NP", "B-VP", "E-NP", "E-VP", "I-NP", "I-VP", "O", "S-NP", "S-VP"]
    task.check_labels(task.examples("train"), labels, "train")
    narrow = get_task("chunk", tmp_path / "finetuning_data", {"chunk": {"type": "tagging", "labels": ["O", "B-NP"]}})
    with pytest.raises(UserError, match=r"train\.txt:\d+: label 'B-VP' .* \(chunk types NP\)"):
        narrow.check_labels(narrow.examples("train"), narrow.label_list(), "train")


# ----------------------------------------------------------------------------------------------- end to end
def sentiment_rows(count: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for _ in range(count):
        positive = rng.random() < 0.5
        word = rng.choice(["good", "great", "fine", "好"] if positive else ["bad", "awful", "poor", "差"])
        filler = rng.choices(["the", "movie", "film", "plot", "actor", "was", "very", "a"], k=rng.randint(2, 8))
        filler.insert(rng.randint(0, len(filler)), word)
        rows.append((" ".join(filler), "pos" if positive else "neg"))
    return rows


TINY_MODEL = {
    "model_size": "small",
    "embedding_size": 32,
    "model_hparam_overrides": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2},
    "learning_rate": 3e-3,
    "train_batch_size": 16,
    "eval_batch_size": 16,
    "num_train_epochs": 5,
    "log_every_steps": 5,
    "init_checkpoint": None,
}


def test_user_task_learns_exports_and_predicts(tmp_path: Path, vocab_file: Path) -> None:
    splits = {"train": sentiment_rows(320, 0), "dev": sentiment_rows(64, 1), "test": sentiment_rows(5, 2)}
    write_user_task(tmp_path, splits)
    hparams = {**TINY_MODEL, "task_names": ["tickets"], "tasks": {"tickets": {"type": "classification"}}}
    hparams.update(vocab_file=str(vocab_file), write_test_outputs=True)
    outcome = run_finetuning(tmp_path, "m", hparams)
    accuracy = outcome["trials"][0]["scores"]["tickets/dev"]["accuracy"]
    assert accuracy > 90
    written = tmp_path / "models" / "m" / "test_predictions" / "tickets_1" / "tickets_test.jsonl"
    test_rows = [json.loads(line) for line in written.read_text().splitlines()]
    assert [row["line"] for row in test_rows] == [2, 3, 4, 5, 6]  # each prediction maps back to its row
    assert {row["label"] for row in test_rows} <= {"neg", "pos"}
    exported = tmp_path / "models" / "m" / "finetuning_models" / "tickets_model_1" / "model"
    assert not (exported.parent / "checkpoints").exists()
    results = (tmp_path / "models" / "m" / "results" / "tickets_results.txt").read_text()
    assert "trial 1 tickets/dev: accuracy" in results

    # the export is a Hugging Face model with the same outputs
    from transformers import ElectraForSequenceClassification

    hf = ElectraForSequenceClassification.from_pretrained(exported).eval()
    ours, head, _ = load_task_model(exported)
    ours.eval()
    assert hf.config.id2label == {0: "neg", 1: "pos"}
    featurizer = Featurizer(vocab_file.read_text().split(), 128)
    from electra.tasks import Example

    batch = collate(featurizer.features([Example(0, "a very good film"), Example(1, "bad")], head, 0), 0, "cpu")
    with torch.no_grad():
        expected = hf(batch.input_ids, attention_mask=batch.attention_mask, token_type_ids=batch.token_type_ids)
        torch.testing.assert_close(ours.outputs(batch, 0), expected.logits, atol=1e-5, rtol=1e-5)

    source = tmp_path / "new.csv"
    source.write_text("id,text\n1,the film was great\n2,an awful plot\n", encoding="utf-8")
    done = run_prediction(exported, source, show_progress=False)
    path, count = done.path, done.count
    lines = [json.loads(line) for line in path.read_text().splitlines()]
    assert count == 2 and [line["label"] for line in lines] == ["pos", "neg"]
    assert lines[0]["line"] == 2 and set(lines[0]["probabilities"]) == {"neg", "pos"}
    assert abs(sum(lines[0]["probabilities"].values()) - 1) < 1e-5

    again = run_finetuning(tmp_path, "m", hparams)  # a finished trial is reused, not retrained
    assert again["trials"][0]["scores"] == outcome["trials"][0]["scores"]
    unchanged = {"use_tfrecords_if_existing": False, "save_checkpoints_steps": 7}  # the reference's files hold them
    reused = run_finetuning(tmp_path, "m", {**hparams, **unchanged})
    assert reused["trials"][0]["scores"] == again["trials"][0]["scores"]
    with pytest.raises(UserError, match=r"other settings.*learning_rate"):
        run_finetuning(tmp_path, "m", {**hparams, "learning_rate": 5e-4})


def test_an_interrupted_fine_tuning_resumes_to_the_same_model(
    tmp_path: Path, vocab_file: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Stopped after its second checkpoint (step 6 of 12), the same command continues from there and ends with
    the weights and scores of a run that was never stopped: batches, dropout and the optimizer state all resume."""
    import electra.trainer

    write_user_task(tmp_path, {"train": sentiment_rows(96, 0), "dev": sentiment_rows(16, 1)})
    hparams = {**TINY_MODEL, "task_names": ["tickets"], "tasks": {"tickets": {}}, "vocab_file": str(vocab_file)}
    hparams.update(num_train_epochs=2, save_checkpoints_steps=3)
    straight = run_finetuning(tmp_path, "straight", hparams)
    save = electra.trainer.save_checkpoint
    saved: list[int] = []

    def save_then_stop(run_dir: Path, step: int, *args: object, **kwargs: object) -> Path:
        written = save(run_dir, step, *args, **kwargs)
        saved.append(step)
        if len(saved) == 2:
            raise KeyboardInterrupt
        return written

    monkeypatch.setattr(electra.trainer, "save_checkpoint", save_then_stop)
    with pytest.raises(KeyboardInterrupt):
        run_finetuning(tmp_path, "resumed", hparams)
    assert saved == [3, 6]
    monkeypatch.undo()
    resumed = run_finetuning(tmp_path, "resumed", hparams)
    assert resumed["trials"][0]["scores"] == straight["trials"][0]["scores"]
    weights = [
        load_file(str(outcome["trials"][0]["dir"] / "model" / "model.safetensors")) for outcome in (straight, resumed)
    ]
    assert weights[0].keys() == weights[1].keys()
    assert all(torch.equal(weights[0][name], weights[1][name]) for name in weights[0])
    logged = (resumed["trials"][0]["dir"] / "logs" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in logged] == [5, 10, 12]  # each logged step once


def write_tagging(root: Path, name: str, sentences: int, seed: int, split: str) -> None:
    rng = random.Random(seed)
    lines = []
    for _ in range(sentences):
        for _ in range(rng.randint(1, 4)):
            if rng.random() < 0.5:
                lines += ["the B-NP", f"{rng.choice(['movie', 'film', 'plot'])} I-NP"]
            else:
                lines += [f"{rng.choice(['is', 'was'])} B-VP"]
        lines.append("")
    folder = root / "finetuning_data" / name
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{split}.txt").write_text("\n".join(lines) + "\n")


def test_predict_scores_a_labelled_file(finetuned_classifier: Path, tmp_path: Path) -> None:
    rows = sentiment_rows(60, 5)
    source = tmp_path / "labelled.tsv"
    source.write_text("sentence\tgold\n" + "".join(f"{text}\t{label}\n" for text, label in rows), encoding="utf-8")
    columns = {"text_column": "sentence", "label_column": "gold"}
    done = run_prediction(finetuned_classifier, source, columns=columns, show_progress=False)
    predicted = [json.loads(line)["label"] for line in done.path.read_text().splitlines()]
    truth = [label for _, label in rows]
    same = [p == t for p, t in zip(predicted, truth, strict=True)]
    assert done.scores["accuracy"] == pytest.approx(100 * np.mean(same))
    assert done.scores["accuracy"] > 90 and set(done.scores) == {"accuracy", "macro_f1", "mcc", "f1"}
    assert json.loads(done.path.with_suffix(".scores.json").read_text()) == done.scores
    elsewhere = run_prediction(finetuned_classifier, source, tmp_path / "new" / "out.jsonl", columns=columns)
    assert elsewhere.path.read_text() == done.path.read_text()  # a missing output folder is created
    source.write_text("sentence\tgold\ngood film\tpos\nbad film\tneutral\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"labelled\.tsv:3: label 'neutral' is not one the model was trained on"):
        run_prediction(finetuned_classifier, source, columns=columns, show_progress=False)
    with pytest.raises(UserError, match=r"labelled\.tsv:2: no 'label' value"):
        run_prediction(finetuned_classifier, source, columns={**columns, "label_column": "label"}, show_progress=False)
    # JSON values that are no text are refused, as fine-tuning refuses them; an upper-case suffix is still a table.
    source = tmp_path / "odd.jsonl"
    source.write_text('{"text": "good film"}\n{"text": null}\n')
    with pytest.raises(UserError, match=r"odd\.jsonl:2: the text in column 'text' must be a string or number"):
        run_prediction(finetuned_classifier, source, show_progress=False)
    source = tmp_path / "upper.CSV"
    source.write_text("text,label\ngood film,pos\n")
    done = run_prediction(finetuned_classifier, source, show_progress=False)
    assert done.count == 1 and json.loads(done.path.read_text())["line"] == 2
    # Plain text: a tab is a space to a model of one text, and separates a pair for a model of two.
    _, head, spec = load_task_model(finetuned_classifier)
    source = tmp_path / "plain.txt"
    source.write_text("good film\twith a tab\n")
    (single,) = read_prediction_inputs(source, head, spec, {})
    assert (single.text_a, single.text_b) == ("good film\twith a tab", None)
    (pair,) = read_prediction_inputs(source, head, {**spec, "text_column_2": "text_b"}, {})
    assert (pair.text_a, pair.text_b) == ("good film", "with a tab")
    with pytest.raises(UserError, match="--text-column-2 names a second text, and this model was fine-tuned on single"):
        read_prediction_inputs(source, head, spec, {"text_column_2": "label"})
    with pytest.raises(UserError, match=r"--text-column: .*plain\.txt is plain text, one example a line, without col"):
        read_prediction_inputs(source, head, spec, {"text_column": "review"})  # was silently ignored
    # A model known to read pairs needs both texts on each line, and a third text is refused, not joined.
    for line, tabs in (("good film\n", 0), ("good\tfilm\tthird\n", 2)):
        source.write_text(line)
        with pytest.raises(UserError, match=rf"plain\.txt:1: {tabs} tab\(s\) in the line, where a model of pairs"):
            read_prediction_inputs(source, head, {**spec, "text_column_2": "text_b"}, {})
    # A file without a header line (CoLA's dev.tsv, a task read with "header": false): columns by number.
    source = tmp_path / "headerless.csv"
    source.write_text("".join(f"{text},{label}\n" for text, label in rows[:20]), encoding="utf-8")
    with pytest.raises(UserError, match=r"headerless\.csv:1, the header: no column 'text' .* pass --no-header"):
        run_prediction(finetuned_classifier, source, show_progress=False)
    numbered = {"text_column": "0", "label_column": "1"}
    done = run_prediction(finetuned_classifier, source, columns=numbered, show_progress=False, header=False)
    assert done.count == 20 and done.scores["accuracy"] > 80
    assert json.loads(done.path.read_text().splitlines()[0])["line"] == 1
    (first, *_) = read_prediction_inputs(source, head, {**spec, "text_column": "0", "header": False}, {})
    assert first.text_a == rows[0][0]  # a model whose task was read without a header reads files the same way


def test_multitask_tagging_and_regression_with_trials(tmp_path: Path, vocab_file: Path, capsys) -> None:
    write_tagging(tmp_path, "chunk", 200, 0, "train")
    write_tagging(tmp_path, "chunk", 40, 1, "dev")
    folder = tmp_path / "finetuning_data" / "scores"
    folder.mkdir(parents=True)
    for split, seed in (("train", 0), ("dev", 1)):
        rows = [(text, "4.5" if label == "pos" else "0.5") for text, label in sentiment_rows(160, seed)]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps({"text": t, "label": v}) + "\n" for t, v in rows))
    hparams = {
        **TINY_MODEL,
        "task_names": ["chunk", "scores"],
        "tasks": {"scores": {"type": "regression"}},
        "num_trials": 2,
        "vocab_file": str(vocab_file),
        "max_seq_length": 64,
    }
    outcome = run_finetuning(tmp_path, "m", hparams)
    for trial in outcome["trials"]:
        assert trial["scores"]["chunk/dev"]["f1"] > 90
        assert trial["scores"]["scores/dev"]["spearman"] > 70
    summary = outcome["summary"]
    assert set(summary["chunk/dev f1"]) == {"median", "mean", "std", "min", "max"}
    model_dir = tmp_path / "models" / "m" / "finetuning_models" / "chunk,scores_model_2" / "model"
    source = tmp_path / "words.txt"
    source.write_text("the movie was\n")
    path = run_prediction(model_dir / "chunk", source, tmp_path / "out.jsonl", show_progress=False).path
    assert json.loads(path.read_text())["tags"] == ["B-NP", "I-NP", "B-VP"]
    assert json.loads(path.read_text())["words"] == ["the", "movie", "was"]
    assert "untagged_words" not in json.loads(path.read_text())
    empty_last = tmp_path / "words.jsonl"  # a last word without word pieces is untagged, but was not cut off
    empty_last.write_text(json.dumps({"tokens": ["the", "movie", "was", "\u200b"]}) + "\n")
    row = json.loads(run_prediction(model_dir / "chunk", empty_last, show_progress=False).path.read_text())
    assert len(row["tags"]) == 4 and "untagged_words" not in row
    source.write_text("北京 很好\n")  # Chinese: a character a word, as tagging corpora have them
    row = json.loads(run_prediction(model_dir / "chunk", source, tmp_path / "zh.jsonl").path.read_text())
    assert row["words"] == ["北", "京", "很", "好"] and len(row["tags"]) == 4
    source.write_text("the movie was " * 30 + "\n")  # 90 words, one piece each: 62 fit in max_seq_length 64
    path = run_prediction(model_dir / "chunk", source, tmp_path / "long.jsonl", show_progress=False).path
    row = json.loads(path.read_text())
    assert len(row["tags"]) == 90 and row["untagged_words"] == 28 and row["tags"][62:] == ["O"] * 28
    assert "1 of 1 inputs were longer than the model's max_seq_length 64: their last words" in capsys.readouterr().err
    table = tmp_path / "scored.csv"
    table.write_text("text,score\ngood film,4.5\nbad film,nan\n")
    with pytest.raises(UserError, match=r"scored\.csv:3: score 'nan' is not a finite number"):
        run_prediction(model_dir / "scores", table, columns={"label_column": "score"}, show_progress=False)
    from transformers import ElectraForTokenClassification

    hf = ElectraForTokenClassification.from_pretrained(model_dir / "chunk")
    assert sorted(hf.config.label2id) == ["B-NP", "E-NP", "S-VP"]  # trained on BIOES, as the reference
    # One task of it evaluated from the multi-task folder: the error names the task's own folder.
    one = {"task_names": ["chunk"], "do_train": False, "init_checkpoint": str(model_dir)}
    with pytest.raises(UserError, match=r"holds a multi-task model, a folder per task \(chunk, scores\)"):
        run_finetuning(tmp_path, "evaluator", one)


def test_encoder_shape_mismatch_lists_tensors(tmp_path: Path) -> None:
    from safetensors.torch import save_model

    from electra.modeling import ElectraForPreTraining

    save_model(ElectraForPreTraining(small_config(layers=2)), str(tmp_path / "model.safetensors"))
    wider = ModelConfig(**{**small_config().to_dict(), "hidden_size": 64, "intermediate_size": 128})
    model = FinetuningModel(wider, [TaskHead("t", "classification", ["0", "1"])])
    with pytest.raises(UserError, match=r"embeddings_project\.weight: checkpoint \(32, 16\), model \(64, 16\)"):
        load_encoder_weights(model, tmp_path / "model.safetensors")
    same = FinetuningModel(small_config(layers=2), [TaskHead("t", "classification", ["0", "1"])])
    load_encoder_weights(same, tmp_path / "model.safetensors")  # the discriminator's encoder loads
    # Another vocabulary, or more positions than pre-training had, are said in those words.
    longer = {**small_config(layers=2).to_dict(), "vocab_size": 99, "max_position_embeddings": 128}
    other = FinetuningModel(ModelConfig(**longer), [TaskHead("t", "classification", ["0", "1"])])
    with pytest.raises(UserError, match=r"pre-trained with .*; it has 64 positions: use max_seq_length 64"):
        load_encoder_weights(other, tmp_path / "model.safetensors")


def test_finetune_from_pretrained_model(pretrain_data_dir: Path, tmp_path: Path, capsys) -> None:
    """The default init_checkpoint is the pre-trained discriminator, whose shape is inherited."""
    import shutil

    from electra.pretrain import run_pretraining

    data_dir = tmp_path / "data"
    shutil.copytree(pretrain_data_dir, data_dir)
    overrides = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2, "intermediate_size": 64}
    run_pretraining(
        data_dir,
        "tiny",
        {"embedding_size": 32, "model_hparam_overrides": overrides, "train_batch_size": 8, "num_train_steps": 3},
    )
    write_user_task(data_dir, {"train": sentiment_rows(32, 0), "dev": sentiment_rows(16, 1)})
    hparams = {"task_names": ["tickets"], "tasks": {"tickets": {}}, "train_batch_size": 8, "num_train_epochs": 1}
    outcome = run_finetuning(data_dir, "tiny", hparams)
    assert "tickets/dev" in outcome["trials"][0]["scores"]
    config = json.loads((outcome["trials"][0]["dir"] / "model" / "config.json").read_text())
    assert (config["hidden_size"], config["num_hidden_layers"], config["embedding_size"]) == (32, 2, 32)
    # The reference's examples pass "model_size"; agreeing with the recorded one, it keeps the rest inherited ...
    assert prepare_finetuning(data_dir, "tiny", {**hparams, "model_size": "small"}).config.model_hparam_overrides
    # ... and a model pre-trained with "debug": true has the debug shape, which fine-tuning takes without being told.
    run_pretraining(data_dir, "tiny-debug", {"debug": True, "num_train_steps": 1})
    assert run_finetuning(data_dir, "tiny-debug", hparams)["trials"][0]["scores"]
    with pytest.raises(UserError, match="no pre-trained model at"):
        run_finetuning(data_dir, "missing", hparams)

    # A masked LM pre-trained without a discriminator starts fine-tuning from its (full-sized) generator.
    mlm = {"embedding_size": 32, "model_hparam_overrides": overrides, "train_batch_size": 8, "num_train_steps": 3}
    run_pretraining(data_dir, "tiny-mlm", {**mlm, "electra_objective": False})
    run = prepare_finetuning(data_dir, "tiny-mlm", hparams)
    assert run.init_checkpoint == data_dir / "models" / "tiny-mlm" / "generator" / "model.safetensors"
    model = FinetuningModel(encoder_config(run.config, len(run.vocab), 0), [TaskHead("t", "classification", ["a"])])
    load_encoder_weights(model, run.init_checkpoint)
    generator = load_file(str(run.init_checkpoint))
    assert torch.equal(
        model.electra.encoder.layer[1].output.dense.weight, generator["electra.encoder.layer.1.output.dense.weight"]
    )
    assert "note: fine-tuning the generator" not in capsys.readouterr().err  # a masked LM's only network
    # An ELECTRA pair's generator named by mistake (the reference fine-tunes the discriminator) is said to be one.
    generator_folder = str(data_dir / "models" / "tiny" / "generator")
    prepare_finetuning(data_dir, "tiny", {**hparams, "init_checkpoint": generator_folder})
    assert "the reference fine-tunes the discriminator: init_checkpoint " in capsys.readouterr().err


def test_shared_glue_and_chunk_files_read() -> None:
    from tests.conftest import shared_data

    root = shared_data("sst").parent
    expected = {"cola": 8551, "sst": 67349, "mrpc": 2 * 3668, "sts": 2 * 5749, "qqp": 23496}
    for name, count in expected.items():
        assert len(get_task(name, root, {}).examples("train")) == count
    assert len(get_task("qnli", root, {}).examples("dev")) == 5463
    chunk = get_task("chunk", root, {})
    assert len(chunk.examples("train")) == 8936 and len(chunk.examples("dev")) == 2012
    # The dev set's two-word LST chunks never occur in train: as the reference, the tags of every split are
    # outputs, so the official CoNLL-2000 split fine-tunes (it stopped on dev.txt:36802 before).
    labels = chunk.label_list()
    assert {"B-LST", "E-LST", "S-LST"} <= set(labels)
    chunk.check_labels(chunk.examples("dev"), labels, "dev")


def test_glue_task_writes_submission_file(tmp_path: Path, vocab_file: Path) -> None:
    folder = tmp_path / "finetuning_data" / "sst"
    folder.mkdir(parents=True)
    labels = {"pos": "1", "neg": "0"}
    for split, count, seed in (("train", 320, 0), ("dev", 64, 1)):
        rows = "".join(f"{text}\t{labels[label]}\n" for text, label in sentiment_rows(count, seed))
        (folder / f"{split}.tsv").write_text("sentence\tlabel\n" + rows)
    # the row of index 1 is malformed: skipped, and the next keeps its own index (GLUE scores by it)
    (folder / "test.tsv").write_text("index\tsentence\n0\tthe film was great\n1\n2\tan awful plot\n")
    hparams = {**TINY_MODEL, "task_names": ["sst"], "vocab_file": str(vocab_file), "write_test_outputs": True}
    outcome = run_finetuning(tmp_path, "m", hparams)
    assert outcome["trials"][0]["scores"]["sst/dev"]["accuracy"] > 90
    submission = tmp_path / "models" / "m" / "test_predictions" / "sst_1" / "SST-2.tsv"
    assert outcome["test_outputs"] == [submission]
    assert submission.read_text() == "index\tprediction\n0\t1\n2\t0\n"
    # `electra predict` knows GLUE's column names and reads quotes as text, as GLUE's files need.
    (folder / "quoted.tsv").write_text('sentence\tlabel\n"the film was great\t1\nan awful plot "\t0\n')
    done = run_prediction(
        outcome["trials"][0]["dir"] / "model", folder / "quoted.tsv", columns={"label_column": "label"}
    )
    assert done.scores["accuracy"] == 100.0


@pytest.mark.parametrize("weights", ["model.safetensors", "pytorch_model.bin"])
def test_hugging_face_folder_as_init_checkpoint(tmp_path: Path, vocab_file: Path, weights: str) -> None:
    """A local Hugging Face ELECTRA folder (as a released discriminator) is a starting point, shape included,
    in either weights format the hub holds (google/electra-*-discriminator ship only pytorch_model.bin)."""
    import shutil

    from safetensors.torch import load_file
    from transformers import ElectraConfig, ElectraForPreTraining

    hf_config = ElectraConfig(
        vocab_size=len(SPECIAL_TOKENS) + len(WORDS),
        embedding_size=24,
        hidden_size=48,
        num_hidden_layers=3,
        num_attention_heads=3,
        intermediate_size=96,
        max_position_embeddings=64,
        layer_norm_eps=1e-5,
    )
    released = tmp_path / "electra-tiny-discriminator"
    ElectraForPreTraining(hf_config).save_pretrained(released)
    shutil.copyfile(vocab_file, released / "vocab.txt")
    (released / "tokenizer_config.json").write_text('{"do_lower_case": false}')  # a cased release
    original = load_file(str(released / "model.safetensors"))
    if weights == "pytorch_model.bin":
        torch.save(original, released / weights)
        (released / "model.safetensors").unlink()
    write_user_task(tmp_path, {"train": sentiment_rows(32, 0), "dev": sentiment_rows(16, 1)})
    hparams = {"task_names": ["tickets"], "tasks": {"tickets": {}}, "train_batch_size": 8, "num_train_epochs": 1}
    with pytest.raises(UserError, match="max_seq_length 128 is longer than the model's 64 positions"):
        run_finetuning(tmp_path, "m", {**hparams, "init_checkpoint": str(released)})
    hparams["max_seq_length"] = 64
    outcome = run_finetuning(tmp_path, "m", {**hparams, "init_checkpoint": str(released), "learning_rate": 0.0})
    exported = outcome["trials"][0]["dir"] / "model"
    config = json.loads((exported / "config.json").read_text())
    assert [config[key] for key in ("embedding_size", "hidden_size", "num_hidden_layers")] == [24, 48, 3]
    assert (config["max_position_embeddings"], config["layer_norm_eps"]) == (64, 1e-5)  # the release's, kept
    assert json.loads((exported / "electra_task.json").read_text())["do_lower_case"] is False
    if weights == "model.safetensors":  # newer transformers saves tokenizer.json and no vocab.txt
        (released / "vocab.txt").unlink()
        with pytest.raises(UserError, match=r"holds no vocab\.txt or tokenizer\.json"):
            run_finetuning(tmp_path, "other", {**hparams, "init_checkpoint": str(released)})
        build_tokenizer(read_vocab(vocab_file)).save(str(released / "tokenizer.json"))
        outcome = run_finetuning(tmp_path, "other", {**hparams, "init_checkpoint": str(released)})
        assert read_vocab(outcome["trials"][0]["dir"] / "model" / "vocab.txt") == read_vocab(vocab_file)
    tuned = load_file(str(exported / "model.safetensors"))
    encoder_keys = [key for key in original if key.startswith("electra.")]
    assert encoder_keys and all(torch.equal(original[key], tuned[key]) for key in encoder_keys)  # lr 0: unchanged
    # The weights file itself: shape, casing and vocabulary from its folder (they came from the data dir's defaults).
    from_file = run_finetuning(tmp_path, "file", {**hparams, "init_checkpoint": str(released / weights)})
    exported = from_file["trials"][0]["dir"] / "model"
    assert json.loads((exported / "config.json").read_text())["hidden_size"] == 48
    assert json.loads((exported / "electra_task.json").read_text())["do_lower_case"] is False
    assert read_vocab(exported / "vocab.txt") == read_vocab(vocab_file)


def test_fine_tuning_applies_layerwise_decay_to_the_updates(tmp_path: Path, vocab_file: Path) -> None:
    """One real update from a known starting point: each layer moves by the learning rate times its layer's
    scale (Adam's first step moves every element with a gradient by the step's rate)."""
    from transformers import ElectraConfig, ElectraForPreTraining

    shape = {"embedding_size": 16, "hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2}
    released = tmp_path / "start"
    hf_config = ElectraConfig(vocab_size=len(SPECIAL_TOKENS) + len(WORDS), intermediate_size=64, **shape)
    ElectraForPreTraining(hf_config).save_pretrained(released)
    shutil.copyfile(vocab_file, released / "vocab.txt")
    start = load_file(str(released / "model.safetensors"))
    write_user_task(tmp_path, {"train": sentiment_rows(16, 0), "dev": sentiment_rows(8, 1)})
    hparams = {"task_names": ["tickets"], "tasks": {"tickets": {}}, "train_batch_size": 16, "num_train_epochs": 1}
    hparams.update(init_checkpoint=str(released), learning_rate=1e-3, layerwise_lr_decay=0.5, warmup_proportion=0.0)
    hparams.update(weight_decay_rate=0.0, max_seq_length=64)
    outcome = run_finetuning(tmp_path, "m", hparams)
    tuned = load_file(str(outcome["trials"][0]["dir"] / "model" / "model.safetensors"))

    def moved(name: str) -> float:
        return float((tuned[name] - start[name]).abs().max()) if name in start else float(tuned[name].abs().max())

    layers = 2
    depths = {"electra.embeddings.LayerNorm.weight": 0, "electra.embeddings_project.bias": 0}
    depths |= {f"electra.encoder.layer.{i}.output.dense.bias": i + 1 for i in range(layers)}
    for name, depth in depths.items():
        assert moved(name) == pytest.approx(1e-3 * 0.5 ** (layers + 2 - depth), rel=1e-3), name
    assert moved("classifier.out_proj.bias") == pytest.approx(1e-3, rel=1e-3)  # the head: new, and not decayed


def test_text_in_another_encoding_stops_with_the_line_and_the_fix(tmp_path: Path) -> None:
    """Chinese tables are often saved as GBK: a one-line error names the first bad line and the conversion."""
    from electra.config import parse_hparams
    from electra.tasks import read_table_rows

    table = tmp_path / "train.csv"
    table.write_bytes("text,label\n这家店很好吃,pos\n".encode("gbk"))
    with pytest.raises(UserError, match=r"train\.csv:2: not UTF-8 text.*iconv -f GB18030 -t UTF-8 train\.csv"):
        read_table_rows(table, header=True)
    hparams = tmp_path / "hparams.json"  # saved by an editor that writes a byte-order mark
    hparams.write_text('{"task_names": ["sst"]}', encoding="utf-8-sig")
    assert parse_hparams(str(hparams)) == {"task_names": ["sst"]}


def test_evaluating_a_fine_tuned_model_named_by_init_checkpoint(finetuned_classifier: Path, capsys) -> None:
    """The reference's evaluation of a fine-tuned model: "do_train": false with init_checkpoint naming its folder
    under finetuning_models/, from any --model-name."""
    root = finetuned_classifier.parents[4]
    hparams = {"task_names": ["tickets"], "tasks": {"tickets": {}}, "do_train": False, "do_eval": True}
    named = {**hparams, "init_checkpoint": str(finetuned_classifier.parent), "write_test_outputs": True}
    outcome = run_finetuning(root, "evaluator", named)
    assert "note: write_test_outputs: " in capsys.readouterr().err  # the task has no test file: said, not silent
    assert outcome["trials"][0]["scores"]["tickets/dev"]["accuracy"] > 90
    assert f"trial 1: model in {finetuned_classifier}\n" in describe_finetuning(outcome)  # the model it evaluated
    assert outcome["results_file"].name == f"tickets_results_of_{finetuned_classifier.parent.name}.txt"
    # The hparams of the training run, init_checkpoint included, evaluate that run's own trials as before.
    trained = {**hparams, "init_checkpoint": None, "vocab_file": str(root / "vocab.txt")}
    assert run_finetuning(root, "m", trained)["trials"][0]["scores"]["tickets/dev"]["accuracy"] > 90


def test_mnli_writes_the_glue_diagnostic_predictions(tmp_path: Path, vocab_file: Path) -> None:
    """GLUE's diagnostic set lives in mnli/ (diagnostic.tsv) and is predicted by the MNLI model, as AX.tsv."""
    folder = tmp_path / "finetuning_data" / "mnli"
    folder.mkdir(parents=True)
    labels = ["entailment", "contradiction", "neutral"]
    header = "\t".join(f"c{i}" for i in range(8))

    def pairs(count: int, with_label: bool) -> str:
        rows = [(text, "the film was fine", labels[i % 3]) for i, (text, _) in enumerate(sentiment_rows(count, 0))]
        return "".join(
            f"{i}\t" + "\t".join(["x"] * 7) + f"\t{a}\t{b}" + (f"\t{label}\t{label}" if with_label else "") + "\n"
            for i, (a, b, label) in enumerate(rows)
        )

    (folder / "train.tsv").write_text(f"{header}\ts1\ts2\tl1\tgold\n" + pairs(48, True))
    (folder / "dev_matched.tsv").write_text(f"{header}\ts1\ts2\tl1\tgold\n" + pairs(12, True))
    (folder / "test_matched.tsv").write_text(f"{header}\ts1\ts2\n" + pairs(5, False))
    (folder / "diagnostic.tsv").write_text(
        "index\tsentence1\tsentence2\n0\ta good film\tthe film was fine\n1\tbad\tok\n"
    )
    hparams = {**TINY_MODEL, "task_names": ["mnli"], "vocab_file": str(vocab_file), "write_test_outputs": True}
    outcome = run_finetuning(tmp_path, "m", {**hparams, "num_train_epochs": 1})
    written = {path.name: path.read_text().splitlines() for path in outcome["test_outputs"]}
    assert sorted(written) == ["AX.tsv", "MNLI-m.tsv"]  # no test_mismatched.tsv here: skipped
    assert len(written["AX.tsv"]) == 3 and written["AX.tsv"][0] == "index\tprediction"
    assert all(line.split("\t")[1] in labels for line in written["AX.tsv"][1:] + written["MNLI-m.tsv"][1:])


def test_a_trial_is_not_reused_once_its_training_data_changed(tmp_path: Path, vocab_file: Path) -> None:
    """Re-running the same command reuses a finished trial, but not after the training file changed (another
    `electra split`, say): that run's dev score would belong to a model trained on other data."""
    hparams = {**TINY_MODEL, "task_names": ["tickets"], "tasks": {"tickets": {}}, "vocab_file": str(vocab_file)}
    write_user_task(tmp_path, {"train": sentiment_rows(48, 0), "dev": sentiment_rows(16, 1)})
    first = run_finetuning(tmp_path, "m", {**hparams, "num_train_epochs": 1})
    leftover = first["trials"][0]["dir"] / "checkpoints" / "step-00000001"  # a kill after the export, before removal
    leftover.mkdir(parents=True)
    again = run_finetuning(tmp_path, "m", {**hparams, "num_train_epochs": 1})
    assert again["trials"][0]["scores"] == first["trials"][0]["scores"]  # reused as it is
    assert not leftover.parent.exists()
    # A spec that spells out a default, or a spec of a task not trained, is the same run.
    recorded = (first["trials"][0]["dir"] / "finetune_config.json").stat().st_mtime_ns
    same = {"tickets": {"type": "classification", "header": True}, "other": {"type": "regression"}}
    assert run_finetuning(tmp_path, "m", {**hparams, "num_train_epochs": 1, "tasks": same})["trials"][0]["scores"]
    assert (first["trials"][0]["dir"] / "finetune_config.json").stat().st_mtime_ns == recorded  # not retrained
    # Nor after the weights it started from changed (pre-training went on): its scores would be another model's.
    start = tmp_path / "start"
    shutil.copytree(first["trials"][0]["model"], start)
    from_start = {**hparams, "num_train_epochs": 1, "init_checkpoint": str(start)}
    started = run_finetuning(tmp_path, "n", from_start)
    assert run_finetuning(tmp_path, "n", from_start)["trials"][0]["scores"] == started["trials"][0]["scores"]
    weights = load_file(str(start / "model.safetensors"))
    save_file({name: value + 0.01 for name, value in weights.items()}, str(start / "model.safetensors"))
    with pytest.raises(UserError, match=r"other settings \(the pre-trained weights differ\)"):
        run_finetuning(tmp_path, "n", from_start)
    write_user_task(tmp_path, {"train": sentiment_rows(48, 2), "dev": sentiment_rows(16, 1)})
    with pytest.raises(UserError, match=r"other settings \(the training data differ\)"):
        run_finetuning(tmp_path, "m", {**hparams, "num_train_epochs": 1})


def test_keep_all_models_false_keeps_only_the_last_trials_model(tmp_path: Path, vocab_file: Path) -> None:
    hparams = {**TINY_MODEL, "task_names": ["tickets"], "tasks": {"tickets": {}}, "vocab_file": str(vocab_file)}
    write_user_task(tmp_path, {"train": sentiment_rows(48, 0), "dev": sentiment_rows(16, 1)})
    settings = {"num_train_epochs": 1, "num_trials": 2, "keep_all_models": False}
    outcome = run_finetuning(tmp_path, "m", {**hparams, **settings})
    first, last = outcome["trials"]
    assert not first["model"].exists() and (last["model"] / "model.safetensors").is_file()
    assert first["scores"]["tickets/dev"] and last["scores"]["tickets/dev"]
    text = describe_finetuning(outcome)
    assert "trial 1: model not kept (keep_all_models)" in text and f"trial 2: model in {last['model']}" in text
    # Its scores stay with its record: the same command again (or after a kill in trial 2) does not retrain it.
    recorded = (first["dir"] / "finetune_config.json").stat().st_mtime_ns  # training writes it again
    again = run_finetuning(tmp_path, "m", {**hparams, **settings})
    assert (first["dir"] / "finetune_config.json").stat().st_mtime_ns == recorded
    assert [trial["scores"] for trial in again["trials"]] == [first["scores"], last["scores"]]
    assert not first["model"].exists() and not (first["dir"] / "checkpoints").exists()
    with pytest.raises(UserError, match=r"other settings.*learning_rate"):
        run_finetuning(tmp_path, "m", {**hparams, **settings, "learning_rate": 5e-4})
    # Evaluating a named model with these settings deletes nothing: it trained no trial here.
    evaluation = {**hparams, **settings, "do_train": False, "init_checkpoint": str(last["model"])}
    assert len(run_finetuning(tmp_path, "m", evaluation)["trials"]) == 2
    assert (last["model"] / "model.safetensors").is_file()
    # Its own trials again, without training: the first one's model is gone, and the error says why.
    with pytest.raises(UserError, match=r"model was deleted after training .* dev scores are in .*scores\.json"):
        run_finetuning(tmp_path, "m", {**hparams, **settings, "do_train": False})
    # Scores of other dev data (or none, without do_eval) are not reused: the trial trains again to be scored.
    write_user_task(tmp_path, {"dev": sentiment_rows(12, 2)})
    changed = run_finetuning(tmp_path, "m", {**hparams, **settings})
    assert (first["dir"] / "finetune_config.json").stat().st_mtime_ns != recorded
    assert all(trial["scores"]["tickets/dev"] for trial in changed["trials"])
    assert changed["trials"][0]["scores"] != first["scores"]
    unevaluated = run_finetuning(tmp_path, "quiet", {**hparams, **settings, "do_eval": False})
    assert [trial["scores"] for trial in unevaluated["trials"]] == [{}, {}]
    evaluated = run_finetuning(tmp_path, "quiet", {**hparams, **settings})
    assert set(evaluated["summary"]) == {"tickets/dev accuracy", "tickets/dev macro_f1"}
    assert all(trial["scores"]["tickets/dev"] for trial in evaluated["trials"])


def test_evaluating_a_saved_model_scores_with_the_labels_it_learned(finetuned_classifier: Path, tmp_path: Path) -> None:
    """ "do_train": false decodes with the saved model's labels, in its output order: a training file that has
    since gained a class (three labels for a two-way head) or renamed one (shifting every id) changes nothing, and
    a dev label the model never learned is named."""
    root = tmp_path / "root"
    shutil.copytree(finetuned_classifier.parents[4], root)
    model = root / finetuned_classifier.relative_to(finetuned_classifier.parents[4])
    data = root / "finetuning_data" / "tickets"
    train = data / "train.csv"
    hparams = {"task_names": ["tickets"], "tasks": {"tickets": {}}, "do_train": False, "init_checkpoint": str(model)}
    train.write_text(train.read_text() + "a new class,aaa\n")  # three labels now, for a two-way head
    assert run_finetuning(root, "evaluator", hparams)["trials"][0]["scores"]["tickets/dev"]["accuracy"] > 90
    train.write_text(train.read_text().replace(",neg\n", ",zneg\n"))  # pos, zneg: would swap the two ids
    assert run_finetuning(root, "evaluator", hparams)["trials"][0]["scores"]["tickets/dev"]["accuracy"] > 90
    train.unlink()  # evaluating needs no training file
    assert run_finetuning(root, "evaluator", hparams)["trials"][0]["scores"]["tickets/dev"]["accuracy"] > 90
    # Under another task's name (trained on one review set, evaluated on another): its own head decodes.
    shutil.copytree(data, data.parent / "reviews")
    other = {**hparams, "task_names": ["reviews"], "tasks": {"reviews": {}}}
    assert run_finetuning(root, "evaluator", other)["trials"][0]["scores"]["reviews/dev"]["accuracy"] > 90
    (data.parent / "scores").mkdir()
    (data.parent / "scores" / "dev.csv").write_text("text,label\ngood film,4.5\n")
    regression = {**hparams, "task_names": ["scores"], "tasks": {"scores": {"type": "regression"}}}
    with pytest.raises(UserError, match=r"holds a classification model \(fine-tuned for task 'tickets'\), and task "):
        run_finetuning(root, "evaluator", regression)
    (data / "dev.csv").write_text((data / "dev.csv").read_text() + "a new class,aaa\n")
    with pytest.raises(
        UserError, match=r"dev\.csv:66: label 'aaa' .* not among the labels of the model in .*\(neg, pos\)"
    ):
        run_finetuning(root, "evaluator", hparams)


def test_two_processes_with_gloo_fine_tune_as_one(tmp_path: Path, vocab_file: Path) -> None:
    """`torchrun --nproc-per-node 2 -m electra.cli finetune` (gloo on CPUs): the same losses as one process at the
    same global batch, and the summary printed once."""
    import subprocess
    import sys

    write_user_task(tmp_path, {"train": sentiment_rows(96, 0), "dev": sentiment_rows(16, 1)})
    no_dropout = {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}
    overrides = {**TINY_MODEL["model_hparam_overrides"], **no_dropout}
    hparams = {**TINY_MODEL, "model_hparam_overrides": overrides, "num_train_epochs": 1, "log_every_steps": 1}
    hparams.update(task_names=["tickets"], tasks={"tickets": {}}, vocab_file=str(vocab_file))
    hparams["precision"] = "fp32"  # "auto" is bf16 on CPUs with AMX, whose rounding differs with each process's padding
    base = ["-m", "electra.cli", "finetune", "--data-dir", str(tmp_path), "--hparams", json.dumps(hparams)]
    subprocess.run([sys.executable, *base, "--model-name", "one"], check=True, capture_output=True)
    two = run_torchrun(*base, "--model-name", "two")
    assert two.stdout.count("tickets/dev: accuracy") == 1

    def losses(name: str) -> list[float]:
        log = tmp_path / "models" / name / "finetuning_models" / "tickets_model_1" / "logs" / "metrics.jsonl"
        return [json.loads(line)["loss"] for line in log.read_text().splitlines()]

    assert len(losses("one")) == 6  # 96 examples in batches of 16
    assert losses("two") == pytest.approx(losses("one"), rel=1e-5)


MULTITASK_RANKS = """
import sys
from pathlib import Path

import numpy as np
import torch

from electra.config import ModelConfig
from electra.finetune_data import Features, TaskHead, collate
from electra.task_model import FinetuningModel
from electra.trainer import Trainer, TrainSettings, setup_processes


class Rows:  # a global batch of 8: the first process's 4 rows all of task 0, the second's of both tasks
    def __init__(self) -> None:
        ids = np.array([2, 7, 8, 3], dtype=np.int32)
        task_of = [0, 0, 0, 0, 0, 1, 0, 1]
        self.rows = [Features(ids, np.zeros(4, np.int8), task_id=t, label=float(i % 2)) for i, t in enumerate(task_of)]

    def batch_indices(self, step: int) -> np.ndarray:
        return np.arange(8)

    def example_lengths(self, indices: np.ndarray) -> np.ndarray:
        return np.full(len(indices), 4)

    def make_batch(self, indices, rows, total, seed, device):
        return collate([self.rows[i] for i in indices[rows]], 0, device)


processes = setup_processes()
torch.manual_seed(0)
shape = ModelConfig(vocab_size=50, embedding_size=16, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                    intermediate_size=32)
model = FinetuningModel(shape, [TaskHead(name, "classification", ["x", "y"]) for name in ("a", "b")])
settings = TrainSettings(learning_rate=1e-3, num_train_steps=3, batch_size=8, save_checkpoints_steps=100,
                         precision="fp32")
steps = Trainer(model, Rows(), settings, Path(sys.argv[1]), processes).train().step
# one file per process: two processes printing to one pipe interleave their words ("steps steps3 3")
(Path(sys.argv[1]).parent / f"steps-{processes.rank}").write_text(str(steps))
"""


def test_two_processes_fine_tune_several_tasks_when_one_lacks_a_task(tmp_path: Path) -> None:
    """Multi-task fine-tuning under torchrun where one process's rows hold no example of a task: the processes must
    still reduce their gradients in step (before every head took part in every step, they aborted or hung)."""
    script = tmp_path / "ranks.py"
    script.write_text(MULTITASK_RANKS)
    run_torchrun(str(script), str(tmp_path / "run"))
    assert [(tmp_path / f"steps-{rank}").read_text() for rank in (0, 1)] == ["3", "3"]


def test_the_objective_is_the_batch_sum_as_in_the_reference(tmp_path: Path, vocab_file: Path) -> None:
    """run_finetuning.py minimises the sum of the examples' losses over a batch (clipping at 1.0 then acts on it);
    the log shows that objective as `loss` and the mean per example as `task_loss`."""
    write_user_task(tmp_path, {"train": sentiment_rows(64, 0), "dev": sentiment_rows(16, 1)})
    hparams = {**TINY_MODEL, "task_names": ["tickets"], "tasks": {"tickets": {}}, "vocab_file": str(vocab_file)}
    run_finetuning(tmp_path, "m", {**hparams, "num_train_epochs": 1, "log_every_steps": 1})
    log = tmp_path / "models" / "m" / "finetuning_models" / "tickets_model_1" / "logs" / "metrics.jsonl"
    records = [json.loads(line) for line in log.read_text().splitlines()]
    assert len(records) == 4
    for record in records:
        assert record["loss"] == pytest.approx(TINY_MODEL["train_batch_size"] * record["task_loss"], rel=1e-5)
        assert record["grad_norm"] > 1.0  # so clipping at 1.0 applies, as in the reference


TASK_MODULE = '''
from electra.tasks import Example, Task, register_task


@register_task("sentiment_words")
class SentimentWords(Task):
    """One review a line; the label is read off the review's own sentiment word."""

    def read_split(self, split):
        lines = (self.folder / f"{split}.txt").read_text(encoding="utf-8").splitlines()
        positive = {"good", "great", "fine", "好"}
        examples = []
        for number, line in enumerate(lines, 1):
            label = "pos" if positive & set(line.split()) else "neg"
            examples.append(Example(number, text_a=line, label=label, source=f"{split}:{number}"))
        return examples
'''


def test_a_task_written_in_python_fine_tunes_from_the_command_line(tmp_path: Path, vocab_file: Path, capsys) -> None:
    from electra.cli import main

    folder = tmp_path / "finetuning_data" / "sentiment_words"
    folder.mkdir(parents=True)
    for split, seed, count in (("train", 0, 320), ("dev", 1, 64)):
        (folder / f"{split}.txt").write_text("".join(text + "\n" for text, _ in sentiment_rows(count, seed)))
    module = tmp_path / "my_tasks.py"
    module.write_text(TASK_MODULE)
    hparams = json.dumps({**TINY_MODEL, "task_names": ["sentiment_words"], "vocab_file": str(vocab_file)})
    command = ["finetune", "--data-dir", str(tmp_path), "--model-name", "m", "--hparams", hparams]
    assert main(command) == 2  # without the module the name is unknown, and the error says how to load it
    assert "or load a task written in Python with --task-module FILE" in capsys.readouterr().err
    assert main([*command, "--task-module", str(module)]) == 0
    assert "sentiment_words/dev: accuracy" in capsys.readouterr().out
    results = json.loads((tmp_path / "models" / "m" / "results" / "sentiment_words_results.json").read_text())
    assert results["trials"][0]["sentiment_words/dev"]["accuracy"] > 90
    module.write_text("import no_such_package\n")
    assert main([*command, "--task-module", str(module)]) == 2
    assert "failed to load: ModuleNotFoundError: No module named 'no_such_package'" in capsys.readouterr().err
    assert main([*command, "--task-module", str(tmp_path / "missing.py")]) == 2
    assert "missing.py: no such file" in capsys.readouterr().err


def test_exported_labels_stay_readable(tmp_path: Path, vocab_file: Path) -> None:
    """Chinese class names were written as \\u escapes in config.json and electra_task.json."""
    from tests.conftest import random_task_model

    head = TaskHead("tickets", "classification", ["书籍", "手机"])
    random_task_model(tmp_path / "model", head, read_vocab(vocab_file))
    for name in ("config.json", "electra_task.json"):
        assert "书籍" in (tmp_path / "model" / name).read_text(encoding="utf-8"), name
    assert load_task_model(tmp_path / "model")[1].labels == ["书籍", "手机"]


def test_texts_past_max_seq_length_are_counted(finetuned_classifier: Path, tmp_path: Path, capsys) -> None:
    """A text longer than the model reads was cut without a word; its row now says how much was left out."""
    limit = json.loads((finetuned_classifier / "electra_task.json").read_text())["max_seq_length"]
    source = tmp_path / "long.txt"
    source.write_text("good film\n" + "good film " * limit + "\n", encoding="utf-8")
    done = run_prediction(finetuned_classifier, source, show_progress=False)
    short, long = (json.loads(line) for line in done.path.read_text().splitlines())
    assert "cut_tokens" not in short and long["cut_tokens"] == 2 * limit - (limit - 2)
    assert f"note: 1 of 2 inputs were longer than the model's max_seq_length {limit}" in capsys.readouterr().err
    pair = Featurizer(read_vocab(finetuned_classifier / "vocab.txt"), 8)
    (feature,) = pair.features([Example(0, "good film good", "bad film bad film")], TaskHead("t", "regression", []), 0)
    assert len(feature.input_ids) == 8 and feature.cut_tokens == 7 - 5  # 3 + 4 pieces, 5 places between 3 markers


def test_inputs_mostly_unknown_to_the_vocabulary_are_noted(finetuned_classifier: Path, tmp_path: Path, capsys) -> None:
    """Traditional characters with a simplified-Chinese vocabulary, full-width letters, emoji: each became [UNK]
    without a word."""
    featurizer = Featurizer([*SPECIAL_TOKENS, "好", "书", "a"], 16)
    assert featurizer.unknown_note([Example(0, "好书 a")], "x") is None
    note = featurizer.unknown_note([Example(0, "這本書好 👍", "ＡＢＣ")], "tickets.csv")
    assert note.startswith("note: 83% of the word pieces of tickets.csv are [UNK] (e.g. 這 本 書 👍 ＡＢＣ)")
    source = tmp_path / "emoji.txt"
    source.write_text("good film 👍👍\n😀 🍎 🍌\n", encoding="utf-8")
    run_prediction(finetuned_classifier, source, show_progress=False)
    assert "[UNK] (e.g. 👍👍 😀 🍎 🍌)" in capsys.readouterr().err


def test_inputs_without_text_are_noted(finetuned_classifier: Path, tmp_path: Path, capsys) -> None:
    """An empty cell got a confident-looking prediction without a word."""
    source = tmp_path / "reviews.csv"
    source.write_text('text\ngood film\n""\n   \nbad film\n', encoding="utf-8")
    done = run_prediction(finetuned_classifier, source, show_progress=False)
    assert done.count == 4
    err = capsys.readouterr().err
    assert f"note: 2 of 4 inputs have no text (e.g. {source}:3, {source}:4)" in err
    source.write_text("text\ngood film\n", encoding="utf-8")
    run_prediction(finetuned_classifier, source, show_progress=False)
    assert "no text" not in capsys.readouterr().err


def test_an_empty_sentence_does_not_void_a_taggers_scores(tmp_path: Path, vocab_file: Path) -> None:
    """A JSONL sentence without words ([] tags) was taken for an unlabelled one: the dev split went unscored."""
    folder = tmp_path / "finetuning_data" / "tags"
    folder.mkdir(parents=True)
    sentence = {"tokens": ["the", "movie", "was"], "tags": ["B-NP", "I-NP", "B-VP"]}
    for split, count in (("train", 40), ("dev", 4)):
        rows = [sentence] * count + [{"tokens": [], "tags": []}]
        (folder / f"{split}.jsonl").write_text("".join(json.dumps(row) + "\n" for row in rows))
    hparams = {**TINY_MODEL, "task_names": ["tags"], "tasks": {"tags": {"type": "tagging"}}}
    outcome = run_finetuning(tmp_path, "m", {**hparams, "vocab_file": str(vocab_file), "max_seq_length": 16})
    assert set(outcome["trials"][0]["scores"]["tags/dev"]) == {"f1", "precision", "recall", "accuracy"}
