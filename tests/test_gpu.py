"""What only a CUDA GPU can check: the model against `transformers` there, fused attention kernels, bf16
autocast and torch.compile against float32 eager, and the pre-training and fine-tuning commands end to end.

Skipped where there is no GPU (CI); run on one with `pytest tests/test_gpu.py`.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import transformers
from torch.nn.attention import SDPBackend, sdpa_kernel

from electra.cli import main
from electra.config import ModelConfig, build_pretraining_config
from electra.modeling import ElectraForMaskedLM, ElectraForPreTraining
from electra.objectives import PretrainingModel, mask_batch

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")

CUDA = torch.device("cuda")
SHAPE = ModelConfig(
    vocab_size=1000,
    embedding_size=64,
    hidden_size=128,
    num_hidden_layers=3,
    num_attention_heads=2,
    intermediate_size=256,
)


def padded_batch(vocab_size: int, rows: int = 8, length: int = 64, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, vocab_size, (rows, length), generator=generator)
    lengths = torch.randint(length // 4, length + 1, (rows,), generator=generator)
    attention_mask = (torch.arange(length)[None, :] < lengths[:, None]).long()
    input_ids[attention_mask == 0] = 0
    input_ids[:, 0] = 2
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[:, length // 2 :] = 1
    return {
        name: tensor.to(CUDA)
        for name, tensor in (
            ("input_ids", input_ids),
            ("attention_mask", attention_mask),
            ("token_type_ids", token_type_ids),
        )
    }


def relative_error(got: torch.Tensor, expected: torch.Tensor) -> float:
    return float((got.double() - expected.double()).norm() / expected.double().norm())


@pytest.fixture(autouse=True)
def float32_matmuls():
    """tf32 would make float32 comparisons as loose as bf16 ones."""
    previous = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    yield
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = previous


def test_discriminator_and_generator_match_transformers_on_cuda():
    torch.manual_seed(0)
    inputs = padded_batch(SHAPE.vocab_size)
    real = inputs["attention_mask"].bool()
    for ours_class, theirs_class in (
        (ElectraForPreTraining, transformers.ElectraForPreTraining),
        (ElectraForMaskedLM, transformers.ElectraForMaskedLM),
    ):
        ours = ours_class(SHAPE).eval().to(CUDA)
        theirs = theirs_class(transformers.ElectraConfig(**SHAPE.to_dict())).eval().to(CUDA)
        theirs.load_state_dict(ours.state_dict(), strict=False)
        with torch.no_grad():
            expected = theirs(**inputs).logits
            got = ours(**inputs)
        assert (got[real] - expected[real]).abs().max() <= 1e-4, ours_class.__name__


def test_attention_runs_on_fused_kernels_in_bf16():
    """The math fallback is excluded: padding masks must not push attention off the fused kernels."""
    model = ElectraForPreTraining(SHAPE).eval().to(CUDA)
    inputs = padded_batch(SHAPE.vocab_size)
    with torch.no_grad():
        expected = model(**inputs)
        with (
            sdpa_kernel([SDPBackend.FLASH_ATTENTION, SDPBackend.EFFICIENT_ATTENTION, SDPBackend.CUDNN_ATTENTION]),
            torch.autocast("cuda", dtype=torch.bfloat16),
        ):
            got = model(**inputs)
    real = inputs["attention_mask"].bool()
    assert relative_error(got[real].float(), expected[real]) < 3e-2


def pretraining_setup(seed: int = 0) -> tuple[PretrainingModel, object]:
    shape = ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size")
    config = build_pretraining_config(
        {
            "model_size": "small",
            "embedding_size": SHAPE.embedding_size,
            "generator_hidden_size": 0.5,
            "model_hparam_overrides": {name: getattr(SHAPE, name) for name in shape},
        }
    )
    torch.manual_seed(seed)
    model = PretrainingModel(config, SHAPE.vocab_size, 0).to(CUDA)
    inputs = padded_batch(SHAPE.vocab_size, rows=16, length=128, seed=seed)
    masked = mask_batch(
        inputs["input_ids"],
        inputs["attention_mask"],
        inputs["token_type_ids"],
        special_ids=torch.tensor([0, 2, 3, 4], device=CUDA),
        mask_id=4,
        mask_prob=0.15,
        max_predictions=config.max_predictions_per_seq,
        noise=torch.Generator(device=CUDA).manual_seed(seed),
        rows=slice(0, 16),
        total_rows=16,
    )
    return model, masked


def loss_and_grads(model: PretrainingModel, forward, masked, autocast: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Loss (the trainer's weighting) and the flattened gradient, with the sampling noise fixed."""
    model.zero_grad(set_to_none=True)
    torch.manual_seed(1)
    with torch.autocast("cuda", dtype=torch.bfloat16, enabled=autocast):
        sums = forward(masked)
    counts = model.counts(masked)
    loss = sum(weight * sums[name] / counts[model.normalizers[name]] for name, weight in model.loss_weights.items())
    loss.backward()
    grads = torch.cat([param.grad.flatten() for param in model.parameters() if param.grad is not None])
    return loss.detach(), grads


