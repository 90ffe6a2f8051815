from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from electra.errors import UserError
from electra.tf_checkpoint import TFCheckpoint, convert_tf_checkpoint, our_name
from tests.fixtures.make_tf_checkpoint import fixture_values

FIXTURE = Path(__file__).resolve().parent / "fixtures" / "tf_checkpoint"


def test_reader_sees_every_variable_as_tensorflow_wrote_it() -> None:
    expected = json.loads((FIXTURE / "variables.json").read_text())
    checkpoint = TFCheckpoint(FIXTURE)  # a folder: found through its `checkpoint` file
    assert checkpoint.names() == sorted(expected)
    for name, shape in expected.items():
        assert checkpoint.shape(name) == tuple(shape)
        if name != "global_step":
            np.testing.assert_array_equal(checkpoint.tensor(name), fixture_values(name, tuple(shape)))
    assert int(checkpoint.tensor("global_step")) == 7
    assert TFCheckpoint(FIXTURE / "model.ckpt-7.index").names() == checkpoint.names()


def test_conversion_puts_each_variable_in_its_parameter(tmp_path: Path) -> None:
    model_dir = convert_tf_checkpoint(FIXTURE, tmp_path / "converted")
    state = load_file(str(model_dir / "model.safetensors"))
    expected = json.loads((FIXTURE / "variables.json").read_text())
    landed = set()
    for tf_name, shape in expected.items():
        name = our_name(tf_name)
        if name is None:
            assert tf_name == "global_step" or tf_name.endswith(("adam_m", "adam_v"))
            continue
        values = fixture_values(tf_name, tuple(shape))
        if tf_name.endswith("kernel"):
            values = values.T
        np.testing.assert_array_equal(state[name].numpy(), values)
        landed.add(name)
    # all but the aliases of shared weights (the generator's embeddings and tied output layer) came from TF
    assert set(state) - landed <= {"generator.generator_lm_head.weight"} | {
        key for key in state if key.startswith("generator.electra.embeddings.")
    }
    config = json.loads((model_dir / "pretrain_config.json").read_text())
    assert config["model_hparam_overrides"]["hidden_size"] == 64 and config["embedding_size"] == 32
    assert config["generator_hidden_size"] == 0.25

    from transformers import ElectraForMaskedLM, ElectraForPreTraining

    discriminator = ElectraForPreTraining.from_pretrained(model_dir / "discriminator")
    word = fixture_values("electra/embeddings/word_embeddings", (34, 32))
    torch.testing.assert_close(discriminator.electra.embeddings.word_embeddings.weight, torch.from_numpy(word))
    generator = ElectraForMaskedLM.from_pretrained(model_dir / "generator")
    assert generator.config.hidden_size == 16
    torch.testing.assert_close(generator.generator_lm_head.weight, torch.from_numpy(word))  # tied, as trained


def test_fine_tuning_a_converted_model_starts_from_its_tensorflow_weights(tmp_path: Path) -> None:
    from electra.config import encoder_config
    from electra.finetune import prepare_finetuning
    from electra.finetune_data import TaskHead
    from electra.task_model import FinetuningModel, load_encoder_weights

    data_dir = tmp_path / "data"
    convert_tf_checkpoint(FIXTURE, data_dir / "models" / "released")
    run = prepare_finetuning(data_dir, "released", {"task_names": ["sst"]})
    assert run.init_checkpoint == data_dir / "models" / "released" / "discriminator" / "model.safetensors"
    assert run.config.model_hparam_overrides["num_hidden_layers"] == 2
    model = FinetuningModel(
        encoder_config(run.config, len(run.vocab), 0), [TaskHead("sst", "classification", ["0", "1"])]
    )
    load_encoder_weights(model, run.init_checkpoint)
    encoder = model.electra
    word = fixture_values("electra/embeddings/word_embeddings", (34, 32))
    torch.testing.assert_close(encoder.embeddings.word_embeddings.weight, torch.from_numpy(word))
    kernel = fixture_values("electra/encoder/layer_1/attention/self/query/kernel", (64, 64))
    torch.testing.assert_close(encoder.encoder.layer[1].attention.self.query.weight, torch.from_numpy(kernel.T))


