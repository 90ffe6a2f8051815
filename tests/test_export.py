from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

import electra.export
from electra.errors import UserError
from electra.export import export_hf, export_onnx
from electra.finetune_data import collate
from electra.predict import Predictor
from electra.tasks import Example

TEXTS = ["the film was great", "an awful plot , very poor", "好"]


def test_hugging_face_export_of_a_fine_tuned_model(finetuned_classifier: Path, tmp_path: Path) -> None:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    (folder,) = export_hf(finetuned_classifier, tmp_path / "hf")
    tokenizer = AutoTokenizer.from_pretrained(folder)
    model = AutoModelForSequenceClassification.from_pretrained(folder).eval()
    predictor = Predictor(finetuned_classifier, precision="fp32")
    features = predictor.featurizer.features([Example(i, text) for i, text in enumerate(TEXTS)], predictor.head, 0)
    encoded = tokenizer(TEXTS, padding=True, return_tensors="pt")
    batch = collate(features, predictor.featurizer.pad_id, torch.device("cpu"))
    assert torch.equal(encoded["input_ids"], batch.input_ids)  # the same WordPiece ids, [CLS] and [SEP] included
    with torch.no_grad():
        logits = model(**encoded).logits
        torch.testing.assert_close(logits, predictor.model.outputs(batch, 0), atol=1e-5, rtol=1e-5)
    assert model.config.id2label[int(logits[0].argmax())] == "pos"
    export_hf(finetuned_classifier, tmp_path / "hf")  # an earlier export is replaced ...
    with pytest.raises(UserError, match="holds the input"):  # ... the model itself never
        export_hf(finetuned_classifier, finetuned_classifier)
    assert (finetuned_classifier / "model.safetensors").is_file()


