"""Google's released ELECTRA checkpoints (TensorFlow 1 "V2" checkpoints) read without TensorFlow.

A checkpoint `<prefix>` is `<prefix>.index`, a LevelDB-style sorted table mapping each variable name
to a BundleEntryProto (dtype, shape, shard, offset, size), and `<prefix>.data-NNNNN-of-MMMMM`, the
raw little-endian bytes. Reading them takes a table reader, a few protobuf fields and numpy; users
need not install 600 MB of TensorFlow to read three files.

`convert_tf_checkpoint` maps the reference's variable names (`electra/...`, `generator/...`,
`discriminator_predictions/...`, `generator_predictions/...`; for a masked LM only `electra/` and its head, for
Electric two generator towers and `cloze_predictions/`) onto our pre-training model and
writes a model folder like `electra pretrain` does: the whole model (for continued pre-training),
and the discriminator and generator as Hugging Face folders (for fine-tuning and `transformers`).
The shape is read from the tensors; the number of attention heads is hidden size / 64, as every
released ELECTRA, unless a pretrain_hparams.json beside the checkpoint (ours) says otherwise.

`export_tf_checkpoint` goes the other way (`electra export --format tf`): a pre-trained model folder as a
checkpoint the reference's own code loads, written without TensorFlow too. Every variable carries the
reference's name, with the Adam moments (`<variable>/adam_m`, `/adam_v`) and `global_step` of the newest
checkpoint, because the reference resumes pre-training through its Estimator, which restores every variable
of the training graph and stops at the first one a checkpoint lacks.
"""

from __future__ import annotations

import json
import re
import struct
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from electra.config import SIZE_BY_HIDDEN
from electra.errors import UserError
from electra.fileio import read_json

if TYPE_CHECKING:
    from electra.pretrain import SavedPretraining

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
CRC_MASK_DELTA = 0xA282EAD8
BLOCK_TRAILER_SIZE = 5  # compression type byte + crc32c
DTYPES = {
    1: np.float32,
    2: np.float64,
    3: np.int32,
    4: np.uint8,
    5: np.int16,
    6: np.int8,
    9: np.int64,
    10: np.bool_,
    19: np.float16,
}
BFLOAT16 = 14
# What a conversion and an export write (an earlier one may be replaced; a folder holding more may not).
CONVERTED_FILES = ["model.safetensors", "pretrain_config.json", "vocab.txt", "discriminator", "generator"]
EXPORTED_FILES = [
    "model.ckpt-*",
    "checkpoint",
    "vocab.txt",
    "pretrain_hparams.json",
    "finetune_hparams.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
]
# Variables of the training run, not of the model.
SKIPPED = re.compile(r"(^|/)(adam_[mv]|global_step|temperature)$|/adam_[mv]$|^(beta[12]_power)$")


# ----------------------------------------------------------------------------------------------- reading
def _varint(data: bytes, position: int) -> tuple[int, int]:
    result = shift = 0
    while True:
        byte = data[position]
        position += 1
        result |= (byte & 0x7F) << shift
        if byte < 0x80:
            return result, position
        shift += 7


def _protobuf_fields(data: bytes) -> list[tuple[int, int | bytes]]:
    """(field number, value) pairs of a serialized protobuf message: ints for varint and fixed fields, bytes else."""
    fields, position = [], 0
    while position < len(data):
        key, position = _varint(data, position)
        number, wire = key >> 3, key & 7
        if wire == 0:
            value, position = _varint(data, position)
        elif wire == 1:
            value, position = struct.unpack_from("<Q", data, position)[0], position + 8
        elif wire == 2:
            length, position = _varint(data, position)
            value, position = data[position : position + length], position + length
        elif wire == 5:
            value, position = struct.unpack_from("<I", data, position)[0], position + 4
        else:
            raise ValueError(f"unsupported protobuf wire type {wire}")
        fields.append((number, value))
    return fields


