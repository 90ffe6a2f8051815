from __future__ import annotations

import json
import math
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import transformers
from safetensors.torch import load_file

import electra.objectives as objectives
from electra.cli import main
from electra.config import build_pretraining_config, parse_hparams
from electra.errors import UserError
from electra.pretrain import PAD_WIDTH_MULTIPLE, run_pretraining
from electra.pretrain_data import PretrainingData
from electra.trainer import AdamWeightDecay, TrainSettings, learning_rate_at
from tests.conftest import run_torchrun

FAST = {
    "debug": True,
    "num_warmup_steps": 2,
    "learning_rate": 1e-3,
    "save_checkpoints_steps": 4,
    "log_every_steps": 1,
    "precision": "fp32",
}


def hparams(**extra) -> str:
    return json.dumps({**FAST, **extra})


def pretrain(data_dir: Path, name: str, **extra) -> int:
    return main(["pretrain", "--data-dir", str(data_dir), "--model-name", name, "--hparams", hparams(**extra)])


def metrics(model_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (model_dir / "logs" / "metrics.jsonl").read_text().splitlines()]


def test_debug_run_trains_checkpoints_exports_and_evaluates(pretrain_data_dir: Path, capsys):
    assert pretrain(pretrain_data_dir, "debug", num_train_steps=12, do_eval=True, keep_checkpoint_max=2) == 0
    out = capsys.readouterr().out
    assert "trained to step 12" in out and "disc_auc" in out and "not evaluated" not in out
    model_dir = pretrain_data_dir / "models" / "debug"
    assert sorted(path.name for path in (model_dir / "checkpoints").iterdir()) == ["step-00000008", "step-00000012"]
    logged = metrics(model_dir)
    assert [record["step"] for record in logged] == list(range(1, 13))
    assert logged[-1]["mlm_loss"] < logged[0]["mlm_loss"], "the generator learns"
    results = json.loads((model_dir / "results" / "unsup_results.json").read_text())
    assert {"masked_lm_accuracy", "disc_auc", "disc_precision", "disc_recall", "disc_accuracy"} <= set(results)
    assert 0.0 < results["token_cosine"] < 1.0
    # Weights get the permissions of any other output (safetensors alone makes them private to their owner).
    permissions = {
        path.stat().st_mode & 0o777
        for path in (model_dir / "pretrain_config.json", *model_dir.glob("**/model.safetensors"))
    }
    assert len(permissions) == 1 and len(list(model_dir.glob("**/model.safetensors"))) == 4
    config = json.loads((model_dir / "pretrain_config.json").read_text())
    assert config["train_batch_size"] == 8 and config["max_seq_length"] == 32 and config["eval_examples"] > 0
    assert any(path.name.startswith("events.out.tfevents") for path in (model_dir / "logs").iterdir())
    (model_dir / "results" / "unsup_results.json").unlink()
    assert pretrain(pretrain_data_dir, "debug", num_train_steps=12, do_train=False, do_eval=True) == 0
    assert json.loads((model_dir / "results" / "unsup_results.json").read_text()) == results
    # An evaluation given no training hparams at all leaves the run's record alone, so the run still resumes.
    recorded = (model_dir / "pretrain_config.json").read_text()
    bare = '{"do_train": false, "do_eval": true, "num_eval_steps": 1, "precision": "fp32"}'
    assert main(["pretrain", "--data-dir", str(pretrain_data_dir), "--model-name", "debug", "--hparams", bare]) == 0
    assert (model_dir / "pretrain_config.json").read_text() == recorded
    assert pretrain(pretrain_data_dir, "debug", num_train_steps=13, keep_checkpoint_max=2) == 0
    assert "trained to step 13" in capsys.readouterr().out
    assert main(["plot", str(model_dir)]) == 0
    assert (model_dir / "logs" / "curves.png").stat().st_size > 1000


def test_token_cosine_is_the_mean_over_pairs_of_real_tokens() -> None:
    from electra.pretrain import mean_token_cosine

    torch.manual_seed(0)
    hidden = torch.randn(2, 5, 8)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 0]])
    states = torch.nn.functional.normalize(hidden[mask.bool()], dim=-1)
    pairs = [(i, j) for i in range(len(states)) for j in range(len(states)) if i != j]
    expected = sum(float(states[i] @ states[j]) for i, j in pairs) / len(pairs)
    assert abs(mean_token_cosine(hidden, mask) - expected) < 1e-5
    same = torch.ones(1, 4, 8) * torch.randn(8)
    assert abs(mean_token_cosine(same, torch.ones(1, 4)) - 1.0) < 1e-5  # collapsed: every state alike


