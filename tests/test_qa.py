from __future__ import annotations

import importlib.util
import json
import time
from pathlib import Path

import pytest

from electra.errors import UserError
from electra.qa import QAFeaturizer, max_context_windows, read_mrqa, read_squad, split_context
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


def test_decoding_settings_limit_spans_and_gate_no_answer(tmp_path: Path) -> None:
    import numpy as np

    from electra.config import FinetuningConfig
    from electra.modeling import QAHeadConfig
    from electra.qa import QADecoding, best_answer
    from electra.tokenization import build_tokenizer

    context = "The leader was John Smith (1895-1943)."
    qa = {"id": "q1", "question": "who was the leader ?", "answers": [{"text": "John", "answer_start": 15}]}
    (example,) = read_squad(squad_file(tmp_path, context, [qa]), training=False, v2=True)
    featurizer = QAFeaturizer(VOCAB, max_seq_length=64, max_query_length=64, doc_stride=128)
    (feature,) = featurizer.features([example])
    john = next(p for p, w in feature.token_to_word.items() if w == 3)
    output = np.zeros((len(feature.input_ids), 2), dtype=np.float32)  # the plain head: start and end logits
    output[0] = [1.0, 1.0]  # [CLS]: null score 2
    output[john, 0], output[john + 1, 1], output[john, 1] = 5.0, 4.0, 3.0  # "John Smith" 9, "John" 8
    head = QAHeadConfig(joint_prediction=False, answerable_classifier=False)
    windows = [(feature, output)]
    tokenizer = build_tokenizer(VOCAB)

    def answer(decoding: QADecoding) -> dict:
        return best_answer(example, windows, VOCAB, tokenizer, head, decoding)

    settings = QADecoding.from_config(FinetuningConfig(task_names=["squad"]), allow_no_answer=True)
    assert settings == QADecoding(20, 30, True, -2.75)
    found = answer(settings)
    assert (found["answer"], found["start"], found["end"]) == ("John Smith", 15, 25)
    assert found["no_answer_odds"] == pytest.approx(2.0 - 9.0)
    assert answer(QADecoding(max_answer_length=1))["answer"] == "John"
    # the plain head's logits are not masked: a question piece that scores highest is no candidate (the reference
    # masks before choosing the n best), even with one candidate start and end
    output[1] = [50.0, 50.0]
    assert answer(QADecoding(n_best_size=1))["answer"] == "John Smith"
    output[1] = [0.0, 0.0]
    # the odds (-7) above the threshold: no answer, and the best span still given for the official script
    unanswered = answer(QADecoding(allow_no_answer=True, no_answer_threshold=-8.0))
    assert unanswered["answer"] == "" and unanswered["best_span"] == "John Smith"
    # a fine-tuned folder keeps the settings; one written before they were stored decodes as it did then
    assert QADecoding.from_record(settings.record()) == settings
    assert QADecoding.from_record({"v2": True}) == QADecoding(20, 30, True, 0.0)


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


