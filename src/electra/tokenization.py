"""BERT-compatible WordPiece: reading and training `vocab.txt`, and the Rust tokenizer that applies it.

Semantics follow the reference's `tokenization.FullTokenizer`: remove control characters, pad CJK
ideographs with spaces (so Chinese becomes one token per character), lower-case and strip accents
when `do_lower_case` (accents only if `strip_accents`), split on whitespace and punctuation, then
greedy longest-match-first WordPiece with `##` continuations and at most 200 characters a word.
Special tokens are deliberately not registered with the tokenizer: the literal text "[SEP]" in a
corpus is split like any other text, as the reference does.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from tokenizers import Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from electra.corpus import InvalidUtf8Report, iter_corpus_lines
from electra.errors import UserError
from electra.fileio import read_text, require_file, write_text_atomic

PAD, UNK, CLS, SEP, MASK = "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"
SPECIAL_TOKENS = (PAD, UNK, CLS, SEP, MASK)
MAX_INPUT_CHARS_PER_WORD = 200
# Characters kept in the alphabet of a trained vocabulary: the most frequent ones covering this share.
ALPHABET_COVERAGE = 0.9999


def read_vocab(path: str | os.PathLike) -> list[str]:
    """Tokens of a `vocab.txt` in id order (or of the WordPiece model in a Hugging Face `tokenizer.json`, all that
    newer `transformers` saves); a UserError if the file is absent or lacks special tokens."""
    vocab_path = Path(path)
    require_file(vocab_path, "vocabulary file", "build one with `electra vocab`, or give a released model's vocab.txt")
    if vocab_path.suffix == ".json":
        tokens = _tokenizer_json_vocab(vocab_path)
    else:  # not UTF-8: a UserError naming the line
        tokens = [line.strip() for line in read_text(vocab_path).splitlines()]
    missing = [token for token in SPECIAL_TOKENS if token not in tokens]
    if missing:
        raise UserError(
            f"vocabulary file {vocab_path} lacks the special token(s) {' '.join(missing)}: "
            f"a BERT-style vocab.txt needs all of {' '.join(SPECIAL_TOKENS)}, one token a line"
        )
    for token in SPECIAL_TOKENS:  # readers disagree on which copy is the id: the data and the model would too
        lines = [number for number, entry in enumerate(tokens, 1) if entry == token]
        if len(lines) > 1:
            raise UserError(
                f"vocabulary file {vocab_path} holds {token} {len(lines)} times (lines "
                f"{', '.join(map(str, lines))}): keep one and rebuild any data made with it"
            )
    return tokens


def _tokenizer_json_vocab(path: Path) -> list[str]:
    try:
        model = json.loads(read_text(path)).get("model", {})
    except (json.JSONDecodeError, AttributeError):
        model = {}
    ids = model.get("vocab") if model.get("type") == "WordPiece" else None
    if not isinstance(ids, dict) or sorted(ids.values()) != list(range(len(ids))):
        raise UserError(f"{path} holds no WordPiece vocabulary (ELECTRA's): give its vocab.txt with vocab_file")
    return sorted(ids, key=ids.__getitem__)


def vocab_checksum(tokens: list[str]) -> str:
    return hashlib.sha256("\n".join(tokens).encode("utf-8")).hexdigest()


def write_vocab(tokens: list[str], path: str | os.PathLike) -> None:
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, "".join(f"{token}\n" for token in tokens))


# Python's str.lower(), which the reference uses, writes a capital sigma that ends a word as the final form ς;
# the tokenizers library lower-cases letter by letter (σ), which gives Greek words other pieces. A capital sigma
# after a letter and not before one (either side skipping case-ignorable marks, as Unicode's rule) becomes ς first.
# Skipped too: the control characters the reference removes before it lower-cases (not tab and line breaks).
_CASE_IGNORABLE = (
    r"[\p{Mn}\p{Me}\p{Cf}\p{Lm}\p{Sk}'.:·"  # marks, format characters, modifiers, mid-word punctuation
    r"\x{2018}\x{2019}\x{2024}\x{2027}\x{0387}\x{FE13}\x{FE52}\x{FE55}\x{FF07}\x{FF0E}\x{FF1A}"
    r"\x{0}-\x{8}\x{B}\x{C}\x{E}-\x{1F}\x{7F}-\x{9F}\x{FFFD}]"  # controls (not tab, \n, \r) and U+FFFD
)
_FINAL_SIGMA = Regex(
    rf"(?<=[\p{{Lu}}\p{{Ll}}\p{{Lt}}]{_CASE_IGNORABLE}{{0,8}})Σ(?!{_CASE_IGNORABLE}*[\p{{Lu}}\p{{Ll}}\p{{Lt}}])"
)


def _normalizer(do_lower_case: bool, strip_accents: bool) -> normalizers.Normalizer:
    bert = normalizers.BertNormalizer(
        clean_text=True,
        handle_chinese_chars=True,
        strip_accents=do_lower_case and strip_accents,
        lowercase=do_lower_case,
    )
    return normalizers.Sequence([normalizers.Replace(_FINAL_SIGMA, "ς"), bert]) if do_lower_case else bert


def normalization_settings(record: dict[str, Any]) -> dict[str, bool]:
    """`do_lower_case` and `strip_accents` as a record says: pretrain_data.json's settings, pretrain_config.json,
    electra_task.json, or a Hugging Face tokenizer_config.json (whose `strip_accents` null means "when
    lower-casing"). Both default to true, as in the reference."""
    strip = record.get("strip_accents")
    return {"do_lower_case": bool(record.get("do_lower_case", True)), "strip_accents": strip is None or bool(strip)}


_CJK_SPACING = normalizers.BertNormalizer(
    clean_text=False, handle_chinese_chars=True, strip_accents=False, lowercase=False
)


def split_words(text: str) -> list[str]:
    """The words of a line to tag: split at whitespace, and each CJK ideograph a word of its own, as the tokenizer
    reads Chinese (one token per character) and as Chinese tagging corpora have one character a line."""
    return _CJK_SPACING.normalize_str(text).split()


def build_tokenizer(tokens: list[str], do_lower_case: bool = True, strip_accents: bool = True) -> Tokenizer:
    """A Rust WordPiece tokenizer with the reference's normalisation over the given vocabulary."""
    # Duplicate lines map to the last id, as the reference's load_vocab does.
    vocab = {token: index for index, token in enumerate(tokens)}
    tokenizer = Tokenizer(
        models.WordPiece(vocab=vocab, unk_token=UNK, max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD)
    )
    tokenizer.normalizer = _normalizer(do_lower_case, strip_accents)
    tokenizer.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tokenizer.decoder = decoders.WordPiece(prefix="##")
    return tokenizer


def alphabet_size_for_coverage(char_counts: Counter, coverage: float = ALPHABET_COVERAGE) -> int:
    """How many of the most frequent characters it takes to cover `coverage` of all occurrences."""
    total = sum(char_counts.values())
    covered = 0
    for rank, (_, count) in enumerate(char_counts.most_common(), start=1):
        covered += count
        if covered >= coverage * total:
            return rank
    return len(char_counts)


def train_vocab(
    files: list[Path],
    vocab_size: int = 30522,
    do_lower_case: bool = True,
    strip_accents: bool = True,
    limit_alphabet: int | None = None,
    min_frequency: int = 2,
    report: InvalidUtf8Report | None = None,
    show_progress: bool = True,
) -> list[str]:
    """Train a WordPiece vocabulary on corpus files; special tokens take ids 0-4 ([PAD] is id 0).

    `limit_alphabet=None` keeps the most frequent characters that cover 99.99% of the text (as many as fit in the
    vocabulary with their "##" pieces), so a Chinese corpus keeps its thousands of characters and an English one
    does not spend entries on stray symbols. The alphabet is chosen here, ties broken by code point:
    the tokenizers trainer cuts its alphabet in hash order among equally frequent characters, which
    changes from run to run. That costs one extra streaming pass over the corpus.
    """
    if vocab_size <= len(SPECIAL_TOKENS):
        raise UserError(
            f"--vocab-size {vocab_size} is too small: it must exceed the {len(SPECIAL_TOKENS)} special tokens"
        )
    report = report if report is not None else InvalidUtf8Report()
    normalizer = _normalizer(do_lower_case, strip_accents)

    def normalized_lines(report: InvalidUtf8Report) -> Iterator[str]:
        for line in iter_corpus_lines(files, report):
            if line.strip():
                yield normalizer.normalize_str(line)

    split_words = pre_tokenizers.BertPreTokenizer()
    char_counts: Counter = Counter()
    inner_chars: set[str] = set()  # characters that occur after the first of a word: they get a "##" piece
    for line in normalized_lines(report):
        char_counts.update(line)
        for word, _ in split_words.pre_tokenize_str(line):
            inner_chars.update(word[1:])
    for space in (" ", "\t"):
        char_counts.pop(space, None)
    if not char_counts:
        raise UserError("the corpus holds no text to train a vocabulary on")
    by_frequency = sorted(char_counts, key=lambda char: (-char_counts[char], char))
    if limit_alphabet is None:
        limit_alphabet = alphabet_size_for_coverage(char_counts)
    # What fits: each character of the alphabet takes an entry, and one more for its "##" piece if it occurs inside
    # words (Chinese characters, each a word of its own, do not). The trainer adds merges only in the room left.
    room = vocab_size - len(SPECIAL_TOKENS)
    alphabet: list[str] = []
    for char in by_frequency[:limit_alphabet]:
        room -= 2 if char in inner_chars else 1
        if room < 0:
            break
        alphabet.append(char)
    if not alphabet:
        raise UserError(
            f"a vocabulary of {vocab_size} tokens has no room for the corpus's most frequent character "
            f"{by_frequency[0]!r} after the {len(SPECIAL_TOKENS)} special tokens (it takes 2 entries, itself and its "
            "## form): raise --vocab-size"
        )
    # The trainer numbers the "##" pieces in hash order, and those numbers break ties between equally frequent
    # merges, so the vocabulary changed from run to run (huggingface/tokenizers#1794). Declared up front,
    # in a fixed order, the pieces get fixed numbers.
    continuations = [f"##{char}" for char in sorted(inner_chars.intersection(alphabet))]
    report = InvalidUtf8Report()  # already counted on this pass
    tokenizer = Tokenizer(models.WordPiece(unk_token=UNK, max_input_chars_per_word=MAX_INPUT_CHARS_PER_WORD))
    # The lines arrive normalised; the pre-tokenizer still splits words and punctuation.
    tokenizer.pre_tokenizer = split_words
    trainer = trainers.WordPieceTrainer(
        vocab_size=vocab_size,
        min_frequency=min_frequency,
        special_tokens=[*SPECIAL_TOKENS, *continuations],
        limit_alphabet=len(alphabet),
        initial_alphabet=alphabet,
        continuing_subword_prefix="##",
        show_progress=show_progress,
    )
    tokenizer.train_from_iterator(normalized_lines(report), trainer=trainer)
    vocab = tokenizer.get_vocab()
    if len(vocab) <= len(SPECIAL_TOKENS):
        raise UserError("the corpus holds no text to train a vocabulary on")
    tokens = sorted(vocab, key=vocab.__getitem__)[len(SPECIAL_TOKENS) + len(continuations) :]
    # The usual layout: special tokens, characters, "##" characters, then the merged pieces.
    return [*SPECIAL_TOKENS, *tokens[: len(alphabet)], *continuations, *tokens[len(alphabet) :]]
