from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

from electra.cli import main
from electra.config import build_pretraining_config
from electra.errors import UserError
from electra.objectives import PretrainingModel
from electra.pretrain import export_models
from electra.scoring import (
    NBestList,
    TextScorer,
    locate_scoring_model,
    plan_windows,
    read_nbest,
    read_references,
    read_texts,
    rerank,
    word_error_rate,
)
from electra.tokenization import SPECIAL_TOKENS, write_vocab

WORDS = ["the", "cat", "sat", "on", "a", "mat", "dog", "ran", "to", "park", "big", "small", "red", "house"]
SHAPE = {
    "model_size": "small",
    "embedding_size": 16,
    "model_hparam_overrides": {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2},
}
OBJECTIVES = {
    "electric": {"electra_objective": False, "electric_objective": True},
    "electra": {},
    "mlm": {"electra_objective": False},
}


def random_model(folder: Path, objective: str, vocab: list[str] | None = None, shape: dict | None = None) -> Path:
    """A pre-trained model folder as `electra pretrain` writes it, with random weights."""
    folder.mkdir(parents=True)
    vocab = vocab or [*SPECIAL_TOKENS, *WORDS]
    write_vocab(vocab, folder / "vocab.txt")
    config = build_pretraining_config({**(shape or SHAPE), **OBJECTIVES[objective]})
    torch.manual_seed(0)
    model = PretrainingModel(config, len(vocab), 0)
    export_models(model, folder, folder / "vocab.txt")
    (folder / "pretrain_config.json").write_text(json.dumps(config.to_dict()))
    return folder


@pytest.fixture(scope="module")
def models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("scoring_models")
    return {name: random_model(root / name, name) for name in OBJECTIVES}


TEXTS = ["the cat sat on a mat", "a dog ran", "the big red house", "cat"]


def test_masked_lm_scores_equal_one_masked_pass_per_token(models: dict[str, Path]) -> None:
    scorer = TextScorer(models["mlm"], precision="fp32")
    scored = scorer.score(TEXTS, batch_size=3)  # batches cut across texts of different lengths
    generator = scorer.model
    for text, result in zip(TEXTS, scored, strict=True):
        ids = scorer.encode([text])[1][0].row
        expected = []
        for position in range(1, len(ids) - 1):
            masked = torch.tensor(ids)[None].clone()
            masked[0, position] = scorer.mask_id
            with torch.no_grad():
                log_probs = generator(masked).log_softmax(-1)[0, position]
            expected.append(float(log_probs[ids[position]]))
        assert result.tokens == text.split()
        assert result.token_scores == pytest.approx(expected, abs=1e-5)
        assert result.total == pytest.approx(sum(expected), abs=1e-4)


def test_electric_scores_are_minus_the_energies_of_one_pass(models: dict[str, Path]) -> None:
    scorer = TextScorer(models["electric"], precision="fp32")
    assert scorer.method == "electric"
    together = scorer.score(TEXTS, batch_size=4)
    for text, result in zip(TEXTS, together, strict=True):
        ids = torch.tensor(scorer.encode([text])[1][0].row)[None]
        with torch.no_grad():
            energies = scorer.model(ids)[0, 1:-1]
        assert result.token_scores == pytest.approx((-energies).tolist(), abs=1e-5)
        assert result.to_dict()["num_tokens"] == len(text.split())


@pytest.mark.parametrize("method", ["electric", "mlm"])
def test_long_texts_are_scored_in_overlapping_windows(models: dict[str, Path], method: str) -> None:
    """A text longer than the window is not cut: each token is scored once, in the window where it has the most
    context on its poorer side, so its score equals that of the same words scored alone as that window."""
    text = "the cat sat on a mat to a dog ran to the red cat"
    scorer = TextScorer(models[method], max_seq_length=8, precision="fp32")  # windows of 6 pieces
    long, short = scorer.score([text, "a dog"], batch_size=5)
    assert long.tokens == text.split() and long.windows == 4 and long.to_dict()["windows"] == 4
    assert short.windows == 1 and "windows" not in short.to_dict()
    words = text.split()
    for start, keep_from, keep_to in plan_windows(len(words), 6):
        alone = scorer.score([" ".join(words[start : start + 6])])[0]
        kept = slice(keep_from - start, keep_to - start)
        assert long.token_scores[keep_from:keep_to] == pytest.approx(alone.token_scores[kept], abs=1e-5)


