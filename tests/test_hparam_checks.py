"""Bad hparams and flags are one-line UserErrors (or argparse errors) naming the setting, the value and the range;
values the reference gives a meaning (0 warm-up, keep_checkpoint_max 0, ...) stay accepted."""

from __future__ import annotations

import dataclasses
import json
import math
import re
import socket
from pathlib import Path
from typing import Any

import pytest

from electra.cli import _check_port_free, main
from electra.config import (
    HPARAM_RANGES,
    MODEL_RANGES,
    FinetuningConfig,
    ModelConfig,
    PretrainingConfig,
    build_finetuning_config,
    build_pretraining_config,
    encoder_config,
    parse_hparams,
    with_inherited_shape,
)
from electra.errors import UserError

WHOLE_1 = "must be a whole number of at least 1"
WHOLE_0 = "must be a whole number of at least 0"


def case_id(hparams: dict[str, Any]) -> str:
    return json.dumps(hparams, separators=(",", ":"))


PRETRAINING_REFUSED = [
    ({"train_batch_size": 0}, f"train_batch_size 0 {WHOLE_1}"),
    ({"eval_batch_size": 0, "do_eval": True}, f"eval_batch_size 0 {WHOLE_1}"),
    ({"save_checkpoints_steps": 0}, f"save_checkpoints_steps 0 {WHOLE_1}"),
    ({"log_every_steps": 0}, f"log_every_steps 0 {WHOLE_1}"),
    ({"num_train_steps": 0}, f"num_train_steps 0 {WHOLE_1}"),
    ({"num_train_steps": -5}, f"num_train_steps -5 {WHOLE_1}"),
    ({"num_eval_steps": -1}, f"num_eval_steps -1 {WHOLE_0}"),
    ({"num_warmup_steps": -3}, f"num_warmup_steps -3 {WHOLE_0}"),
    ({"gradient_accumulation_steps": 0}, f"gradient_accumulation_steps 0 {WHOLE_1}"),
    ({"keep_checkpoint_max": -1}, r"keep_checkpoint_max -1 must be a whole number of at least 0 \(0 keeps all\)"),
    ({"embedding_size": -4}, f"embedding_size -4 {WHOLE_1}"),
    ({"embedding_size": 0}, f"embedding_size 0 {WHOLE_1}"),
    ({"vocab_size": 0}, f"vocab_size 0 {WHOLE_1}"),
    ({"seed": -1}, f"seed -1 {WHOLE_0}"),
    ({"max_nonfinite_steps": 0}, f"max_nonfinite_steps 0 {WHOLE_1}"),
    ({"max_seq_length": 2}, r"max_seq_length 2 must be a whole number of at least 3 \(\[CLS\] x \[SEP\]\)"),
    ({"learning_rate": -1}, "learning_rate -1 must be a finite number of at least 0"),
    ({"learning_rate": math.nan}, "learning_rate nan must be a finite number of at least 0"),
    ({"learning_rate": math.inf}, "learning_rate inf must be a finite number of at least 0"),
    ({"weight_decay_rate": -0.01}, "weight_decay_rate -0.01 must be a finite number of at least 0"),
    ({"lr_decay_power": -1}, r"lr_decay_power -1 must be a finite number of at least 0 \(0 keeps"),
    ({"gen_weight": -1.0}, "gen_weight -1.0 must be a finite number of at least 0"),
    ({"disc_weight": math.nan}, "disc_weight nan must be a finite number of at least 0"),
    ({"mask_prob": 0}, r"mask_prob 0 must be between 0 and 1 \(both excluded\)"),
    ({"mask_prob": 1.0}, r"mask_prob 1.0 must be between 0 and 1"),
    ({"generator_hidden_size": 0}, "generator_hidden_size 0 must be a finite number greater than 0"),
    ({"generator_hidden_size": -0.5}, "generator_hidden_size -0.5 must be a finite number greater than 0"),
    ({"generator_layers": 0.0}, "generator_layers 0.0 must be a finite number greater than 0"),
    ({"temperature": 0}, "temperature 0 must be a finite number greater than 0"),
    ({"temperature": -math.inf}, "temperature -inf must be a finite number greater than 0"),
    ({"max_eval_share": 1}, "max_eval_share 1 must be a finite number of at least 0 and less than 1"),
    ({"length_groups": -1}, r"length_groups -1 must be 0 \(automatic\) or a number of pieces, 1 or more"),
    ({"mask_prob": 0.01, "max_seq_length": 16}, r"mask_prob 0.01 of max_seq_length 16 masks no token"),
    ({"train_batch_size": 6, "gradient_accumulation_steps": 4}, "train_batch_size 6 must be a multiple of"),
]


