"""Sentence scoring speed: Electric's one pass a sentence vs a masked LM's one pass a token, ours and a peer.

An Electric model scores a sentence in ONE forward pass (the pseudo-log-likelihood is minus the sum of
its energies); a masked language model needs one pass per token, each over a copy of the sentence with
that token masked (Clark et al. 2020, "Pre-Training Transformers as Energy-Based Cloze Models", and
Salazar et al. 2020, "Masked Language Model Scoring"). This measures what that costs on a CPU.

All encoders have ELECTRA-Small's discriminator shape (hidden 256, 12 layers, 4 heads, intermediate
1024, embeddings 128, a 30,522-row vocabulary) with random weights (speed does not depend on them). The
model folders are written as `electra pretrain` writes them (`export_models` and pretrain_config.json):
an Electric model (`"electra_objective": false, "electric_objective": true`, scored with its
discriminator/) and a BERT-style masked LM (`"electra_objective": false`, a full-size generator/, so its
encoder is the same size as the Electric discriminator's).

Texts: real English. With ../shared/data/pretrain_en/enwiki_sample.txt present (relative to the repository
root; --corpus names another file), the sentences are its first --sentences lines of 8 to 40 words from
line 100,000 on, and the WordPiece vocabulary is trained by `electra.tokenization.train_vocab` on its first
4 MB (lines before the sentences, which are thus held out); without the file, a built-in list of 30
English sentences, repeated, serves for both. A vocabulary short of 30,522 entries is padded with
[unusedN] entries, so that the embedding table and output layer have the released models' size.

  ours-electric-fp32 / -auto  `TextScorer(model, method="electric", precision).score(texts, --batch-size)`,
                              what `electra score` runs: --batch-size sentences a batch, length-sorted
  ours-mlm-fp32 / -auto       `TextScorer(model, method="mlm", precision).score(texts, --batch-size)`: one
                              masked copy per token, --batch-size copies a batch (copies of sentences of
                              similar length together), the output layer at the masked position only
  peer-mlm                    the classic pseudo-log-likelihood with `transformers` in fp32, as the
                              mlm-scoring library and common scripts compute it: `ElectraForMaskedLM` and
                              `ElectraTokenizerFast.from_pretrained` over the masked LM's generator/, every
                              masked copy (one per token, [CLS] and [SEP] excluded) in input order, batches
                              of --batch-size copies padded to the longest, the full [batch, seq, vocab]
                              logits, log_softmax, and the original token's entry at the masked position

"auto" is our default precision: bf16 autocast on CPUs with fast bf16 (`cpu_has_fast_bf16`); the -auto
variants are left out where it resolves to fp32. Each variant runs in its own process with torch
threads = --threads, scores a few sentences once to warm up, then times whole `score` calls over its
sentences, repeated until --min-seconds have passed (a masked LM's single call takes longer than that).
The masked-LM variants score only the first --mlm-sentences (a masked LM costs about a sentence's length
times more): every rate is per sentence or per token actually scored, and the Electric process also
times the masked LMs' sentences, so that the Electric-vs-MLM ratio compares the same texts. tokens/s
counts the word pieces scored ([CLS] and [SEP] excluded); passes are the sequences run through the
encoder (one per sentence for Electric, one per token for a masked LM); seconds are one call over the
variant's sentences. The peer's process checks its per-sentence totals against ours-mlm's in fp32 on the
first 4 sentences: the largest difference is printed, and above 1e-2 the run fails.

Run it on an otherwise idle machine: with the cores busy elsewhere, torch's spinning OpenMP threads stall
(see benchmarks/latency.py); the header line shows OMP_WAIT_POLICY when it is set.

Prints a table, then one JSON line of headline figures.
Usage: python benchmarks/scoring.py [--sentences 256] [--mlm-sentences 64] [--batch-size 64] [--threads 2]
       [--min-seconds 2] [--corpus TEXT_FILE]
       [--variants ours-electric-fp32,ours-electric-auto,ours-mlm-fp32,ours-mlm-auto,peer-mlm]
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import numpy as np
from isolated import auto_precision_name, run_variants

if TYPE_CHECKING:
    import transformers

T = TypeVar("T")

VOCAB_SIZE, MAX_SEQ_LENGTH = 30522, 128
SHAPE = {  # ELECTRA-Small's discriminator; embedding_size 128 is the "small" preset's
    "model_size": "small",
    "embedding_size": 128,
    "model_hparam_overrides": {
        "hidden_size": 256,
        "num_hidden_layers": 12,
        "num_attention_heads": 4,
        "intermediate_size": 1024,
    },
}
OBJECTIVES = {
    "electric": {"electra_objective": False, "electric_objective": True},
    "mlm": {"electra_objective": False},
}
CORPUS = Path(__file__).resolve().parents[2] / "shared" / "data" / "pretrain_en" / "enwiki_sample.txt"
VOCAB_SLICE_BYTES, FIRST_LINE, MIN_WORDS, MAX_WORDS = 4_000_000, 100_000, 8, 40
CHECKED, TOLERANCE = 4, 1e-2  # sentences the peer is checked on, and the largest difference allowed
DEFAULT_VARIANTS = "ours-electric-fp32,ours-electric-auto,ours-mlm-fp32,ours-mlm-auto,peer-mlm"
FALLBACK_SENTENCES = (
    "The museum reopened last spring after a long restoration of its northern wing.",
    "She moved to Lisbon in 1998 and worked as a translator for several publishers.",
    "The river floods the lower town almost every winter, so most houses stand on stilts.",
    "He was elected to the city council in 2004 and served two terms.",
    "The album was recorded in a small studio over three weeks in the summer of 1971.",
    "Most of the village's inhabitants work on the nearby farms or in the quarry.",
    "The bridge was designed by a local engineer and opened to traffic in 1932.",
    "After the war, the factory was converted to produce bicycles and sewing machines.",
    "The species is found in dry forests and shrubland at altitudes up to 2,000 metres.",
    "Her first novel was rejected by eleven publishers before it became a bestseller.",
    "The team finished third in the league and reached the semi-final of the national cup.",
    "The church was built in the twelfth century and rebuilt after a fire in 1640.",
    "Students can choose between courses in engineering, medicine, law and the humanities.",
    "The station is served by regional trains to the capital every half hour.",
    "During the drought, the government rationed water and banned the watering of gardens.",
    "The film received mixed reviews but was a commercial success in several countries.",
    "He studied physics at the university before turning to painting in his thirties.",
    "The island has a population of about four hundred people, most of them fishermen.",
    "The company was founded in 1885 as a maker of pianos and later moved into radios.",
    "The treaty ended a decade of border disputes between the two kingdoms.",
    "A new hospital was opened in the town in 1967, replacing the old infirmary.",
    "The festival attracts thousands of visitors every August with music, dance and food.",
    "The road climbs through pine forests before reaching the pass at the top of the valley.",
    "The painting was stolen in 1911 and recovered two years later in Florence.",
    "Its leaves are used in traditional medicine to treat fevers and stomach pain.",
    "The newspaper was published weekly until it merged with a rival in 1953.",
    "The castle was abandoned in the sixteenth century and is now a ruin.",
    "The school has around six hundred pupils aged between eleven and eighteen.",
    "The election was won by a coalition of liberal and agrarian parties.",
    "The lake freezes over in most winters and is popular with skaters.",
)


def load_sentences(count: int, corpus: Path) -> tuple[list[str], str]:
    """`count` real English sentences and where they come from."""
    if corpus.is_file():
        sentences = []
        with open(corpus, encoding="utf-8") as handle:
            for number, line in enumerate(handle):
                if number >= FIRST_LINE and MIN_WORDS <= len(line.split()) <= MAX_WORDS:
                    sentences.append(line.strip())
                    if len(sentences) == count:
                        break
        if len(sentences) == count:
            return sentences, f"{corpus.name} lines of {MIN_WORDS}-{MAX_WORDS} words from line {FIRST_LINE:,}"
    repeated = [FALLBACK_SENTENCES[index % len(FALLBACK_SENTENCES)] for index in range(count)]
    return repeated, f"{len(FALLBACK_SENTENCES)} built-in sentences, repeated ({corpus} not found)"


def build_vocab(root: Path, corpus: Path) -> Path:
    """A WordPiece vocabulary trained on the corpus's first VOCAB_SLICE_BYTES (or the built-in sentences,
    keeping every word), padded with [unusedN] entries up to VOCAB_SIZE."""
    from electra.tokenization import train_vocab, write_vocab

    text = root / "vocab_text.txt"
    if corpus.is_file():
        with open(corpus, encoding="utf-8") as handle:
            text.write_text("".join(handle.readlines(VOCAB_SLICE_BYTES)), encoding="utf-8")
    else:
        text.write_text("".join(f"{sentence}\n" for sentence in FALLBACK_SENTENCES), encoding="utf-8")
    tokens = train_vocab([text], vocab_size=VOCAB_SIZE, min_frequency=1 + corpus.is_file(), show_progress=False)
    tokens += [f"[unused{index}]" for index in range(VOCAB_SIZE - len(tokens))]
    vocab_file = root / "vocab.txt"
    write_vocab(tokens, vocab_file)
    return vocab_file


def build_model(folder: Path, objective: str, vocab_file: Path, seed: int = 0) -> Path:
    """A pre-trained model folder as `electra pretrain` writes it, with random weights."""
    import torch

    from electra.config import build_pretraining_config
    from electra.objectives import PretrainingModel
    from electra.pretrain import export_models
    from electra.tokenization import PAD, read_vocab

    vocab = read_vocab(vocab_file)
    config = build_pretraining_config({**SHAPE, **OBJECTIVES[objective]})
    torch.manual_seed(seed)
    model = PretrainingModel(config, len(vocab), vocab.index(PAD))
    folder.mkdir(parents=True)
    export_models(model, folder, vocab_file)
    (folder / "pretrain_config.json").write_text(json.dumps(config.to_dict()))
    return folder


def timed(call: Callable[[], T], min_seconds: float) -> tuple[float, int, T]:
    """Seconds a call takes on average over as many calls as fit in min_seconds (at least one), how many
    calls that was, and what the last one returned."""
    calls, started = 0, time.perf_counter()
    while True:
        result = call()
        calls += 1
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return elapsed / calls, calls, result


def rates(seconds: float, sentences: int, tokens: int, passes: int, calls: int) -> dict:
    return {
        "sentences": sentences,
        "tokens": tokens,
        "passes": passes,
        "seconds": seconds,
        "calls": calls,
        "sent_s": sentences / seconds,
        "tok_s": tokens / seconds,
    }


def ours(method: str, precision: str, texts: list[str], mlm_texts: list[str], args: argparse.Namespace) -> dict:
    import torch

    from electra.scoring import TextScorer

    scorer = TextScorer(args.model_dir / method, method=method, precision=precision, device=torch.device("cpu"))
    scorer.score(texts[:CHECKED], args.batch_size)  # warm-up
    chosen = texts if method == "electric" else mlm_texts

    def measured(sentences: list[str]) -> dict:
        seconds, calls, scores = timed(lambda: scorer.score(sentences, args.batch_size), args.min_seconds)
        tokens = sum(len(score.tokens) for score in scores)
        passes = len(sentences) if method == "electric" else tokens
        return rates(seconds, len(sentences), tokens, passes, calls)

    result = measured(chosen)
    if method == "electric" and len(mlm_texts) < len(texts):
        result["on_mlm_sentences"] = measured(mlm_texts)
    return result


def peer_totals(
    model: transformers.ElectraForMaskedLM,
    tokenizer: transformers.PreTrainedTokenizerBase,
    texts: list[str],
    batch_size: int,
) -> tuple[list[float], int]:
    """The classic pseudo-log-likelihood: each text's masked copies (one per token), in input order, in
    batches padded to the longest copy; full logits, log_softmax, the original token at the masked position.
    Returns each text's total and the number of copies."""
    import torch

    encoded = tokenizer(texts, truncation=True, max_length=MAX_SEQ_LENGTH)["input_ids"]
    copies = []  # (text, masked position, original token, masked ids)
    for index, ids in enumerate(encoded):
        for position in range(1, len(ids) - 1):
            masked = list(ids)
            masked[position] = tokenizer.mask_token_id
            copies.append((index, position, ids[position], masked))
    totals = [0.0] * len(texts)
    with torch.no_grad():
        for start in range(0, len(copies), batch_size):
            batch = copies[start : start + batch_size]
            input_ids = torch.nn.utils.rnn.pad_sequence(
                [torch.tensor(copy[3]) for copy in batch], batch_first=True, padding_value=tokenizer.pad_token_id
            )
            attention_mask = torch.zeros_like(input_ids)
            for row, copy in enumerate(batch):
                attention_mask[row, : len(copy[3])] = 1
            logits = model(input_ids=input_ids, attention_mask=attention_mask).logits
            log_probs = logits.log_softmax(-1)
            rows = torch.arange(len(batch))
            positions = torch.tensor([copy[1] for copy in batch])
            originals = torch.tensor([copy[2] for copy in batch])
            for copy, value in zip(batch, log_probs[rows, positions, originals].tolist(), strict=True):
                totals[copy[0]] += value
    return totals, len(copies)


