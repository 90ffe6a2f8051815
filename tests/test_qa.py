from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

from electra.errors import UserError
from electra.qa import QAFeaturizer, max_context_span, read_mrqa, read_squad, split_context
from electra.tokenization import SPECIAL_TOKENS

WORDS = [
    "the",
    "leader",
    "was",
    "john",
    "smith",
    "(",
    "1895",
    "-",
    "1943",
    ")",
    ".",
    "who",
    "born",
    "when",
    "year",
    "what",
    "?",
    "a",
    "b",
    "c",
    "d",
    "e",
    "f",
    "g",
    "h",
]
VOCAB = [*SPECIAL_TOKENS, *dict.fromkeys(WORDS)]


def squad_file(tmp_path: Path, context: str, qas: list[dict]) -> Path:
    path = tmp_path / "train.json"
    path.write_text(
        json.dumps({"version": "v2.0", "data": [{"title": "t", "paragraphs": [{"context": context, "qas": qas}]}]})
    )
    return path


def test_context_split_keeps_character_offsets() -> None:
    words, char_to_word = split_context("  The leader\twas\u202fJohn ")
    assert words == ["The", "leader", "was", "John"]
    assert char_to_word[2] == 0 and char_to_word["  The leader\twas\u202fJohn ".index("J")] == 3


def test_answer_span_is_improved_to_the_exact_pieces(tmp_path: Path) -> None:
    context = "The leader was John Smith (1895-1943)."
    qa = {"id": "q1", "question": "What year was John Smith born?", "answers": [{"text": "1895", "answer_start": 27}]}
    (example,) = read_squad(squad_file(tmp_path, context, [qa]), training=True, v2=False)
    assert (example.start_word, example.end_word) == (5, 5)  # the word "(1895-1943)."
    featurizer = QAFeaturizer(VOCAB, max_seq_length=64, max_query_length=64, doc_stride=128)
    (feature,) = featurizer.features([example])
    tokens = [VOCAB[i] for i in feature.input_ids]
    assert tokens[feature.start_position : feature.end_position + 1] == ["1895"]
    assert tokens[0] == "[CLS]" and tokens.count("[SEP]") == 2
    assert feature.token_type_ids == [0] * (tokens.index("[SEP]") + 1) + [1] * (len(tokens) - tokens.index("[SEP]") - 1)
    assert feature.token_to_word[feature.start_position] == 5


def test_windows_slide_and_targets_point_at_cls_outside(tmp_path: Path) -> None:
    context = " ".join("abcdefgh" * 3)  # 24 one-piece words
    qa = {"id": "q", "question": "what ?", "answers": [{"text": "e f", "answer_start": context.index("e f")}]}
    (example,) = read_squad(squad_file(tmp_path, context, [qa]), training=True, v2=False)
    featurizer = QAFeaturizer(VOCAB, max_seq_length=15, max_query_length=64, doc_stride=4)
    features = featurizer.features([example])
    # 15 - 2 question pieces - 3 = 10 pieces a window, every 4 pieces: 0-9, 4-13, 8-17, 12-21, 16-23
    spans = [(f.token_to_word[min(f.token_to_word)], f.token_to_word[max(f.token_to_word)]) for f in features]
    assert spans == [(0, 9), (4, 13), (8, 17), (12, 21), (16, 23)]
    inside = [f for f in features if f.start_position]
    assert all(
        VOCAB[f.input_ids[f.start_position]] == "e" and VOCAB[f.input_ids[f.end_position]] == "f" for f in inside
    )
    assert any(f.start_position == 0 == f.end_position for f in features)  # windows without the answer -> [CLS]
    # each piece is "max context" in exactly one window
    for piece in range(24):
        owners = [
            f
            for f in features
            if any(f.token_to_word[p] == piece and f.token_is_max_context[p] for p in f.token_to_word)
        ]
        assert len(owners) == 1


def test_max_context_prefers_centered_windows() -> None:
    # the reference's example: spans A [0,5), B [3,8), C [6,11); "bought" at 7 is best in C
    assert max_context_span([(0, 5), (3, 5), (6, 5)], 7) == 2


