"""Google's released ELECTRA checkpoints (TensorFlow 1 "V2" checkpoints) read without TensorFlow.

A checkpoint `<prefix>` is `<prefix>.index`, a LevelDB-style sorted table mapping each variable name
to a BundleEntryProto (dtype, shape, shard, offset, size), and `<prefix>.data-NNNNN-of-MMMMM`, the
raw little-endian bytes. Reading them takes a table reader, a few protobuf fields and numpy; users
need not install 600 MB of TensorFlow to read three files.

`convert_tf_checkpoint` maps the reference's variable names (`electra/...`, `generator/...`,
`discriminator_predictions/...`, `generator_predictions/...`) onto our pre-training model and
writes a model folder like `electra pretrain` does: the whole model (for continued pre-training),
and the discriminator and generator as Hugging Face folders (for fine-tuning and `transformers`).
The shape is read from the tensors; the number of attention heads is hidden size / 64, as every
released ELECTRA.
"""

from __future__ import annotations

import json
import re
import struct
from pathlib import Path
from typing import Any

import numpy as np
import torch

from electra.config import SIZE_BY_HIDDEN
from electra.errors import UserError

TABLE_MAGIC = 0xDB4775248B80FB57
FOOTER_SIZE = 48
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
        entry: dict[str, Any] = {"dtype": 1, "shape": [], "shard": 0, "offset": 0, "size": 0}
        for number, field in _protobuf_fields(value):
            if number == 1:
                entry["dtype"] = field
            elif number == 2:
                dims = [dim for key, dim in _protobuf_fields(field) if key == 2]  # type: ignore[arg-type]
                entry["shape"] = [
                    next((size for key, size in _protobuf_fields(dim) if key == 1), 0)  # type: ignore[arg-type]
                    for dim in dims
                ]
            elif number in (3, 4, 5):
                entry[{3: "shard", 4: "offset", 5: "size"}[number]] = field
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
        if entry["dtype"] == BFLOAT16:
            widened = np.frombuffer(data, dtype="<u2").astype(np.uint32) << 16
            return widened.view(np.float32).reshape(entry["shape"])
        if entry["dtype"] not in DTYPES:
            raise UserError(f"variable {name} has TensorFlow dtype {entry['dtype']}, which is not supported")
        return np.frombuffer(data, dtype=np.dtype(DTYPES[entry["dtype"]]).newbyteorder("<")).reshape(entry["shape"])

    def _shard(self, shard: int) -> bytes:
        if shard not in self.shards:
            found = sorted(self.prefix.parent.glob(f"{self.prefix.name}.data-{shard:05d}-of-*"))
            if not found:
                raise UserError(f"the data file {self.prefix}.data-{shard:05d}-of-... of this checkpoint is missing")
            self.shards[shard] = found[0].read_bytes()
        return self.shards[shard]


def resolve_checkpoint_prefix(path: Path) -> Path:
    """A checkpoint prefix from the prefix itself, one of its files, or a folder (its `checkpoint` file or
    the only/newest `*.index`)."""
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
        indexes = sorted(path.glob("*.index"), key=lambda p: p.stat().st_mtime)
        if indexes:
            return indexes[-1].with_suffix("")
    raise UserError(
        f"no TensorFlow checkpoint at {path}: give the checkpoint prefix (e.g. electra_small/electra_small, "
        "beside electra_small.index and electra_small.data-00000-of-00001) or its folder"
    )


# ----------------------------------------------------------------------------------------------- conversion
def our_name(tf_name: str) -> str | None:
    """Our pre-training model's parameter for a reference variable (None for optimizer state and counters)."""
    if SKIPPED.search(tf_name):
        return None
    name = tf_name
    name = re.sub(r"^electra/", "discriminator/electra/", name)
    name = re.sub(r"^generator/", "generator/electra/", name)
    name = re.sub(
        r"^discriminator_predictions/dense_1/", "discriminator/discriminator_predictions/dense_prediction/", name
    )
    name = re.sub(r"^discriminator_predictions/", "discriminator/discriminator_predictions/", name)
    name = name.replace("generator_predictions/output_bias", "generator/generator_lm_head/bias")
    name = re.sub(r"^generator_predictions/", "generator/generator_predictions/", name)
    name = re.sub(r"layer_(\d+)/", r"layer/\1/", name)
    if name.endswith("_embeddings"):
        name += "/weight"
    name = re.sub(r"/(kernel|gamma)$", "/weight", name)
    name = re.sub(r"/beta$", "/bias", name)
    return name.replace("/", ".")