def _block_entries(table: bytes, offset: int, size: int) -> list[tuple[bytes, bytes]]:
    """Key/value pairs of one table block (keys are prefix-compressed against the previous key)."""
    compression = table[offset + size]
    if compression != 0:
        raise UserError(f"this checkpoint's index uses compression type {compression}; only uncompressed is supported")
    block = table[offset : offset + size]
    restarts = struct.unpack_from("<I", block, len(block) - 4)[0]
    end = len(block) - 4 - 4 * restarts
    entries, position, key = [], 0, b""
    while position < end:
        shared, position = _varint(block, position)
        unshared, position = _varint(block, position)
        value_length, position = _varint(block, position)
        key = key[:shared] + block[position : position + unshared]
        position += unshared
        entries.append((key, block[position : position + value_length]))
        position += value_length
    return entries


def _block_handle(data: bytes, position: int = 0) -> tuple[int, int, int]:
    offset, position = _varint(data, position)
    size, position = _varint(data, position)
    return offset, size, position


class TFCheckpoint:
    """The variables of a TensorFlow checkpoint: `names()`, `shape(name)`, `tensor(name)`."""

    def __init__(self, prefix: str | Path):
        self.prefix = resolve_checkpoint_prefix(Path(prefix))
        table = Path(f"{self.prefix}.index").read_bytes()
        if len(table) < FOOTER_SIZE or struct.unpack_from("<Q", table, len(table) - 8)[0] != TABLE_MAGIC:
            raise UserError(f"{self.prefix}.index is not a TensorFlow checkpoint index")
        _, _, position = _block_handle(table, len(table) - FOOTER_SIZE)  # the metaindex block: unused
        index_offset, index_size, _ = _block_handle(table, position)
        self.entries: dict[str, dict[str, Any]] = {}
        for _, handle in _block_entries(table, index_offset, index_size):
            offset, size, _ = _block_handle(handle)
            for key, value in _block_entries(table, offset, size):
                if key:  # the empty key holds the bundle header
                    self.entries[key.decode("utf-8")] = self._entry(value)
        self.shards: dict[int, bytes] = {}

    @staticmethod
    def _entry(value: bytes) -> dict[str, Any]:
        entry: dict[str, Any] = {"dtype": 1, "shape": [], "shard": 0, "offset": 0, "size": 0, "crc32c": None}
        for number, field in _protobuf_fields(value):
            if number == 1:
                entry["dtype"] = field
            elif number == 2:
                dims = [dim for key, dim in _protobuf_fields(field) if key == 2]  # type: ignore[arg-type]
                entry["shape"] = [
                    next((size for key, size in _protobuf_fields(dim) if key == 1), 0)  # type: ignore[arg-type]
                    for dim in dims
                ]
            elif number in (3, 4, 5, 6):
                entry[{3: "shard", 4: "offset", 5: "size", 6: "crc32c"}[number]] = field
            elif number == 7:
                raise UserError("partitioned (sliced) variables are not supported")
        return entry

    def names(self) -> list[str]:
        return sorted(self.entries)

    def shape(self, name: str) -> tuple[int, ...]:
        return tuple(self.entries[name]["shape"])

    def tensor(self, name: str) -> np.ndarray:
        entry = self.entries[name]
        data = self._shard(entry["shard"])[entry["offset"] : entry["offset"] + entry["size"]]
        if len(data) != entry["size"] or (entry["crc32c"] is not None and masked_crc32c(data) != entry["crc32c"]):
            raise UserError(
                f"variable {name} is damaged in {self._shard_path(entry['shard'])}: its bytes do not "
                "match the checksum in the index (an interrupted download?); fetch the checkpoint again"
            )
        if entry["dtype"] == BFLOAT16:
            widened = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
            return widened.view(np.float32).reshape(entry["shape"])
        if entry["dtype"] not in DTYPES:
            raise UserError(f"variable {name} has TensorFlow dtype {entry['dtype']}, which is not supported")
        return np.frombuffer(data, dtype=np.dtype(DTYPES[entry["dtype"]]).newbyteorder("<")).reshape(entry["shape"])

    def _shard_path(self, shard: int) -> Path:
        found = sorted(self.prefix.parent.glob(f"{self.prefix.name}.data-{shard:05d}-of-*"))
        if not found:
            raise UserError(f"the data file {self.prefix}.data-{shard:05d}-of-... of this checkpoint is missing")
        return found[0]

    def _shard(self, shard: int) -> bytes:
        if shard not in self.shards:
            self.shards[shard] = self._shard_path(shard).read_bytes()
        return self.shards[shard]