def peer(texts: list[str], args: argparse.Namespace) -> dict:
    import torch
    import transformers

    from electra.scoring import TextScorer

    folder = args.model_dir / "mlm" / "generator"
    model = transformers.ElectraForMaskedLM.from_pretrained(str(folder)).eval()
    tokenizer = transformers.ElectraTokenizerFast.from_pretrained(str(folder), do_lower_case=True)
    if len(tokenizer) != VOCAB_SIZE:
        raise SystemExit(f"the peer's tokenizer has {len(tokenizer):,} entries, not {folder / 'vocab.txt'}'s")
    peer_totals(model, tokenizer, texts[:CHECKED], args.batch_size)  # warm-up
    seconds, calls, (totals, copies) = timed(
        lambda: peer_totals(model, tokenizer, texts, args.batch_size), args.min_seconds
    )
    result = rates(seconds, len(texts), copies, copies, calls)

    scorer = TextScorer(args.model_dir / "mlm", method="mlm", precision="fp32", device=torch.device("cpu"))
    expected = [score.total for score in scorer.score(texts[:CHECKED], args.batch_size)]
    difference = float(np.max(np.abs(np.asarray(totals[: len(expected)]) - np.asarray(expected))))
    if not difference <= TOLERANCE:
        raise SystemExit(
            f"peer-mlm's pseudo-log-likelihoods differ from ours-mlm's (fp32) by up to {difference:.3g} "
            f"(allowed {TOLERANCE}): peer {totals[: len(expected)]}, ours {expected}"
        )
    result["max_abs_diff"] = difference
    return result