@pytest.mark.parametrize(
    ("hparams", "message"), PRETRAINING_REFUSED, ids=[case_id(case) for case, _ in PRETRAINING_REFUSED]
)
def test_out_of_range_pretraining_hparams_are_refused(hparams: dict[str, Any], message: str):
    with pytest.raises(UserError, match=f"^{message}"):
        build_pretraining_config({"debug": True, **hparams})


TASK = {"task_names": ["tickets"]}
FINETUNING_REFUSED = [
    ({"num_train_epochs": -1}, "num_train_epochs -1 must be a finite number greater than 0"),
    ({"num_train_epochs": 0}, "num_train_epochs 0 must be a finite number greater than 0"),
    ({"warmup_proportion": 2}, "warmup_proportion 2 must be a finite number of at least 0 and at most 1"),
    ({"warmup_proportion": -0.1}, "warmup_proportion -0.1 must be a finite number of at least 0 and at most 1"),
    ({"max_seq_length": 2}, "max_seq_length 2 must be a whole number of at least 8"),
    ({"gradient_accumulation_steps": 0}, f"gradient_accumulation_steps 0 {WHOLE_1}"),
    ({"num_trials": 0}, f"num_trials 0 {WHOLE_1}"),
    ({"layerwise_lr_decay": 1.5}, r"layerwise_lr_decay 1.5 must be between 0 \(off\) and 1"),
    ({"layerwise_lr_decay": math.nan}, r"layerwise_lr_decay nan must be between 0 \(off\) and 1"),
    ({"learning_rate": math.nan}, "learning_rate nan must be a finite number of at least 0"),
    ({"train_batch_size": 0}, f"train_batch_size 0 {WHOLE_1}"),
    ({"eval_batch_size": 0}, f"eval_batch_size 0 {WHOLE_1}"),
    ({"predict_batch_size": -2}, f"predict_batch_size -2 {WHOLE_1}"),
    ({"doc_stride": 0}, f"doc_stride 0 {WHOLE_1}"),
    ({"max_query_length": 0}, f"max_query_length 0 {WHOLE_1}"),
    ({"n_best_size": 0}, f"n_best_size 0 {WHOLE_1}"),
    ({"beam_size": 0}, f"beam_size 0 {WHOLE_1}"),
    ({"n_writes_test": -1}, f"n_writes_test -1 {WHOLE_0}"),
    ({"max_grad_norm": 0}, "max_grad_norm 0 must be a finite number greater than 0"),
    ({"qa_na_threshold": math.inf}, "qa_na_threshold inf must be a finite number$"),
    ({"log_every_steps": 0}, f"log_every_steps 0 {WHOLE_1}"),
    ({"task_names": 5}, r"task_names 5 must be a list of task names such as \[\"sst\"\]"),
    ({"task_names": ["sst", 3]}, r"task_names \['sst', 3\] must be a list of task names"),
]


@pytest.mark.parametrize(
    ("hparams", "message"), FINETUNING_REFUSED, ids=[case_id(case) for case, _ in FINETUNING_REFUSED]
)
def test_out_of_range_finetuning_hparams_are_refused(hparams: dict[str, Any], message: str):
    with pytest.raises(UserError, match=f"^{message}"):
        build_finetuning_config({**TASK, **hparams})