def resolve_checkpoint_prefix(path: Path) -> Path:
    """A checkpoint prefix from the prefix itself, one of its files, or a folder (its `checkpoint` file or
    the only `*.index`, else the one of the highest step)."""
    if path.name.endswith(".index") or ".data-" in path.name:
        path = path.with_name(path.name.split(".index")[0].split(".data-")[0])
    if Path(f"{path}.index").is_file():
        return path
    if path.is_dir():
        state = path / "checkpoint"
        if state.is_file():
            match = re.search(r'model_checkpoint_path:\s*"([^"]+)"', state.read_text())
            if match:
                named = Path(match.group(1))
                candidate = named if named.is_absolute() else path / named
                if Path(f"{candidate}.index").is_file():
                    return candidate
                if Path(f"{path / named.name}.index").is_file():
                    return path / named.name
        indexes = sorted(path.glob("*.index"), key=_checkpoint_order)
        if len(indexes) > 1:
            print(
                f"note: {path} holds {len(indexes)} checkpoints and no `checkpoint` file naming one: converting the "
                f"one of the highest step, {indexes[-1].with_suffix('')} (give its prefix to choose another)",
                file=sys.stderr,
            )
        if indexes:
            return indexes[-1].with_suffix("")
    raise UserError(
        f"no TensorFlow checkpoint at {path}: give the checkpoint prefix (e.g. electra_small/electra_small, "
        "beside electra_small.index and electra_small.data-00000-of-00001) or its folder"
    )


def _checkpoint_order(index: Path) -> tuple[int, float]:
    """The step of `model.ckpt-<step>.index` (a later step may have been copied earlier), then the file's time."""
    step = re.search(r"-(\d+)$", index.stem)
    return (int(step.group(1)) if step else -1, index.stat().st_mtime)


# ----------------------------------------------------------------------------------------------- writing
def masked_crc32c(data: bytes) -> int:
    """CRC-32C as LevelDB tables and TensorFlow bundles store it: rotated and offset, so that the checksum of
    bytes that themselves hold a checksum stays strong."""
    import google_crc32c

    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + CRC_MASK_DELTA) & 0xFFFFFFFF


def _varint_bytes(value: int) -> bytes:
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _message(fields: list[tuple[int, int | bytes]], fixed32: tuple[int, ...] = ()) -> bytes:
    """A protobuf message from (field number, value) pairs: bytes are length-delimited, numbers in `fixed32`
    four little-endian bytes, other numbers varints. Zero numbers are left out, as proto3 writes them."""
    out = bytearray()
    for number, value in fields:
        if isinstance(value, bytes):
            out += _varint_bytes(number << 3 | 2) + _varint_bytes(len(value)) + value
        elif number in fixed32:
            out += _varint_bytes(number << 3 | 5) + struct.pack("<I", value)
        elif value:
            out += _varint_bytes(number << 3) + _varint_bytes(value)
    return bytes(out)


def _block(entries: list[tuple[bytes, bytes]], restart_interval: int) -> bytes:
    """One table block: keys share their prefix with the previous key except at restart points, whose offsets
    end the block so that a reader can binary-search it."""
    out, restarts, previous = bytearray(), [], b""
    for number, (key, value) in enumerate(entries):
        shared = 0
        if number % restart_interval == 0:
            restarts.append(len(out))
        else:
            while shared < min(len(key), len(previous)) and key[shared] == previous[shared]:
                shared += 1
        out += _varint_bytes(shared) + _varint_bytes(len(key) - shared) + _varint_bytes(len(value))
        out += key[shared:] + value
        previous = key
    restarts = restarts or [0]
    return bytes(out) + struct.pack(f"<{len(restarts)}I", *restarts) + struct.pack("<I", len(restarts))