def test_exported_models_load_in_transformers_with_equal_outputs(pretrain_data_dir: Path):
    assert pretrain(pretrain_data_dir, "export", num_train_steps=2) == 0
    model_dir = pretrain_data_dir / "models" / "export"
    full = load_file(model_dir / "checkpoints" / "step-00000002" / "model.safetensors")
    discriminator = transformers.ElectraForPreTraining.from_pretrained(model_dir / "discriminator").eval()
    generator = transformers.ElectraForMaskedLM.from_pretrained(model_dir / "generator").eval()
    assert torch.equal(
        discriminator.electra.encoder.layer[0].attention.self.query.weight,
        full["discriminator.electra.encoder.layer.0.attention.self.query.weight"],
    )
    assert torch.equal(
        generator.electra.embeddings.word_embeddings.weight, discriminator.electra.embeddings.word_embeddings.weight
    )
    from electra.objectives import PretrainingModel

    config = build_pretraining_config({**FAST, "num_train_steps": 2})
    ours = PretrainingModel(config, vocab_size=300, pad_token_id=0).eval()
    from safetensors.torch import load_model

    load_model(ours, str(model_dir / "checkpoints" / "step-00000002" / "model.safetensors"))
    ids = torch.randint(5, 300, (2, 16))
    with torch.no_grad():
        assert (discriminator(ids).logits - ours.discriminator(ids)).abs().max() <= 1e-5
        assert (generator(ids).logits - ours.generator(ids)).abs().max() <= 1e-5


