"""Pre-training step speed and memory: ours vs a peer built from `transformers` ELECTRA classes.

The peer is what popular PyTorch ports do: an `ElectraForMaskedLM` generator and an `ElectraForPreTraining`
discriminator sharing embeddings, generator logits at every position, Gumbel-max sampling, loss = MLM + 50 x
replaced-token detection, torch AdamW. Ours is `electra.objectives.PretrainingModel` with the reference's masking,
one training step as the trainer runs it. Same shapes (ELECTRA-Small by default), batch, sequence length and threads;
each variant runs in its own process so peak memory is its own. A variant is `ours` or `peer`, a precision (`fp32`,
`bf16` autocast) and optionally `-compile` (torch.compile of the model) or `-graphs` (torch.compile's
"reduce-overhead" mode: CUDA graphs). Both keep freed memory for the next step as `electra`'s commands do
(`retain_freed_memory`: a process-wide allocator setting that speeds up any PyTorch program); `-glibc` leaves glibc's
defaults. The headline ratio compares ours with the peer in the same precision and mode. Steps are timed in a row, as
training runs them: the host may queue the next step while the device runs this one, so a step that makes the host
wait for the device (the peer's boolean indexing does) pays for it. On CUDA the peak memory is the GPU's and the MFU
basis is the device's measured bf16 (or fp32) matrix-product rate. Prints a table, then one JSON line; a variant that
fails is reported and left out.
Usage: python benchmarks/pretrain_step.py [--size small|tiny] [--batch 32] [--steps 6] [--threads 2]
       [--device cpu|cuda] [--variants peer-fp32,peer-bf16,ours-fp32,ours-bf16,ours-bf16-compile]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Callable
from typing import Any

import torch
from isolated import peak_memory, synchronize

VOCAB, SEQ, MASK_ID = 30522, 128, 4
COMPILE_MODES = {"compile": "default", "graphs": "reduce-overhead"}
SHAPES = {  # discriminator hidden, layers, heads, intermediate, embedding, generator hidden
    "small": (256, 12, 4, 1024, 128, 64),
    "tiny": (128, 4, 2, 512, 128, 32),
}


def flops_per_token(size: str, masked_share: float) -> float:
    """Training FLOPs per token (3 x forward) of the matmuls, the generator's vocabulary output at masked positions."""
    hidden, layers, _, intermediate, embedding, gen_hidden = SHAPES[size]

    def encoder(width: int, ffn: int) -> float:
        per_layer = 2 * 4 * width * width + 2 * 2 * width * ffn + 2 * 2 * SEQ * width
        return layers * per_layer + 2 * embedding * width

    generator = encoder(gen_hidden, 4 * gen_hidden) + masked_share * (
        2 * gen_hidden * embedding + 2 * embedding * VOCAB
    )
    discriminator = encoder(hidden, intermediate) + 2 * hidden * hidden + 2 * hidden
    return 3 * (generator + discriminator)