def measure(variant: str, args: argparse.Namespace) -> dict:
    import torch

    torch.set_num_threads(args.threads)
    texts = (args.model_dir / "sentences.txt").read_text(encoding="utf-8").splitlines()
    mlm_texts = texts[: args.mlm_sentences]
    if variant == "peer-mlm":
        return peer(mlm_texts, args)
    name, method, precision = variant.split("-") if variant.count("-") == 2 else ("", "", "")
    if name != "ours" or method not in OBJECTIVES or precision not in ("fp32", "auto"):
        raise SystemExit(f"unknown variant {variant!r}")
    return ours(method, precision, texts, mlm_texts, args)


def prepare(root: Path, variants: list[str], texts: list[str], corpus: Path) -> None:
    """sentences.txt, vocab.txt and the model folders the variants need, in root."""
    (root / "sentences.txt").write_text("".join(f"{text}\n" for text in texts), encoding="utf-8")
    vocab_file = build_vocab(root, corpus)
    for objective in OBJECTIVES:
        if any(f"-{objective}" in variant for variant in variants):
            build_model(root / objective, objective, vocab_file)


def report(args: argparse.Namespace, rows: dict[str, dict], auto: str, source: str, texts: list[str]) -> None:
    import torch
    import transformers

    from electra.tokenization import build_tokenizer, read_vocab

    tokenizer = build_tokenizer(read_vocab(args.vocab_file))
    pieces = [len(encoding.ids) for encoding in tokenizer.encode_batch(texts, add_special_tokens=False)]
    mlm_count = min(args.mlm_sentences, len(texts))
    wait_policy = f"; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}" if "OMP_WAIT_POLICY" in os.environ else ""
    print(
        f"ELECTRA-Small-shaped scorers, random weights; {len(texts)} sentences ({source}), "
        f"{np.mean(pieces):.1f} word pieces each; the masked LMs score the first {mlm_count} "
        f"({np.mean(pieces[:mlm_count]):.1f} pieces each); batch {args.batch_size} (sentences for Electric, "
        f"masked copies for a masked LM), {args.threads} thread(s); torch {torch.__version__}, "
        f'transformers {transformers.__version__} (peer); "auto" = {auto}{wait_policy}'
    )
    peer_row = rows.get("peer-mlm")
    print(
        f"{'variant':<18} | {'sentences':>9} | {'sent/s':>8} | {'tokens/s':>9} | {'seconds':>8} | {'passes':>6} | "
        f"{'vs peer':>7}"
    )
    for variant, row in rows.items():
        versus = f"{row['sent_s'] / peer_row['sent_s']:.2f}x" if peer_row and "mlm" in variant else "-"
        print(
            f"{variant:<18} | {row['sentences']:9,} | {row['sent_s']:8,.1f} | {row['tok_s']:9,.0f} | "
            f"{row['seconds']:8.2f} | {row['passes']:6,} | {versus:>7}"
        )

    def best(method: str) -> str | None:
        found = [variant for variant in rows if variant.startswith(f"ours-{method}-")]
        return max(found, key=lambda variant: rows[variant]["sent_s"]) if found else None

    electric, mlm = best("electric"), best("mlm")
    electric_same = None
    if electric:
        same = rows[electric].get("on_mlm_sentences", rows[electric])
        electric_same = same["sent_s"]
        if "on_mlm_sentences" in rows[electric]:
            print(f"{electric} on the masked LMs' {same['sentences']} sentences: {same['sent_s']:,.1f} sentences/s")
    if peer_row:
        print(
            f"peer-mlm vs ours-mlm (fp32) totals on the first {CHECKED} sentences: "
            f"largest difference {peer_row['max_abs_diff']:.2e}"
        )

    def figure(variant: str | None, key: str = "sent_s") -> float | None:
        return round(rows[variant][key], 2) if variant in rows else None

    def ratio(numerator: float | None, denominator: float | None) -> float | None:
        return round(numerator / denominator, 2) if numerator and denominator else None

    peer_sent_s = peer_row["sent_s"] if peer_row else None
    headline = {
        "electric_sent_s": figure(electric),
        "mlm_sent_s": figure(mlm),
        "peer_mlm_sent_s": figure("peer-mlm"),
        "electric_vs_mlm": ratio(electric_same, rows[mlm]["sent_s"] if mlm else None),
        # Like with like: the peer computes in fp32, so its ratio is ours in fp32 (from unrounded figures).
        "mlm_vs_peer": ratio(rows.get("ours-mlm-fp32", {}).get("sent_s"), peer_sent_s),
        "best_mlm_vs_peer_fp32": ratio(rows[mlm]["sent_s"] if mlm else None, peer_sent_s),
        "electric_variant": electric,
        "mlm_variant": mlm,
        "electric_fp32_sent_s": figure("ours-electric-fp32"),
        "mlm_fp32_sent_s": figure("ours-mlm-fp32"),
        "sentences": len(texts),
        "mlm_sentences": mlm_count,
        "mean_pieces": round(float(np.mean(pieces)), 1),
        "peer_max_abs_diff": peer_row["max_abs_diff"] if peer_row else None,
        "threads": args.threads,
    }
    print(json.dumps(headline))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sentences", type=int, default=256, help="sentences Electric scores")
    parser.add_argument("--mlm-sentences", type=int, default=64, help="the first N of them, for the masked LMs")
    parser.add_argument("--batch-size", type=int, default=64, help="sentences (Electric) or masked copies (MLM)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--min-seconds", type=float, default=2.0, help="repeat timed calls until this long")
    parser.add_argument("--variants", default=DEFAULT_VARIANTS)
    parser.add_argument("--corpus", type=Path, default=CORPUS, help="English text, one paragraph a line")
    parser.add_argument("--run-one", default=None, help=argparse.SUPPRESS)
    parser.add_argument("--model-dir", type=Path, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.run_one:
        print(json.dumps(measure(args.run_one, args)))
        return
    import torch

    auto = auto_precision_name()
    variants = args.variants.split(",")
    for method in OBJECTIVES:
        if auto == "fp32" and f"ours-{method}-auto" in variants and f"ours-{method}-fp32" in variants:
            variants.remove(f"ours-{method}-auto")  # the same run twice
    texts, source = load_sentences(args.sentences, args.corpus)
    with tempfile.TemporaryDirectory() as root:
        args.model_dir = Path(root)
        prepare(args.model_dir, variants, texts, args.corpus)
        flags = ("model_dir", "sentences", "mlm_sentences", "batch_size", "threads", "min_seconds")
        rows = run_variants(__file__, variants, args, flags)
        args.vocab_file = args.model_dir / "vocab.txt"
        torch.set_num_threads(args.threads)
        report(args, rows, auto, source, texts)


if __name__ == "__main__":
    main()