def test_windows_cover_each_piece_once_with_context_on_both_sides() -> None:
    assert plan_windows(6, 6) == [(0, 0, 6)]
    assert plan_windows(20, 6) == [(0, 0, 5), (3, 5, 8), (6, 8, 11), (9, 11, 14), (12, 14, 16), (14, 16, 20)]
    for length, budget in [(7, 6), (300, 126), (1000, 510), (10, 1)]:
        windows = plan_windows(length, budget)
        assert [piece for _, first, last in windows for piece in range(first, last)] == list(range(length))
        assert all(start <= first and last <= start + budget for start, first, last in windows)
        inner = [min(first - start, start + budget - last) for start, first, last in windows[1:-1]]
        assert all(context >= budget // 4 - 1 for context in inner)


def test_which_part_of_a_model_folder_scores(models: dict[str, Path], tmp_path: Path) -> None:
    assert locate_scoring_model(models["electric"]).method == "electric"
    assert locate_scoring_model(models["electric"]).folder.name == "discriminator"
    assert locate_scoring_model(models["electra"]).folder.name == "generator"
    assert locate_scoring_model(models["mlm"]).method == "mlm"
    assert locate_scoring_model(models["electra"] / "generator").method == "mlm"
    assert locate_scoring_model(models["electric"] / "discriminator").method == "electric"
    with pytest.raises(UserError, match=r"pre-trained with the ELECTRA objective.*--method mlm"):
        locate_scoring_model(models["electra"], "electric")
    with pytest.raises(UserError, match="two-tower cloze model is not a masked LM"):
        locate_scoring_model(models["electric"], "mlm")
    with pytest.raises(UserError, match="nothing says it was pre-trained as Electric"):
        locate_scoring_model(models["electra"] / "discriminator")
    assert locate_scoring_model(models["electra"] / "discriminator", "electric").method == "electric"
    with pytest.raises(UserError, match="is not a model folder"):
        locate_scoring_model(tmp_path)
    training = tmp_path / "training"  # checkpoints and a record, nothing exported yet
    (training / "checkpoints" / "step-00000005").mkdir(parents=True)
    shutil.copyfile(models["electra"] / "pretrain_config.json", training / "pretrain_config.json")
    with pytest.raises(UserError, match=r"no exported generator/ to score with \(its pre-training has not finished"):
        locate_scoring_model(training)


def test_damaged_or_mismatched_weights_are_named(models: dict[str, Path], tmp_path: Path) -> None:
    """A cut-off weights file ended in safetensors' own traceback; weights of another shape said only "Error(s) in
    loading state_dict"."""
    damaged = tmp_path / "damaged"
    shutil.copytree(models["electra"], damaged)
    weights = damaged / "generator" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:4])
    with pytest.raises(UserError, match=r"cannot load .*generator/model\.safetensors \(.*\): export the model again"):
        TextScorer(damaged)
    shutil.copyfile(models["electra"] / "generator" / "model.safetensors", weights)
    config = json.loads((damaged / "generator" / "config.json").read_text())
    (damaged / "generator" / "config.json").write_text(json.dumps({**config, "intermediate_size": 40}))
    with pytest.raises(UserError, match=r"\(Error\(s\) in loading state_dict .* size mismatch for "):
        TextScorer(damaged)
    # A Hugging Face folder of an older release holds pytorch_model.bin alone.
    released = tmp_path / "released"
    shutil.copytree(models["electra"] / "generator", released)
    scorer = TextScorer(released)
    torch.save(scorer.model.state_dict(), released / "pytorch_model.bin")
    (released / "model.safetensors").unlink()
    texts = ["the cat sat", "a red dog"]
    assert [s.total for s in TextScorer(released).score(texts)] == [s.total for s in scorer.score(texts)]