def matmul_rate(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of a square matrix product on random data, the MFU basis."""
    size, repeats = (8192, 20) if device.type == "cuda" else (2048, 5)
    a, b = (torch.randn(size, size, device=device, dtype=dtype) for _ in range(2))
    a @ b
    synchronize(device)
    started = time.perf_counter()
    for _ in range(repeats):
        a @ b
    synchronize(device)
    return repeats * 2 * size**3 / (time.perf_counter() - started)


def batch_of_ids(batch: int, seed: int, device: torch.device) -> torch.Tensor:
    """The same token ids for every variant, made on the host as a data loader would, and copied as the
    trainer copies them (pinned, without waiting)."""
    ids = torch.randint(5, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(seed))
    ids[:, 0], ids[:, -1] = 2, 3
    return ids.pin_memory().to(device, non_blocking=True) if device.type == "cuda" else ids


def ours_step(size: str, batch: int, precision: str, device: torch.device, compiled: str | None):
    from electra.config import build_pretraining_config
    from electra.objectives import PretrainingModel, mask_batch
    from electra.trainer import AdamWeightDecay, default_param_groups

    hidden, layers, heads, intermediate, embedding, _ = SHAPES[size]
    config = build_pretraining_config(
        {
            "model_size": "small",
            "model_hparam_overrides": {
                "hidden_size": hidden,
                "num_hidden_layers": layers,
                "num_attention_heads": heads,
                "intermediate_size": intermediate,
            },
            "embedding_size": embedding,
            "train_batch_size": batch,
        }
    )
    model = PretrainingModel(config, VOCAB, 0).train().to(device)
    forward = torch.compile(model, mode=compiled) if compiled is not None else model
    optimizer = AdamWeightDecay(default_param_groups(model, 0.01), lr=1e-4)
    params = [param for param in model.parameters()]
    special = torch.tensor([0, 2, 3, 4]).to(device)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step(seed: int) -> None:
        ids = batch_of_ids(batch, seed, device)
        masked = mask_batch(
            ids,
            torch.ones_like(ids),
            torch.zeros_like(ids),
            special_ids=special,
            mask_id=MASK_ID,
            mask_prob=0.15,
            max_predictions=config.max_predictions_per_seq,
            noise=torch.Generator(device=device).manual_seed(seed),
            rows=slice(0, batch),
            total_rows=batch,
        )
        with autocast:
            sums = forward(masked)
        counts = model.counts(masked)
        loss = sum(w * sums[k] / counts[model.normalizers[k]] for k, w in model.loss_weights.items())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def peer_step(size: str, batch: int, precision: str, device: torch.device, compiled: str | None):
    import transformers

    hidden, layers, heads, intermediate, embedding, gen_hidden = SHAPES[size]
    common = {"vocab_size": VOCAB, "embedding_size": embedding, "num_hidden_layers": layers}
    discriminator = transformers.ElectraConfig(
        hidden_size=hidden, num_attention_heads=heads, intermediate_size=intermediate, **common
    )
    generator = transformers.ElectraConfig(
        hidden_size=gen_hidden, num_attention_heads=max(1, gen_hidden // 64), intermediate_size=4 * gen_hidden, **common
    )
    step_on = peer_training_step(discriminator, generator, precision, device, compiled)
    return lambda seed: step_on(batch_of_ids(batch, seed, device), seed)


def peer_training_step(
    discriminator_config: Any,
    generator_config: Any,
    precision: str,
    device: torch.device,
    compiled: str | None = None,
    pad_id: int | None = None,
) -> Callable[[torch.Tensor, int], None]:
    """The peer's training step on a batch of token ids ([CLS] 2, [SEP] 3); with `pad_id`, padding is left out of
    attention, masking and the losses, as for real text padded to max_seq_length."""
    import transformers

    discriminator = transformers.ElectraForPreTraining(discriminator_config)
    generator = transformers.ElectraForMaskedLM(generator_config)
    generator.electra.embeddings = discriminator.electra.embeddings
    generator.generator_lm_head.weight = discriminator.electra.embeddings.word_embeddings.weight
    modules = torch.nn.ModuleList([generator, discriminator]).train().to(device)
    if compiled is not None:
        generator, discriminator = (torch.compile(module, mode=compiled) for module in (generator, discriminator))
    optimizer = torch.optim.AdamW(modules.parameters(), lr=1e-4, eps=1e-6, weight_decay=0.01)
    autocast = torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")

    def step(ids: torch.Tensor, seed: int) -> None:
        generator_rng = torch.Generator(device=device).manual_seed(seed)
        special, attention = (ids == 2) | (ids == 3), None
        if pad_id is not None:
            special |= ids == pad_id
            attention = (ids != pad_id).long()
        chosen = (torch.rand(ids.shape, generator=generator_rng, device=device) < 0.15) & ~special
        use_mask_token = torch.rand(ids.shape, generator=generator_rng, device=device) < 0.85
        inputs = torch.where(chosen & use_mask_token, MASK_ID, ids)
        labels = torch.where(chosen, ids, -100)
        with autocast:
            generated = generator(input_ids=inputs, attention_mask=attention, labels=labels)
        with torch.no_grad():
            logits = generated.logits[chosen].float()
            uniform = torch.rand(logits.shape, generator=generator_rng, device=device)
            sampled = (logits - torch.log(-torch.log(uniform + 1e-9) + 1e-9)).argmax(-1)
        fake = ids.clone()
        fake[chosen] = sampled
        with autocast:
            judged = discriminator(input_ids=fake, attention_mask=attention, labels=(fake != ids).long())
        (generated.loss + 50 * judged.loss).backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure(variant: str, size: str, batch: int, steps: int, threads: int, device: torch.device) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    name, precision, *flags = variant.split("-")
    unknown = set(flags) - {*COMPILE_MODES, "glibc"}
    if unknown:
        raise SystemExit(f"variant {variant}: unknown modifier(s) {', '.join(sorted(unknown))}")
    if "glibc" not in flags:  # process-wide and good for any PyTorch program: the peer gets it too
        from electra.cli import retain_freed_memory

        retain_freed_memory()  # as `electra`'s commands do
    compiled = next((COMPILE_MODES[flag] for flag in flags if flag in COMPILE_MODES), None)
    step = (ours_step if name == "ours" else peer_step)(size, batch, precision, device, compiled=compiled)
    started = time.perf_counter()
    for seed in range(3):  # warm-up: the first steps allocate, pick kernels and (with -compile) compile
        step(seed)
    synchronize(device)
    warmup_s = time.perf_counter() - started
    started = time.perf_counter()
    for seed in range(steps):
        step(100 + seed)
    synchronize(device)
    seconds = (time.perf_counter() - started) / steps
    return {"tok_s": batch * SEQ / seconds, "step_s": seconds, "peak_gb": peak_memory(device), "warmup_s": warmup_s}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SHAPES, default="small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="peer-fp32,peer-bf16,ours-fp32,ours-bf16")
    parser.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    parser.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.run_one:
        print(json.dumps(measure(args.run_one, args.size, args.batch, args.steps, args.threads, device)))
        return
    rows = {}
    for variant in args.variants.split(","):
        command = [
            sys.executable,
            __file__,
            "--run-one",
            variant,
            "--size",
            args.size,
            "--batch",
            str(args.batch),
            "--steps",
            str(args.steps),
            "--threads",
            str(args.threads),
            "--device",
            args.device,
        ]
        done = subprocess.run(command, capture_output=True, text=True)
        if done.returncode != 0:
            print(f"variant {variant} failed:\n{done.stderr[-3000:]}", file=sys.stderr, flush=True)
            continue
        rows[variant] = json.loads(done.stdout.splitlines()[-1])
        print(f"{variant}: {rows[variant]}", file=sys.stderr, flush=True)  # kept if a later variant overruns
    if not any(variant.startswith("ours") for variant in rows):
        sys.exit("no variant of ours ran")
    torch.set_num_threads(args.threads)
    basis = "bf16" if args.device == "cuda" and any("bf16" in variant for variant in rows) else "fp32"
    rate = matmul_rate(device, torch.bfloat16 if basis == "bf16" else torch.float32)
    masked_share = int(0.155 * SEQ) / SEQ
    flops = flops_per_token(args.size, masked_share)
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else f"{args.threads} CPU threads"
    print(
        f"ELECTRA-{args.size}, batch {args.batch} x seq {SEQ}, {where}, torch {torch.__version__}; "
        f"{basis} matmul {rate / 1e12:.2f} TFLOP/s; {flops / 1e6:.1f} MFLOP/token (ours, masked-only generator output)"
    )
    memory = "peak GPU GiB" if device.type == "cuda" else "peak RSS GB"
    print(f"{'variant':<18} | {'tok/s':>10} | {'step ms':>8} | {memory:>12} | {'warm-up s':>9} | MFU vs {basis} matmul")
    for variant, row in rows.items():
        print(
            f"{variant:<18} | {row['tok_s']:10,.0f} | {1000 * row['step_s']:8.1f} | {row['peak_gb']:12.2f} | "
            f"{row['warmup_s']:9.1f} | {row['tok_s'] * flops / rate:.1%}"
        )

    def counterpart(variant: str) -> str:
        """The peer variant in the same precision and mode."""
        _, precision, *flags = variant.split("-")
        return "-".join(["peer", precision, *flags])

    best = max((row["tok_s"], variant) for variant, row in rows.items() if variant.startswith("ours"))
    paired = [
        (rows[variant]["tok_s"] / rows[counterpart(variant)]["tok_s"], variant)
        for variant in rows
        if variant.startswith("ours") and counterpart(variant) in rows
    ]
    ratio, ours_variant = max(paired) if paired else (None, None)
    peer_variant = counterpart(ours_variant) if ours_variant else None
    headline = {
        "ours_tok_s": round(rows[ours_variant]["tok_s"]) if ours_variant else None,
        "ours_variant": ours_variant,
        "peer_tok_s": round(rows[peer_variant]["tok_s"]) if peer_variant else None,
        "peer_variant": peer_variant,
        "ratio": round(ratio, 2) if ratio else None,
        "best_ours_tok_s": round(best[0]),
        "best_ours_variant": best[1],
        f"mfu_{basis}_basis": round(best[0] * flops / rate, 3),
    }
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