def _table(entries: list[tuple[bytes, bytes]], block_size: int = 4096) -> bytes:
    """A LevelDB-format sorted table (uncompressed) of `entries`, sorted by key: data blocks of about
    `block_size` bytes, an empty metaindex block, an index block naming each data block by its last key, and
    the footer with the table magic."""
    out, index = bytearray(), []

    def write_block(contents: bytes) -> bytes:
        handle = _varint_bytes(len(out)) + _varint_bytes(len(contents))
        trailer = b"\x00"  # no compression
        out.extend(contents + trailer + struct.pack("<I", masked_crc32c(contents + trailer)))
        return handle

    pending: list[tuple[bytes, bytes]] = []
    pending_bytes = 0
    for key, value in entries:
        pending.append((key, value))
        pending_bytes += len(key) + len(value)
        if pending_bytes >= block_size:
            index.append((key, write_block(_block(pending, 16))))
            pending, pending_bytes = [], 0
    if pending:
        index.append((pending[-1][0], write_block(_block(pending, 16))))
    metaindex = write_block(_block([], 1))
    index_handle = write_block(_block(index, 1))
    footer = (metaindex + index_handle).ljust(FOOTER_SIZE - 8, b"\x00") + struct.pack("<Q", TABLE_MAGIC)
    return bytes(out + footer)


def write_tf_checkpoint(prefix: Path, tensors: dict[str, np.ndarray | torch.Tensor]) -> None:
    """`<prefix>.index` and `<prefix>.data-00000-of-00001` holding `tensors` (float32 or int64), as TensorFlow's
    tf.train.Saver writes them: the data file is the tensors' little-endian bytes one after another; the index
    maps each name to its dtype, shape, place and checksum, after a header entry (the empty key). Tensors are
    converted one at a time, so a large model needs no second copy in memory."""
    codes = {np.dtype(dtype): code for code, dtype in DTYPES.items()}
    entries, offset = [], 0
    with open(f"{prefix}.data-00000-of-00001", "wb") as data:
        for name in sorted(tensors):
            value = tensors[name]
            array = value.detach().float().cpu().numpy() if isinstance(value, torch.Tensor) else np.asarray(value)
            raw = array.astype(array.dtype.newbyteorder("<"), copy=False).tobytes(order="C")
            shape = _message([(2, _message([(1, size)])) for size in array.shape])
            entry = _message(
                [(1, codes[array.dtype]), (2, shape), (4, offset), (5, len(raw)), (6, masked_crc32c(raw))],
                fixed32=(6,),
            )
            entries.append((name.encode("utf-8"), entry))
            data.write(raw)
            offset += len(raw)
    header = _message([(1, 1), (3, _message([(1, 1)]))])  # one shard, little-endian, bundle format version 1
    Path(f"{prefix}.index").write_bytes(_table([(b"", header), *entries]))


# ----------------------------------------------------------------------------------------------- conversion
# Our parameter prefixes and the reference's variable scopes, by objective, the more specific first. The
# reference builds a masked LM under electra/ and Electric's noise model as two towers with one cloze head.
_DISCRIMINATOR_SCOPES = (
    ("discriminator.discriminator_predictions.dense_prediction.", "discriminator_predictions/dense_1/"),
    ("discriminator.discriminator_predictions.", "discriminator_predictions/"),
    ("discriminator.electra.", "electra/"),
)
_MLM_HEAD_SCOPES = (
    ("generator.generator_lm_head.bias", "generator_predictions/output_bias"),
    ("generator.generator_predictions.", "generator_predictions/"),
)
SCOPES = {
    "ELECTRA": (*_DISCRIMINATOR_SCOPES, *_MLM_HEAD_SCOPES, ("generator.electra.", "generator/")),
    "MLM": (*_MLM_HEAD_SCOPES, ("generator.electra.", "electra/")),
    "Electric": (
        *_DISCRIMINATOR_SCOPES,
        ("cloze_output_bias", "cloze_predictions/output_bias"),
        ("cloze_predictions.", "cloze_predictions/"),
        ("generator_ltr.", "generator_ltr/"),
        ("generator_rtl.", "generator_rtl/"),
    ),
}