def test_hugging_face_export_of_a_pretrained_model(
    pretrain_data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import shutil

    from transformers import AutoTokenizer, ElectraForMaskedLM, ElectraForPreTraining

    from electra.pretrain import run_pretraining

    data_dir = tmp_path / "data"
    shutil.copytree(pretrain_data_dir, data_dir)
    run_pretraining(data_dir, "tiny", {"debug": True, "num_train_steps": 2})
    written = export_hf(data_dir / "models" / "tiny", tmp_path / "hf")
    assert [path.name for path in written] == ["discriminator", "generator"]
    assert ElectraForPreTraining.from_pretrained(written[0]).config.hidden_size == 144
    generator = ElectraForMaskedLM.from_pretrained(written[1]).state_dict()
    trained = load_file(str(data_dir / "models" / "tiny" / "generator" / "model.safetensors"))
    assert trained and all(torch.equal(generator[name], value) for name, value in trained.items())
    assert AutoTokenizer.from_pretrained(written[0])("a fox")["input_ids"][0] == 2  # [CLS]
    with pytest.raises(UserError, match="neither a fine-tuned model folder"):
        export_hf(data_dir, tmp_path / "nothing")
    # Stopped between the two parts, a new export leaves the earlier pair whole (it left a new discriminator/ beside
    # the old generator/ until re-run); a folder of other files is never replaced.
    before = {path.relative_to(tmp_path): path.read_bytes() for path in (tmp_path / "hf").rglob("*") if path.is_file()}
    run_pretraining(data_dir, "tiny", {"debug": True, "num_train_steps": 3})  # new weights to export
    copy_part = electra.export._copy_model_folder

    def stopped_at_the_generator(source: Path, target: Path, normalization: dict) -> None:
        if source.name == "generator":
            raise KeyboardInterrupt
        copy_part(source, target, normalization)

    monkeypatch.setattr(electra.export, "_copy_model_folder", stopped_at_the_generator)
    with pytest.raises(KeyboardInterrupt):
        export_hf(data_dir / "models" / "tiny", tmp_path / "hf")
    after = {path.relative_to(tmp_path): path.read_bytes() for path in (tmp_path / "hf").rglob("*") if path.is_file()}
    assert after == before and sorted(path.name for path in tmp_path.iterdir()) == ["data", "hf"]
    monkeypatch.undo()
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("mine")
    with pytest.raises(UserError, match="already holds other files"):
        export_hf(data_dir / "models" / "tiny", tmp_path / "mine")


def test_onnx_export_matches_pytorch(finetuned_classifier: Path, tmp_path: Path) -> None:
    onnxruntime = pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    path = export_onnx(finetuned_classifier, tmp_path / "onnx")
    assert {p.name for p in path.parent.iterdir()} >= {"model.onnx", "config.json", "vocab.txt", "electra_task.json"}
    predictor = Predictor(finetuned_classifier, precision="fp32")
    features = predictor.featurizer.features([Example(i, text) for i, text in enumerate(TEXTS)], predictor.head, 0)
    batch = collate(features, predictor.featurizer.pad_id, torch.device("cpu"))
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    inputs = {name: getattr(batch, name).numpy() for name in ("input_ids", "attention_mask", "token_type_ids")}
    (logits,) = session.run(None, inputs)
    with torch.no_grad():
        expected = predictor.model.outputs(batch, 0).numpy()
    assert np.abs(logits - expected).max() < 1e-4


def test_onnx_folder_predicts_and_serves_like_pytorch(finetuned_classifier: Path, tmp_path: Path, capsys) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from fastapi.testclient import TestClient

    from electra.export import OnnxPredictor, open_predictor
    from electra.serving import create_app

    folder = export_onnx(finetuned_classifier, tmp_path / "onnx").parent
    onnx = open_predictor(folder, precision="bf16")
    assert isinstance(onnx, OnnxPredictor)
    assert "is an ONNX export, run as exported: bf16 does not apply" in capsys.readouterr().err  # was silent
    examples = [Example(i, text) for i, text in enumerate(TEXTS * 3)]
    expected = Predictor(finetuned_classifier, precision="fp32").predict(examples, batch_size=4)
    found = onnx.predict(examples, batch_size=4)
    assert [p["label"] for p in found] == [p["label"] for p in expected]
    assert all(abs(a["probability"] - b["probability"]) < 1e-4 for a, b in zip(found, expected, strict=True))
    with TestClient(create_app(folder)) as client:
        assert client.get("/health").json()["runtime"] == "onnxruntime cpu fp32"
        reply = client.post("/predict", json={"texts": TEXTS}).json()
    assert [p["label"] for p in reply["predictions"]] == [p["label"] for p in expected[:3]]
    # A damaged graph, or a vocab.txt that is not the model's, ended in a traceback from deep inside (or, for a
    # shorter vocabulary, in silently other predictions).
    damaged = tmp_path / "damaged"
    shutil.copytree(folder, damaged)
    (damaged / "model.onnx").write_bytes((folder / "model.onnx").read_bytes()[:5000])
    with pytest.raises(UserError, match=r"ONNX Runtime cannot load .*model\.onnx.*export it again"):
        OnnxPredictor(damaged)
    shutil.copyfile(folder / "model.onnx", damaged / "model.onnx")
    vocab = (folder / "vocab.txt").read_text().splitlines()
    (damaged / "vocab.txt").write_text("\n".join(vocab[:-10]) + "\n")
    size = rf"{len(vocab) - 10:,} tokens, and the model's embeddings .* {len(vocab):,}: put back the vocab.txt"
    with pytest.raises(UserError, match=size):
        OnnxPredictor(damaged)
    torch_copy = tmp_path / "torch-copy"
    shutil.copytree(finetuned_classifier, torch_copy)
    shutil.copyfile(damaged / "vocab.txt", torch_copy / "vocab.txt")
    for load in (Predictor, lambda source: export_onnx(source, tmp_path / "not-exported")):
        with pytest.raises(UserError, match=size):
            load(torch_copy)


def test_int8_onnx_export_is_smaller_and_predicts_like_pytorch(finetuned_classifier: Path, tmp_path: Path) -> None:
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    import json

    from electra.export import OnnxPredictor
    from tests.test_finetune import sentiment_rows

    float_model = export_onnx(finetuned_classifier, tmp_path / "fp32")
    int8_model = export_onnx(finetuned_classifier, tmp_path / "int8", weights="int8")
    assert sorted(p.name for p in int8_model.parent.iterdir()) == [
        "config.json",
        "electra_task.json",
        "model.onnx",
        "vocab.txt",
    ]  # no intermediate files left behind
    import onnxruntime

    # ONNX Runtime 1.23 (the last for Python 3.10) takes export's fallback, which quantises fewer products
    older = tuple(int(part) for part in onnxruntime.__version__.split(".")[:2]) < (1, 24)
    assert int8_model.stat().st_size < (0.8 if older else 0.6) * float_model.stat().st_size
    assert json.loads((int8_model.parent / "electra_task.json").read_text())["onnx_weights"] == "int8"
    examples = [Example(i, text, label=label) for i, (text, label) in enumerate(sentiment_rows(200, 2))]
    expected = Predictor(finetuned_classifier, precision="fp32").predict(examples, batch_size=16)
    int8_predictor = OnnxPredictor(int8_model.parent)
    assert int8_predictor.runtime == "onnxruntime cpu int8"
    found = int8_predictor.predict(examples, batch_size=16)
    agreeing = sum(a["label"] == b["label"] for a, b in zip(found, expected, strict=True))
    assert agreeing >= 0.98 * len(examples)
    assert sum(a["label"] == example.label for a, example in zip(found, examples, strict=True)) >= 0.9 * len(examples)
    gaps = [abs(a["probabilities"]["pos"] - b["probabilities"]["pos"]) for a, b in zip(found, expected, strict=True)]
    assert max(gaps) < 0.02
    with pytest.raises(UserError, match="choose one of fp32, int8"):
        export_onnx(finetuned_classifier, tmp_path / "int4", weights="int4")


def test_onnx_export_of_a_short_model_and_no_hf_export_of_an_onnx_folder(
    finetuned_classifier: Path, tmp_path: Path
) -> None:
    """The export's check ran 40 tokens through any model (a traceback under 40 positions); export --format hf of an
    ONNX folder wrote a folder without weights and said it had succeeded."""
    pytest.importorskip("onnxruntime")
    pytest.importorskip("onnxscript")
    from electra.export import OnnxPredictor
    from electra.finetune_data import TaskHead
    from electra.tokenization import read_vocab
    from tests.conftest import random_task_model

    head, vocab = TaskHead("t", "classification", ["a", "b"]), read_vocab(finetuned_classifier / "vocab.txt")
    short = random_task_model(tmp_path / "short", head, vocab, max_position_embeddings=16)
    folder = export_onnx(short, tmp_path / "onnx").parent
    examples = [Example(0, "good film " * 20)]  # cut to the 16 positions the model has
    onnx, torch_answer = OnnxPredictor(folder).predict(examples)[0], Predictor(short, "fp32").predict(examples)[0]
    assert onnx["label"] == torch_answer["label"]
    assert onnx["probabilities"] == pytest.approx(torch_answer["probabilities"], abs=1e-4)
    with pytest.raises(UserError, match=r"holds no weights .* \(it holds model\.onnx: export from the folder"):
        export_hf(folder, tmp_path / "hf")
    assert not (tmp_path / "hf").exists()