MODEL_REFUSED = [
    ({"hidden_size": "abc"}, "model_hparam_overrides entry 'hidden_size' should be int, got 'abc'"),
    ({"num_hidden_layers": 2.5}, "model_hparam_overrides entry 'num_hidden_layers' should be int, got 2.5"),
    ({"layer_norm_eps": "small"}, "model_hparam_overrides entry 'layer_norm_eps' should be float"),
    ({"hidden_size": 0}, f"model_hparam_overrides entry hidden_size 0 {WHOLE_1}"),
    ({"num_attention_heads": 0}, f"model_hparam_overrides entry num_attention_heads 0 {WHOLE_1}"),
    ({"num_hidden_layers": -1}, f"model_hparam_overrides entry num_hidden_layers -1 {WHOLE_1}"),
    ({"intermediate_size": 0}, f"model_hparam_overrides entry intermediate_size 0 {WHOLE_1}"),
    ({"max_position_embeddings": 0}, f"model_hparam_overrides entry max_position_embeddings 0 {WHOLE_1}"),
    (
        {"hidden_dropout_prob": 1.0},
        "model_hparam_overrides entry hidden_dropout_prob 1.0 must be a finite number of at least 0 and less than 1",
    ),
    ({"attention_probs_dropout_prob": -0.1}, "model_hparam_overrides entry attention_probs_dropout_prob -0.1"),
    ({"layer_norm_eps": 0}, "model_hparam_overrides entry layer_norm_eps 0 must be a finite number greater than 0"),
    ({"initializer_range": 0.0}, "model_hparam_overrides entry initializer_range 0.0 must be a finite number greater"),
    ({"layer_norm_eps": math.nan}, "model_hparam_overrides entry layer_norm_eps nan"),
    ({"vocab_size": 10}, "model_hparam_overrides entry 'vocab_size' is read from the vocabulary: drop it"),
]


@pytest.mark.parametrize(("overrides", "message"), MODEL_REFUSED, ids=[case_id(case) for case, _ in MODEL_REFUSED])
def test_bad_model_hparam_overrides_are_refused_in_both_commands(overrides: dict[str, Any], message: str):
    with pytest.raises(UserError, match=f"^{re.escape(message)}"):
        build_pretraining_config({"model_hparam_overrides": overrides})
    with pytest.raises(UserError, match=f"^{re.escape(message)}"):
        build_finetuning_config({**TASK, "model_hparam_overrides": overrides})


@pytest.mark.parametrize("size", [["small"], 5, None, "tiny", {"small": 1}])
def test_model_size_must_be_a_preset_name(size: Any):
    for build, extra in ((build_pretraining_config, {}), (build_finetuning_config, TASK)):
        with pytest.raises(UserError, match=r"^model_size .* is not one of small, base, large$"):
            build({**extra, "model_size": size})


def test_edge_values_the_reference_allows_are_accepted():
    pretraining = {
        "num_warmup_steps": 0,
        "keep_checkpoint_max": 0,
        "weight_decay_rate": 0,
        "disc_weight": 0,
        "gen_weight": 0.0,
        "learning_rate": 0.0,
        "lr_decay_power": 0,
        "num_eval_steps": 0,
        "generator_hidden_size": 1,
        "generator_layers": 1.0,
        "length_groups": 0,
        "max_eval_share": 0,
        "seed": 0,
        "temperature": 0.5,
        "train_batch_size": 1,
        "num_train_steps": 1,
        "mask_prob": 0.5,
        "max_seq_length": 3,
        "model_hparam_overrides": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0, "pad_token_id": 0},
    }
    config = build_pretraining_config(pretraining)
    assert {key: getattr(config, key) for key in pretraining} == pretraining
    finetuning = {
        "layerwise_lr_decay": 0,
        "warmup_proportion": 0,
        "keep_checkpoint_max": 0,
        "weight_decay_rate": 0.0,
        "max_seq_length": 8,
        "n_writes_test": 0,
        "qa_na_threshold": -10.0,
        "answerable_weight": 0,
        "num_train_epochs": 0.5,
        "learning_rate": 0,
    }
    config = build_finetuning_config({**TASK, **finetuning})
    assert {key: getattr(config, key) for key in finetuning} == finetuning
    assert build_finetuning_config({**TASK, "layerwise_lr_decay": 1, "warmup_proportion": 1.0}).warmup_proportion == 1
    for size in ("small", "base", "large"):  # the presets and the debug settings stay valid
        build_pretraining_config({"model_size": size})
        build_pretraining_config({"model_size": size, "debug": True})
        build_finetuning_config({**TASK, "model_size": size, "debug": True})


