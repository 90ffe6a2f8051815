from __future__ import annotations

import random
import unicodedata
from pathlib import Path

import pytest
from transformers import BertTokenizerLegacy

from electra.cli import main
from electra.corpus import InvalidUtf8Report, iter_corpus_lines, list_corpus_files
from electra.errors import UserError
from electra.tokenization import (
    MAX_INPUT_CHARS_PER_WORD,
    SPECIAL_TOKENS,
    build_tokenizer,
    read_vocab,
    train_vocab,
    write_vocab,
)

from .conftest import shared_data, write_corpus

TRICKY_TEXT = [
    "Héllo, WORLD!! Ça va? naïve façade—“quoted” ‘text’ … (parens) [brackets] {braces}",
    "tabs\tand\u00a0no-break\u3000ideographic spaces, zero\u200bwidth",
    "control\x00chars\x07here and a replacement \ufffd char",
    "Mixed 中文和English混合，标点。日本語のテキスト 한국어 텍스트",
    "[SEP] [CLS] [MASK] literal special tokens stay text",
    "numbers 3.14159 and 1,000,000 and emails a.b@c.com and URLs https://x.org/a?b=c",
    "Ελληνικά Кириллица العربية עברית",
    "Η ΟΔΟΣ ΤΟΥ ΟΔΥΣΣΕΑ, ΟΠΩΣ ΛΕΝΕ ΟΙ ΦΙΛΟΙ ΣΑΣ: ΚΟΣΜΟΣ. Σ ΑΣΑ",  # a word-final capital sigma lower-cases to ς
    "ΟΔΟΣ\x00Α ΟΔΟΣ\x85Α ΑΣ’Α ΑΣ‘Α Α\x00Σ Σ\x00Σ",  # sigma beside controls the reference removes first, quotes
    "x" * (MAX_INPUT_CHARS_PER_WORD + 5),
]


def reference_tokenizer(vocab_file: Path, do_lower_case: bool, strip_accents: bool) -> BertTokenizerLegacy:
    """The reference's algorithm, configured as its FullTokenizer (accents stripped only when lower-casing)."""
    tokenizer = BertTokenizerLegacy(
        str(vocab_file), do_lower_case=do_lower_case, strip_accents=do_lower_case and strip_accents
    )
    tokenizer.wordpiece_tokenizer.max_input_chars_per_word = MAX_INPUT_CHARS_PER_WORD
    return tokenizer


def reference_ids(tokenizer: BertTokenizerLegacy, text: str) -> list[int]:
    # Below `tokenize`, which would treat "[SEP]" in the text as a special token; the reference does not.
    words = tokenizer.basic_tokenizer.tokenize(text)
    return tokenizer.convert_tokens_to_ids(
        [piece for word in words for piece in tokenizer.wordpiece_tokenizer.tokenize(word)]
    )


def train_on(corpus: Path, vocab_size: int, **kwargs) -> list[str]:
    return train_vocab(list_corpus_files(corpus), vocab_size=vocab_size, show_progress=False, **kwargs)


def test_trained_vocab_starts_with_special_tokens_and_respects_size(english_corpus: Path) -> None:
    tokens = train_on(english_corpus, vocab_size=150)
    assert tuple(tokens[:5]) == SPECIAL_TOKENS
    assert len(tokens) == 150
    assert len(set(tokens)) == len(tokens)
    assert all(token == token.lower() for token in tokens[5:])
    assert any(token.startswith("##") for token in tokens)