def test_score_command_writes_jsonl_keeping_other_fields(models: dict[str, Path], tmp_path: Path, capsys) -> None:
    source = tmp_path / "texts.jsonl"
    source.write_text('{"id": 7, "sentence": "the cat sat"}\n{"id": 8, "sentence": "a red dog"}\n')
    argv = ["score", "--model-dir", str(models["mlm"]), "--input", str(source), "--text-field", "sentence"]
    assert main(argv) == 0
    assert "wrote 2 mlm scores" in capsys.readouterr().out
    rows = [json.loads(line) for line in (tmp_path / "texts.scores.jsonl").read_text().splitlines()]
    assert [row["id"] for row in rows] == [7, 8]
    assert rows[0]["sentence"] == "the cat sat" and "text" not in rows[0]  # the input's own field name
    assert rows[0]["tokens"] == ["the", "cat", "sat"]
    assert rows[0]["score"] == pytest.approx(sum(rows[0]["token_scores"]), abs=1e-3) and rows[0]["score"] < 0
    plain = tmp_path / "texts.txt"
    plain.write_text("the cat sat\n\na red dog\n")
    assert main(["score", "--model-dir", str(models["electric"]), "--input", str(plain)]) == 0
    rows = [json.loads(line) for line in (tmp_path / "texts.scores.jsonl").read_text().splitlines()]
    assert [(row["line"], row["text"]) for row in rows] == [(1, "the cat sat"), (3, "a red dog")]
    capsys.readouterr()
    assert main(["score", "--model-dir", str(models["mlm"]), "--input", str(source)]) == 2
    assert f"{source}:1: no text field 'text'" in capsys.readouterr().err
    source.write_text('{"text": 5}\n')
    assert main(["score", "--model-dir", str(models["mlm"]), "--input", str(source)]) == 2
    assert f"{source}:1: the 'text' field must be a string, not 5" in capsys.readouterr().err
    source.write_text('{"text": ""}\n{"text": "the zebra sat"}\n')  # what a score means little for is said
    assert main(["score", "--model-dir", str(models["mlm"]), "--input", str(source)]) == 0
    empty, unknown = [json.loads(line) for line in (tmp_path / "texts.scores.jsonl").read_text().splitlines()]
    assert (empty["score"], empty["tokens"], "unknown_tokens" in empty) == (0.0, [], False)
    assert unknown["tokens"] == ["the", "[UNK]", "sat"] and unknown["unknown_tokens"] == 1
    error = capsys.readouterr().err
    assert "1 empty text(s) score 0, the highest" in error and "1 text(s) hold words the vocabulary lacks" in error
    source.write_text('{"text": "the cat", "score": -3.5}\n')  # a first-pass score: the results would replace it
    assert main(["score", "--model-dir", str(models["mlm"]), "--input", str(source)]) == 2
    assert f"{source}:1: the field(s) score would be overwritten" in capsys.readouterr().err


def test_rerank_orders_by_first_pass_plus_weighted_lm_score() -> None:
    lists = [NBestList("u1", ["a b", "a c", "a d"], [-1.0, -2.0, -3.0], reference="a c")]
    lm = {"a b": -10.0, "a c": -4.0, "a d": -4.5}
    (row,) = rerank(lists, lm, weight=0.5)
    assert [h["text"] for h in row["hypotheses"]] == ["a c", "a d", "a b"]  # -4.0, -5.25, -6.0
    assert row["hypotheses"][0]["score"] == pytest.approx(-4.0)
    assert row["best"] == "a c" and row["first_pass_best"] == "a b"
    (unweighted,) = rerank(lists, lm, weight=0.0)
    assert unweighted["best"] == "a b"