def numeric_fields(cls: type) -> set[str]:
    return {
        item.name
        for item in dataclasses.fields(cls)
        if ("int" in item.type or "float" in item.type) and "bool" not in item.type
    }


def test_every_numeric_hparam_has_a_range():
    """A numeric field added later without a rule would go unchecked: the table must name it."""
    for cls in (PretrainingConfig, FinetuningConfig):
        assert numeric_fields(cls) - set(HPARAM_RANGES[cls]) == set(), cls.__name__
        assert set(HPARAM_RANGES[cls]) <= numeric_fields(cls), cls.__name__
    assert numeric_fields(ModelConfig) == set(MODEL_RANGES)


@pytest.mark.parametrize("build", [build_pretraining_config, build_finetuning_config])
def test_the_reference_tpu_hparams_are_ignored_with_a_note(build, capsys) -> None:
    config = build({"use_tpu": True, "tpu_name": "x", "iterations_per_loop": 7, "learning_rate": 1e-4})
    assert config.learning_rate == 1e-4
    note = "note: iterations_per_loop, tpu_name, use_tpu: the reference's TPU settings, ignored"
    assert note in capsys.readouterr().err


@pytest.mark.parametrize("build", [build_pretraining_config, build_finetuning_config])
def test_null_hparams_are_refused_unless_null_means_something(build) -> None:
    """JSON null passed the type check: a null learning rate failed in the middle of training, and a null
    electra_objective silently trained a masked LM."""
    for name in ("learning_rate", "train_batch_size", "seed", "do_train", "num_train_steps"):
        if any(item.name == name for item in dataclasses.fields(build({}))):
            with pytest.raises(UserError, match=rf"^hparam '{name}' is null: give it a value \("):
                build({name: None})
    assert build({"init_checkpoint": None, "embedding_size": None}).init_checkpoint is None  # null is "none" here
    assert build({"keep_checkpoint_max": None}).keep_checkpoint_max == 0  # the reference: "0 or None" keeps all
    with pytest.raises(UserError, match="hparam 'model_name' sets one of the reference's paths; here give the model"):
        build({"model_name": "electra_small"})  # was "did you mean 'model_size'?"


def test_generator_narrower_than_one_unit_is_a_user_error():
    discriminator = ModelConfig(hidden_size=144, num_attention_heads=4)
    config = build_pretraining_config({"generator_hidden_size": 0.001})
    with pytest.raises(UserError, match=r"^generator_hidden_size 0\.001 .* gives a generator of width 0, less than 1"):
        config.generator_config(discriminator)
    uneven = build_pretraining_config({"generator_hidden_size": 0.9})  # 230 units, 3 heads
    with pytest.raises(UserError, match="width 230, not a multiple of its 3 attention heads"):
        uneven.generator_config(ModelConfig(hidden_size=256, num_attention_heads=4))
    assert build_pretraining_config({}).generator_config(ModelConfig()).hidden_size == 64


def test_model_hparam_overrides_merge_onto_the_inherited_shape(tmp_path: Path):
    recorded = {"model_size": "small", "embedding_size": 32, "model_hparam_overrides": {"hidden_size": 64}}
    (tmp_path / "pretrain_config.json").write_text(json.dumps(recorded))
    given = {"task_names": ["sst"], "model_hparam_overrides": {}}
    shape = with_inherited_shape(given, tmp_path)
    assert shape["model_hparam_overrides"] == {"hidden_size": 64}
    assert shape["embedding_size"] == 32
    dropout = with_inherited_shape({"model_hparam_overrides": {"hidden_dropout_prob": 0.2}}, tmp_path)
    assert dropout["model_hparam_overrides"] == {"hidden_size": 64, "hidden_dropout_prob": 0.2}
    assert dropout["embedding_size"] == 32
    changed = with_inherited_shape({"model_hparam_overrides": {"hidden_size": 128}}, tmp_path)
    assert changed["model_hparam_overrides"] == {"hidden_size": 128}  # the given value wins; loading says it differs
    other_size = with_inherited_shape({"model_size": "base"}, tmp_path)
    assert other_size == {"model_size": "base"}  # a disagreeing size: the user sets the whole shape


