"""Pre-training step speed and memory: ours vs a peer built from `transformers` ELECTRA classes.

The peer is what popular PyTorch ports do: an `ElectraForMaskedLM` generator and an
`ElectraForPreTraining` discriminator sharing embeddings, generator logits at every position,
Gumbel-max sampling, loss = MLM + 50 x replaced-token detection, torch AdamW. Ours is
`electra.objectives.PretrainingModel` with the reference's masking, one training step as the
trainer runs it. Same shapes (ELECTRA-Small by default), batch, sequence length and threads; each
variant runs in its own process so peak memory is its own. Prints a table, then one JSON line.
Usage: python benchmarks/pretrain_step.py [--size small|tiny] [--batch 32] [--steps 6] [--threads 2]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import time

import torch

VOCAB, SEQ, MASK_ID = 30522, 128, 4
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


def matmul_rate() -> float:
    a, b = torch.randn(2048, 2048), torch.randn(2048, 2048)
    a @ b
    started = time.perf_counter()
    for _ in range(5):
        a @ b
    return 5 * 2 * 2048**3 / (time.perf_counter() - started)


def batch_of_ids(batch: int, seed: int) -> torch.Tensor:
    ids = torch.randint(5, VOCAB, (batch, SEQ), generator=torch.Generator().manual_seed(seed))
    ids[:, 0], ids[:, -1] = 2, 3
    return ids


def ours_step(size: str, batch: int, precision: str):
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
    model = PretrainingModel(config, VOCAB, 0).train()
    optimizer = AdamWeightDecay(default_param_groups(model, 0.01), lr=1e-4)
    params = [param for param in model.parameters()]
    special = torch.tensor([0, 2, 3, 4])
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16")

    def step(seed: int) -> None:
        ids = batch_of_ids(batch, seed)
        masked = mask_batch(
            ids,
            torch.ones_like(ids),
            torch.zeros_like(ids),
            special_ids=special,
            mask_id=MASK_ID,
            mask_prob=0.15,
            max_predictions=config.max_predictions_per_seq,
            noise=torch.Generator().manual_seed(seed),
            rows=slice(0, batch),
            total_rows=batch,
        )
        with autocast:
            sums = model(masked)
        counts = model.counts(masked)
        loss = sum(w * sums[k] / counts[model.normalizers[k]] for k, w in model.loss_weights.items())
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def peer_step(size: str, batch: int, precision: str):
    import transformers

    hidden, layers, heads, intermediate, embedding, gen_hidden = SHAPES[size]
    common = {"vocab_size": VOCAB, "embedding_size": embedding, "num_hidden_layers": layers}
    discriminator = transformers.ElectraForPreTraining(
        transformers.ElectraConfig(
            hidden_size=hidden, num_attention_heads=heads, intermediate_size=intermediate, **common
        )
    )
    generator = transformers.ElectraForMaskedLM(
        transformers.ElectraConfig(
            hidden_size=gen_hidden,
            num_attention_heads=max(1, gen_hidden // 64),
            intermediate_size=4 * gen_hidden,
            **common,
        )
    )
    generator.electra.embeddings = discriminator.electra.embeddings
    generator.generator_lm_head.weight = discriminator.electra.embeddings.word_embeddings.weight
    modules = torch.nn.ModuleList([generator, discriminator]).train()
    optimizer = torch.optim.AdamW(modules.parameters(), lr=1e-4, eps=1e-6, weight_decay=0.01)

    def step(seed: int) -> None:
        generator_rng = torch.Generator().manual_seed(seed)
        ids = batch_of_ids(batch, seed)
        special = (ids == 2) | (ids == 3)
        chosen = (torch.rand(ids.shape, generator=generator_rng) < 0.15) & ~special
        inputs = torch.where(chosen & (torch.rand(ids.shape, generator=generator_rng) < 0.85), MASK_ID, ids)
        labels = torch.where(chosen, ids, -100)
        generated = generator(input_ids=inputs, labels=labels)
        with torch.no_grad():
            logits = generated.logits[chosen]
            gumbel = -torch.log(-torch.log(torch.rand(logits.shape, generator=generator_rng) + 1e-9) + 1e-9)
            sampled = (logits + gumbel).argmax(-1)
        fake = ids.clone()
        fake[chosen] = sampled
        judged = discriminator(input_ids=fake, labels=(fake != ids).long())
        (generated.loss + 50 * judged.loss).backward()
        torch.nn.utils.clip_grad_norm_(modules.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    return step


def measure(variant: str, size: str, batch: int, steps: int, threads: int) -> dict:
    torch.set_num_threads(threads)
    torch.manual_seed(0)
    name, precision = variant.split("-")
    step = (ours_step if name == "ours" else peer_step)(size, batch, precision)
    for seed in range(2):
        step(seed)
    times = []
    for seed in range(steps):
        started = time.perf_counter()
        step(100 + seed)
        times.append(time.perf_counter() - started)
    seconds = sorted(times)[len(times) // 2]
    return {
        "tok_s": batch * SEQ / seconds,
        "step_s": seconds,
        "peak_rss_gb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", choices=SHAPES, default="small")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--steps", type=int, default=6)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--variants", default="peer-fp32,ours-fp32,ours-bf16")
    parser.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        print(json.dumps(measure(args.run_one, args.size, args.batch, args.steps, args.threads)))
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
        ]
        rows[variant] = json.loads(subprocess.run(command, check=True, capture_output=True, text=True).stdout)
    torch.set_num_threads(args.threads)
    rate = matmul_rate()
    masked_share = int(0.155 * SEQ) / SEQ
    flops = flops_per_token(args.size, masked_share)
    print(
        f"ELECTRA-{args.size}, batch {args.batch} x seq {SEQ}, {args.threads} threads, torch {torch.__version__}; "
        f"fp32 matmul {rate / 1e9:.0f} GFLOP/s; {flops / 1e6:.1f} MFLOP/token (ours, masked-only generator output)"
    )
    print(f"{'variant':<10} | {'tok/s':>8} | {'step s':>7} | {'peak RSS GB':>11} | {'MFU vs fp32 matmul':>18}")
    for variant, row in rows.items():
        print(
            f"{variant:<10} | {row['tok_s']:8,.0f} | {row['step_s']:7.2f} | {row['peak_rss_gb']:11.2f} | "
            f"{row['tok_s'] * flops / rate:18.1%}"
        )
    peer = rows.get("peer-fp32", {}).get("tok_s")
    best = max((row["tok_s"], variant) for variant, row in rows.items() if variant.startswith("ours"))
    headline = {
        "ours_tok_s": round(best[0]),
        "ours_variant": best[1],
        "peer_tok_s": round(peer) if peer else None,
        "ratio": round(best[0] / peer, 2) if peer else None,
        "ours_fp32_ratio": round(rows["ours-fp32"]["tok_s"] / peer, 2) if peer and "ours-fp32" in rows else None,
        "mfu_fp32_basis": round(best[0] * flops / rate, 3),
    }
    print(json.dumps(headline))


if __name__ == "__main__":
    main()