def test_word_error_rate_counts_edits_over_reference_words() -> None:
    # 1 substitution + 1 deletion over 6 reference words; then 1 insertion over 2 words: 3 / 8 in all.
    assert word_error_rate(["the cat sat on the mat"], ["the cat sit on mat"]) == pytest.approx(100 * 2 / 6)
    assert word_error_rate(["the cat sat on the mat", "a dog"], ["the cat sit on mat", "a big dog"]) == pytest.approx(
        100 * 3 / 8
    )


def test_rerank_command_reports_wer_before_and_after(models: dict[str, Path], tmp_path: Path, capsys) -> None:
    nbest = tmp_path / "nbest.jsonl"
    rows = [
        {"id": "u1", "hypotheses": [{"text": "the cat sat", "score": -1.0}, {"text": "the mat sat", "score": -1.2}]},
        {"id": "u2", "hypotheses": [["a dog ran", -3.0], ["a dog ran to", -3.5]]},
    ]
    nbest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    references = tmp_path / "refs.txt"
    references.write_text("the cat sat\na dog ran to\n")
    output = tmp_path / "out.jsonl"
    argv = ["rerank", "--model-dir", str(models["electric"]), "--nbest", str(nbest), "--weight", "0"]
    assert main([*argv, "--references", str(references), "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "re-ranked 2 n-best list(s) with electric scores: 0 changed" in printed
    assert "word error rate: 14.29% first pass -> 14.29% re-ranked" in printed  # 1 deletion / 7 words
    written = [json.loads(line) for line in output.read_text().splitlines()]
    assert [row["best"] for row in written] == ["the cat sat", "a dog ran"]
    assert all(isinstance(h["lm_score"], float) for row in written for h in row["hypotheses"])

    nbest.write_text(json.dumps({**rows[0], "reference": "the cat sat"}) + "\n" + json.dumps(rows[1]) + "\n")
    assert main([*argv, "--output", str(output)]) == 0
    assert "note: 1 of 2 n-best lists have a reference: no word error rate" in capsys.readouterr().err
    nbest.write_text("".join(json.dumps(row) + "\n" for row in rows))
    huge = [*argv, "--weight", "1e6", "--output", str(output)]
    assert main(huge) == 0  # the language model alone decides: the order follows its scores
    for row in (json.loads(line) for line in output.read_text().splitlines()):
        lm_order = sorted(row["hypotheses"], key=lambda h: -h["lm_score"])
        assert row["best"] == lm_order[0]["text"]


def test_malformed_nbest_and_references_name_file_and_line(tmp_path: Path) -> None:
    nbest = tmp_path / "nbest.jsonl"
    nbest.write_text('{"id": "u1", "hypotheses": [{"text": "a", "score": 1}]}\n{"id": "u2", "hypotheses": []}\n')
    with pytest.raises(UserError, match=r"nbest.jsonl:2: an empty \"hypotheses\" list \(expected .*\]\}\)$"):
        read_nbest(nbest)
    nbest.write_text('{"id": "u1", "hyps": []}\n')
    with pytest.raises(UserError, match=r"nbest.jsonl:1: no \"hypotheses\" list"):
        read_nbest(nbest)
    nbest.write_text('{"id": "u1", "hypotheses": [{"text": "a"}]}\n')
    with pytest.raises(UserError, match=r"nbest.jsonl:1: hypothesis 1 needs a \"text\" string and a finite numeric"):
        read_nbest(nbest)
    nbest.write_text('{"id": "u1", "hypotheses": [["a", -1]], "reference": 5}\n')
    with pytest.raises(UserError, match=r"nbest.jsonl:1: \"reference\" must be a string of text, not 5"):
        read_nbest(nbest)
    nbest.write_text('{"id": "u1", "hypotheses": [["a", -1]]}\n{"id": "u2", "hypotheses": [["b", -1]]}\n')
    references = tmp_path / "refs.jsonl"
    references.write_text('{"id": "u1", "text": "a"}\n{"id": "u2", "text": 7}\n')
    with pytest.raises(UserError, match=r"refs.jsonl:2: \"text\" must be a string of text, not 7"):
        read_references(references, read_nbest(nbest))
    references.write_text('{"id": "u1", "text": "a"}\n')
    with pytest.raises(UserError, match=r"refs.jsonl has no reference for id\(s\) u2"):
        read_references(references, read_nbest(nbest))
    upper = tmp_path / "REFS.JSONL"  # read as JSONL, not as lines of text
    upper.write_text('{"id": "u1", "text": "a"}\n{"id": "u2", "text": "b"}\n')
    lists = read_nbest(nbest)
    read_references(upper, lists)
    assert [nbest_list.reference for nbest_list in lists] == ["a", "b"]
    assert read_texts(upper) == [({"id": "u1", "text": "a"}, "a"), ({"id": "u2", "text": "b"}, "b")]


# ----------------------------------------------------------------------------------------------- real text
def held_out_pairs(lines: list[str], vocab: list[str], count: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Sentences of 8-30 words, and each with one in-vocabulary word replaced by a random vocabulary word
    (one word piece for another, so both versions have as many tokens)."""
    import random

    rng = random.Random(seed)
    words = [token for token in vocab if token.isalpha() and token.islower()]
    known = set(words)
    originals, replaced = [], []
    for line in lines:
        tokens = line.split()
        choices = [index for index, token in enumerate(tokens) if token in known]
        if not 8 <= len(tokens) <= 30 or not choices:
            continue
        tokens[rng.choice(choices)] = rng.choice(words)
        originals.append(line)
        replaced.append(" ".join(tokens))
        if len(originals) == count:
            break
    return originals, replaced


def test_tiny_models_trained_on_real_text_prefer_real_sentences(tmp_path: Path) -> None:
    """Pre-trained for a few hundred steps, Electric and a masked LM both score held-out Wikipedia sentences
    above copies with a word replaced far more often than chance (random weights: about half the time),
    and agree with each other on which of the two is better."""
    import numpy as np

    from electra.corpus import list_corpus_files
    from electra.pretrain import run_pretraining
    from electra.pretrain_data import BuildSettings, build_pretraining_data
    from electra.tokenization import read_vocab, train_vocab
    from tests.conftest import shared_data

    lines = shared_data("pretrain_en/enwiki_sample.txt").read_text(encoding="utf-8").splitlines()
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    (corpus / "train.txt").write_text("\n".join(lines[:10_000]) + "\n", encoding="utf-8")
    write_vocab(train_vocab(list_corpus_files(corpus), vocab_size=2000, show_progress=False), tmp_path / "vocab.txt")
    settings = BuildSettings(max_seq_length=64)
    build_pretraining_data(corpus, tmp_path / "vocab.txt", tmp_path / "pretrain_data", settings, show_progress=False)
    originals, replaced = held_out_pairs(lines[-3000:], read_vocab(tmp_path / "vocab.txt"), 200)
    assert len(originals) == 200

    hparams = {
        "model_size": "small",
        "embedding_size": 64,
        "model_hparam_overrides": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 2},
        "train_batch_size": 32,
        "num_train_steps": 300,
        "num_warmup_steps": 30,
        "learning_rate": 2e-3,
        "save_checkpoints_steps": 300,
        "precision": "fp32",
    }

    def margins(model_dir: Path) -> np.ndarray:
        scorer = TextScorer(model_dir, precision="fp32")
        return np.array(
            [a.total - b.total for a, b in zip(scorer.score(originals), scorer.score(replaced), strict=True)]
        )

    untrained = random_model(tmp_path / "untrained", "electric", read_vocab(tmp_path / "vocab.txt"), hparams)
    found = {"untrained": margins(untrained)}
    for name in ("electric", "mlm"):
        run_pretraining(tmp_path, name, {**hparams, **OBJECTIVES[name]})
        found[name] = margins(tmp_path / "models" / name)
    wins = {name: float((margin > 0).mean()) for name, margin in found.items()}
    agreement = float((np.sign(found["electric"]) == np.sign(found["mlm"])).mean())
    assert 0.35 <= wins["untrained"] <= 0.65, wins
    assert wins["electric"] >= 0.75 and wins["mlm"] >= 0.75, wins
    assert agreement >= 0.75, agreement
