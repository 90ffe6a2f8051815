"""`electra export`: models out to Hugging Face `transformers` folders and to ONNX (and, in tf_checkpoint, to the
reference's TensorFlow checkpoints).

Hugging Face: our model folders already hold `config.json` + `model.safetensors` with `transformers`'
parameter names; the export adds the tokenizer files, so `AutoTokenizer.from_pretrained` and
`AutoModel...from_pretrained` both load the folder. A pre-trained model's folder exports its
`discriminator/` and `generator/`; a fine-tuned one (holding electra_task.json) exports itself.

ONNX (fine-tuned classifiers, regressors and taggers): inputs `input_ids`, `attention_mask`,
`token_type_ids` (int64, batch and sequence axes dynamic), output `logits`; checked against PyTorch
with ONNX Runtime when it is installed (the `onnx` extra). `weights="int8"` (`--quantize int8`) stores the
matrices as 8-bit integers, quantising activations on the fly (ONNX Runtime's dynamic quantisation, after
its graph optimisations): about 4x smaller and faster on CPUs, at a small cost in accuracy that the export
measures against PyTorch and refuses beyond INT8_TOLERANCE.
"""

from __future__ import annotations

import json
import logging
import shutil
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from torch import nn

from electra.errors import UserError
from electra.fileio import atomic_directory, check_replaceable, read_json, read_weights
from electra.finetune_data import Featurizer, collate
from electra.predict import Predictor
from electra.pretrain import WEIGHT_FILES
from electra.task_model import (
    TASK_FILE,
    FinetuningModel,
    decode_predictions,
    load_task_model,
    read_model_vocab,
    read_task_spec,
    run_in_length_order,
    write_task_spec,
)
from electra.tasks import Example
from electra.tokenization import CLS, MASK, PAD, SEP, UNK, normalization_settings

ONNX_INPUTS = ("input_ids", "attention_mask", "token_type_ids")
ONNX_TOLERANCE = 1e-4
ONNX_WEIGHTS = ("fp32", "int8")
# int8: the largest output difference from PyTorch as a share of the outputs' largest magnitude. Unsigned
# 8-bit weights: signed ones saturate on x86 CPUs without VNNI (seen here: 35% off instead of 2%).
INT8_TOLERANCE = 0.1


TOKENIZER_FILES = ["tokenizer_config.json", "special_tokens_map.json"]


def tokenizer_files(folder: Path, normalization: dict[str, bool], max_length: int = 512) -> None:
    """The files `transformers` needs beside vocab.txt to build the matching WordPiece tokenizer."""
    special = {"unk_token": UNK, "sep_token": SEP, "pad_token": PAD, "cls_token": CLS, "mask_token": MASK}
    lower = normalization["do_lower_case"]
    config = {
        "tokenizer_class": "ElectraTokenizer",
        "do_lower_case": lower,
        "strip_accents": lower and normalization["strip_accents"],  # ours strips only when lower-casing
        "tokenize_chinese_chars": True,
        "model_max_length": max_length,
        "split_special_tokens": True,  # "[SEP]" typed in a text is text, as in the reference's tokenizer
        **special,
    }
    (folder / "tokenizer_config.json").write_text(json.dumps(config, indent=2) + "\n")
    (folder / "special_tokens_map.json").write_text(json.dumps(special, indent=2) + "\n")


def _copy_model_folder(source: Path, target: Path, normalization: dict[str, bool]) -> None:
    check_replaceable(target, "config.json", [source], [path.name for path in source.iterdir()] + TOKENIZER_FILES)
    held = [source / name for name in WEIGHT_FILES if (source / name).is_file()]
    if not held:
        onnx = (
            " (it holds model.onnx: export from the folder that was exported to ONNX)"
            if (source / "model.onnx").is_file()
            else ""
        )
        raise UserError(f"{source} holds no weights ({' or '.join(WEIGHT_FILES)}) to export{onnx}")
    for weights in held:
        read_weights(weights)  # a damaged file is refused here rather than copied on
    with atomic_directory(target) as tmp:
        for path in source.iterdir():
            if path.is_file():
                shutil.copyfile(path, tmp / path.name)
        positions = read_json(source / "config.json").get("max_position_embeddings", 512)
        tokenizer_files(tmp, normalization, positions)