def test_rerun_after_kill_resumes_and_matches_an_uninterrupted_run(pretrain_data_dir: Path):
    command = [
        sys.executable,
        "-m",
        "electra.cli",
        "pretrain",
        "--data-dir",
        str(pretrain_data_dir),
        "--hparams",
        hparams(num_train_steps=40, save_checkpoints_steps=5, keep_checkpoint_max=0),
    ]
    subprocess.run([*command, "--model-name", "straight"], check=True, capture_output=True)
    killed = pretrain_data_dir / "models" / "killed"
    process = subprocess.Popen(
        [*command, "--model-name", "killed"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    deadline = time.time() + 120
    while not (killed / "checkpoints" / "step-00000010").exists() and time.time() < deadline:
        time.sleep(0.05)
    os.kill(process.pid, signal.SIGKILL)
    process.wait()
    stopped_at = max(int(path.name[5:]) for path in (killed / "checkpoints").iterdir() if path.name[0] != ".")
    assert 10 <= stopped_at < 40, "the kill landed in the middle of training"
    result = subprocess.run([*command, "--model-name", "killed"], check=True, capture_output=True, text=True)
    assert f"resuming from step {stopped_at}" in result.stderr
    straight = load_file(
        pretrain_data_dir / "models" / "straight" / "checkpoints" / "step-00000040" / "model.safetensors"
    )
    resumed = load_file(killed / "checkpoints" / "step-00000040" / "model.safetensors")
    assert straight.keys() == resumed.keys()
    assert all(torch.equal(straight[name], resumed[name]) for name in straight)
    steps = [record["step"] for record in metrics(killed)]
    assert steps == list(range(1, 41)), "the log has each step once"


def test_resuming_with_another_vocabulary_is_refused(pretrain_data_dir: Path, capsys):
    assert pretrain(pretrain_data_dir, "vocab-a", num_train_steps=2) == 0
    recorded = pretrain_data_dir / "models" / "vocab-a" / "pretrain_config.json"
    config = json.loads(recorded.read_text())
    assert len(config["vocab_sha256"]) == 64
    recorded.write_text(json.dumps({**config, "vocab_sha256": "0" * 64}))  # as if vocab.txt had been rebuilt
    assert pretrain(pretrain_data_dir, "vocab-a", num_train_steps=4) == 2
    assert "trained with another vocabulary" in capsys.readouterr().err
    assert not (pretrain_data_dir / "models" / "vocab-a" / "checkpoints" / "step-00000004").exists()


def test_resuming_on_other_data_is_refused(pretrain_data_dir: Path, capsys):
    """Resumed on rebuilt data, a run took its held-out examples from the new data's tail, which it may have trained
    on; the record's fingerprint of the data stops that (the same data built again has the same fingerprint)."""
    assert pretrain(pretrain_data_dir, "data-a", num_train_steps=2) == 0
    recorded = pretrain_data_dir / "models" / "data-a" / "pretrain_config.json"
    config = json.loads(recorded.read_text())
    assert config["data_fingerprint"] == PretrainingData(pretrain_data_dir / "pretrain_data").fingerprint
    recorded.write_text(json.dumps({**config, "data_fingerprint": "0" * 16}))  # as if the corpus had changed
    assert pretrain(pretrain_data_dir, "data-a", num_train_steps=4) == 2
    assert "holds checkpoints of a run on other pre-training data than" in capsys.readouterr().err
    assert pretrain(pretrain_data_dir, "data-a", num_train_steps=2, do_train=False, do_eval=True) == 0  # evaluates


def test_evaluation_without_held_out_examples_is_refused_before_training(pretrain_data_dir: Path, capsys):
    """It was found out after training, with advice (more eval steps) that could not help."""
    assert pretrain(pretrain_data_dir, "no-eval", num_train_steps=2, do_eval=True, max_eval_share=1e-9) == 2
    assert "max_eval_share 1e-09 of the" in capsys.readouterr().err
    assert not (pretrain_data_dir / "models" / "no-eval" / "checkpoints").exists()


def test_resuming_with_settings_that_change_what_is_learned_is_refused(pretrain_data_dir: Path, capsys):
    """Later steps of a run under another learning rate or seed would not be the run its record describes; going on
    to more steps, or saving and logging differently, is how a run continues."""
    assert pretrain(pretrain_data_dir, "resumed", num_train_steps=4) == 0
    record_file = pretrain_data_dir / "models" / "resumed" / "pretrain_config.json"
    record = record_file.read_text()
    assert pretrain(pretrain_data_dir, "resumed", num_train_steps=8, learning_rate=1e-2, seed=5) == 2
    error = capsys.readouterr().err
    assert "holds checkpoints of a run with other settings (learning_rate 0.001 -> 0.01, seed 0 -> 5)" in error
    assert "init_checkpoint" in error and record_file.read_text() == record
    # Settings of the network that leave its tensors' shapes alone were resumed without a word.
    changed = {"model_hparam_overrides": {"hidden_dropout_prob": 0.0, "initializer_range": 0.05}}
    assert pretrain(pretrain_data_dir, "resumed", num_train_steps=8, **changed) == 2
    error = capsys.readouterr().err
    assert "other settings (hidden_dropout_prob 0.1 -> 0.0, initializer_range 0.02 -> 0.05)" in error
    assert pretrain(pretrain_data_dir, "resumed", num_train_steps=8, log_every_steps=2, save_checkpoints_steps=8) == 0
    assert json.loads(record_file.read_text())["num_train_steps"] == 8
    capsys.readouterr()
    assert pretrain(pretrain_data_dir, "resumed", num_train_steps=4) == 0  # fewer steps than trained: nothing to do
    out = capsys.readouterr().out
    assert "already trained to step 8: nothing left to train" in out
    assert '"do_eval": true' in out and "not evaluated on held-out data" in out
    assert json.loads(record_file.read_text())["num_train_steps"] == 8  # what the model holds, not what was asked


def test_init_checkpoint_starts_from_weights_with_a_fresh_optimizer(pretrain_data_dir: Path, tmp_path: Path, capsys):
    assert pretrain(pretrain_data_dir, "source", num_train_steps=4) == 0
    source = pretrain_data_dir / "models" / "source"
    assert (
        pretrain(pretrain_data_dir, "continued", num_train_steps=1, learning_rate=0.0, init_checkpoint=str(source)) == 0
    )
    assert "differ in" not in capsys.readouterr().err
    # Weights that came with another vocabulary of the same size load, and the run says how the two differ.
    other = tmp_path / "other"
    shutil.copytree(source, other)
    tokens = (other / "discriminator" / "vocab.txt").read_text().splitlines()
    tokens[10], tokens[11] = tokens[11], tokens[10]
    (other / "discriminator" / "vocab.txt").write_text("\n".join(tokens) + "\n")
    assert pretrain(pretrain_data_dir, "continued-other", num_train_steps=1, init_checkpoint=str(other)) == 0
    assert f"differ in 2 of {len(tokens):,} tokens (first id 10: {tokens[11]!r} here" in capsys.readouterr().err
    before = load_file(source / "checkpoints" / "step-00000004" / "model.safetensors")
    after = load_file(
        pretrain_data_dir / "models" / "continued" / "checkpoints" / "step-00000001" / "model.safetensors"
    )
    assert all(torch.equal(before[name], after[name]) for name in before)
    with pytest.raises(UserError, match="do not fit"):
        run_pretraining(
            pretrain_data_dir,
            "mismatch",
            {**FAST, "num_train_steps": 1, "init_checkpoint": str(source), "generator_hidden_size": 0.5},
        )


def test_nonfinite_steps_are_skipped_then_training_stops_naming_the_checkpoint(pretrain_data_dir, monkeypatch, capsys):
    real_forward = objectives.PretrainingModel.forward
    calls = {"count": 0}

    def sometimes_nan(self, batch, details=None):
        calls["count"] += 1
        sums = real_forward(self, batch, details)
        if calls["count"] == 3 or calls["count"] >= 7:
            sums["disc_loss"] = sums["disc_loss"] * float("nan")
        return sums

    monkeypatch.setattr(objectives.PretrainingModel, "forward", sometimes_nan)
    # one forward call per step
    code = pretrain(pretrain_data_dir, "nan", num_train_steps=30, max_nonfinite_steps=3, length_groups=1)
    assert code == 2
    error = capsys.readouterr().err
    assert "not finite for 3 steps in a row" in error and "step-00000004" in error
    logged = metrics(pretrain_data_dir / "models" / "nan")
    assert logged[3]["skipped_steps"] == 1.0


def test_unknown_and_malformed_hparams_are_clear_errors(tmp_path: Path, capsys):
    with pytest.raises(UserError, match="did you mean 'learning_rate'"):
        build_pretraining_config({"learnin_rate": 1e-4})
    with pytest.raises(UserError, match="give their folder as pretrain_data"):
        build_pretraining_config({"pretrain_tfrecords": "data/pretrain_tfrecords/pretrain_data.tfrecord*"})
    assert build_pretraining_config({"model_dir": "m"}).model_dir == "m"  # a path hparam of pre-training here too
    with pytest.raises(UserError, match="should be"):
        build_pretraining_config({"num_train_steps": "many"})
    with pytest.raises(UserError, match="not valid JSON"):
        parse_hparams("{debug: true}")
    with pytest.raises(UserError, match=r"--hparams 'hparams\.jsn' is neither a JSON object nor a file that exists"):
        parse_hparams("hparams.jsn")
    (tmp_path / "dir.json").mkdir()
    with pytest.raises(UserError, match=r"dir\.json is a folder: give the file itself"):
        parse_hparams(str(tmp_path / "dir.json"))
    file = tmp_path / "hparams.json"
    file.write_text('{"model_size": "base"}')
    config = build_pretraining_config(parse_hparams(str(file)))
    assert (config.embedding_size, config.learning_rate, config.train_batch_size) == (768, 2e-4, 256)
    model = config.discriminator_config(30522, 0)
    assert (model.hidden_size, model.num_hidden_layers, model.num_attention_heads, model.intermediate_size) == (
        768,
        12,
        12,
        3072,
    )
    assert round(config.generator_config(model).hidden_size) == 256
    large = build_pretraining_config({"model_size": "large", "train_batch_size": 64})
    assert (large.mask_prob, large.train_batch_size, large.discriminator_config(100, 0).num_attention_heads) == (
        0.25,
        64,
        16,
    )
    assert main(["pretrain", "--data-dir", str(tmp_path), "--model-name", "x", "--hparams", '{"debug": true}']) == 2
    assert "vocab.txt does not exist" in capsys.readouterr().err
    nowhere = tmp_path / "nowhere"
    assert main(["pretrain", "--data-dir", str(nowhere), "--model-name", "x", "--hparams", '{"debug": true}']) == 2
    assert f"--data-dir {nowhere} is not a folder: build its vocab.txt and pretrain_data/" in capsys.readouterr().err


def test_compile_takes_true_false_or_a_torch_compile_mode():
    assert build_pretraining_config({"compile": "reduce-overhead"}).compile == "reduce-overhead"
    assert build_pretraining_config({"compile": True}).compile is True
    with pytest.raises(UserError, match="'fast': use true, false or one of default, reduce-overhead"):
        build_pretraining_config({"compile": "fast"})
    with pytest.raises(UserError, match="hparam 'compile' should be"):
        build_pretraining_config({"compile": 1})
    with pytest.raises(UserError, match="length_groups -1 must be 0"):
        build_pretraining_config({"length_groups": -1})


def test_learning_rate_warms_up_then_decays_linearly_to_zero():
    settings = TrainSettings(learning_rate=1.0, num_train_steps=100, batch_size=1, num_warmup_steps=10)
    assert learning_rate_at(0, settings) == 0.0
    assert learning_rate_at(5, settings) == pytest.approx(0.5 * 0.95)
    assert learning_rate_at(50, settings) == pytest.approx(0.5)
    assert learning_rate_at(100, settings) == 0.0
    squared = TrainSettings(learning_rate=1.0, num_train_steps=100, batch_size=1, lr_decay_power=2.0)
    assert learning_rate_at(0, squared) == 1.0  # no warm-up: the full rate at once
    assert learning_rate_at(50, squared) == pytest.approx(0.25)
    assert learning_rate_at(90, squared) == pytest.approx(0.01)


def test_training_never_reads_the_held_out_examples(pretrain_data_dir: Path):
    from electra.pretrain import PretrainingTask, prepare_run

    run = prepare_run(pretrain_data_dir, "held-out", {"debug": True, "train_batch_size": 8, "num_eval_steps": 2})
    assert run.train_range.stop == run.eval_range.start and run.eval_range.stop == len(run.data)
    assert len(run.eval_range) == 2 * run.config.eval_batch_size
    task = PretrainingTask(run.data, run.config, run.train_range)
    steps_per_epoch = -(-len(run.train_range) // 8)
    seen = np.concatenate([task.batch_indices(step) for step in range(2 * steps_per_epoch)])
    assert set(seen.tolist()) == set(run.train_range)  # every training example, and nothing held out


def test_evaluation_metrics_are_those_of_the_discriminators_predictions(pretrain_data_dir: Path):
    """precision, recall, accuracy and AUC of "replaced" over the real held-out tokens, from the per-token logits."""
    from sklearn.metrics import accuracy_score, precision_score, recall_score, roc_auc_score

    from electra.objectives import PretrainingModel
    from electra.pretrain import eval_batches, evaluate, prepare_run
    from electra.tokenization import read_vocab

    run = prepare_run(pretrain_data_dir, "metrics", {"debug": True, "num_eval_steps": 3})
    torch.manual_seed(0)
    vocab = read_vocab(run.vocab_file)
    model = PretrainingModel(run.config, len(vocab), vocab.index("[PAD]"))
    results = evaluate(model, run, torch.device("cpu"))
    probabilities, labels = [], []
    with torch.no_grad():
        for batch in eval_batches(run, torch.device("cpu")):
            details: dict = {}
            model(batch, details)
            real = details["attention_mask"].bool()
            probabilities.append(torch.sigmoid(details["disc_logits"][real]))
            labels.append(details["labels"][real])
    probs, truth = torch.cat(probabilities).numpy(), torch.cat(labels).numpy()
    assert 0 < truth.sum() < len(truth) and (probs > 0.5).sum() > 0
    assert results["disc_auc"] == pytest.approx(roc_auc_score(truth, probs))
    assert results["disc_precision"] == pytest.approx(precision_score(truth, probs > 0.5))
    assert results["disc_recall"] == pytest.approx(recall_score(truth, probs > 0.5))
    assert results["disc_accuracy"] == pytest.approx(accuracy_score(truth, probs > 0.5))
    assert results["replaced_share"] == pytest.approx(truth.mean())


def test_objectives_train_end_to_end(pretrain_data_dir: Path):
    for name, extra in (
        ("mlm", {"electra_objective": False, "mask_prob": 0.25}),
        ("electric", {"electra_objective": False, "electric_objective": True}),
    ):
        assert pretrain(pretrain_data_dir, name, num_train_steps=6, do_eval=True, **extra) == 0
        model_dir = pretrain_data_dir / "models" / name
        exported = sorted(path.name for path in model_dir.iterdir() if (path / "config.json").exists())
        assert exported == (["generator"] if name == "mlm" else ["discriminator"])
        logged = metrics(model_dir)
        assert all(math.isfinite(record["loss"]) for record in logged)
        assert logged[-1]["mlm_loss"] < logged[0]["mlm_loss"], "the masked or cloze model learns"
        # Evaluated again as training suggests, with little more than "do_train": false: as it was trained (the
        # objective, and mask_prob's 0.25 below, had been the defaults'), so with the same held-out results.
        results = json.loads((model_dir / "results" / "unsup_results.json").read_text())
        bare = '{"do_train": false, "do_eval": true, "precision": "fp32"}'
        assert main(["pretrain", "--data-dir", str(pretrain_data_dir), "--model-name", name, "--hparams", bare]) == 0
        assert json.loads((model_dir / "results" / "unsup_results.json").read_text()) == results


NO_DROPOUT = {"model_hparam_overrides": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0}}


def test_length_groups_train_exactly_as_full_padding(pretrain_data_dir: Path):
    data = PretrainingData(pretrain_data_dir / "pretrain_data")
    lengths = data.real_lengths(range(len(data)))
    assert lengths.min() < data.max_seq_length - PAD_WIDTH_MULTIPLE, "short rows, so the pieces are narrower"
    for groups in (1, 4):
        name = f"groups{groups}"
        assert pretrain(pretrain_data_dir, name, num_train_steps=4, length_groups=groups, **NO_DROPOUT) == 0
    full, grouped = metrics(pretrain_data_dir / "models" / "groups1"), metrics(pretrain_data_dir / "models" / "groups4")
    for a, b in zip(full, grouped, strict=True):
        for key in ("loss", "mlm_loss", "disc_loss", "disc_accuracy", "grad_norm"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)


def test_two_processes_with_gloo_match_one_process(pretrain_data_dir: Path):
    no_dropout = {**NO_DROPOUT, "num_train_steps": 4, "gradient_accumulation_steps": 2}
    base = ["-m", "electra.cli", "pretrain", "--data-dir", str(pretrain_data_dir), "--hparams", hparams(**no_dropout)]
    subprocess.run([sys.executable, *base, "--model-name", "one"], check=True, capture_output=True)
    run_torchrun(*base, "--model-name", "two")
    assert json.loads((pretrain_data_dir / "models" / "two" / "pretrain_config.json").read_text())["processes"] == 2
    # A batch the two processes cannot share is refused before the run's record is written.
    uneven = ["-m", "electra.cli", "pretrain", "--data-dir", str(pretrain_data_dir), "--model-name", "uneven"]
    refused = run_torchrun(*uneven, "--hparams", hparams(**no_dropout, train_batch_size=6), check=False)
    assert refused.returncode != 0 and "train_batch_size 6 must be a multiple of processes (2)" in refused.stderr
    assert not (pretrain_data_dir / "models" / "uneven" / "pretrain_config.json").exists()
    one, two = metrics(pretrain_data_dir / "models" / "one"), metrics(pretrain_data_dir / "models" / "two")
    for a, b in zip(one, two, strict=True):
        for key in ("loss", "mlm_loss", "disc_loss", "disc_accuracy"):
            assert a[key] == pytest.approx(b[key], rel=1e-4, abs=1e-6), (a["step"], key)


def test_optimizer_matches_torch_adamw_with_bias_correction_and_the_reference_without():
    torch.manual_seed(0)
    weights = [torch.randn(4, 3, requires_grad=True), torch.randn(3, requires_grad=True)]
    gradients = [[torch.randn_like(weight) for weight in weights] for _ in range(5)]
    ours = [weight.detach().clone().requires_grad_() for weight in weights]
    reference = [weight.detach().clone().requires_grad_() for weight in weights]
    torch_adamw = torch.optim.AdamW(weights, lr=0.01, eps=1e-6, weight_decay=0.1)
    corrected = AdamWeightDecay([{"params": ours, "weight_decay": 0.1}], lr=0.01)
    uncorrected = AdamWeightDecay([{"params": reference, "weight_decay": 0.1}], lr=0.01, bias_correction=False)
    m = [torch.zeros_like(weight) for weight in weights]
    v = [torch.zeros_like(weight) for weight in weights]
    expected = [weight.detach().clone() for weight in weights]
    for step_gradients in gradients:
        for group, optimizer in ((weights, torch_adamw), (ours, corrected), (reference, uncorrected)):
            for weight, gradient in zip(group, step_gradients, strict=True):
                weight.grad = gradient.clone()
            optimizer.step()
        for index, gradient in enumerate(step_gradients):  # the reference's update, written out
            m[index] = 0.9 * m[index] + 0.1 * gradient
            v[index] = 0.999 * v[index] + 0.001 * gradient**2
            expected[index] -= 0.01 * (m[index] / (v[index].sqrt() + 1e-6) + 0.1 * expected[index])
    for got, want in zip(ours, weights, strict=True):
        assert torch.allclose(got, want, atol=1e-6)
    for got, want in zip(reference, expected, strict=True):
        assert torch.allclose(got, want, atol=1e-6)


def hugging_face_pair(folder: Path, vocab_size: int) -> tuple[dict, dict]:
    """A released-style Hugging Face pair in folder/discriminator (pytorch_model.bin, as Google's ELECTRA releases
    on the hub ship) and folder/generator (model.safetensors), with the shared embeddings equal in both."""
    shape = {"vocab_size": vocab_size, "embedding_size": 16, "intermediate_size": 64}
    discriminator = transformers.ElectraForPreTraining(
        transformers.ElectraConfig(**shape, hidden_size=32, num_hidden_layers=2, num_attention_heads=2)
    )
    generator = transformers.ElectraForMaskedLM(
        transformers.ElectraConfig(**shape, hidden_size=16, num_hidden_layers=1, num_attention_heads=1)
    )
    generator.electra.embeddings.load_state_dict(discriminator.electra.embeddings.state_dict())
    discriminator.config.to_json_file(
        folder.joinpath("discriminator").mkdir(parents=True) or folder / "discriminator" / "config.json"
    )
    position_ids = {"electra.embeddings.position_ids": torch.arange(512)[None]}  # a buffer older releases saved
    torch.save({**discriminator.state_dict(), **position_ids}, folder / "discriminator" / "pytorch_model.bin")
    generator.save_pretrained(folder / "generator")
    return discriminator.state_dict(), generator.state_dict()


def test_pre_training_continues_from_a_hugging_face_pair(pretrain_data_dir: Path, tmp_path: Path, capsys):
    """Google's releases on the Hugging Face hub come as a discriminator and a generator folder; continuing
    pre-training from them takes both shapes from their config.json and every weight, the generator's included."""
    vocab_size = len((pretrain_data_dir / "vocab.txt").read_text().splitlines())
    released = tmp_path / "released"
    discriminator, generator = hugging_face_pair(released, vocab_size)
    settings = {"train_batch_size": 8, "num_train_steps": 1, "learning_rate": 0.0, "precision": "fp32"}
    run_pretraining(pretrain_data_dir, "from-hf", {**settings, "init_checkpoint": str(released)})
    model_dir = pretrain_data_dir / "models" / "from-hf"
    recorded = json.loads((model_dir / "pretrain_config.json").read_text())
    assert (recorded["generator_hidden_size"], recorded["generator_layers"]) == (0.5, 0.5)
    for part, source in (("discriminator", discriminator), ("generator", generator)):
        exported = load_file(model_dir / part / "model.safetensors")
        assert set(source) - set(exported) <= {"generator_lm_head.weight"}, part  # tied to the word embeddings
        assert all(torch.equal(value, source[key]) for key, value in exported.items()), part  # learning rate 0
    assert "random weights" not in capsys.readouterr().err

    # The discriminator alone: the generator starts from random weights, and the run says so.
    run_pretraining(pretrain_data_dir, "from-hf-disc", {**settings, "init_checkpoint": str(released / "discriminator")})
    assert "no weights for generator.electra" in capsys.readouterr().err
    exported = load_file(pretrain_data_dir / "models" / "from-hf-disc" / "discriminator" / "model.safetensors")
    assert all(torch.equal(exported[key], value) for key, value in discriminator.items())

    # A pair built on another vocabulary is refused, with the way out.
    hugging_face_pair(tmp_path / "other-vocab", vocab_size + 5)
    with pytest.raises(UserError, match=r"vocabulary differs: build the data with the checkpoint.s vocab\.txt"):
        run_pretraining(
            pretrain_data_dir, "other-vocab", {**settings, "init_checkpoint": str(tmp_path / "other-vocab")}
        )
    (tmp_path / "broken.bin").write_bytes(b"not a state dict")
    with pytest.raises(UserError, match=r"cannot read weights from .*broken\.bin: it is not a PyTorch state dict"):
        run_pretraining(pretrain_data_dir, "broken", {**settings, "init_checkpoint": str(tmp_path / "broken.bin")})


def test_model_name_of_a_downloaded_pair_continues_it_and_failures_change_nothing(pretrain_data_dir: Path):
    """The reference's recipe for continuing pre-training: put the downloaded model at <data-dir>/models/<name> and
    pass --model-name <name>. Its weights are where training starts; later runs resume its own checkpoints with
    the shape it was trained with; a run whose settings do not fit is refused before it writes anything."""
    vocab_size = len((pretrain_data_dir / "vocab.txt").read_text().splitlines())
    model_dir = pretrain_data_dir / "models" / "downloaded"
    discriminator, _ = hugging_face_pair(model_dir, vocab_size)
    settings = {"train_batch_size": 8, "num_train_steps": 2, "learning_rate": 0.0, "precision": "fp32"}
    assert run_pretraining(pretrain_data_dir, "downloaded", settings)["train"].step == 2
    exported = load_file(model_dir / "discriminator" / "model.safetensors")
    assert all(torch.equal(exported[key], value) for key, value in discriminator.items())
    evaluation = {"do_train": False, "do_eval": True, "num_eval_steps": 1, "eval_batch_size": 8}
    assert "disc_auc" in run_pretraining(pretrain_data_dir, "downloaded", evaluation)["eval"]  # shape inherited
    record = (model_dir / "pretrain_config.json").read_bytes()
    with pytest.raises(UserError, match="do not fit"):
        run_pretraining(pretrain_data_dir, "downloaded", {**evaluation, "model_size": "base"})
    assert (model_dir / "pretrain_config.json").read_bytes() == record


def test_a_second_run_on_a_model_in_training_stops_at_once(pretrain_data_dir: Path):
    """Two runs writing checkpoints into one model folder would interleave them: the second is refused."""
    from electra.fileio import folder_lock

    model_dir = pretrain_data_dir / "models" / "busy"
    with folder_lock(model_dir, "electra pretrain"):  # as a run in another terminal holds it
        with pytest.raises(
            UserError, match=rf"{model_dir} is in use by another electra pretrain \(pid {os.getpid()}\)"
        ):
            run_pretraining(pretrain_data_dir, "busy", {**FAST, "num_train_steps": 1})
        assert not (model_dir / "checkpoints").exists()
    assert run_pretraining(pretrain_data_dir, "busy", {**FAST, "num_train_steps": 1})["train"].step == 1


def test_casing_goes_from_the_data_to_the_model_fine_tuning_scoring_and_export(tmp_path: Path) -> None:
    """Data built cased with accents kept makes a cased model: pre-training takes both settings from the data (and
    refuses a contradicting hparam), and fine-tuning, scoring and the Hugging Face export read text the same way."""
    from electra.corpus import list_corpus_files
    from electra.export import export_hf
    from electra.finetune import prepare_finetuning
    from electra.pretrain_data import BuildSettings, build_pretraining_data
    from electra.scoring import locate_scoring_model
    from electra.tokenization import train_vocab, write_vocab
    from tests.conftest import ENGLISH_DOCUMENTS, write_corpus
    from tests.test_finetune import sentiment_rows, write_user_task

    corpus = write_corpus(tmp_path / "corpus", ENGLISH_DOCUMENTS * 20)
    cased = {"do_lower_case": False, "strip_accents": False}
    vocab = train_vocab(list_corpus_files(corpus), vocab_size=300, show_progress=False, **cased)
    write_vocab(vocab, tmp_path / "vocab.txt")
    settings = BuildSettings(max_seq_length=32, **cased)
    build_pretraining_data(corpus, tmp_path / "vocab.txt", tmp_path / "pretrain_data", settings, show_progress=False)
    with pytest.raises(UserError, match=r"do_lower_case true differs from the data .* built with do_lower_case false"):
        run_pretraining(tmp_path, "m", {**FAST, "num_train_steps": 2, "do_lower_case": True})
    run_pretraining(tmp_path, "m", {**FAST, "num_train_steps": 2})
    model_dir = tmp_path / "models" / "m"
    record = json.loads((model_dir / "pretrain_config.json").read_text())
    assert {key: record[key] for key in cased} == cased

    write_user_task(tmp_path, {"train": sentiment_rows(8, 0), "dev": sentiment_rows(4, 1)})
    run = prepare_finetuning(tmp_path, "m", {"task_names": ["tickets"], "tasks": {"tickets": {}}})
    assert (run.config.do_lower_case, run.config.strip_accents) == (False, False)
    given = prepare_finetuning(
        tmp_path, "m", {"task_names": ["tickets"], "tasks": {"tickets": {}}, **dict.fromkeys(cased, True)}
    )
    assert given.config.do_lower_case and given.config.strip_accents  # what the user sets still wins
    # the exported discriminator/ alone holds no record of its own: the run's record beside it still counts
    task = {"task_names": ["tickets"], "tasks": {"tickets": {}}}
    part = prepare_finetuning(tmp_path, "other", {**task, "init_checkpoint": str(model_dir / "discriminator")})
    assert (part.config.do_lower_case, part.config.strip_accents) == (False, False)
    assert locate_scoring_model(model_dir).normalization == cased
    assert locate_scoring_model(model_dir / "generator").normalization == cased
    exported = export_hf(model_dir, tmp_path / "hf")[0]
    tokenizer_config = json.loads((exported / "tokenizer_config.json").read_text())
    assert (tokenizer_config["do_lower_case"], tokenizer_config["strip_accents"]) == (False, False)
    tokenizer = transformers.AutoTokenizer.from_pretrained(exported)
    assert "The" in vocab and tokenizer.tokenize("The fox")[0] == "The"