def checkpoint_shapes(checkpoint: TFCheckpoint) -> dict[str, Any]:
    """Hparams for `electra pretrain` (model_size, overrides, embedding size, generator fraction) from shapes."""
    names = checkpoint.names()

    def layers(scope: str) -> int:
        found = {int(m.group(1)) for n in names if (m := re.match(rf"{scope}/encoder/layer_(\d+)/", n))}
        return max(found) + 1 if found else 0

    if "electra/embeddings/word_embeddings" not in names:
        raise UserError(f"{checkpoint.prefix} has no electra/embeddings/word_embeddings: not an ELECTRA checkpoint")
    vocab_size, embedding_size = checkpoint.shape("electra/embeddings/word_embeddings")
    hidden = checkpoint.shape("electra/encoder/layer_0/attention/self/query/kernel")[1]
    intermediate = checkpoint.shape("electra/encoder/layer_0/intermediate/dense/kernel")[1]
    shape: dict[str, Any] = {
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
    if "generator/encoder/layer_0/attention/self/query/kernel" in names:
        generator_hidden = checkpoint.shape("generator/encoder/layer_0/attention/self/query/kernel")[1]
        shape["generator_hidden_size"] = generator_hidden / hidden
        shape["generator_layers"] = layers("generator") / layers("electra")
    return shape


def convert_tf_checkpoint(
    checkpoint_path: str | Path, output: str | Path, vocab_file: str | Path | None = None
) -> Path:
    """A released (or reference-trained) ELECTRA checkpoint as one of our model folders; returns it.

    The vocabulary defaults to the vocab.txt beside the checkpoint, as in Google's released archives.
    """
    from safetensors.torch import save_model

    from electra.config import build_pretraining_config
    from electra.fileio import atomic_output, write_text_atomic
    from electra.objectives import PretrainingModel
    from electra.pretrain import export_models
    from electra.tokenization import read_vocab

    checkpoint = TFCheckpoint(checkpoint_path)
    vocab_path = Path(vocab_file) if vocab_file else checkpoint.prefix.parent / "vocab.txt"
    if not vocab_path.is_file():
        raise UserError(f"no vocabulary at {vocab_path}: pass the model's vocab.txt with --vocab-file")
    vocab = read_vocab(vocab_path)
    shape = checkpoint_shapes(checkpoint)
    vocab_size = shape.pop("vocab_size")
    if vocab_size != len(vocab):
        raise UserError(f"{vocab_path} has {len(vocab):,} tokens but the checkpoint's embeddings {vocab_size:,}")
    config = build_pretraining_config(shape)
    model = PretrainingModel(config, vocab_size, pad_token_id=vocab.index("[PAD]"))
    own = model.state_dict()
    loaded, unknown = set(), []
    for tf_name in checkpoint.names():
        name = our_name(tf_name)
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
    shared = {name for name in own if name.startswith("generator.electra.embeddings.")}  # tied to the discriminator's
    tied = {"generator.generator_lm_head.weight"}
    missing = sorted(set(own) - loaded - shared - tied)
    if unknown or missing:
        raise UserError(
            f"{checkpoint.prefix} does not match an ELECTRA model: unknown variables {unknown[:5]}, "
            f"missing {missing[:5]}"
        )
    model_dir = Path(output)
    model_dir.mkdir(parents=True, exist_ok=True)
    with atomic_output(model_dir / "model.safetensors") as tmp:
        save_model(model, str(tmp))
    record = {**config.to_dict(), "vocab_size": vocab_size, "converted_from": str(checkpoint.prefix)}
    write_text_atomic(model_dir / "pretrain_config.json", json.dumps(record, indent=2) + "\n")
    write_text_atomic(model_dir / "vocab.txt", vocab_path.read_text(encoding="utf-8"))
    export_models(model, model_dir, model_dir / "vocab.txt")
    return model_dir