def test_training_the_same_corpus_twice_gives_the_same_vocabulary(tmp_path: Path) -> None:
    # Every word twice, and many characters and pairs equally frequent: the trainer's tie-breaks decide,
    # both at the alphabet's cut-off (limit_alphabet) and between merges.
    rng = random.Random(0)
    letters = "abcdefghijklmnopqrstuvwxyz"
    words = ["".join(rng.choice(letters) for _ in range(rng.randint(2, 7))) for _ in range(400)]
    corpus = write_corpus(tmp_path / "corpus", [[" ".join(words)] * 2])
    runs = [train_on(corpus, vocab_size=200, limit_alphabet=20) for _ in range(4)]
    assert all(run == runs[0] for run in runs[1:])
    characters = [token for token in runs[0] if len(token) == 1]
    assert len(characters) == 20
    pieces = runs[0][5 + 20 :]
    continuations = [token for token in pieces if len(token) == 3 and token.startswith("##")]
    assert pieces[: len(continuations)] == continuations, "characters, then ## characters, then merged pieces"


def test_cased_vocab_keeps_case_and_accents(english_corpus: Path) -> None:
    tokens = train_on(english_corpus, vocab_size=400, do_lower_case=False)
    assert {"Python", "Café", "naïve", "NAÏVE"} <= set(tokens)  # whole cased words, accents kept
    assert "python" not in tokens  # the corpus writes it only capitalised
    lower = train_on(english_corpus, vocab_size=400)  # the default: lower-cased and accents stripped
    assert not [token for token in lower[5:] if token != token.lower()]
    assert "python" in lower and not [token for token in lower if "ï" in token or "é" in token]


