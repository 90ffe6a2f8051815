"""Configuration: the reference's pre-training hparams (same names, defaults and precedence) and model shapes.

Precedence, as in the reference's `configure_pretraining.py`: defaults, then the `model_size`
preset, then `"debug": true` settings, then every hparam the user passed. Unknown names are errors
that suggest the closest known name.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
import math
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from electra.errors import UserError
from electra.fileio import read_json, read_text, require_file

# The paper's Table 6 (the reference keeps the base/large values in a comment of configure_pretraining.py).
SIZE_PRESETS: dict[str, dict[str, Any]] = {
    "small": {
        "embedding_size": 128,
        "generator_hidden_size": 0.25,
        "learning_rate": 5e-4,
        "train_batch_size": 128,
        "num_train_steps": 1_000_000,
        "max_seq_length": 128,
        "mask_prob": 0.15,
    },
    "base": {
        "embedding_size": 768,
        "generator_hidden_size": 1 / 3,
        "learning_rate": 2e-4,
        "train_batch_size": 256,
        "num_train_steps": 766_000,
        "max_seq_length": 512,
        "mask_prob": 0.15,
    },
    "large": {
        "embedding_size": 1024,
        "generator_hidden_size": 0.25,
        "learning_rate": 2e-4,
        "train_batch_size": 2048,
        "num_train_steps": 400_000,
        "max_seq_length": 512,
        "mask_prob": 0.25,
    },
}
SIZE_SHAPES = {"small": (256, 12), "base": (768, 12), "large": (1024, 24)}  # hidden size, layers
DEBUG_SETTINGS = {
    "train_batch_size": 8,
    "num_train_steps": 20,
    "eval_batch_size": 4,
    "num_eval_steps": 2,
}
# Not one of the reference's sizes: 4 layers of width 128 (generator width 32), an ELECTRA that learns visibly
# in CPU minutes. The quickstart, the learning checks and the Chinese use case train it.
COMPACT_SHAPE: dict[str, Any] = {
    "model_size": "small",
    "embedding_size": 128,
    "model_hparam_overrides": {
        "hidden_size": 128,
        "num_hidden_layers": 4,
        "num_attention_heads": 2,
        "intermediate_size": 512,
    },
}
DEBUG_SHAPE = {"num_hidden_layers": 3, "hidden_size": 144, "intermediate_size": 144 * 4, "num_attention_heads": 4}
# torch.compile's modes, which the "compile" hparam accepts besides true and false.
COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
# The reference's TPU settings (and its steps per TPU loop), which this toolkit does not use: accepted, so its
# hparams files work, with a note.
IGNORED_HPARAMS = {
    "use_tpu",
    "num_tpu_cores",
    "tpu_job_name",
    "tpu_name",
    "tpu_zone",
    "gcp_project",
    "iterations_per_loop",
}
# Paths the reference derives from --data-dir and --model-name and lets hparams override: where ours are instead.
REFERENCE_PATHS = {
    "pretrain_tfrecords": "pre-training reads the shards of `electra build-data`: give their folder as pretrain_data",
    "data_dir": "give the data dir as --data-dir",
    "model_dir": "fine-tuned models go under <data-dir>/models/<model-name>/: choose it with --model-name",
    "raw_data_dir": "task data is read from <data-dir>/finetuning_data/<task>/: choose it with --data-dir",
    "preprocessed_data_dir": "features are rebuilt in seconds and never cached: leave it out",
    "results_txt": "results are written to <model-dir>/results/: leave it out",
    "results_pkl": "results are written to <model-dir>/results/ (JSON beside the text): leave it out",
    "test_predictions": "test outputs go to <model-dir>/test_predictions/ (with write_test_outputs): leave it out",
    "model_name": "give the model's name as --model-name",
    "qa_eval_file": "question answering's predictions go to <model-dir>/results/<tasks>_qa/: leave it out",
    "qa_preds_file": "question answering's predictions go to <model-dir>/results/<tasks>_qa/: leave it out",
    "qa_na_file": "question answering's no-answer odds go to <model-dir>/results/<tasks>_qa/: leave it out",
}


@dataclass(frozen=True)
class Allowed:
    """The finite values a numeric hparam may take: from `low` to `high`, each end included unless it is open.
    `text` replaces the generated description where a bound has a meaning (e.g. "0 (off)")."""

    low: float = -math.inf
    high: float = math.inf
    low_open: bool = False
    high_open: bool = False
    text: str = ""

    def admits(self, value: float) -> bool:
        above = value > self.low if self.low_open else value >= self.low
        below = value < self.high if self.high_open else value <= self.high
        return math.isfinite(value) and above and below

    def describe(self, whole: bool) -> str:
        if self.text:
            return self.text
        bounds = []
        if self.low > -math.inf:
            bounds.append(f"{'greater than' if self.low_open else 'at least'} {self.low:g}")
        if self.high < math.inf:
            bounds.append(f"{'less than' if self.high_open else 'at most'} {self.high:g}")
        kind = "a whole number" if whole else "a finite number"
        if not bounds:
            return kind
        return f"{kind}{' of' if bounds[0].startswith('at') else ''} {' and '.join(bounds)}"


AT_LEAST_0 = Allowed(0)
AT_LEAST_1 = Allowed(1)
POSITIVE = Allowed(0, low_open=True)
FRACTION = Allowed(0, 1)  # 0 to 1, both included
PROBABILITY = Allowed(0, 1, high_open=True)  # dropout: 0 is off, 1 would drop everything
ANY_FINITE = Allowed()
# model_hparam_overrides entries (ModelConfig fields); hidden_act is checked by ModelConfig itself.
MODEL_RANGES: dict[str, Allowed] = {
    "vocab_size": AT_LEAST_1,
    "embedding_size": AT_LEAST_1,
    "hidden_size": AT_LEAST_1,
    "num_hidden_layers": AT_LEAST_1,
    "num_attention_heads": AT_LEAST_1,
    "intermediate_size": AT_LEAST_1,
    "hidden_dropout_prob": PROBABILITY,
    "attention_probs_dropout_prob": PROBABILITY,
    "max_position_embeddings": AT_LEAST_1,
    "type_vocab_size": AT_LEAST_1,
    "initializer_range": POSITIVE,
    "layer_norm_eps": POSITIVE,
    "pad_token_id": AT_LEAST_0,
}


@dataclass
class ModelConfig:
    """Transformer shape, with the field names of Hugging Face's `ElectraConfig`."""

    vocab_size: int = 30522
    embedding_size: int = 128
    hidden_size: int = 256
    num_hidden_layers: int = 12
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0

    def __post_init__(self) -> None:
        if self.hidden_size % self.num_attention_heads:
            raise UserError(
                f"hidden_size {self.hidden_size} is not a multiple of num_attention_heads "
                f"{self.num_attention_heads}: change one of them in model_hparam_overrides"
            )
        if self.hidden_act != "gelu":
            raise UserError(f'hidden_act {self.hidden_act!r} is not supported: ELECTRA uses "gelu"')

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> ModelConfig:
        known = {item.name for item in dataclasses.fields(cls)}
        return cls(**{key: value for key, value in values.items() if key in known})

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