@pytest.mark.parametrize("command", ["pretrain", "finetune"])
@pytest.mark.parametrize("name", ["", ".", "..", "../../escape", "a/b", "/abs"])
def test_model_name_must_be_one_folder_under_models(tmp_path: Path, capsys, command: str, name: str):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    assert main([command, "--data-dir", str(data_dir), "--model-name", name]) == 2
    error = capsys.readouterr().err
    assert error.startswith(f"electra: error: --model-name {name!r} is not a folder name")
    assert error.count("\n") == 1
    assert list(tmp_path.rglob("*")) == [data_dir]  # nothing written, inside the data dir or out of it


@pytest.mark.parametrize("port", ["0", "65536", "99999", "-1", "http"])
def test_serve_port_out_of_range_is_an_argparse_error(capsys, port: str):
    with pytest.raises(SystemExit) as exit_info:
        main(["serve", "--model-dir", "m", "--port", port])
    assert exit_info.value.code == 2
    assert "argument --port:" in capsys.readouterr().err


def test_serve_busy_port_is_a_one_line_error_before_loading_the_model(tmp_path: Path, capsys):
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["serve", "--model-dir", str(tmp_path / "missing"), "--port", str(port)]) == 2
    error = capsys.readouterr().err
    assert error == f"electra: error: port {port} is in use on 127.0.0.1: stop what uses it or choose another --port\n"
    _check_port_free("127.0.0.1", port)  # closed again: free, and the check holds nothing open
    with pytest.raises(UserError, match="is not an address of this machine"):
        _check_port_free("no-such-host.invalid", port)


@pytest.mark.parametrize("steps", ["0", "-3"])
def test_quickstart_needs_at_least_one_training_step(tmp_path: Path, capsys, steps: str):
    with pytest.raises(SystemExit) as exit_info:
        main(["quickstart", "--data-dir", str(tmp_path / "qs"), "--train-steps", steps])
    assert exit_info.value.code == 2
    assert f"argument --train-steps: must be at least 1, not {steps}" in capsys.readouterr().err
    assert not (tmp_path / "qs").exists()


def test_debug_shape_then_the_users_overrides_as_the_reference_orders_them():
    """ "debug": true replaces the size's shape; model_hparam_overrides still apply on top (they were dropped)."""
    debug = encoder_config(build_pretraining_config({"debug": True}), 300, 0)
    assert (debug.hidden_size, debug.num_hidden_layers, debug.num_attention_heads, debug.intermediate_size) == (
        144,
        3,
        4,
        576,
    )
    wider = {"debug": True, "model_hparam_overrides": {"hidden_size": 256, "hidden_dropout_prob": 0.0}}
    shape = encoder_config(build_pretraining_config(wider), 300, 0)
    assert (shape.hidden_size, shape.num_hidden_layers, shape.num_attention_heads, shape.intermediate_size) == (
        256,
        3,
        4,
        1024,
    )
    assert shape.hidden_dropout_prob == 0.0
    plain = encoder_config(build_pretraining_config({"model_hparam_overrides": {"hidden_size": 128}}), 300, 0)
    assert (plain.num_hidden_layers, plain.num_attention_heads, plain.intermediate_size) == (12, 2, 512)


def test_full_width_punctuation_in_hparams_is_named() -> None:
    """Typed with a Chinese input method, JSON's colon and quotes are full width: the error said only where."""
    with pytest.raises(UserError, match="full-width punctuation \\(：\\), which JSON does not read"):
        parse_hparams('{"task_names"：["tickets"]}')
    with pytest.raises(UserError, match="full-width punctuation \\(“ ”\\)"):
        parse_hparams('{“task_names”: ["tickets"]}')
    assert parse_hparams('{"tasks": {"t": {"labels": ["好，很好", "差"]}}}')["tasks"]["t"]["labels"][0] == "好，很好"