def test_bad_answers_are_counted_and_skipped(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    qas = [
        {"id": "ok", "question": "who ?", "answers": [{"text": "john", "answer_start": 15}]},
        {"id": "moved", "question": "who ?", "answers": [{"text": "smith", "answer_start": 0}]},
        {"id": "past", "question": "who ?", "answers": [{"text": "john", "answer_start": 500}]},
        {"id": "none", "question": "who ?", "answers": [], "is_impossible": True},
    ]
    examples = read_squad(squad_file(tmp_path, "The leader was John Smith.", qas), training=True, v2=True)
    assert [e.qas_id for e in examples] == ["ok", "none"] and examples[1].is_impossible
    assert "skipped 2 training question(s)" in capsys.readouterr().err
    bad = tmp_path / "bad.json"
    bad.write_text("[1]")
    with pytest.raises(UserError, match="not a SQuAD JSON"):
        read_squad(bad, training=False, v2=False)


def test_real_squad_and_mrqa_files() -> None:
    from tests.conftest import shared_data

    squad = read_squad(shared_data("squadv1/dev.json"), training=False, v2=False)
    assert len(squad) == 10570 and all(example.gold_answers for example in squad)
    v2 = read_squad(shared_data("squad/dev.json"), training=False, v2=True)
    assert len(v2) == 6078 and sum(not example.gold_answers for example in v2) == 3168
    newsqa = read_mrqa(shared_data("newsqa/dev.jsonl"), training=True)
    assert len(newsqa) == 17 and all(example.start_word >= 0 for example in newsqa)


def test_squad_dev_featurises_in_seconds() -> None:
    from electra.tokenization import train_vocab
    from tests.conftest import shared_data

    path = shared_data("squadv1/dev.json")
    examples = read_squad(path, training=False, v2=False)
    vocab = train_vocab([path], vocab_size=8000, show_progress=False)
    started = time.perf_counter()
    features = QAFeaturizer(vocab, 384, 64, 128).features(examples)
    seconds = time.perf_counter() - started
    assert len(features) >= len(examples)
    assert seconds < 120, f"featurising SQuAD 1.1 dev took {seconds:.0f} s"


# ----------------------------------------------------------------------------------------------- fine-tuning
FILLER = ["the", "leader", "was", "who", "born", "when", "year", "what"]
KEYS = ["b", "c", "d", "e", "f", "g", "h"]  # not "a": the official scripts drop articles


def key_questions(count: int, seed: int, v2: bool) -> dict:
    """Contexts of filler words hiding "smith X"; the question asks for X (absent in some, for SQuAD 2.0)."""
    import random

    rng = random.Random(seed)
    paragraphs = []
    for index in range(count):
        words = rng.choices(FILLER, k=rng.randint(4, 12))
        answerable = not v2 or rng.random() < 0.7
        answer = rng.choice(KEYS)
        if answerable:
            words.insert(rng.randint(0, len(words)), f"smith {answer}")
        context = " ".join(words)
        qa = {"id": f"q{seed}-{index}", "question": "who ?", "answers": [], "is_impossible": not answerable}
        if answerable:
            qa["answers"] = [{"text": answer, "answer_start": context.index(f"smith {answer}") + 6}]
        paragraphs.append({"context": context, "qas": [qa]})
    return {"version": "v2.0" if v2 else "1.1", "data": [{"title": "t", "paragraphs": paragraphs}]}


@pytest.mark.parametrize("task, v2", [("squadv1", False), ("squad", True)])
def test_question_answering_learns_and_exports(tmp_path: Path, task: str, v2: bool) -> None:
    from electra.finetune import run_finetuning
    from electra.tokenization import write_vocab
    from tests.test_finetune import TINY_MODEL

    write_vocab(VOCAB, tmp_path / "vocab.txt")
    folder = tmp_path / "finetuning_data" / task
    folder.mkdir(parents=True)
    (folder / "train.json").write_text(json.dumps(key_questions(400, 0, v2)))
    (folder / "dev.json").write_text(json.dumps(key_questions(80, 1, v2)))
    hparams = {**TINY_MODEL, "task_names": [task], "vocab_file": str(tmp_path / "vocab.txt"), "max_seq_length": 32}
    outcome = run_finetuning(tmp_path, "m", {**hparams, "num_train_epochs": 6})
    scores = outcome["trials"][0]["scores"][f"{task}/dev"]
    if v2:
        assert scores["exact"] > 80 and {"HasAns_exact", "NoAns_exact", "best_f1"} <= set(scores)
    else:
        assert scores["exact_match"] > 80 and scores["f1"] >= scores["exact_match"]
    predictions = json.loads((tmp_path / "models" / "m" / "results" / f"{task}_qa" / f"{task}_preds.json").read_text())
    assert len(predictions) == 80 and (not v2 or "" in predictions.values())

    from transformers import ElectraForQuestionAnswering

    hf = ElectraForQuestionAnswering.from_pretrained(outcome["trials"][0]["dir"] / "model")
    assert hf.qa_outputs.out_features == 2


def test_predict_answers_questions_with_offsets(tmp_path: Path) -> None:
    from electra.finetune import run_finetuning, run_prediction
    from electra.tokenization import write_vocab
    from tests.test_finetune import TINY_MODEL

    write_vocab(VOCAB, tmp_path / "vocab.txt")
    folder = tmp_path / "finetuning_data" / "squadv1"
    folder.mkdir(parents=True)
    (folder / "train.json").write_text(json.dumps(key_questions(400, 0, False)))
    (folder / "dev.json").write_text(json.dumps(key_questions(40, 1, False)))
    hparams = {**TINY_MODEL, "task_names": ["squadv1"], "vocab_file": str(tmp_path / "vocab.txt"), "max_seq_length": 32}
    outcome = run_finetuning(tmp_path, "m", {**hparams, "num_train_epochs": 6})
    questions = tmp_path / "questions.jsonl"
    context = "the leader was smith e  when year"
    questions.write_text(json.dumps({"id": "x", "context": context, "question": "who ?"}) + "\n")
    path, _ = run_prediction(outcome["trials"][0]["dir"] / "model", questions, show_progress=False)
    (answer,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert answer["answer"] == "e" and context[answer["start"] : answer["end"]] == "e" and answer["id"] == "x"
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec(
        "onnxscript"
    ):  # the ONNX path decodes alike
        from electra.export import export_onnx

        onnx_folder = export_onnx(outcome["trials"][0]["dir"] / "model", tmp_path / "onnx").parent
        path, _ = run_prediction(onnx_folder, questions, tmp_path / "onnx.jsonl", show_progress=False)
        (onnx_answer,) = [json.loads(line) for line in path.read_text().splitlines()]
        assert (onnx_answer["answer"], onnx_answer["start"]) == (answer["answer"], answer["start"])
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "x"}) + "\n")
    with pytest.raises(UserError, match=r'bad\.jsonl:1: each line needs a "context" and a "question"'):
        run_prediction(outcome["trials"][0]["dir"] / "model", bad, show_progress=False)