def export_hf(model_dir: str | Path, output: str | Path) -> list[Path]:
    """Hugging Face folders for a fine-tuned model, or for a pre-trained model's discriminator and generator."""
    source, target = Path(model_dir), Path(output)
    if (source / TASK_FILE).is_file():
        head, spec = read_task_spec(source)
        if head.kind == "qa" and not head.qa.plain:
            raise UserError(
                f"{source} uses the reference's question-answering head (joint start/end prediction or an "
                "answerability classifier), which transformers has no class for: fine-tune with "
                '"joint_prediction": false, "answerable_classifier": false for an ElectraForQuestionAnswering '
                "model (its config.json already loads the encoder alone as an ElectraModel)"
            )
        _copy_model_folder(source, target, normalization_settings(spec))
        return [target]
    parts = [name for name in ("discriminator", "generator") if (source / name / "config.json").is_file()]
    if not parts:
        inside = sorted(path.parent.name for path in source.glob(f"*/{TASK_FILE}"))
        hint = f"; it holds fine-tuned models: {', '.join(inside)}" if inside else ""
        raise UserError(
            f"{source} is neither a fine-tuned model folder (electra_task.json) nor a pre-trained model folder "
            f"(discriminator/, generator/){hint}"
        )
    record = source / "pretrain_config.json"
    normalization = normalization_settings(read_json(record) if record.is_file() else {})
    # The pair as one folder, renamed into place whole: an interrupted export leaves the earlier pair (or none),
    # never a new discriminator beside an old generator.
    check_replaceable(target, parts[0], [source], ["discriminator", "generator"])
    with atomic_directory(target) as staging:
        for name in parts:
            _copy_model_folder(source / name, staging / name, normalization)
    return [target / name for name in parts]


class _LogitsOnly(nn.Module):
    """The fine-tuned model as a function of three tensors, what ONNX graphs take."""

    def __init__(self, model: FinetuningModel):
        super().__init__()
        self.model = model

    def forward(
        self, input_ids: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor
    ) -> torch.Tensor:
        hidden = self.model.electra(input_ids, attention_mask, token_type_ids)
        return self.model.head_outputs(hidden, 0, attention_mask, token_type_ids)


def _sample_inputs(batch: int, length: int, vocab_size: int, seed: int) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab_size, (batch, length), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1:, length // 2 :] = 0  # padded rows, so the mask's path is exercised
    return input_ids * attention_mask, attention_mask, torch.zeros_like(input_ids)


def export_onnx(model_dir: str | Path, output: str | Path, weights: str = "fp32") -> Path:
    """`model.onnx` plus the model's config, vocabulary and task spec in `output`; returns the .onnx path.
    `weights`: "fp32", or "int8" for dynamically quantised matrices (see the module's docstring)."""
    if weights not in ONNX_WEIGHTS:
        raise UserError(f"ONNX weights {weights!r}: choose one of {', '.join(ONNX_WEIGHTS)}")
    source, target = Path(model_dir), Path(output)
    model, _, spec = load_task_model(source)
    read_model_vocab(source)  # the vocab.txt copied beside the graph must be the model's
    wrapper = _LogitsOnly(model).eval()
    positions = model.config.max_position_embeddings
    example = _sample_inputs(2, min(16, positions), model.config.vocab_size, seed=0)
    batch = torch.export.Dim("batch")
    sequence = torch.export.Dim("sequence", max=positions)
    check_replaceable(target, "model.onnx", [source], ["model.onnx", "config.json", "vocab.txt", TASK_FILE])
    with atomic_directory(target) as tmp, quiet_exporter():
        try:
            program = torch.onnx.export(
                wrapper,
                example,
                input_names=list(ONNX_INPUTS),
                output_names=["logits"],
                dynamic_shapes={name: {0: batch, 1: sequence} for name in ONNX_INPUTS},
                dynamo=True,
                verbose=False,
            )
        except ImportError as error:
            raise UserError(f'ONNX export needs onnx and onnxscript ({error}): pip install "electra[onnx]"') from None
        if weights == "int8":
            program.save(str(tmp / "model-fp32.onnx"))
            quantize_int8(tmp / "model-fp32.onnx", tmp / "model.onnx")
        else:
            program.save(str(tmp / "model.onnx"))
        for name in ("config.json", "vocab.txt"):
            shutil.copyfile(source / name, tmp / name)
        write_task_spec(tmp, spec | {"onnx_weights": weights})
        check_onnx(tmp / "model.onnx", wrapper, model.config.vocab_size, positions, relative=weights == "int8")
    return target / "model.onnx"


@contextmanager
def quiet_exporter() -> Iterator[None]:
    """The exporter's notes (torchvision missing, renamed dynamic axes, deprecations) say nothing about our
    models: keep them off the user's terminal."""
    exporter_log = logging.getLogger("torch.onnx")
    level = exporter_log.level
    exporter_log.setLevel(logging.ERROR)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        exporter_log.setLevel(level)