def test_bad_checkpoints_are_explained(tmp_path: Path, capsys) -> None:
    with pytest.raises(UserError, match="no TensorFlow checkpoint"):
        TFCheckpoint(tmp_path)
    broken = tmp_path / "broken"
    broken.mkdir()
    (broken / "model.index").write_bytes(b"not a table" * 10)
    with pytest.raises(UserError, match="not a TensorFlow checkpoint index"):
        TFCheckpoint(broken / "model")
    copy = tmp_path / "copy"
    shutil.copytree(FIXTURE, copy)
    # a `checkpoint` file naming the absolute path of the machine that trained it: the prefix is still found
    (copy / "checkpoint").write_text('model_checkpoint_path: "/elsewhere/run/model.ckpt-7"\n')
    assert TFCheckpoint(copy).prefix == copy / "model.ckpt-7"
    # Without a `checkpoint` file, of several: the highest step, whatever the files' times (copied step 20 first)
    steps = tmp_path / "steps"
    steps.mkdir()
    for step in (20, 7, 100, 3):
        for suffix in (".index", ".data-00000-of-00001"):
            shutil.copyfile(FIXTURE / f"model.ckpt-7{suffix}", steps / f"model.ckpt-{step}{suffix}")
    os.utime(steps / "model.ckpt-20.index", (2e9, 2e9))
    assert TFCheckpoint(steps).prefix == steps / "model.ckpt-100"
    assert "holds 4 checkpoints and no `checkpoint` file naming one: converting the one of the highest step" in (
        capsys.readouterr().err
    )
    (copy / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\n")
    with pytest.raises(UserError, match="5 tokens but the checkpoint's embeddings 34"):
        convert_tf_checkpoint(copy, tmp_path / "out")


def test_pretraining_continues_from_a_converted_checkpoint(tmp_path: Path) -> None:
    from electra.pretrain import run_pretraining
    from electra.pretrain_data import BuildSettings, build_pretraining_data
    from tests.conftest import ENGLISH_DOCUMENTS, write_corpus

    converted = convert_tf_checkpoint(FIXTURE, tmp_path / "released")
    data_dir = tmp_path / "data"
    corpus = write_corpus(tmp_path / "corpus", ENGLISH_DOCUMENTS * 20)
    shutil.copyfile(FIXTURE / "vocab.txt", data_dir.mkdir() or data_dir / "vocab.txt")
    build_pretraining_data(
        corpus,
        data_dir / "vocab.txt",
        data_dir / "pretrain_data",
        BuildSettings(max_seq_length=32),
        show_progress=False,
    )
    hparams = {"init_checkpoint": str(converted), "train_batch_size": 4, "num_train_steps": 2, "learning_rate": 0.0}
    outcome = run_pretraining(data_dir, "continued", hparams)  # weights only: a fresh optimizer
    assert outcome["train"].step == 2
    before = load_file(str(converted / "discriminator" / "model.safetensors"))
    after = load_file(str(data_dir / "models" / "continued" / "discriminator" / "model.safetensors"))
    assert all(torch.equal(before[key], after[key]) for key in before)  # learning rate 0: the released weights

    # The reference's recipe: convert into <data-dir>/models/<name> and name it; evaluating it first works too.
    in_place = convert_tf_checkpoint(FIXTURE, data_dir / "models" / "electra_small")
    evaluation = {"do_train": False, "do_eval": True, "num_eval_steps": 2, "eval_batch_size": 4}
    assert "disc_auc" in run_pretraining(data_dir, "electra_small", evaluation)["eval"]
    # It goes on from the checkpoint's global_step (7), as the reference's Estimator does: its README continues
    # ELECTRA-Small (4 M steps) with "num_train_steps": 4010000 for 10,000 more. It had started again from 0.
    in_place_hparams = {k: v for k, v in hparams.items() if k != "init_checkpoint"} | {"log_every_steps": 1}
    outcome = run_pretraining(data_dir, "electra_small", {**in_place_hparams, "num_train_steps": 5})
    assert outcome["train"].step == 7 and not outcome["train"].last_metrics  # already there: nothing to train
    outcome = run_pretraining(data_dir, "electra_small", {**in_place_hparams, "num_train_steps": 9})
    assert outcome["train"].step == 9
    assert [path.name for path in (in_place / "checkpoints").iterdir()] == ["step-00000009"]
    logged = (in_place / "logs" / "metrics.jsonl").read_text().splitlines()
    assert [json.loads(line)["step"] for line in logged] == [8, 9]
    after = load_file(str(in_place / "discriminator" / "model.safetensors"))
    assert all(torch.equal(before[key], after[key]) for key in before)
    assert json.loads((in_place / "pretrain_config.json").read_text())["converted_from"]


def _data_dir_with_fixture_vocab(tmp_path: Path) -> Path:
    from electra.pretrain_data import BuildSettings, build_pretraining_data
    from tests.conftest import ENGLISH_DOCUMENTS, write_corpus

    data_dir = tmp_path / "data"
    data_dir.mkdir()
    shutil.copyfile(FIXTURE / "vocab.txt", data_dir / "vocab.txt")
    corpus = write_corpus(tmp_path / "corpus", ENGLISH_DOCUMENTS * 20)
    settings = BuildSettings(max_seq_length=32)
    build_pretraining_data(corpus, data_dir / "vocab.txt", data_dir / "pretrain_data", settings, show_progress=False)
    return data_dir


def test_export_writes_the_reference_training_graph_variables(tmp_path: Path) -> None:
    """A model pre-trained here, as a checkpoint the reference's Estimator restores: every variable of its
    training graph (weights, an adam_m and adam_v for each, global_step) and nothing else, the weights as
    trained, the moments our optimizer holds for them."""
    from electra.cli import main
    from electra.config import build_pretraining_config
    from electra.objectives import PretrainingModel
    from electra.pretrain import run_pretraining
    from electra.trainer import AdamWeightDecay, default_param_groups, load_weights
    from tests.fixtures.make_tf_checkpoint import model_variables

    data_dir = _data_dir_with_fixture_vocab(tmp_path)
    released = convert_tf_checkpoint(FIXTURE, tmp_path / "released")
    hparams = {"init_checkpoint": str(released), "train_batch_size": 4, "num_train_steps": 3, "learning_rate": 1e-3}
    run_pretraining(data_dir, "trained", hparams)
    model_dir = data_dir / "models" / "trained"
    assert main(["export", "--model-dir", str(model_dir), "--format", "tf", "--output", str(tmp_path / "tf")]) == 0

    exported = TFCheckpoint(tmp_path / "tf")  # found through its `checkpoint` file
    assert exported.prefix == tmp_path / "tf" / "model.ckpt-3"
    weights = model_variables()  # the fixture's shape: what the reference builds for it
    slots = {f"{name}/{slot}" for name in weights for slot in ("adam_m", "adam_v")}
    assert set(exported.names()) == set(weights) | slots | {"global_step"}
    assert int(exported.tensor("global_step")) == 3
    assert all(exported.shape(name) == shape for name, shape in weights.items())

    # The weights: converting the export back gives the trained model exactly.
    trained = load_file(str(model_dir / "checkpoints" / "step-00000003" / "model.safetensors"))
    back = load_file(str(convert_tf_checkpoint(tmp_path / "tf", tmp_path / "back") / "model.safetensors"))
    assert trained.keys() == back.keys()
    assert all(torch.equal(trained[key], back[key]) for key in trained)

    # The moments: those the trainer would resume with, transposed like their kernels.
    config = build_pretraining_config(json.loads((tmp_path / "tf" / "pretrain_hparams.json").read_text()))
    model = PretrainingModel(config, len((FIXTURE / "vocab.txt").read_text().split()), 0)
    load_weights(model, model_dir / "checkpoints" / "step-00000003" / "model.safetensors")  # the same shape
    optimizer = AdamWeightDecay(default_param_groups(model, 0.01), lr=1.0)
    optimizer.load_state_dict(torch.load(model_dir / "checkpoints" / "step-00000003" / "trainer_state.pt")["optimizer"])
    query = model.generator.electra.encoder.layer[1].attention.self.query.weight
    embeddings = model.discriminator.electra.embeddings.word_embeddings.weight
    for tf_name, param in (
        ("generator/encoder/layer_1/attention/self/query/kernel", query),
        ("electra/embeddings/word_embeddings", embeddings),  # one variable, trained by both networks
    ):
        moments = optimizer.state[param]
        expected_m, expected_v = moments["exp_avg"].numpy(), moments["exp_avg_sq"].numpy()
        if tf_name.endswith("kernel"):
            expected_m, expected_v = expected_m.T, expected_v.T
        np.testing.assert_array_equal(exported.tensor(f"{tf_name}/adam_m"), expected_m)
        np.testing.assert_array_equal(exported.tensor(f"{tf_name}/adam_v"), expected_v)
        assert np.abs(expected_v).sum() > 0
    assert (tmp_path / "tf" / "vocab.txt").read_text() == (FIXTURE / "vocab.txt").read_text()
    finetune_hparams = json.loads((tmp_path / "tf" / "finetune_hparams.json").read_text())
    assert "generator_hidden_size" not in finetune_hparams and finetune_hparams["embedding_size"] == 32


@pytest.mark.parametrize(
    ("objective", "hparams"),
    [
        ("MLM", {"electra_objective": False}),
        ("Electric", {"electra_objective": False, "electric_objective": True}),
        ("Electric", {"electra_objective": False, "electric_objective": True, "untied_generator_embeddings": True}),
    ],
)
def test_masked_lm_and_electric_models_go_to_the_reference_and_back(
    tmp_path: Path, objective: str, hparams: dict
) -> None:
    """The reference builds a masked LM under electra/ (no generator/) and Electric's noise model as two towers
    (generator_ltr/, generator_rtl/) with a cloze head; both round-trip exactly, and convert-tf recognises them."""
    from electra.pretrain import run_pretraining
    from electra.tf_checkpoint import export_tf_checkpoint
    from tests.fixtures.make_tf_checkpoint import model_variables

    data_dir = _data_dir_with_fixture_vocab(tmp_path)
    shape = {"model_size": "small", "embedding_size": 32, "max_seq_length": 32, "learning_rate": 1e-3}
    shape["model_hparam_overrides"] = {"hidden_size": 64, "num_hidden_layers": 2, "intermediate_size": 128}
    shape["model_hparam_overrides"]["num_attention_heads"] = 2  # not hidden / 64: kept by pretrain_hparams.json
    run_pretraining(data_dir, "model", {**shape, **hparams, "train_batch_size": 4, "num_train_steps": 2})
    export_tf_checkpoint(data_dir / "models" / "model", tmp_path / "tf")
    exported = TFCheckpoint(tmp_path / "tf")
    untied = hparams.get("untied_generator_embeddings", False)  # then each tower has its own embeddings
    weights = model_variables(generator_hidden=16, objective=objective, untied_embeddings=untied)  # 1/4 of 64
    slots = {f"{name}/{slot}" for name in weights for slot in ("adam_m", "adam_v")}
    assert set(exported.names()) == set(weights) | slots | {"global_step"}
    assert all(exported.shape(name) == shape for name, shape in weights.items())
    assert json.loads((tmp_path / "tf" / "pretrain_hparams.json").read_text()).items() >= hparams.items()

    back = convert_tf_checkpoint(tmp_path / "tf", tmp_path / "back")
    record = json.loads((back / "pretrain_config.json").read_text())
    assert record.items() >= hparams.items() and record["model_hparam_overrides"]["num_attention_heads"] == 2
    trained = load_file(str(data_dir / "models" / "model" / "checkpoints" / "step-00000002" / "model.safetensors"))
    converted = load_file(str(back / "model.safetensors"))
    assert trained.keys() == converted.keys()
    assert all(torch.equal(trained[key], converted[key]) for key in trained)


def test_export_refuses_what_the_reference_cannot_load(tmp_path: Path) -> None:
    from electra.tf_checkpoint import export_tf_checkpoint, write_tf_checkpoint

    released = convert_tf_checkpoint(FIXTURE, tmp_path / "released")
    shutil.rmtree(released / "generator")
    (released / "model.safetensors").unlink()
    (released / "pretrain_config.json").unlink()  # a lone Hugging Face discriminator
    with pytest.raises(UserError, match="has no weights for generator"):
        export_tf_checkpoint(released, tmp_path / "out")
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    with pytest.raises(UserError, match="already holds other files"):
        export_tf_checkpoint(convert_tf_checkpoint(FIXTURE, tmp_path / "whole"), tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"
    # A released model, converted: the slots the reference's Estimator needs, fresh (the FAQ's "adam_m not found"),
    # and the step it was trained to.
    fresh = TFCheckpoint(export_tf_checkpoint(tmp_path / "whole", tmp_path / "fresh"))
    assert int(fresh.tensor("global_step")) == 7 and fresh.prefix.name == "model.ckpt-7"
    assert not fresh.tensor("electra/embeddings/word_embeddings/adam_m").any()
    np.testing.assert_array_equal(
        fresh.tensor("electra/embeddings/word_embeddings"),
        TFCheckpoint(FIXTURE).tensor("electra/embeddings/word_embeddings"),
    )

    # A damaged data file (an interrupted download) is named, not read as weights.
    write_tf_checkpoint(tmp_path / "ckpt", {"w": np.arange(6, dtype=np.float32).reshape(2, 3)})
    data = tmp_path / "ckpt.data-00000-of-00001"
    data.write_bytes(data.read_bytes()[:-4] + b"\x00\x00\x80\x7f")
    with pytest.raises(UserError, match=r"variable w is damaged in .*ckpt\.data-00000-of-00001: its bytes"):
        TFCheckpoint(tmp_path / "ckpt").tensor("w")


def test_accents_kept_while_lower_casing_survive_the_reference_round_trip(tmp_path: Path, capsys) -> None:
    """The reference's hparams cannot say "lower-case, keep accents", so the export lost it and the model came
    back reading "café" as "cafe"; tokenizer_config.json beside the checkpoint carries it."""
    from electra.tf_checkpoint import export_tf_checkpoint

    for strip in (True, False):
        released = convert_tf_checkpoint(FIXTURE, tmp_path / f"released-{strip}")
        record = json.loads((released / "pretrain_config.json").read_text())
        (released / "pretrain_config.json").write_text(json.dumps({**record, "strip_accents": strip}))
        export_tf_checkpoint(released, tmp_path / f"tf-{strip}")
        assert ("without stripping accents, which the reference" in capsys.readouterr().err) is not strip
        assert json.loads((tmp_path / f"tf-{strip}" / "tokenizer_config.json").read_text())["strip_accents"] is strip
        back = convert_tf_checkpoint(tmp_path / f"tf-{strip}", tmp_path / f"back-{strip}")
        assert json.loads((back / "pretrain_config.json").read_text())["strip_accents"] is strip