@dataclass
class PretrainingConfig:
    """Hparams of `electra pretrain`: the reference's names and defaults, plus a few of ours at the end."""

    debug: bool = False
    do_train: bool = True
    do_eval: bool = False
    # loss functions: electra_objective and electric_objective both false trains a masked LM, like BERT
    electra_objective: bool = True
    electric_objective: bool = False
    gen_weight: float = 1.0
    disc_weight: float = 50.0
    mask_prob: float = 0.15
    # optimisation
    learning_rate: float = 5e-4
    lr_decay_power: float = 1.0
    weight_decay_rate: float = 0.01
    num_warmup_steps: int = 10000
    # training settings
    save_checkpoints_steps: int = 1000
    num_train_steps: int = 1_000_000
    num_eval_steps: int = 100
    keep_checkpoint_max: int = 5
    # model settings
    model_size: str = "small"
    model_hparam_overrides: dict[str, Any] = field(default_factory=dict)
    embedding_size: int | None = None
    vocab_size: int | None = None  # the reference's default is 30522; here it is read from vocab.txt
    do_lower_case: bool = True  # both read from the pre-training data's settings (electra build-data)
    strip_accents: bool = True
    # generator settings
    uniform_generator: bool = False
    two_tower_generator: bool = False
    untied_generator_embeddings: bool = False
    untied_generator: bool = True
    generator_layers: float = 1.0
    generator_hidden_size: float = 0.25
    disallow_correct: bool = False
    temperature: float = 1.0
    # batch sizes
    max_seq_length: int = 128
    train_batch_size: int = 128
    eval_batch_size: int = 128
    # locations (defaults derived from --data-dir and --model-name)
    pretrain_data: str | None = None
    vocab_file: str | None = None
    model_dir: str | None = None
    init_checkpoint: str | None = None
    # ours
    seed: int = 0
    gradient_accumulation_steps: int = 1
    precision: str = "auto"  # "auto" (bf16 where the hardware has it), "bf16" or "fp32"
    compile: bool | str = False  # true, or a torch.compile mode such as "reduce-overhead" (CUDA graphs)
    log_every_steps: int = 10
    max_nonfinite_steps: int = 20  # consecutive skipped steps before training stops
    adam_bias_correction: bool = True  # false reproduces the reference's optimizer exactly
    max_eval_share: float = 0.1  # the held-out evaluation split takes at most this share of the data
    length_groups: int = 0  # 0: automatic (see default_length_groups in pretrain.py)

    @property
    def max_predictions_per_seq(self) -> int:
        return int((self.mask_prob + 0.005) * self.max_seq_length)

    def discriminator_config(self, vocab_size: int, pad_token_id: int) -> ModelConfig:
        return encoder_config(self, vocab_size, pad_token_id)

    def generator_config(self, discriminator: ModelConfig) -> ModelConfig:
        """The reference's get_generator_config: a fraction of the discriminator's width and depth."""
        hidden = round(discriminator.hidden_size * self.generator_hidden_size)
        heads = max(1, hidden // 64)
        if hidden < 1 or hidden % heads:
            raise UserError(
                f"generator_hidden_size {self.generator_hidden_size} of the discriminator's hidden_size "
                f"{discriminator.hidden_size} gives a generator of width {hidden}, "
                + ("less than 1" if hidden < 1 else f"not a multiple of its {heads} attention heads (width // 64)")
                + ": choose another generator_hidden_size"
            )
        embedding = hidden if self.untied_generator_embeddings else discriminator.embedding_size
        return dataclasses.replace(
            discriminator,
            hidden_size=hidden,
            embedding_size=embedding,
            num_hidden_layers=round(discriminator.num_hidden_layers * self.generator_layers),
            intermediate_size=4 * hidden,
            num_attention_heads=heads,
        )

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


def pretraining_objective(record: dict[str, Any]) -> str:
    """ "ELECTRA", "MLM" or "Electric": what a model recorded in `record` (its pretrain_config.json) learned."""
    if record.get("electric_objective"):
        return "Electric"
    return "ELECTRA" if record.get("electra_objective", True) else "MLM"


@dataclass
class FinetuningConfig:
    """Hparams of `electra finetune`: the reference's names and defaults, plus a few of ours at the end."""

    debug: bool = False
    log_examples: bool = False
    num_trials: int = 1
    do_train: bool = True
    do_eval: bool = True
    keep_all_models: bool = True
    # model
    model_size: str = "small"
    task_names: list[str] = field(default_factory=lambda: ["chunk"])
    model_hparam_overrides: dict[str, Any] = field(default_factory=dict)
    embedding_size: int | None = None
    vocab_size: int | None = None  # read from vocab.txt
    do_lower_case: bool = True  # both inherited from the pre-trained model unless given
    strip_accents: bool = True
    # training
    learning_rate: float = 1e-4
    weight_decay_rate: float = 0.01
    layerwise_lr_decay: float = 0.8  # layer l of n gets lr x decay^(n + 2 - depth(l)); 0 turns it off
    num_train_epochs: float = 3.0
    warmup_proportion: float = 0.1
    save_checkpoints_steps: int = 1_000_000
    use_tfrecords_if_existing: bool = True  # accepted; features are rebuilt in seconds and never cached
    # writing model outputs
    write_test_outputs: bool = False
    n_writes_test: int = 5
    # sizing
    max_seq_length: int = 128
    train_batch_size: int = 32
    eval_batch_size: int = 32
    predict_batch_size: int = 32
    double_unordered: bool = True
    # question answering
    max_query_length: int = 64
    doc_stride: int = 128
    n_best_size: int = 20
    max_answer_length: int = 30
    answerable_classifier: bool = True
    answerable_uses_start_logits: bool = True
    answerable_weight: float = 0.5
    joint_prediction: bool = True
    beam_size: int = 20
    qa_na_threshold: float = -2.75
    # locations (defaults derived from --data-dir and --model-name)
    vocab_file: str | None = None
    init_checkpoint: str | None = None
    # ours
    tasks: dict[str, Any] = field(default_factory=dict)  # specs of user tasks, by name (see electra.tasks)
    seed: int = 0
    gradient_accumulation_steps: int = 1
    precision: str = "auto"
    compile: bool | str = False  # true, or a torch.compile mode such as "reduce-overhead" (CUDA graphs)
    log_every_steps: int = 50
    max_nonfinite_steps: int = 20
    adam_bias_correction: bool = True
    keep_checkpoint_max: int = 1
    length_bucketing: bool = True  # batch examples of similar length together (training only; one task's default)
    max_grad_norm: float = 1.0

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# The numeric hparams' ranges, checked (with NaN and infinity refused) where the typed config is built. Values the
# reference gives a meaning stay allowed: num_warmup_steps 0, keep_checkpoint_max 0 (keep all), weight decay 0,
# a loss weight 0, layerwise_lr_decay 0 (off), learning_rate 0 (train without moving the weights).
SHARED_RANGES: dict[str, Allowed] = {
    "learning_rate": AT_LEAST_0,
    "weight_decay_rate": AT_LEAST_0,
    "save_checkpoints_steps": AT_LEAST_1,
    "keep_checkpoint_max": Allowed(0, text="a whole number of at least 0 (0 keeps all)"),
    "embedding_size": AT_LEAST_1,
    "vocab_size": AT_LEAST_1,
    "train_batch_size": AT_LEAST_1,
    "eval_batch_size": AT_LEAST_1,
    "seed": AT_LEAST_0,
    "gradient_accumulation_steps": AT_LEAST_1,
    "log_every_steps": AT_LEAST_1,
    "max_nonfinite_steps": AT_LEAST_1,
}
HPARAM_RANGES: dict[type, dict[str, Allowed]] = {
    PretrainingConfig: {
        **SHARED_RANGES,
        "gen_weight": AT_LEAST_0,
        "disc_weight": AT_LEAST_0,
        "mask_prob": Allowed(0, 1, low_open=True, high_open=True, text="between 0 and 1 (both excluded)"),
        "lr_decay_power": Allowed(0, text="a finite number of at least 0 (0 keeps the learning rate constant)"),
        "num_warmup_steps": AT_LEAST_0,
        "num_train_steps": AT_LEAST_1,
        "num_eval_steps": AT_LEAST_0,
        "generator_layers": POSITIVE,  # fractions of the discriminator; the paper also tries larger generators
        "generator_hidden_size": POSITIVE,
        "temperature": POSITIVE,
        "max_seq_length": Allowed(3, text="a whole number of at least 3 ([CLS] x [SEP])"),
        "max_eval_share": Allowed(0, 1, high_open=True),
        "length_groups": Allowed(0, text="0 (automatic) or a number of pieces, 1 or more"),
    },
    FinetuningConfig: {
        **SHARED_RANGES,
        "num_trials": AT_LEAST_1,
        "layerwise_lr_decay": Allowed(0, 1, text="between 0 (off) and 1"),
        "num_train_epochs": POSITIVE,
        "warmup_proportion": FRACTION,
        "n_writes_test": AT_LEAST_0,
        "max_seq_length": Allowed(8, text="a whole number of at least 8"),
        "predict_batch_size": AT_LEAST_1,
        "max_query_length": AT_LEAST_1,
        "doc_stride": AT_LEAST_1,
        "n_best_size": AT_LEAST_1,
        "max_answer_length": AT_LEAST_1,
        "answerable_weight": AT_LEAST_0,
        "beam_size": AT_LEAST_1,
        "qa_na_threshold": ANY_FINITE,
        "max_grad_norm": POSITIVE,
    },
}


def build_finetuning_config(hparams: dict[str, Any]) -> FinetuningConfig:
    """The reference's precedence: defaults < per-task defaults < per-size defaults < debug < user values."""
    values = _known_values(hparams, FinetuningConfig)
    if isinstance(values.get("task_names"), str):
        values["task_names"] = [name.strip() for name in values["task_names"].split(",") if name.strip()]
    if not _matches(values.get("task_names", []), "list[str]"):
        raise UserError(
            f'task_names {values["task_names"]!r} must be a list of task names such as ["sst"] (or "sst,cola")'
        )
    if not values.get("task_names", FinetuningConfig().task_names):
        raise UserError('task_names is empty: name at least one task, e.g. "task_names": ["sst"]')
    task_names = values.get("task_names", FinetuningConfig().task_names)
    size = values.get("model_size", FinetuningConfig.model_size)
    resolved: dict[str, Any] = {}
    if len(task_names) == 1:
        task = task_names[0]
        if task in ("rte", "sts"):
            resolved["num_train_epochs"] = 10.0
        elif "squad" in task or "qa" in task or task == "naturalqs":  # the reference's test misses naturalqs
            resolved.update(max_seq_length=512, num_train_epochs=2.0, write_test_outputs=False)
        elif task == "chunk":
            resolved["max_seq_length"] = 256
    else:  # the reference shuffles the tasks' examples together; length buckets would give each batch one task
        resolved["length_bucketing"] = False
    if size == "large":
        resolved.update(learning_rate=5e-5, layerwise_lr_decay=0.9)
    elif size == "small":
        resolved["embedding_size"] = 128
    if values.get("debug"):
        resolved.update(num_trials=1, train_batch_size=32, num_train_epochs=3.0, save_checkpoints_steps=1_000_000)
    resolved.update(values)
    return _typed_config(FinetuningConfig, resolved)


def encoder_config(config: PretrainingConfig | FinetuningConfig, vocab_size: int, pad_token_id: int) -> ModelConfig:
    """The reference's get_bert_config: hidden size and depth from model_size, the rest derived, then overrides."""
    hidden, layers = SIZE_SHAPES[config.model_size]
    # The reference's precedence: the size's shape (or the debug shape), then the user's overrides.
    overrides = config.model_hparam_overrides
    shape: dict[str, Any] = dict(DEBUG_SHAPE) if config.debug else {"hidden_size": hidden, "num_hidden_layers": layers}
    shape.update(overrides)
    if "hidden_size" in overrides or not config.debug:  # heads and feed-forward follow the width unless given
        shape["num_attention_heads"] = overrides.get("num_attention_heads", max(1, shape["hidden_size"] // 64))
        shape["intermediate_size"] = overrides.get("intermediate_size", 4 * shape["hidden_size"])
    shape["embedding_size"] = config.embedding_size or shape["hidden_size"]
    positions = shape.pop("max_position_embeddings", max(512, config.max_seq_length))  # the reference: 512
    if positions < config.max_seq_length:
        raise UserError(
            f"max_seq_length {config.max_seq_length} is longer than the model's {positions} positions "
            f"(max_position_embeddings): use max_seq_length {positions} or less"
        )
    return ModelConfig.from_dict(
        {**shape, "vocab_size": vocab_size, "pad_token_id": pad_token_id, "max_position_embeddings": positions}
    )


SHAPE_HPARAMS = ("model_size", "model_hparam_overrides", "embedding_size")
GENERATOR_SHAPE_HPARAMS = ("generator_hidden_size", "generator_layers")
SIZE_BY_HIDDEN = {256: "small", 768: "base", 1024: "large"}


def inherited_shape(folder: Path, generator: bool = False) -> dict[str, Any]:
    """The shape hparams of the weights in `folder`, so that starting from them needs no repeated settings:
    from its pretrain_config.json (ours, or a converted TF checkpoint), else from a Hugging Face config.json
    (its own or its discriminator/'s, e.g. a released google/electra-*-discriminator; with `generator`, the
    generator's width and depth from a generator/ beside it)."""
    names = SHAPE_HPARAMS + (GENERATOR_SHAPE_HPARAMS if generator else ())
    if (folder / "pretrain_config.json").is_file():
        recorded = read_json(folder / "pretrain_config.json")
        shape = {key: recorded[key] for key in names if key in recorded}
        if recorded.get("debug"):  # "debug": true trained the debug shape, whatever the size said
            shape["model_hparam_overrides"] = {**shape.get("model_hparam_overrides", {}), **DEBUG_SHAPE}
        if recorded.get("max_seq_length", 0) > 512:  # pre-trained longer than 512: that many positions
            shape["model_hparam_overrides"] = {
                "max_position_embeddings": recorded["max_seq_length"],
                **shape.get("model_hparam_overrides", {}),
            }
        return shape
    hf_folder = folder / "discriminator" if (folder / "discriminator" / "config.json").is_file() else folder
    if not (hf_folder / "config.json").is_file():
        return {}
    config = read_json(hf_folder / "config.json")
    layout = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    if any(name not in config for name in layout):
        return {}
    details = ("max_position_embeddings", "type_vocab_size", "layer_norm_eps")  # kept when the folder says
    shape = {
        "model_size": SIZE_BY_HIDDEN.get(config["hidden_size"], "small"),
        "embedding_size": config.get("embedding_size", config["hidden_size"]),
        "model_hparam_overrides": {name: config[name] for name in layout + details if name in config},
    }
    generator_file = folder / "generator" / "config.json"
    if generator and hf_folder != folder and generator_file.is_file():  # a Hugging Face pair, e.g. Google's releases
        generator_config = read_json(generator_file)
        if all(name in generator_config for name in ("hidden_size", "num_hidden_layers")):
            shape["generator_hidden_size"] = generator_config["hidden_size"] / config["hidden_size"]
            shape["generator_layers"] = generator_config["num_hidden_layers"] / config["num_hidden_layers"]
    return shape


def with_inherited_shape(hparams: dict[str, Any], folder: Path, generator: bool = False) -> dict[str, Any]:
    """`hparams` completed with the shape of the weights in `folder` (see inherited_shape). Shape hparams the user
    gave that agree with the recorded ones (the reference's examples always pass "model_size") still let the rest
    be inherited; one that disagrees means the user sets the shape, and loading the weights says what differs.
    `model_hparam_overrides` are merged key by key onto the recorded ones: a dropout rate given for fine-tuning
    keeps the recorded width and depth."""
    inherited = inherited_shape(folder, generator)
    names = SHAPE_HPARAMS + (GENERATOR_SHAPE_HPARAMS if generator else ())
    given = [key for key in names if key in hparams and key != "model_hparam_overrides"]
    if any(key in inherited and inherited[key] != hparams[key] for key in given):
        return hparams
    overrides = {**inherited.get("model_hparam_overrides", {}), **hparams.get("model_hparam_overrides", {})}
    completed = {**inherited, **hparams}
    if overrides:
        completed["model_hparam_overrides"] = overrides
    return completed


# What a Chinese or Japanese input method types for JSON's : " , [ ] { } (outside strings, JSON reads none of them).
FULL_WIDTH_PUNCTUATION = "：“”，［］｛｝＂"


def parse_hparams(text: str) -> dict[str, Any]:
    """`--hparams`: a JSON object, or the path of a .json file holding one (as in the reference)."""
    source = "--hparams"
    if text.strip().endswith(".json") or (not text.lstrip().startswith("{") and os.path.isfile(text)):
        path = Path(text)
        require_file(path, "--hparams file")
        source, text = str(path), read_text(path)
    try:
        values = json.loads(text)
    except json.JSONDecodeError as error:
        if source == "--hparams" and not text.lstrip().startswith(("{", "[")):  # a mistyped file name, most likely
            raise UserError(f"--hparams {text!r} is neither a JSON object nor a file that exists") from None
        wide = sorted(set(text) & set(FULL_WIDTH_PUNCTUATION))
        hint = (
            f'it holds full-width punctuation ({" ".join(wide)}), which JSON does not read: type : " , and [ ] '
            "in half width"
            if wide
            else "write e.g. '{\"debug\": true}'"
        )
        raise UserError(
            f"{source} is not valid JSON: {error.msg} at line {error.lineno} column {error.colno}; {hint}"
        ) from None
    if not isinstance(values, dict):
        raise UserError(f"{source} must be a JSON object such as '{{\"debug\": true}}', not {type(values).__name__}")
    return values


def check_names(values: dict[str, Any], known: set[str], what: str) -> None:
    for name in values:
        if name not in known and name in REFERENCE_PATHS:
            raise UserError(f"hparam {name!r} sets one of the reference's paths; here {REFERENCE_PATHS[name]}")
        if name not in known:
            close = difflib.get_close_matches(name, sorted(known), n=1)
            hint = f"; did you mean {close[0]!r}?" if close else ""
            raise UserError(f"unknown {what} {name!r}{hint}")


def build_pretraining_config(hparams: dict[str, Any]) -> PretrainingConfig:
    """Resolve hparams with the reference's precedence: defaults < model_size preset < debug < user values."""
    values = _known_values(hparams, PretrainingConfig)
    resolved: dict[str, Any] = dict(SIZE_PRESETS[values.get("model_size", PretrainingConfig.model_size)])
    if values.get("debug"):
        resolved.update(DEBUG_SETTINGS)
    resolved.update(values)
    if resolved.get("electric_objective"):
        resolved.setdefault("two_tower_generator", True)  # Electric's noise model is the two-tower cloze model
    config = _typed_config(PretrainingConfig, resolved)
    if config.electra_objective and config.electric_objective:
        raise UserError(
            "electra_objective and electric_objective are both true: Electric needs "
            '"electra_objective": false, "electric_objective": true'
        )
    if config.electric_objective and (config.uniform_generator or not config.two_tower_generator):
        setting = '"uniform_generator": true' if config.uniform_generator else '"two_tower_generator": false'
        raise UserError(
            f"{setting} does not go with Electric: its noise distribution must be the two-tower cloze model's, "
            "whose probabilities the loss corrects for; remove that hparam"
        )
    masked_lm = not (config.electra_objective or config.electric_objective)
    if masked_lm and (config.uniform_generator or config.two_tower_generator):
        setting = "uniform_generator" if config.uniform_generator else "two_tower_generator"
        raise UserError(
            f'"{setting}": true with electra_objective and electric_objective both false: that model is a plain '
            "masked LM (the generator alone), which a uniform generator leaves nothing to learn and a two-tower one "
            "does not fit; remove that hparam"
        )
    if config.max_predictions_per_seq < 1:
        raise UserError(
            f"mask_prob {config.mask_prob} of max_seq_length {config.max_seq_length} masks no token "
            f"(max_predictions_per_seq is {config.max_predictions_per_seq}): raise mask_prob or max_seq_length"
        )
    return config


def is_first_process() -> bool:
    """False in every process of a torchrun but the first: what a run prints, it prints once. Here, not in the
    trainer, so that checking hparams does not import torch."""
    return os.environ.get("RANK", "0") == "0"


def _known_values(hparams: dict[str, Any], cls: type) -> dict[str, Any]:
    """The user's hparams minus the ignored TPU ones, after checking every name, the size and the overrides."""
    check_names(hparams, {item.name for item in dataclasses.fields(cls)} | IGNORED_HPARAMS, "hparam")
    ignored = sorted(IGNORED_HPARAMS & set(hparams))
    if ignored and is_first_process():
        print(
            f"note: {', '.join(ignored)}: the reference's TPU settings, ignored here (devices: torchrun and "
            "CUDA_VISIBLE_DEVICES; see the README)",
            file=sys.stderr,
        )
    values = {key: value for key, value in hparams.items() if key not in IGNORED_HPARAMS}
    if "keep_checkpoint_max" in values and values["keep_checkpoint_max"] is None:
        values["keep_checkpoint_max"] = 0  # the reference: "0 or None to keep all checkpoints"
    size = values.get("model_size", cls.model_size)
    if not isinstance(size, str) or size not in SIZE_PRESETS:
        raise UserError(f"model_size {size!r} is not one of {', '.join(SIZE_PRESETS)}")
    overrides = values.get("model_hparam_overrides", {})
    if not isinstance(overrides, dict):
        raise UserError('model_hparam_overrides must be a JSON object such as {"hidden_size": 128}')
    check_names(overrides, {item.name for item in dataclasses.fields(ModelConfig)}, "model_hparam_overrides entry")
    if "vocab_size" in overrides:
        raise UserError(
            "model_hparam_overrides entry 'vocab_size' is read from the vocabulary: drop it (a top-level "
            '"vocab_size" checks the vocabulary\'s size)'
        )
    return values


def _typed_config(cls: type, resolved: dict[str, Any]) -> Any:
    """`cls(**resolved)` after checking each value's type, then the settings both commands share."""
    fields = {item.name: item for item in dataclasses.fields(cls)}
    for name, value in resolved.items():
        expected = fields[name].type
        if value is None and "None" not in expected:  # JSON null: no value, where the code needs one
            raise UserError(f"hparam {name!r} is null: give it a value ({expected}), or leave it out for its default")
        if value is not None and not _matches(value, expected):
            raise UserError(f"hparam {name!r} should be {expected}, got {value!r}")
    _check_ranges(resolved, cls, HPARAM_RANGES[cls])
    model_fields = {item.name: item.type for item in dataclasses.fields(ModelConfig)}
    overrides = resolved.get("model_hparam_overrides") or {}
    for name, value in overrides.items():
        if not _matches(value, model_fields[name]):
            raise UserError(f"model_hparam_overrides entry {name!r} should be {model_fields[name]}, got {value!r}")
    _check_ranges(overrides, ModelConfig, MODEL_RANGES, "model_hparam_overrides entry ")
    config = cls(**resolved)
    if isinstance(config.compile, str) and config.compile not in COMPILE_MODES:
        raise UserError(f"compile {config.compile!r}: use true, false or one of {', '.join(COMPILE_MODES)}")
    if config.precision not in ("auto", "bf16", "fp32"):
        raise UserError(f"precision {config.precision!r} is not one of auto, bf16, fp32")
    if config.train_batch_size % config.gradient_accumulation_steps:
        raise UserError(
            f"train_batch_size {config.train_batch_size} must be a multiple of "
            f"gradient_accumulation_steps {config.gradient_accumulation_steps}"
        )
    return config


def _check_ranges(values: dict[str, Any], cls: type, ranges: dict[str, Allowed], prefix: str = "") -> None:
    """Each value of `values` (already of its field of `cls`'s type) inside its range of `ranges`, else a UserError
    naming the hparam, the value and the range."""
    types = {item.name: item.type for item in dataclasses.fields(cls)}
    for name, value in values.items():
        allowed = ranges.get(name)
        if allowed is None or value is None or isinstance(value, bool) or allowed.admits(value):
            continue
        whole = "int" in types[name] and "float" not in types[name]
        raise UserError(f"{prefix}{name} {value!r} must be {allowed.describe(whole)}")


def _matches(value: Any, annotation: str) -> bool:
    if "bool" in annotation and isinstance(value, bool):
        return True
    if isinstance(value, bool):
        return False
    if annotation.startswith("list"):
        return isinstance(value, list) and all(isinstance(item, str) for item in value)
    checks = {
        "int": lambda v: isinstance(v, int),
        "float": lambda v: isinstance(v, (int, float)),
        "str": lambda v: isinstance(v, str),
        "dict": lambda v: isinstance(v, dict),
    }
    return any(check(value) for name, check in checks.items() if name in annotation)