def our_name(tf_name: str, objective: str = "ELECTRA") -> str | None:
    """Our pre-training model's parameter for a reference variable (None for optimizer state and counters; a
    variable outside the objective's scopes keeps its name, which no parameter has)."""
    if SKIPPED.search(tf_name):
        return None
    ours, rest = next(
        ((ours, tf_name[len(scope) :]) for ours, scope in SCOPES[objective] if tf_name.startswith(scope)),
        ("", tf_name),
    )
    rest = re.sub(r"layer_(\d+)/", r"layer/\1/", rest)
    if rest.endswith("_embeddings"):
        rest += "/weight"
    rest = re.sub(r"(^|/)(kernel|gamma)$", r"\1weight", re.sub(r"(^|/)beta$", r"\1bias", rest))
    return ours + rest.replace("/", ".")


def reference_name(name: str, objective: str = "ELECTRA") -> str:
    """The reference's variable for one of our pre-training model's parameters: `our_name` inverted."""
    scope, rest = next(
        ((scope, name[len(ours) :]) for ours, scope in SCOPES[objective] if name.startswith(ours)), ("", name)
    )
    rest = re.sub(r"layer\.(\d+)\.", r"layer_\1.", rest).replace(".", "/")
    if rest.endswith("_embeddings/weight"):
        rest = rest[: -len("/weight")]
    elif re.search(r"(^|/)LayerNorm/", rest):
        rest = re.sub(r"weight$", "gamma", re.sub(r"bias$", "beta", rest))
    else:
        rest = re.sub(r"(^|/)weight$", r"\1kernel", rest)
    return scope + rest


def checkpoint_objective(names: list[str]) -> str:
    """What the reference trained: Electric has a two-tower noise model, ELECTRA a discriminator and a small
    generator, a masked LM neither."""
    if any(name.startswith("generator_ltr/") for name in names):
        return "Electric"
    return "ELECTRA" if any(name.startswith("discriminator_predictions/") for name in names) else "MLM"


OBJECTIVE_HPARAMS = {
    "ELECTRA": {},
    "MLM": {"electra_objective": False},
    "Electric": {"electra_objective": False, "electric_objective": True},
}
GENERATOR_SCOPE = {"ELECTRA": "generator", "Electric": "generator_ltr"}