def test_vocab_command_writes_one_token_per_line(english_corpus: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    output.mkdir()
    assert main(["vocab", "--corpus-dir", str(english_corpus), "--output", str(output), "--vocab-size", "120"]) == 0
    lines = (output / "vocab.txt").read_text(encoding="utf-8").splitlines()
    assert len(lines) == 120
    assert lines[:5] == list(SPECIAL_TOKENS)
    assert read_vocab(output / "vocab.txt") == lines


@pytest.mark.parametrize(("do_lower_case", "strip_accents"), [(True, True), (True, False), (False, True)])
def test_tokenization_matches_reference_algorithm(
    english_corpus: Path, chinese_corpus: Path, tmp_path: Path, do_lower_case: bool, strip_accents: bool
) -> None:
    write_corpus(english_corpus, [TRICKY_TEXT], name="tricky.txt")
    write_corpus(
        english_corpus,
        [[" ".join(doc) for doc in (chinese_corpus / "corpus.txt").read_text().split("\n\n")]],
        name="zh.txt",
    )
    tokens = train_on(english_corpus, 600, do_lower_case=do_lower_case, strip_accents=strip_accents)
    vocab_file = tmp_path / "vocab.txt"
    write_vocab(tokens, vocab_file)
    ours = build_tokenizer(tokens, do_lower_case, strip_accents)
    reference = reference_tokenizer(vocab_file, do_lower_case, strip_accents)
    report = InvalidUtf8Report()
    for line in [*TRICKY_TEXT, *iter_corpus_lines(list_corpus_files(english_corpus), report)]:
        assert ours.encode(line, add_special_tokens=False).ids == reference_ids(reference, line), line


def test_chinese_characters_become_single_tokens(chinese_corpus: Path) -> None:
    tokens = train_on(chinese_corpus, vocab_size=2000)
    tokenizer = build_tokenizer(tokens)
    text = "数学家研究结构。Refund 退款"
    pieces = tokenizer.encode(text, add_special_tokens=False).tokens
    assert pieces[:6] == ["数", "学", "家", "研", "究", "结"]
    assert "退" in pieces and "款" in pieces
    assert not any(piece.startswith("##") and unicodedata.category(piece[2]) == "Lo" for piece in pieces)


def test_alphabet_keeps_every_common_character_of_a_large_script(tmp_path: Path) -> None:
    # 1,500 distinct ideographs, each frequent: more than a fixed 1,000-character alphabet would keep.
    characters = [chr(0x4E00 + index) for index in range(1500)]
    lines = ["".join(characters[start : start + 50]) for start in range(0, 1500, 50)]
    corpus = write_corpus(tmp_path / "corpus", [lines] * 4)
    tokens = train_on(corpus, vocab_size=4000)
    assert set(characters) <= set(tokens)
    tokenizer = build_tokenizer(tokens)
    assert "[UNK]" not in tokenizer.encode("".join(characters), add_special_tokens=False).tokens
    # A vocabulary smaller than the script: every entry is a character (they need no "##" pieces), the most
    # frequent first; half of it was left empty before, and small sizes overshot by their "##" pieces.
    weighted = write_corpus(tmp_path / "weighted", [[characters[index] * (1500 - index) for index in range(600)]])
    tokens = train_on(weighted, vocab_size=300)
    assert len(tokens) == 300
    assert tokens[5:] == characters[:295]
    assert len(train_on(write_corpus(tmp_path / "small", [["the brown fox jumps over the dog."]]), 20)) == 20


def test_real_text_matches_reference(tmp_path: Path) -> None:
    for corpus_file, lower in (
        (shared_data("pretrain_en/enwiki_sample.txt"), True),
        (shared_data("pretrain_zh/zhwiki_sample.txt"), True),
    ):
        lines = corpus_file.read_text(encoding="utf-8").splitlines()[:1500]
        corpus = write_corpus(tmp_path / corpus_file.stem, [lines])
        tokens = train_on(corpus, 3000, do_lower_case=lower)
        vocab_file = tmp_path / f"{corpus_file.stem}.txt"
        write_vocab(tokens, vocab_file)
        ours = build_tokenizer(tokens, lower)
        reference = reference_tokenizer(vocab_file, lower, True)
        ours_ids = [encoding.ids for encoding in ours.encode_batch(lines, add_special_tokens=False)]
        assert ours_ids == [reference_ids(reference, line) for line in lines]


def test_read_vocab_rejects_missing_file_and_missing_special_tokens(tmp_path: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        read_vocab(tmp_path / "nope.txt")
    with pytest.raises(UserError, match=f"vocabulary file {tmp_path} is a folder: give the file itself"):
        read_vocab(tmp_path)
    partial = tmp_path / "partial.txt"
    partial.write_text("[PAD]\n[UNK]\n[CLS]\nhello\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"lacks the special token\(s\) \[SEP\] \[MASK\]"):
        read_vocab(partial)
    tokenizer_json = tmp_path / "tokenizer.json"  # what newer transformers saves instead of vocab.txt
    tokens = [*SPECIAL_TOKENS, "hello", "##s"]
    build_tokenizer(tokens).save(str(tokenizer_json))
    assert read_vocab(tokenizer_json) == tokens
    tokenizer_json.write_text('{"model": {"type": "BPE", "vocab": {"a": 0}}}')
    with pytest.raises(UserError, match="holds no WordPiece vocabulary"):
        read_vocab(tokenizer_json)
    doubled = tmp_path / "doubled.txt"
    doubled.write_text("\n".join([*SPECIAL_TOKENS, "hello", "[PAD]"]) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match=r"holds \[PAD\] 2 times \(lines 1, 7\): keep one"):
        read_vocab(doubled)
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"[PAD]\n\xff\xfe\n")
    with pytest.raises(UserError, match="not UTF-8"):
        read_vocab(binary)


def test_vocab_rejects_bad_corpus_and_size(tmp_path: Path, english_corpus: Path) -> None:
    with pytest.raises(UserError, match="does not exist"):
        list_corpus_files(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no files"):
        list_corpus_files(tmp_path / "empty")
    with pytest.raises(UserError, match="too small"):
        train_on(english_corpus, vocab_size=5)
    with pytest.raises(UserError, match=r"6 tokens has no room for the corpus's most frequent character .* ## form"):
        train_on(english_corpus, vocab_size=6)  # it said the corpus held no text
    blank = tmp_path / "blank"
    blank.mkdir()
    (blank / "a.txt").write_text("\n\n   \n", encoding="utf-8")
    with pytest.raises(UserError, match="no text"):
        train_on(blank, vocab_size=100)