def test_bf16_autocast_and_compile_match_float32_eager():
    model, masked = pretraining_setup()
    model.eval()  # no dropout: every variant computes the same function
    expected_loss, expected_grads = loss_and_grads(model, model, masked, autocast=False)
    assert torch.isfinite(expected_loss)
    bf16_loss, bf16_grads = loss_and_grads(model, model, masked, autocast=True)
    assert relative_error(bf16_loss, expected_loss) < 2e-2
    assert relative_error(bf16_grads, expected_grads) < 5e-2
    compiled = torch.compile(model)
    compiled_loss, compiled_grads = loss_and_grads(model, compiled, masked, autocast=False)
    assert relative_error(compiled_loss, expected_loss) < 1e-4
    assert relative_error(compiled_grads, expected_grads) < 1e-3


def test_pretrain_and_finetune_commands_run_on_cuda_with_bf16_and_compile(
    pretrain_data_dir: Path, finetuned_classifier
):
    hparams = {
        "debug": True,
        "num_train_steps": 30,
        "num_warmup_steps": 3,
        "learning_rate": 1e-3,
        "save_checkpoints_steps": 10,
        "log_every_steps": 1,
        "compile": True,
        "do_eval": True,
    }
    name = "cuda-bf16-compiled"
    assert (
        main(["pretrain", "--data-dir", str(pretrain_data_dir), "--model-name", name, "--hparams", json.dumps(hparams)])
        == 0
    )
    model_dir = pretrain_data_dir / "models" / name
    logged = [json.loads(line) for line in (model_dir / "logs" / "metrics.jsonl").read_text().splitlines()]
    assert [record["step"] for record in logged] == list(range(1, 31))
    assert all(record["skipped_steps"] == 0 for record in logged)
    assert sum(r["mlm_loss"] for r in logged[-5:]) < sum(r["mlm_loss"] for r in logged[:5]), "the generator learns"
    results = json.loads((model_dir / "results" / "unsup_results.json").read_text())
    assert 0.0 <= results["disc_auc"] <= 1.0
    # The fixture fine-tuned on this GPU (bf16 autocast) and required dev accuracy above 90%; predict there too.
    lines = finetuned_classifier.parent.parent / "new.txt"
    lines.write_text("the movie was very good\nthe plot was awful\n", encoding="utf-8")
    output = lines.with_suffix(".jsonl")
    assert (
        main(["predict", "--model-dir", str(finetuned_classifier), "--input", str(lines), "--output", str(output)]) == 0
    )
    assert [json.loads(line)["label"] for line in output.read_text().splitlines()] == ["pos", "neg"]


def test_pretraining_under_cuda_graphs_logs_what_eager_pretraining_logs(pretrain_data_dir: Path):
    """`"compile": "reduce-overhead"` replays CUDA graphs, which overwrite their outputs at the next replay and
    record a graph for each batch width: every step's logged losses must still be its own, as eager computes
    them (float32 and no dropout, so both runs compute the same function)."""
    hparams = {
        "debug": True,
        "num_train_steps": 12,
        "num_warmup_steps": 2,
        "learning_rate": 1e-3,
        "log_every_steps": 1,
        "precision": "fp32",
        "model_hparam_overrides": {"hidden_dropout_prob": 0.0, "attention_probs_dropout_prob": 0.0},
    }
    losses = {}
    for name, compile_mode in (("eager", False), ("graphs", "reduce-overhead")):
        arguments = json.dumps({**hparams, "compile": compile_mode})
        command = ["pretrain", "--data-dir", str(pretrain_data_dir), "--model-name", name, "--hparams", arguments]
        assert main(command) == 0
        metrics = (pretrain_data_dir / "models" / name / "logs" / "metrics.jsonl").read_text().splitlines()
        losses[name] = torch.tensor([[json.loads(line)[key] for key in ("mlm_loss", "disc_loss")] for line in metrics])
    assert losses["graphs"].shape == (12, 2)
    assert relative_error(losses["graphs"], losses["eager"]) < 2e-3
