"""`electra score` and `electra rerank`: how likely a pre-trained model finds a text, and n-best re-ranking.

Electric (pre-trained with `"electric_objective": true`) gives every token an energy E(x)_t in ONE
forward pass over the unmasked text. Its noise-contrastive training leaves it close to self-normalised,
so log p(x_t | rest) ~ -E(x)_t, and the text's pseudo-log-likelihood is the sum of -E(x)_t over its
tokens (Clark et al., "Pre-Training Transformers as Energy-Based Cloze Models", 2020). The discriminator's
output is that energy: training adds log q(x_t) + log(k / (1 - k)) to it to get the noise logit.

A masked language model (an ELECTRA generator, or a model pre-trained with `"electra_objective": false`)
needs one pass per token: one copy of the text per token with that token masked, log p(original) read at
the masked position (Salazar et al., "Masked Language Model Scoring", 2020). Both are batched here, so
they can be compared on the same texts.
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors.torch import load_model
from torch import nn
from tqdm import tqdm

from electra.config import ModelConfig, pretraining_objective
from electra.errors import UserError
from electra.fileio import (
    choose_output_file,
    open_text,
    read_json,
    read_text,
    read_weights,
    require_file,
    write_text_atomic,
)
from electra.modeling import ElectraForMaskedLM, ElectraForPreTraining
from electra.pretrain import weights_file
from electra.tasks import read_jsonl_rows
from electra.tokenization import CLS, MASK, PAD, SEP, UNK, build_tokenizer, normalization_settings, read_vocab
from electra.trainer import checkpoint_dirs, resolve_precision

METHODS = ("electric", "mlm")


@dataclass
class ScoringModel:
    """Where the weights that score text live, and how: Electric energies or masked-LM log-probabilities."""

    method: str
    folder: Path  # a Hugging Face-layout folder: config.json, model.safetensors, vocab.txt
    normalization: dict[str, bool]  # do_lower_case and strip_accents


def _read_json(path: Path) -> dict[str, Any]:
    return read_json(path) if path.is_file() else {}


def locate_scoring_model(model_dir: str | Path, method: str = "auto") -> ScoringModel:
    """The part of a model folder that scores text. A pre-trained model folder (with pretrain_config.json)
    scores with Electric's discriminator if it was pre-trained as Electric, else with its generator; a
    discriminator/ or generator/ folder (ours or Hugging Face's) scores with itself."""
    folder = Path(model_dir)
    if method not in ("auto", *METHODS):
        raise UserError(f"--method {method!r} is not one of auto, {', '.join(METHODS)}")
    record = _read_json(folder / "pretrain_config.json")
    if record:
        objective = pretraining_objective(record)
        electric = objective == "Electric"
        chosen = method if method != "auto" else ("electric" if electric else "mlm")
        if chosen == "electric" and not electric:
            raise UserError(
                f"{folder} was pre-trained with the {objective} objective: only an Electric model's discriminator "
                'outputs energies. Score with its masked LM (--method mlm) or pre-train with "electric_objective": true'
            )
        part = folder / ("discriminator" if chosen == "electric" else "generator")
        if not (part / "config.json").is_file():
            hint = " (Electric's two-tower cloze model is not a masked LM: use --method electric)" if electric else ""
            if not hint and checkpoint_dirs(folder):
                hint = " (its pre-training has not finished: it exports discriminator/ and generator/ at its end)"
            raise UserError(f"{folder} has no exported {part.name}/ to score with{hint}")
        return ScoringModel(chosen, part, normalization_settings(record))
    config = _read_json(folder / "config.json")
    if not config:
        raise UserError(
            f"{folder} is not a model folder: give a pre-trained model folder (with pretrain_config.json) "
            "or its discriminator/ or generator/"
        )
    architecture = (config.get("architectures") or [""])[0]
    parent = _read_json(folder.parent / "pretrain_config.json")
    tokenizer_config = folder / "tokenizer_config.json"
    normalization = normalization_settings(_read_json(tokenizer_config) if tokenizer_config.is_file() else parent)
    if architecture == "ElectraForMaskedLM" and method in ("auto", "mlm"):
        return ScoringModel("mlm", folder, normalization)
    if architecture == "ElectraForPreTraining" and (method == "electric" or parent.get("electric_objective")):
        return ScoringModel("electric", folder, normalization)
    if architecture == "ElectraForPreTraining":
        raise UserError(
            f"{folder} is a discriminator, and nothing says it was pre-trained as Electric (an ELECTRA "
            "discriminator's logits are not energies): pass --method electric if it was, or score with a generator/"
        )
    raise UserError(
        f"{folder} holds a {architecture or 'model of unknown kind'}: scoring needs an ELECTRA "
        "discriminator pre-trained as Electric or a masked LM (ElectraForMaskedLM)"
    )


@dataclass
class TextScore:
    """Per-token log-likelihoods of one text (without [CLS] and [SEP]); `total` is its pseudo-log-likelihood.
    A text longer than the model's window was scored in `windows` overlapping pieces. Words the vocabulary lacks
    are scored as [UNK], whatever they were: `unknown_tokens` counts them."""

    tokens: list[str]
    token_scores: np.ndarray
    windows: int = 1

    @property
    def total(self) -> float:
        return float(self.token_scores.sum())

    @property
    def unknown_tokens(self) -> int:
        return self.tokens.count(UNK)

    def to_dict(self) -> dict[str, Any]:
        count = len(self.tokens)
        return {
            "score": self.total,
            "num_tokens": count,
            "mean_score": self.total / count if count else 0.0,
            "tokens": self.tokens,
            "token_scores": [round(float(value), 4) for value in self.token_scores],
            **({"windows": self.windows} if self.windows > 1 else {}),
            **({"unknown_tokens": self.unknown_tokens} if self.unknown_tokens else {}),
        }


RESULT_FIELDS = ("score", "num_tokens", "mean_score", "tokens", "token_scores", "windows", "unknown_tokens")


def _caveats(scores: list[TextScore]) -> list[str]:
    """Notes on texts whose score means less than it seems: empty ones (0, the highest possible) and ones with
    words the vocabulary lacks."""
    notes = []
    empty = sum(not score.tokens for score in scores)
    if empty:
        notes.append(f"note: {empty:,} empty text(s) score 0, the highest a text can score")
    unknown = sum(score.unknown_tokens > 0 for score in scores)
    if unknown:
        notes.append(
            f"note: {unknown:,} text(s) hold words the vocabulary lacks, scored as [UNK] (their rows count them as "
            '"unknown_tokens"); a vocabulary trained on text like this scores it better'
        )
    return notes


@dataclass
class Window:
    """One model input cut from a text: [CLS] pieces [SEP]. Of its pieces it scores `count`, from row position
    `first` on, which are the text's pieces `offset` to `offset + count`."""

    text: int
    row: np.ndarray
    first: int
    count: int
    offset: int


def plan_windows(length: int, budget: int) -> list[tuple[int, int, int]]:
    """(start, keep_from, keep_to) of the windows of at most `budget` pieces that score a text of `length`:
    consecutive windows overlap by half, and each piece is scored in the window whose centre is nearest, where
    it has the most context on its poorer side (as the reference's QA picks a token's "max context" span)."""
    if length <= budget:
        return [(0, 0, length)]
    starts = [*range(0, length - budget, max(1, budget // 2)), length - budget]
    centres = np.asarray(starts) + (budget - 1) / 2
    owners = np.searchsorted((centres[:-1] + centres[1:]) / 2, np.arange(length), side="left")
    edges = np.searchsorted(owners, np.arange(len(starts) + 1), side="left")
    return [(start, int(edges[index]), int(edges[index + 1])) for index, start in enumerate(starts)]


class TextScorer:
    """Scores texts with an Electric discriminator (one pass a text) or a masked LM (one pass a token)."""

    def __init__(
        self,
        model_dir: str | Path,
        method: str = "auto",
        max_seq_length: int = 128,
        precision: str = "auto",
        device: torch.device | None = None,
    ):
        self.source = locate_scoring_model(model_dir, method)
        self.method = self.source.method
        folder = self.source.folder
        config = ModelConfig.from_dict(read_json(folder / "config.json"))
        self.model: nn.Module = (ElectraForPreTraining if self.method == "electric" else ElectraForMaskedLM)(config)
        weights = weights_file(folder) or folder / "model.safetensors"  # older Hugging Face folders: the .bin
        try:
            if weights.suffix == ".safetensors":  # load_model restores the tensors that save_model stored once
                missing, unexpected = load_model(self.model, str(weights), strict=False)
            else:
                missing, unexpected = self.model.load_state_dict(read_weights(weights), strict=False)
        except UserError:
            raise
        except Exception as error:  # damaged, or other shapes than config.json's
            detail = " ".join(line.strip() for line in str(error).splitlines()[:3] if line.strip())[:300]
            raise UserError(
                f"cannot load {weights} ({detail}): export the model again, or give the config.json that came "
                "with these weights"
            ) from None
        if missing or unexpected:
            raise UserError(
                f"{weights} does not hold a {type(self.model).__name__} "
                f"(missing {sorted(missing)[:4]}, unexpected {sorted(unexpected)[:4]})"
            )
        self.vocab = read_vocab(folder / "vocab.txt")
        ids = {token: index for index, token in enumerate(self.vocab)}
        self.cls_id, self.sep_id, self.mask_id, self.pad_id = (ids[token] for token in (CLS, SEP, MASK, PAD))
        self.tokenizer = build_tokenizer(self.vocab, **self.source.normalization)
        self.max_seq_length = min(max_seq_length, config.max_position_embeddings)
        self.device = device or torch.device("cuda" if torch.cuda.is_available() else "cpu")
        self.model.to(self.device).eval()
        self.autocast_dtype = resolve_precision(precision, self.device)

    def encode(self, texts: list[str]) -> tuple[list[np.ndarray], list[Window]]:
        """Each text's pieces, and the windows (of max_seq_length with [CLS] and [SEP]) that score them."""
        budget = self.max_seq_length - 2
        pieces, windows = [], []
        for index, encoding in enumerate(self.tokenizer.encode_batch(texts, add_special_tokens=False)):
            ids = np.asarray(encoding.ids, dtype=np.int64)
            pieces.append(ids)
            for start, keep_from, keep_to in plan_windows(len(ids), budget):
                row = np.concatenate([[self.cls_id], ids[start : start + budget], [self.sep_id]])
                windows.append(Window(index, row, 1 + keep_from - start, keep_to - keep_from, keep_from))
        return pieces, windows

    def _batch(self, rows: list[np.ndarray]) -> tuple[torch.Tensor, torch.Tensor]:
        length = max(len(row) for row in rows)
        input_ids = np.full((len(rows), length), self.pad_id, dtype=np.int64)
        for index, row in enumerate(rows):
            input_ids[index, : len(row)] = row
        ids = torch.from_numpy(input_ids).to(self.device)
        return ids, (ids != self.pad_id).long()

    def _forward(self, *args: torch.Tensor) -> torch.Tensor:
        enabled = self.autocast_dtype is not None
        with torch.no_grad(), torch.autocast(self.device.type, dtype=self.autocast_dtype, enabled=enabled):
            return self.model(*args).float()

    def _electric_scores(self, windows: list[Window], batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        order = np.argsort([len(window.row) for window in windows], kind="stable")
        for start in range(0, len(order), batch_size):
            chosen = order[start : start + batch_size]
            ids, mask = self._batch([windows[i].row for i in chosen])
            energies = self._forward(ids, mask, torch.zeros_like(ids)).cpu().numpy()
            for row, index in enumerate(chosen):
                window = windows[index]
                yield int(index), -energies[row, window.first : window.first + window.count]

    def _masked_lm_scores(self, windows: list[Window], batch_size: int) -> Iterator[tuple[int, np.ndarray]]:
        """One copy per scored piece with that piece masked; copies of similar-length windows share a batch."""
        copies = [
            (int(index), position)
            for index in np.argsort([len(window.row) for window in windows], kind="stable")
            for position in range(windows[index].first, windows[index].first + windows[index].count)
        ]
        scores = {index: np.zeros(window.count, dtype=np.float32) for index, window in enumerate(windows)}
        remaining = {index: window.count for index, window in enumerate(windows)}
        for index, count in remaining.items():
            if count == 0:
                yield index, scores[index]
        for start in range(0, len(copies), batch_size):
            chosen = copies[start : start + batch_size]
            masked = []
            for index, position in chosen:
                row = windows[index].row.copy()
                row[position] = self.mask_id
                masked.append(row)
            ids, mask = self._batch(masked)
            positions = torch.tensor([[position] for _, position in chosen], device=self.device)
            originals = torch.tensor([[windows[index].row[position]] for index, position in chosen], device=self.device)
            logits = self._forward(ids, mask, torch.zeros_like(ids), positions)
            log_probs = logits.log_softmax(-1).gather(-1, originals[:, :, None])[:, 0, 0].cpu().numpy()
            for (index, position), value in zip(chosen, log_probs, strict=True):
                scores[index][position - windows[index].first] = value
                remaining[index] -= 1
                if remaining[index] == 0:
                    yield index, scores[index]

    def score(self, texts: list[str], batch_size: int = 64, verbose: bool = False) -> list[TextScore]:
        """Each text's per-token log-likelihoods, in the order of `texts`. `batch_size` counts windows for
        Electric and masked copies (one per token) for a masked LM. A text longer than max_seq_length is scored
        in overlapping windows; `verbose` shows a progress bar and notes long, empty and out-of-vocabulary texts."""
        pieces, windows = self.encode(texts)
        per_text = np.bincount([window.text for window in windows], minlength=len(texts))
        values = [np.zeros(len(ids), dtype=np.float32) for ids in pieces]
        remaining = per_text.copy()
        scored = self._electric_scores if self.method == "electric" else self._masked_lm_scores
        results: list[TextScore | None] = [None] * len(texts)
        progress = tqdm(total=len(texts), desc="score", unit="text", disable=None if verbose else True, file=sys.stderr)
        for index, window_values in scored(windows, batch_size):
            window = windows[index]
            values[window.text][window.offset : window.offset + window.count] = window_values
            remaining[window.text] -= 1
            if remaining[window.text] == 0:
                tokens = [self.vocab[token] for token in pieces[window.text]]
                results[window.text] = TextScore(tokens, values[window.text], int(per_text[window.text]))
                progress.update()
        progress.close()
        long_texts = int((per_text > 1).sum())
        if verbose and long_texts:
            print(
                f"note: {long_texts:,} text(s) longer than {self.max_seq_length} tokens were scored in overlapping "
                "windows of that length (--max-seq-length sets it)",
                file=sys.stderr,
            )
        for note in _caveats(results) if verbose else []:  # type: ignore[arg-type]
            print(note, file=sys.stderr)
        return results  # type: ignore[return-value]


# ----------------------------------------------------------------------------------------------- electra score
def read_texts(path: Path, text_field: str = "text") -> list[tuple[dict[str, Any], str]]:
    """(fields, text) for each text: JSONL rows (all their fields, `text_field` the text), or plain text, one a
    line (blank lines are skipped, so each text keeps its line number as a field beside "text")."""
    require_file(path, "input file")
    if path.suffix.lower() == ".jsonl":
        texts = []
        for number, row in read_jsonl_rows(path):
            if text_field not in row:
                raise UserError(f"{path}:{number}: no text field {text_field!r} (name it with --text-field)")
            if not isinstance(row[text_field], str):
                value = row[text_field]
                raise UserError(f"{path}:{number}: the {text_field!r} field must be a string, not {value!r:.60}")
            taken = [name for name in RESULT_FIELDS if name in row]
            if taken:
                raise UserError(
                    f"{path}:{number}: the field(s) {', '.join(taken)} would be overwritten by the results, which "
                    "use those names: rename them (to re-rank by a first-pass score, use `electra rerank`)"
                )
            texts.append((row, row[text_field]))
        return texts
    with open_text(path) as handle:
        lines = [(number, line.strip()) for number, line in enumerate(handle, 1) if line.strip()]
    return [({"line": number, "text": line}, line) for number, line in lines]


def run_scoring(
    model_dir: str | Path,
    input_file: str | Path,
    output_file: str | Path | None = None,
    method: str = "auto",
    batch_size: int = 64,
    max_seq_length: int = 128,
    text_field: str = "text",
    precision: str = "auto",
) -> tuple[Path, str, int]:
    """Scores every text of `input_file` into JSONL (default: beside the input, `.scores.jsonl`)."""
    source = Path(input_file)
    target = choose_output_file(output_file, source.with_suffix(".scores.jsonl"), source)
    texts = read_texts(source, text_field)
    if not texts:
        raise UserError(f"{source} holds no text to score")
    scorer = TextScorer(model_dir, method, max_seq_length, precision)
    scores = scorer.score([text for _, text in texts], batch_size, verbose=True)
    lines = [
        json.dumps({**fields, **score.to_dict()}, ensure_ascii=False)
        for (fields, _), score in zip(texts, scores, strict=True)
    ]
    write_text_atomic(target, "\n".join(lines) + "\n")
    return target, scorer.method, len(lines)


# ----------------------------------------------------------------------------------------------- electra rerank
@dataclass
class NBestList:
    id: str
    texts: list[str]
    first_pass: list[float]
    reference: str | None = None


def read_nbest(path: Path) -> list[NBestList]:
    """JSONL, one list a line: {"id": ..., "hypotheses": [{"text": ..., "score": first-pass score}, ...]}
    (a hypothesis may also be a [text, score] pair), with an optional "reference"."""
    require_file(path, "n-best file")
    lists = []
    for number, row in read_jsonl_rows(path):
        hypotheses = row.get("hypotheses")
        if not isinstance(hypotheses, list) or not hypotheses:
            problem = 'an empty "hypotheses" list' if hypotheses == [] else 'no "hypotheses" list'
            raise UserError(
                f'{path}:{number}: {problem} (expected {{"id": ..., "hypotheses": '
                f'[{{"text": ..., "score": ...}}, ...]}})'
            )
        texts, first_pass = [], []
        for position, item in enumerate(hypotheses, 1):
            if isinstance(item, dict):
                text, value = item.get("text"), item.get("score")
            else:
                text, value = item if isinstance(item, list) and len(item) == 2 else (None, None)
            if (
                not isinstance(text, str)
                or isinstance(value, bool)
                or not isinstance(value, (int, float))
                or not math.isfinite(value)
            ):
                raise UserError(
                    f'{path}:{number}: hypothesis {position} needs a "text" string and a finite numeric "score"'
                )
            texts.append(text)
            first_pass.append(float(value))
        reference = row.get("reference")
        if reference is not None and not isinstance(reference, str):
            raise UserError(f'{path}:{number}: "reference" must be a string of text, not {reference!r:.60}')
        lists.append(NBestList(str(row.get("id", len(lists))), texts, first_pass, reference))
    if not lists:
        raise UserError(f"{path} holds no n-best lists")
    return lists


def read_references(path: Path, lists: list[NBestList]) -> None:
    """Attach references: JSONL {"id", "text"} matched by id, or plain text with one line per list, in order."""
    require_file(path, "references file")
    if path.suffix.lower() == ".jsonl":
        rows = read_jsonl_rows(path)
        for number, row in rows:
            if not isinstance(row.get("text"), str):
                raise UserError(f'{path}:{number}: "text" must be a string of text, not {row.get("text")!r:.60}')
        by_id = {str(row.get("id")): row["text"] for _, row in rows}
        missing = [item.id for item in lists if item.id not in by_id]
        if missing:
            raise UserError(f"{path} has no reference for id(s) {', '.join(missing[:5])}")
        for item in lists:
            item.reference = by_id[item.id]
        return
    lines = read_text(path).splitlines()
    if len(lines) != len(lists):
        raise UserError(f"{path} has {len(lines):,} lines for {len(lists):,} n-best lists: give one reference a line")
    for item, line in zip(lists, lines, strict=True):
        item.reference = line.strip()


def word_error_rate(references: list[str], hypotheses: list[str]) -> float:
    """Corpus word error rate in percent: all substitutions, deletions and insertions over all reference words."""
    import jiwer

    return 100.0 * jiwer.wer(references, hypotheses)


def rerank(lists: list[NBestList], lm_scores: dict[str, float], weight: float) -> list[dict[str, Any]]:
    """Each list re-ordered by first-pass score + weight x language-model score (stable among ties)."""
    reranked = []
    for item in lists:
        hypotheses = [
            {"text": text, "first_pass": first, "lm_score": lm_scores[text], "score": first + weight * lm_scores[text]}
            for text, first in zip(item.texts, item.first_pass, strict=True)
        ]
        first_pass_best = item.texts[int(np.argmax(item.first_pass))]
        hypotheses.sort(key=lambda hypothesis: -hypothesis["score"])
        row = {
            "id": item.id,
            "best": hypotheses[0]["text"],
            "first_pass_best": first_pass_best,
            "hypotheses": hypotheses,
        }
        if item.reference is not None:
            row["reference"] = item.reference
        reranked.append(row)
    return reranked


def run_rerank(
    model_dir: str | Path,
    nbest_file: str | Path,
    weight: float = 1.0,
    references_file: str | Path | None = None,
    output_file: str | Path | None = None,
    method: str = "auto",
    batch_size: int = 64,
    max_seq_length: int = 128,
    precision: str = "auto",
) -> dict[str, Any]:
    """Re-ranks every n-best list, writes them as JSONL, and returns a summary (WER before/after if references)."""
    if not math.isfinite(weight):
        raise UserError(f"--weight {weight} is not a finite number")
    source = Path(nbest_file)
    inputs = [source, Path(references_file)] if references_file else [source]
    target = choose_output_file(output_file, source.with_suffix(".reranked.jsonl"), *inputs)
    lists = read_nbest(source)
    if references_file:
        read_references(Path(references_file), lists)
    scorer = TextScorer(model_dir, method, max_seq_length, precision)
    unique = sorted({text for item in lists for text in item.texts})
    lm_scores = {
        text: score.total for text, score in zip(unique, scorer.score(unique, batch_size, verbose=True), strict=True)
    }
    reranked = rerank(lists, lm_scores, weight)
    write_text_atomic(target, "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in reranked))
    summary: dict[str, Any] = {
        "output": target,
        "method": scorer.method,
        "lists": len(reranked),
        "changed": sum(row["best"] != row["first_pass_best"] for row in reranked),
        "rows": reranked,
    }
    with_references = [row for row in reranked if "reference" in row]
    if with_references and len(with_references) < len(reranked):
        print(
            f"note: {len(with_references):,} of {len(reranked):,} n-best lists have a reference: no word error rate "
            "(it needs one for every list)",
            file=sys.stderr,
        )
    elif with_references:
        references = [row["reference"] for row in reranked]
        summary["wer_before"] = word_error_rate(references, [row["first_pass_best"] for row in reranked])
        summary["wer_after"] = word_error_rate(references, [row["best"] for row in reranked])
    return summary


def describe_rerank(summary: dict[str, Any], shown: int = 10) -> str:
    """What changed, list by list (the first `shown` changes), and the error rates."""
    lines = []
    changes = [row for row in summary["rows"] if row["best"] != row["first_pass_best"]]
    for row in changes[:shown]:
        lines.append(f"{row['id']}: {row['first_pass_best']!r} -> {row['best']!r}")
    if len(changes) > shown:
        lines.append(f"... and {len(changes) - shown:,} more")
    lines.append(
        f"re-ranked {summary['lists']:,} n-best list(s) with {summary['method']} scores: "
        f"{summary['changed']:,} changed their best hypothesis"
    )
    if "wer_before" in summary:
        lines.append(
            f"word error rate: {summary['wer_before']:.2f}% first pass -> {summary['wer_after']:.2f}% re-ranked"
        )
    lines.append(f"wrote {summary['output']}")
    return "\n".join(lines)