def quantize_int8(source: Path, target: Path) -> None:
    """ONNX Runtime's graph optimisations, then its dynamic quantisation of the matrix products' weights;
    the intermediate files are removed."""
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization.shape_inference import quant_pre_process
    except ImportError as error:
        raise UserError(f'int8 export needs onnxruntime ({error}): pip install "electra[onnx]"') from None
    optimised = source.with_name("model-optimised.onnx")

    def quantize() -> None:
        quant_pre_process(str(source), str(optimised), skip_symbolic_shape=True)
        quantize_dynamic(str(optimised), str(target), weight_type=QuantType.QUInt8)

    try:
        quantize()
    except onnx.shape_inference.InferenceError:
        # ONNX Runtime 1.23 (the last for Python 3.10) re-infers the intermediate shapes the exporter recorded and
        # refuses some. Without them it quantises too, fewer products (a file of about 3/4 of float32's, against
        # under 3/5 with newer releases), and the check below still holds it to the float32 model's outputs.
        graph = onnx.load(str(source))
        for value in graph.graph.value_info:
            value.type.tensor_type.ClearField("shape")
        onnx.save(graph, str(source))
        quantize()
    source.unlink()
    optimised.unlink()


def check_onnx(
    path: Path, wrapper: nn.Module, vocab_size: int, max_length: int, relative: bool = False
) -> float | None:
    """Largest difference between ONNX Runtime and PyTorch on shapes other than the traced ones (None
    without onnxruntime), or with `relative` (int8 weights) that difference over the largest output
    magnitude; a UserError above ONNX_TOLERANCE (INT8_TOLERANCE)."""
    try:
        import onnxruntime
    except ImportError:
        return None
    session = onnxruntime.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    worst, scale = 0.0, 0.0
    for batch, length in ((1, min(7, max_length)), (3, min(40, max_length))):
        inputs = _sample_inputs(batch, length, vocab_size, seed=batch)
        (onnx_logits,) = session.run(
            None, {name: tensor.numpy() for name, tensor in zip(ONNX_INPUTS, inputs, strict=True)}
        )
        with torch.no_grad():
            expected = wrapper(*inputs).numpy()
        worst = max(worst, float(abs(onnx_logits - expected).max()))
        scale = max(scale, float(abs(expected).max()))
    if relative:
        share = worst / max(scale, 1e-12)
        if share > INT8_TOLERANCE:
            raise UserError(
                f"with int8 weights the ONNX model's outputs differ from PyTorch's by {share:.0%} of their range "
                f"(> {INT8_TOLERANCE:.0%}): not exported; export without --quantize"
            )
        return share
    if worst > ONNX_TOLERANCE:
        raise UserError(f"the ONNX model differs from PyTorch by up to {worst:.2e} (> {ONNX_TOLERANCE}): not exported")
    return worst


class OnnxPredictor:
    """`Predictor`'s interface over an `electra export --format onnx` folder, run by ONNX Runtime on the CPU."""

    def __init__(self, model_dir: str | Path, threads: int | None = None):
        try:
            import onnxruntime
        except ImportError:
            raise UserError(f'{model_dir} holds an ONNX model: pip install "electra[onnx]" to run it') from None
        self.folder = Path(model_dir)
        self.head, self.spec = read_task_spec(self.folder)
        self.featurizer = Featurizer.for_model(read_model_vocab(self.folder), self.spec)
        options = onnxruntime.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
        try:
            self.session = onnxruntime.InferenceSession(
                str(self.folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
            )
        except Exception as error:  # onnxruntime's own exception types: a damaged or foreign file
            first_line = str(error).strip().splitlines()[0][:200] if str(error).strip() else type(error).__name__
            raise UserError(
                f"ONNX Runtime cannot load {self.folder / 'model.onnx'} ({first_line}): export it again with "
                f"`electra export --format onnx`"
            ) from None

    @property
    def runtime(self) -> str:
        """What computes the predictions, for /health: "onnxruntime cpu fp32" or "... int8"."""
        return f"onnxruntime cpu {self.spec.get('onnx_weights', 'fp32')}"

    def predict(self, examples: list[Example], batch_size: int = 32, show_progress: bool = False) -> list[dict]:
        features = self.featurizer.features(examples, self.head, 0)

        def run_batch(chosen: list) -> Any:
            batch = collate(chosen, self.featurizer.pad_id, torch.device("cpu"))
            (logits,) = self.session.run(None, {name: getattr(batch, name).numpy() for name in ONNX_INPUTS})
            return logits

        outputs = run_in_length_order(features, batch_size, run_batch, show_progress)
        return decode_predictions(self.head, self.spec, examples, features, outputs, self.featurizer)


def open_predictor(model_dir: str | Path, precision: str = "auto") -> Predictor | OnnxPredictor:
    """ONNX Runtime for a folder holding model.onnx (about 1.5x faster for single requests), else PyTorch."""
    if (Path(model_dir) / "model.onnx").is_file():
        if precision == "bf16":
            print(f"note: {model_dir} is an ONNX export, run as exported: bf16 does not apply", file=sys.stderr)
        return OnnxPredictor(model_dir)
    return Predictor(model_dir, precision)