def test_over_long_questions_are_cut_and_reported_once(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    context = "the leader was john smith"
    qas = [
        {"id": str(i), "question": "who was the leader born when ?", "answers": [{"text": "john", "answer_start": 15}]}
        for i in range(2)
    ]
    examples = read_squad(squad_file(tmp_path, context, qas), training=True, v2=False)
    featurizer = QAFeaturizer(VOCAB, max_seq_length=32, max_query_length=3, doc_stride=8)
    features = featurizer.features(examples[:1]) + featurizer.features(examples[1:])
    assert [VOCAB[i] for i in features[0].input_ids[:5]] == ["[CLS]", "who", "was", "the", "[SEP]"]
    assert features[0].start_position == 5 + 3  # "john", the 4th context word, after [CLS] + 3 pieces + [SEP]
    err = capsys.readouterr().err
    assert err.count("longer than max_query_length (3 word pieces) are cut to it, as the reference does (1 of") == 1


def test_answers_and_offsets_are_cut_from_the_context_itself() -> None:
    """A span's text and offsets come from the context as written: across two spaces or a line break, and at the
    occurrence the model chose, not the first with the same words."""
    import numpy as np

    from electra.modeling import QAHeadConfig
    from electra.qa import QADecoding, best_answer, records_to_examples

    context = "John  Smith was the leader.\nJohn Smith was born (1895-1943)."
    (example,) = records_to_examples("q.jsonl", [(1, {"context": context, "question": "who ?"})])
    featurizer = QAFeaturizer(VOCAB, 64, 16, 32)
    (feature,) = featurizer.features([example])
    positions = [position for position, token in enumerate(feature.input_ids) if VOCAB[token] in ("john", "smith")]
    for (start, end), expected_start in [(positions[:2], 0), (positions[2:], context.index("John Smith"))]:
        output = np.full((len(feature.input_ids), 2), -10.0, dtype=np.float32)
        output[start, 0] = output[end, 1] = 10.0
        found = best_answer(example, [(feature, output)], VOCAB, featurizer.tokenizer, QAHeadConfig(), QADecoding())
        assert found["start"] == expected_start
        assert found["answer"] == context[found["start"] : found["end"]]
    assert found["answer"] == "John Smith" and expected_start > 0  # the second one, not the first "John  Smith"
    # [CLS] and the closing [SEP] compete for the n-best places, as in the reference, which leaves them unmasked.
    output = np.zeros((len(feature.input_ids), 2), dtype=np.float32)
    output[positions[0], 0] = output[positions[1], 1] = 5.0
    for place in (0, len(feature.input_ids) - 1):
        output[place, 0] = 9.0
        one_best = QADecoding(n_best_size=1)
        found = best_answer(example, [(feature, output)], VOCAB, featurizer.tokenizer, QAHeadConfig(), one_best)
        assert found["answer"] == ""
        output[place, 0] = 0.0
    found = best_answer(example, [(feature, output)], VOCAB, featurizer.tokenizer, QAHeadConfig(), one_best)
    assert found["answer"] == "John  Smith"
    # A context without word pieces has no span: the reference's "empty" entry (score 0), not odds of +inf, which
    # JSON writes as the non-standard Infinity.
    (empty,) = records_to_examples("q.jsonl", [(1, {"context": "\ufffd\u200b", "question": "who ?"})])
    (feature,) = featurizer.features([empty])
    output = np.zeros((len(feature.input_ids), 2), dtype=np.float32)
    found = best_answer(empty, [(feature, output)], VOCAB, featurizer.tokenizer, QAHeadConfig(), QADecoding())
    assert (found["answer"], found["start"], found["no_answer_odds"]) == ("", -1, 0.0)


def test_malformed_qa_files_are_named_where_they_break(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    good = {"id": "q1", "question": "who ?", "answers": [{"text": "john", "answer_start": 15}]}
    context = "the leader was john smith"
    for qas, message in [
        ([{**good, "id": None}], r"paragraph 1, question 1: no \"id\""),
        ([{key: value for key, value in good.items() if key != "question"}], r"question q1: no \"question\""),
        ([{**good, "answers": [{"answer_start": 15}]}], r"question q1: each answer needs its \"text\""),
        ([{**good, "answers": [{"text": "john", "answer_start": "15"}]}], 'needs a "text" string and an integer'),
    ]:
        with pytest.raises(UserError, match=message):
            read_squad(squad_file(tmp_path, context, qas), training=True, v2=False)
    path = squad_file(tmp_path, context, [good])
    path.write_text(json.dumps({"data": [{"title": "t", "paragraphs": [{"context": context, "questions": []}]}]}))
    with pytest.raises(UserError, match=r"article 1, paragraph 1: no \"qas\" list"):
        read_squad(path, training=False, v2=False)
    # Scored splits: ids are unique and every answerable question has a gold answer (the official scripts need it).
    twice = squad_file(tmp_path, context, [good, good])
    assert len(read_squad(twice, training=True, v2=False)) == 2
    with pytest.raises(UserError, match="question id 'q1' appears twice"):
        read_squad(twice, training=False, v2=False, scored=True)
    unanswered = squad_file(tmp_path, context, [{**good, "answers": []}])
    with pytest.raises(UserError, match=r"'q1' has no gold answer .*SQuAD 2\.0 data goes to the task squad"):
        read_squad(unanswered, training=False, v2=False, scored=True)
    # An empty context: skipped from training, kept (answered "") where questions are scored.
    empty = squad_file(tmp_path, "  ", [good])
    assert read_squad(empty, training=True, v2=False) == []
    assert "skipped 1 training question(s)" in capsys.readouterr().err
    (kept,) = read_squad(empty, training=False, v2=False, scored=True)
    assert kept.doc_tokens == [] and "1 question(s) have an empty context" in capsys.readouterr().err
    assert QAFeaturizer(VOCAB, 32, 8, 16).features([kept])  # one window without context: answered ""
    mrqa = tmp_path / "dev.jsonl"
    mrqa.write_text('{"header": {"dataset": "x"}}\n{"context": "a b", "qas": [{"qid": "m1", "question": "a ?"}]}\n')
    with pytest.raises(UserError, match=r"dev\.jsonl: question 'm1' has no gold answer"):
        read_mrqa(mrqa, training=False, scored=True)
    mrqa.write_text('{"context": "a b", "qas": [{"qid": "m1", "question": "a ?", "detected_answers": 5}]}\n')
    assert read_mrqa(mrqa, training=True) == []  # no usable answer: counted and skipped, as a misplaced one
    # `electra predict` takes an MRQA file as it comes (a header line first) and says what a QA model reads.
    from electra.predict import read_questions

    mrqa.write_text('{"header": {"dataset": "x"}}\n{"context": "a b", "qas": [{"qid": "m1", "question": "a ?"}]}\n')
    assert [example.qas_id for example in read_questions(mrqa)] == ["m1"]
    with pytest.raises(UserError, match=r"questions\.txt: a question-answering model reads JSONL"):
        read_questions(tmp_path / "questions.txt")


def test_max_context_prefers_centered_windows() -> None:
    # the reference's example: spans A [0,5), B [3,8), C [6,11); "bought" at 7 is best in C
    assert max_context_windows([(0, 5), (3, 5), (6, 5)], 11)[7] == 2
    assert max_context_windows([(0, 5), (3, 5), (6, 5)], 11) == [0, 0, 0, 0, 1, 1, 1, 2, 2, 2, 2]


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


PLAIN_HEAD = {"joint_prediction": False, "answerable_classifier": False}


@pytest.mark.parametrize("task, v2, head", [("squadv1", False, PLAIN_HEAD), ("squad", True, {})])
def test_question_answering_learns_and_exports(tmp_path: Path, task: str, v2: bool, head: dict) -> None:
    """SQuAD 1.1 with Hugging Face's plain head (exports to transformers with equal logits), SQuAD 2.0 with the
    reference's default head (joint start/end, answerability classifier), which transformers cannot hold."""
    import torch

    from electra.export import export_hf
    from electra.finetune import run_finetuning
    from electra.predict import Predictor
    from electra.tokenization import write_vocab
    from tests.test_finetune import TINY_MODEL

    write_vocab(VOCAB, tmp_path / "vocab.txt")
    folder = tmp_path / "finetuning_data" / task
    folder.mkdir(parents=True)
    (folder / "train.json").write_text(json.dumps(key_questions(400, 0, v2)))
    (folder / "dev.json").write_text(json.dumps(key_questions(80, 1, v2)))
    hparams = {**TINY_MODEL, **head, "task_names": [task], "vocab_file": str(tmp_path / "vocab.txt")}
    outcome = run_finetuning(tmp_path, "m", {**hparams, "max_seq_length": 32, "num_train_epochs": 6})
    scores = outcome["trials"][0]["scores"][f"{task}/dev"]
    results = tmp_path / "models" / "m" / "results" / f"{task}_qa"
    predictions = json.loads((results / f"{task}_preds.json").read_text())
    assert len(predictions) == 80
    model_dir = outcome["trials"][0]["dir"] / "model"
    if v2:
        assert scores["HasAns_exact"] > 80 and scores["NoAns_exact"] > 80 and "best_f1" in scores
        assert "" not in predictions.values()  # the best spans, as the reference writes; the odds decide
        odds = json.loads((results / f"{task}_null_odds.json").read_text())
        assert set(odds) == set(predictions)
        with pytest.raises(UserError, match="transformers has no class for"):
            export_hf(model_dir, tmp_path / "hf")
        return
    assert scores["exact_match"] > 80 and scores["f1"] >= scores["exact_match"]
    from transformers import ElectraForQuestionAnswering

    hf = ElectraForQuestionAnswering.from_pretrained(export_hf(model_dir, tmp_path / "hf")[0]).eval()
    ours = Predictor(model_dir, precision="fp32")
    input_ids = torch.tensor([[VOCAB.index("[CLS]"), 20, 3, 4, VOCAB.index("[SEP]"), 5, 6, 7]])
    token_type_ids = torch.tensor([[0, 0, 0, 0, 0, 1, 1, 1]])
    with torch.no_grad():
        hidden = ours.model.electra(input_ids, torch.ones_like(input_ids), token_type_ids)
        logits = ours.model.head_outputs(hidden, 0, torch.ones_like(input_ids), token_type_ids)
        theirs = hf(input_ids=input_ids, token_type_ids=token_type_ids)
    assert torch.allclose(logits[..., 0], theirs.start_logits, atol=1e-5)
    assert torch.allclose(logits[..., 1], theirs.end_logits, atol=1e-5)


def test_reference_head_beam_matches_teacher_forcing_and_padding() -> None:
    """The joint head's inference rows: the beam holds the most likely starts, each end column is what training
    computes for that start, and padding the batch changes nothing in an example's own rows."""
    import torch

    from electra.config import ModelConfig
    from electra.modeling import ElectraQuestionAnsweringHead, QAHeadConfig

    torch.manual_seed(0)
    options = QAHeadConfig(joint_prediction=True, answerable_classifier=True, beam_size=4)
    head = ElectraQuestionAnsweringHead(ModelConfig(hidden_size=16), options).eval()
    hidden = torch.randn(2, 9, 16)
    attention_mask = torch.ones(2, 9, dtype=torch.long)
    attention_mask[1, 6:] = 0
    token_type_ids = torch.tensor([[0, 0, 0, 1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1, 0, 0, 0]])
    with torch.no_grad():
        out = head(hidden, attention_mask, token_type_ids)
        alone = head(hidden[1:, :6], attention_mask[1:, :6], token_type_ids[1:, :6])
    columns = ElectraQuestionAnsweringHead
    assert out.shape == (2, 9, columns.BEAM_ENDS + 4)
    for row in range(2):
        starts = out[row, :4, columns.END_OR_BEAM_START].long()
        assert torch.equal(starts, out[row, :, columns.START].topk(4).indices)
        mask = head.answer_mask(attention_mask[row : row + 1], token_type_ids[row : row + 1])
        for i, start in enumerate(starts):
            with torch.no_grad():
                forced = head._end_logits(hidden[row : row + 1], hidden[row : row + 1, start][:, None], mask)
            expected = forced[0, 0].log_softmax(-1)
            assert torch.allclose(out[row, :, columns.BEAM_ENDS + i], expected, atol=1e-5)
        assert (out[row, :, columns.ANSWERABLE] == out[row, 0, columns.ANSWERABLE]).all()
    # the second example alone (no padding): same starts, same beam, same answerability (its 3 context tokens
    # and [CLS] fill the beam before any masked position)
    assert torch.allclose(alone[0, :, : columns.BEAM_ENDS], out[1, :6, : columns.BEAM_ENDS], atol=1e-5)
    assert torch.allclose(alone[0, :, columns.BEAM_ENDS :], out[1, :6, columns.BEAM_ENDS :], atol=1e-5)


def test_independent_start_end_head_with_answerability_classifier() -> None:
    """`"joint_prediction": false, "answerable_classifier": true`: start and end logits from `qa_outputs` (masked
    outside the context), the answerability logit in every row, decoded as BERT's n-best starts x ends."""
    import numpy as np
    import torch

    from electra.config import ModelConfig
    from electra.modeling import ElectraQuestionAnsweringHead, QAHeadConfig
    from electra.qa import null_score, span_candidates

    torch.manual_seed(2)
    options = QAHeadConfig(answerable_classifier=True, answerable_uses_start_logits=False)
    head = ElectraQuestionAnsweringHead(ModelConfig(hidden_size=8), options).eval()
    hidden = torch.randn(1, 6, 8)
    attention_mask = torch.ones(1, 6, dtype=torch.long)
    token_type_ids = torch.tensor([[0, 0, 1, 1, 1, 1]])
    with torch.no_grad():
        out = head(hidden, attention_mask, token_type_ids)[0].numpy()
        raw = head.qa_outputs(hidden)[0].numpy()
        answerable = float(head.answerable_outputs(hidden[0, 0]))
    assert out.shape == (6, 3)
    assert np.allclose(out[[0, 2, 3, 4, 5], :2], raw[[0, 2, 3, 4, 5]], atol=1e-6) and (out[1, :2] < -9000).all()
    assert np.allclose(out[:, 2], answerable, atol=1e-6) and null_score(out, options) == out[0, 2]
    best = max(span_candidates(out, options, n_best_size=3))
    assert best[0] == out[best[1], 0] + out[best[2], 1]
    loss = head.loss(hidden, attention_mask, token_type_ids, torch.tensor([[3, 4]]), torch.tensor([0.0]))
    assert loss.ndim == 0 and loss.item() > 0


def test_reference_head_loss_teacher_forces_the_end_and_weighs_answerability() -> None:
    import torch
    import torch.nn.functional as F

    from electra.config import ModelConfig
    from electra.modeling import ElectraQuestionAnsweringHead, QAHeadConfig

    torch.manual_seed(1)
    options = QAHeadConfig(joint_prediction=True, answerable_classifier=True, answerable_weight=0.5)
    head = ElectraQuestionAnsweringHead(ModelConfig(hidden_size=8), options)
    hidden = torch.randn(2, 6, 8)
    attention_mask = torch.ones(2, 6, dtype=torch.long)
    token_type_ids = torch.tensor([[0, 0, 1, 1, 1, 1]] * 2)
    spans = torch.tensor([[3, 4], [0, 0]])
    impossible = torch.tensor([0.0, 1.0])
    loss = head.loss(hidden, attention_mask, token_type_ids, spans, impossible)
    mask = head.answer_mask(attention_mask, token_type_ids)
    start_logits = head.start_outputs(hidden).squeeze(-1).masked_fill(~mask, -1e4)
    expected = 0.0
    for row in range(2):
        state = hidden[row, spans[row, 0]]
        joint = F.gelu(head.end_hidden(torch.cat([state.expand(6, -1), hidden[row]], -1)))
        end_logits = head.end_outputs(joint).squeeze(-1).masked_fill(~mask[row], -1e4)
        expected += 0.5 * (
            F.cross_entropy(start_logits[row], spans[row, 0]) + F.cross_entropy(end_logits, spans[row, 1])
        )
        expected_start = start_logits[row].softmax(-1) @ hidden[row]
        answerable = head.answerable_outputs(
            F.gelu(head.answerable_hidden(torch.cat([hidden[row, 0], expected_start])))
        ).squeeze()
        expected += 0.5 * F.binary_cross_entropy_with_logits(answerable, impossible[row])
    assert torch.allclose(loss, expected, atol=1e-5)


def test_predict_answers_questions_with_offsets(tmp_path: Path) -> None:
    from electra.finetune import run_finetuning
    from electra.predict import run_prediction
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
    path = run_prediction(outcome["trials"][0]["dir"] / "model", questions, show_progress=False).path
    (answer,) = [json.loads(line) for line in path.read_text().splitlines()]
    assert answer["answer"] == "e" and context[answer["start"] : answer["end"]] == "e" and answer["id"] == "x"
    if importlib.util.find_spec("onnxruntime") and importlib.util.find_spec(
        "onnxscript"
    ):  # the ONNX path decodes alike
        from electra.export import export_onnx

        for weights in ("fp32", "int8"):
            onnx_folder = export_onnx(outcome["trials"][0]["dir"] / "model", tmp_path / weights, weights).parent
            path = run_prediction(onnx_folder, questions, tmp_path / f"{weights}.jsonl", show_progress=False).path
            (onnx_answer,) = [json.loads(line) for line in path.read_text().splitlines()]
            assert (onnx_answer["answer"], onnx_answer["start"]) == (answer["answer"], answer["start"]), weights
    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps({"context": "x"}) + "\n")
    with pytest.raises(UserError, match=r'bad\.jsonl:1: each line needs a "context" and a "question"'):
        run_prediction(outcome["trials"][0]["dir"] / "model", bad, show_progress=False)
    # --label-column wrote the answers, then crashed scoring them; columns are refused before anything is read.
    with pytest.raises(UserError, match='--label-column: a question-answering model reads the "context" and'):
        run_prediction(outcome["trials"][0]["dir"] / "model", questions, columns={"label_column": "id"})
    if importlib.util.find_spec("fastapi") and importlib.util.find_spec("httpx"):  # served alike
        from fastapi.testclient import TestClient

        from electra.serving import create_app

        with TestClient(create_app(outcome["trials"][0]["dir"] / "model")) as client:
            questions = [
                {"context": context, "question": "who ?", "id": "x"},
                {"context": "smith b", "question": "who"},
            ]
            served = client.post("/predict", json={"questions": questions}).json()["predictions"]
            assert (served[0]["answer"], served[0]["start"], served[0]["id"]) == ("e", answer["start"], "x")
            assert served[1]["answer"] == "b" and served[1]["id"] == "1"
            texts = client.post("/predict", json={"texts": ["who ?"]})
            assert texts.status_code == 422 and '{"questions": [{"context"' in texts.json()["detail"]
            empty = client.post("/predict", json={"questions": [{"context": " ", "question": "who ?"}]})
            assert empty.status_code == 422 and "questions:0: the context is empty" in empty.json()["detail"]
            blank = client.post("/predict", json={"questions": [{"context": "smith b", "question": " "}]})
            assert blank.status_code == 422 and "questions:0: the question is empty" in blank.json()["detail"]


def test_joint_head_without_classifier_scores_no_answer_as_the_reference() -> None:
    """The reference's no-answer score for the joint head without an answerability classifier is [CLS]'s raw start
    logit (its end logits are zeros then), not a log-probability."""
    import torch

    from electra.config import ModelConfig
    from electra.modeling import ElectraQuestionAnsweringHead, QAHeadConfig
    from electra.qa import null_score

    torch.manual_seed(3)
    options = QAHeadConfig(joint_prediction=True, answerable_classifier=False, beam_size=2)
    head = ElectraQuestionAnsweringHead(ModelConfig(hidden_size=8), options).eval()
    hidden = torch.randn(1, 6, 8)
    with torch.no_grad():
        out = head(hidden, torch.ones(1, 6, dtype=torch.long), torch.tensor([[0, 0, 1, 1, 1, 1]]))[0].numpy()
        raw = float(head.start_outputs(hidden)[0, 0, 0])
    assert null_score(out, options) == pytest.approx(raw, abs=1e-6)
    assert out[0, ElectraQuestionAnsweringHead.START] < raw  # the log-probability it used before