def checkpoint_shapes(checkpoint: TFCheckpoint) -> dict[str, Any]:
    """Hparams for `electra pretrain` from the tensors: the objective, model_size, overrides, embedding size and
    the generator's fractions."""
    names = checkpoint.names()
    objective = checkpoint_objective(names)

    def layers(scope: str) -> int:
        found = {int(m.group(1)) for n in names if (m := re.match(rf"{scope}/encoder/layer_(\d+)/", n))}
        return max(found) + 1 if found else 0

    if "electra/embeddings/word_embeddings" not in names:
        raise UserError(f"{checkpoint.prefix} has no electra/embeddings/word_embeddings: not an ELECTRA checkpoint")
    vocab_size, embedding_size = checkpoint.shape("electra/embeddings/word_embeddings")
    hidden = checkpoint.shape("electra/encoder/layer_0/attention/self/query/kernel")[1]
    intermediate = checkpoint.shape("electra/encoder/layer_0/intermediate/dense/kernel")[1]
    shape: dict[str, Any] = {
        **OBJECTIVE_HPARAMS[objective],
        "model_size": SIZE_BY_HIDDEN.get(hidden, "small"),
        "embedding_size": embedding_size,
        "vocab_size": vocab_size,
        "model_hparam_overrides": {
            "hidden_size": hidden,
            "num_hidden_layers": layers("electra"),
            "num_attention_heads": max(1, hidden // 64),
            "intermediate_size": intermediate,
        },
    }
    generator = GENERATOR_SCOPE.get(objective, "")
    if f"{generator}/encoder/layer_0/attention/self/query/kernel" in names:
        generator_hidden = checkpoint.shape(f"{generator}/encoder/layer_0/attention/self/query/kernel")[1]
        shape["generator_hidden_size"] = generator_hidden / hidden
        shape["generator_layers"] = layers(generator) / layers("electra")
    if f"{generator}/embeddings/word_embeddings" in names:
        shape["untied_generator_embeddings"] = True
    return shape


def convert_tf_checkpoint(
    checkpoint_path: str | Path, output: str | Path, vocab_file: str | Path | None = None
) -> Path:
    """A released (or reference-trained) ELECTRA, masked-LM or Electric checkpoint as one of our model folders;
    returns it.

    The vocabulary defaults to the vocab.txt beside the checkpoint, as in Google's released archives.
    """
    from safetensors.torch import save_model

    from electra.config import build_pretraining_config
    from electra.fileio import atomic_directory
    from electra.objectives import PretrainingModel
    from electra.pretrain import export_models
    from electra.tokenization import normalization_settings, read_vocab, write_vocab

    checkpoint = TFCheckpoint(checkpoint_path)
    vocab_path = Path(vocab_file) if vocab_file else checkpoint.prefix.parent / "vocab.txt"
    if not vocab_path.is_file():
        raise UserError(f"no vocabulary at {vocab_path}: pass the model's vocab.txt with --vocab-file")
    vocab = read_vocab(vocab_path)
    shape = checkpoint_shapes(checkpoint)
    written = checkpoint.prefix.parent / "pretrain_hparams.json"  # beside a checkpoint of `export --format tf`
    if written.is_file():  # what the tensors cannot tell: the number of heads, the casing
        hparams = read_json(written)
        overrides, found = hparams.get("model_hparam_overrides", {}), shape["model_hparam_overrides"]
        if overrides.get("hidden_size") == found["hidden_size"] and "num_attention_heads" in overrides:
            found["num_attention_heads"] = overrides["num_attention_heads"]
        shape["do_lower_case"] = hparams.get("do_lower_case", True)
    tokenizer_config = checkpoint.prefix.parent / "tokenizer_config.json"  # what the reference's hparams cannot say
    if tokenizer_config.is_file() and shape.get("do_lower_case", True):
        shape["strip_accents"] = normalization_settings(read_json(tokenizer_config))["strip_accents"]
    vocab_size = shape.pop("vocab_size")
    if vocab_size != len(vocab):
        raise UserError(f"{vocab_path} has {len(vocab):,} tokens but the checkpoint's embeddings {vocab_size:,}")
    config = build_pretraining_config(shape)
    model = PretrainingModel(config, vocab_size, pad_token_id=vocab.index("[PAD]"))
    objective = checkpoint_objective(checkpoint.names())
    own = model.state_dict()
    loaded, unknown = set(), []
    for tf_name in checkpoint.names():
        name = our_name(tf_name, objective)
        if name is None:
            continue
        if name not in own:
            unknown.append(tf_name)
            continue
        array = checkpoint.tensor(tf_name)
        if tf_name.endswith("/kernel"):
            array = array.T
        if tuple(own[name].shape) != array.shape:
            raise UserError(f"{tf_name} has shape {array.shape}, but {name} needs {tuple(own[name].shape)}")
        own[name].copy_(torch.from_numpy(np.array(array)))  # a writable copy
        loaded.add(name)
    # The generators' embeddings and output layers are the discriminator's word embeddings, loaded once.
    filled = {own[name].data_ptr() for name in loaded}
    missing = sorted(name for name, value in own.items() if value.data_ptr() not in filled)
    if unknown or missing:
        raise UserError(
            f"{checkpoint.prefix} does not match an {objective} model: unknown variables {unknown[:5]}, "
            f"missing {missing[:5]}"
        )
    model_dir = Path(output)
    _check_conversion_target(model_dir, [checkpoint.prefix.parent, vocab_path])
    # The step it was trained to: continuing it goes on from there, as the reference's Estimator restores it.
    step = int(checkpoint.tensor("global_step")) if "global_step" in checkpoint.names() else 0
    record = {
        **config.to_dict(),
        "vocab_size": vocab_size,
        "converted_from": str(checkpoint.prefix),
        "global_step": step,
    }
    with atomic_directory(model_dir) as tmp:  # whole or not at all: an interrupted conversion leaves nothing
        save_model(model, str(tmp / "model.safetensors"))
        (tmp / "pretrain_config.json").write_text(json.dumps(record, indent=2) + "\n")
        write_vocab(vocab, tmp / "vocab.txt")  # as vocab.txt, whatever file it was read from
        export_models(model, tmp, tmp / "vocab.txt")
    return model_dir


def _check_conversion_target(model_dir: Path, inputs: list[Path]) -> None:
    """A conversion replaces `model_dir` whole: only an earlier conversion, never trained since, may be there."""
    from electra.fileio import check_replaceable
    from electra.trainer import checkpoint_dirs

    record_file = model_dir / "pretrain_config.json"
    if record_file.is_file() and ("converted_from" not in read_json(record_file) or checkpoint_dirs(model_dir)):
        raise UserError(
            f"{model_dir} holds a pre-trained model (its checkpoints, exports and record): converting into it would "
            "mix two models; choose a new --output folder"
        )
    check_replaceable(model_dir, "pretrain_config.json", inputs, CONVERTED_FILES)


def saved_objective(saved: SavedPretraining) -> str:
    from electra.config import pretraining_objective

    return pretraining_objective(saved.model.config.to_dict())


def reference_variables(saved: SavedPretraining) -> dict[str, np.ndarray | torch.Tensor]:
    """The variables of the reference's training graph for a saved model: each weight once (generators share the
    discriminator's embeddings and tie their output layer to them, as in the reference), kernels transposed to
    TensorFlow's [in, out], the Adam moments of our optimizer (zeros for a model without optimizer state) and
    global_step."""
    from electra.trainer import AdamWeightDecay, default_param_groups

    model, objective = saved.model, saved_objective(saved)
    moments: dict[torch.Tensor, dict[str, torch.Tensor]] = {}
    if saved.optimizer_state is not None:  # loaded as the trainer resumes it, so each moment finds its weight
        optimizer = AdamWeightDecay(default_param_groups(model, 0.0), lr=0.0)
        optimizer.load_state_dict(saved.optimizer_state)
        moments = optimizer.state
    variables: dict[str, np.ndarray | torch.Tensor] = {"global_step": np.array(saved.step, dtype=np.int64)}
    seen: set[int] = set()
    # The discriminator's names first: a weight it shares with a generator is stored under its name.
    named = sorted(model.named_parameters(remove_duplicate=False), key=lambda item: item[0].startswith("generator"))
    for name, param in named:
        if param.data_ptr() in seen:
            continue
        seen.add(param.data_ptr())
        tf_name = reference_name(name, objective)
        if our_name(tf_name, objective) != name:  # a parameter the reference's model does not have
            raise UserError(f"{name} has no variable in the reference's {objective} model: use --format hf")
        state = moments.get(param, {})
        for suffix, tensor in (
            ("", param),
            ("/adam_m", state.get("exp_avg", torch.zeros_like(param))),
            ("/adam_v", state.get("exp_avg_sq", torch.zeros_like(param))),
        ):
            variables[tf_name + suffix] = tensor.T if tf_name.endswith("/kernel") else tensor
    return variables


# What the reference's configure_finetuning knows of a pre-trained model's settings (it refuses unknown names).
FINETUNING_SHAPE_HPARAMS = ("model_size", "embedding_size", "vocab_size", "do_lower_case", "model_hparam_overrides")


def reference_hparams(saved: SavedPretraining) -> dict[str, Any]:
    """The `--hparams` that make the reference's run_pretraining.py build this model: the objective, explicit
    transformer sizes (its get_bert_config applies model_hparam_overrides last) and the generator's fractions."""
    objective = saved_objective(saved)
    disc, gen = saved.model.discriminator_config, saved.model.generator_config
    hparams = {
        **OBJECTIVE_HPARAMS[objective],
        "model_size": SIZE_BY_HIDDEN.get(disc.hidden_size, "small"),
        "embedding_size": disc.embedding_size,
        "vocab_size": disc.vocab_size,
        "do_lower_case": saved.do_lower_case,
        "model_hparam_overrides": {
            "hidden_size": disc.hidden_size,
            "num_hidden_layers": disc.num_hidden_layers,
            "num_attention_heads": disc.num_attention_heads,
            "intermediate_size": disc.intermediate_size,
        },
    }
    if objective in GENERATOR_SCOPE:
        hparams["generator_hidden_size"] = gen.hidden_size / disc.hidden_size
        hparams["generator_layers"] = gen.num_hidden_layers / disc.num_hidden_layers
        if saved.model.config.untied_generator_embeddings:
            hparams["untied_generator_embeddings"] = True
    return hparams


def export_tf_checkpoint(model_dir: str | Path, output: str | Path) -> Path:
    """A pre-trained model folder (ours, converted, or a Hugging Face pair) as a checkpoint of the reference's
    code. `output/` holds model.ckpt-<step>.index and .data-00000-of-00001, `checkpoint` (what its Estimator and
    `tf.train.latest_checkpoint` look for), vocab.txt, and the model's settings as `--hparams` files for
    run_pretraining.py (pretrain_hparams.json) and run_finetuning.py (finetune_hparams.json: only the names it
    knows). Returns the checkpoint's prefix."""
    from electra.export import tokenizer_files
    from electra.fileio import atomic_directory, check_replaceable
    from electra.pretrain import open_pretrained
    from electra.task_model import TASK_FILE

    source, target = Path(model_dir), Path(output)
    if (source / TASK_FILE).is_file() or any(source.glob(f"*/{TASK_FILE}")):
        raise UserError(
            f"{source} is a fine-tuned model: --format tf writes pre-trained models as checkpoints of the reference's "
            "run_pretraining.py; export a fine-tuned model with --format hf or onnx"
        )
    check_replaceable(target, "checkpoint", [source], EXPORTED_FILES)  # before the model is read, not after
    saved = open_pretrained(source)
    if saved.random_parts:
        raise UserError(
            f"{source} has no weights for {', '.join(saved.random_parts)}: the reference's checkpoints hold the "
            "generator too (a lone discriminator fine-tunes in the reference from its Hugging Face folder)"
        )
    variables = reference_variables(saved)
    hparams = reference_hparams(saved)
    normalization = {"do_lower_case": saved.do_lower_case, "strip_accents": saved.model.config.strip_accents}
    finetune_hparams = {key: hparams[key] for key in FINETUNING_SHAPE_HPARAMS}
    prefix_name = f"model.ckpt-{saved.step}"
    with atomic_directory(target) as tmp:
        write_tf_checkpoint(tmp / prefix_name, variables)
        (tmp / "checkpoint").write_text(
            f'model_checkpoint_path: "{prefix_name}"\nall_model_checkpoint_paths: "{prefix_name}"\n'
        )
        (tmp / "vocab.txt").write_text(saved.vocab_file.read_text(encoding="utf-8"), encoding="utf-8")
        (tmp / "pretrain_hparams.json").write_text(json.dumps(hparams, indent=2) + "\n")
        (tmp / "finetune_hparams.json").write_text(json.dumps(finetune_hparams, indent=2) + "\n")
        # How the model reads text, where the reference's hparams have no name for it (accents kept while
        # lower-casing): `transformers` and `electra convert-tf` read it back.
        tokenizer_files(tmp, normalization)
    if normalization["do_lower_case"] and not normalization["strip_accents"]:
        print(
            f"note: {source} was pre-trained lower-casing text without stripping accents, which the reference's "
            "tokenizer cannot do (it strips them when lower-casing): its scripts will read accented text otherwise; "
            "electra convert-tf and transformers read the setting from tokenizer_config.json",
            file=sys.stderr,
        )
    return target / prefix_name
