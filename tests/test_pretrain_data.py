from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
from transformers import BertTokenizerLegacy

import electra.pretrain_data as pretrain_data
from electra.cli import main
from electra.corpus import InvalidUtf8Report, iter_corpus_lines, list_corpus_files, plan_units
from electra.errors import UserError
from electra.pretrain_data import METADATA_FILE, BuildSettings, PretrainingData, build_pretraining_data
from electra.tokenization import build_tokenizer, read_vocab, train_vocab, write_vocab

from .conftest import CHINESE_DOCUMENTS, ENGLISH_DOCUMENTS, shared_data, write_corpus


@pytest.fixture
def vocab_file(english_corpus: Path, tmp_path: Path) -> Path:
    path = tmp_path / "vocab.txt"
    write_vocab(train_vocab(list_corpus_files(english_corpus), vocab_size=300, show_progress=False), path)
    return path


def build(corpus: Path, vocab: Path, output: Path, **kwargs) -> pretrain_data.BuildSummary:
    return build_pretraining_data(corpus, vocab, output, show_progress=False, **kwargs)


def special_ids(vocab: Path) -> dict[str, int]:
    tokens = read_vocab(vocab)
    return {token: tokens.index(token) for token in ("[PAD]", "[CLS]", "[SEP]", "[UNK]")}


def segments(row: np.ndarray, ids: dict[str, int]) -> tuple[list[int], list[int]]:
    """Segments A and B of one example row, checking the [CLS] A [SEP] (B [SEP]) [PAD]... layout."""
    length = int((row != ids["[PAD]"]).sum())
    assert (row[length:] == ids["[PAD]"]).all(), "padding only at the end"
    tokens = row[:length].tolist()
    assert tokens[0] == ids["[CLS]"] and tokens[-1] == ids["[SEP]"]
    separators = [index for index, token in enumerate(tokens) if token == ids["[SEP]"]]
    assert len(separators) in (1, 2)
    first = tokens[1 : separators[0]]
    second = tokens[separators[0] + 1 : -1] if len(separators) == 2 else []
    return first, second


def all_files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(directory.iterdir())}


def test_examples_have_the_reference_layout_and_segment_ids(english_corpus: Path, vocab_file: Path, tmp_path: Path):
    build(english_corpus, vocab_file, tmp_path / "out", settings=BuildSettings(max_seq_length=24))
    data = PretrainingData(tmp_path / "out", read_vocab(vocab_file))
    ids = special_ids(vocab_file)
    rows = data.input_ids(np.arange(len(data)))
    assert rows.shape == (len(data), 24) and len(data) > 10
    saw_two_segments = False
    for row, segment_row in zip(rows, data.segment_ids(rows), strict=True):
        first, second = segments(row, ids)
        assert first, "segment A is never empty here"
        saw_two_segments |= bool(second)
        expected = [0] * (len(first) + 2) + [1] * (len(second) + 1 if second else 0)
        assert segment_row.tolist() == expected + [0] * (24 - len(expected))
    assert saw_two_segments
    assert data.attention_mask(rows).sum() == data.metadata["counts"]["tokens"]


def test_examples_cover_the_corpus_in_order_without_crossing_documents(english_corpus, vocab_file, tmp_path):
    build(english_corpus, vocab_file, tmp_path / "out", settings=BuildSettings(max_seq_length=40))
    data = PretrainingData(tmp_path / "out")
    ids = special_ids(vocab_file)
    tokenizer = build_tokenizer(read_vocab(vocab_file))
    documents = ENGLISH_DOCUMENTS * 3
    lines = [
        (doc_index, tokenizer.encode(line, add_special_tokens=False).ids)
        for doc_index, doc in enumerate(documents)
        for line in doc
    ]
    position = 0
    for row in data.input_ids(np.arange(len(data))):
        first, second = segments(row, ids)
        example = first + second
        consumed: list[int] = []
        doc_indices = set()
        while len(consumed) < len(example):
            doc_index, line_ids = lines[position]
            consumed += line_ids
            doc_indices.add(doc_index)
            position += 1
        # Whole lines of one document; only lines longer than the example are cut, at the end.
        assert len(doc_indices) == 1
        if len(consumed) == len(example):
            assert Counter(consumed) == Counter(example)
        else:
            assert len(example) >= 40 - 3
    assert position == len(lines)


def test_shards_decode_back_to_the_normalised_text(tmp_path: Path):
    documents = [[line] for doc in ENGLISH_DOCUMENTS for line in doc]  # one line a document: one example each
    corpus = write_corpus(tmp_path / "corpus", documents)
    vocab = tmp_path / "vocab.txt"
    write_vocab(train_vocab(list_corpus_files(corpus), vocab_size=2000, show_progress=False), vocab)
    build(corpus, vocab, tmp_path / "out")
    data = PretrainingData(tmp_path / "out")
    tokens = read_vocab(vocab)
    normaliser = BertTokenizerLegacy(str(vocab), do_lower_case=True).basic_tokenizer
    ids = special_ids(vocab)
    decoded = []
    for row in data.input_ids(np.arange(len(data))):
        first, second = segments(row, ids)
        assert not second
        decoded.append(" ".join(tokens[token] for token in first).replace(" ##", ""))
    assert decoded == [" ".join(normaliser.tokenize(doc[0])) for doc in documents]


def test_chinese_text_becomes_one_token_per_character(chinese_corpus: Path, tmp_path: Path):
    vocab = tmp_path / "vocab.txt"
    write_vocab(train_vocab(list_corpus_files(chinese_corpus), vocab_size=500, show_progress=False), vocab)
    build(chinese_corpus, vocab, tmp_path / "out")
    data = PretrainingData(tmp_path / "out")
    tokens = read_vocab(vocab)
    ids = special_ids(vocab)
    texts = []
    for row in data.input_ids(np.arange(len(data))):
        first, second = segments(row, ids)
        pieces = [tokens[token] for token in first + second]
        assert all(len(piece) == 1 for piece in pieces)
        texts.append("".join(pieces))
    assert texts == ["".join(doc) for doc in CHINESE_DOCUMENTS * 3]


def test_output_is_byte_identical_for_any_process_count(english_corpus: Path, vocab_file: Path, tmp_path: Path):
    write_corpus(english_corpus, list(reversed(ENGLISH_DOCUMENTS)) * 5, name="second.txt")
    assert len(plan_units(list_corpus_files(english_corpus), unit_bytes=300)) > 6
    outputs = []
    for processes in (1, 2, 3):
        output = tmp_path / f"out{processes}"
        build(
            english_corpus,
            vocab_file,
            output,
            settings=BuildSettings(max_seq_length=20),
            num_processes=processes,
            unit_bytes=300,
            examples_per_shard=7,
        )
        outputs.append(all_files(output))
    assert len(outputs[0]) > 3  # several shards and the metadata
    assert outputs[0] == outputs[1] == outputs[2]
    build(
        english_corpus,
        vocab_file,
        tmp_path / "seed1",
        settings=BuildSettings(max_seq_length=20, seed=1),
        unit_bytes=300,
        examples_per_shard=7,
    )
    assert all_files(tmp_path / "seed1") != outputs[0]


def test_invalid_utf8_is_replaced_counted_and_reported(tmp_path: Path, vocab_file: Path, capsys):
    corpus = tmp_path / "corpus"
    corpus.mkdir()
    good = "\n".join(f"line {number} of plain text." for number in range(1, 60))
    (corpus / "bad.txt").write_bytes(good.encode() + b"\nbroken \xff\xfe bytes here\nand \xc3 one more\n")
    summary = build(corpus, vocab_file, tmp_path / "out", unit_bytes=200)
    assert summary.examples > 0
    message = capsys.readouterr().err
    assert "bad.txt: 3 invalid UTF-8 byte sequence(s) replaced by U+FFFD (first at line 60)" in message
    assert PretrainingData(tmp_path / "out").metadata["counts"]["invalid_utf8"] == 3


def test_split_sentences_keeps_long_lines_that_the_reference_cuts(tmp_path: Path, capsys):
    """One article per line: the reference keeps one example's worth of each line; split_sentences keeps it all."""
    sentence = "数学家们拓展这些概念。"
    corpus = write_corpus(tmp_path / "corpus", [[sentence * 20], [sentence * 15]])
    vocab = tmp_path / "vocab.txt"
    write_vocab(train_vocab(list_corpus_files(corpus), vocab_size=100, show_progress=False), vocab)
    settings = BuildSettings(max_seq_length=32)
    cut = build(corpus, vocab, tmp_path / "cut", settings=settings)
    kept = build(corpus, vocab, tmp_path / "kept", settings=BuildSettings(max_seq_length=32, split_sentences=True))
    corpus_characters = 35 * len(sentence)
    assert cut.tokens <= 2 * 32  # one example per line
    assert kept.tokens > 0.8 * corpus_characters  # (what is lost: the tail of a sentence that ends an example)
    # what the reference's cut drops is counted (every token fed minus every text token kept) and warned about
    cut_rows = all_rows(tmp_path / "cut")
    text_tokens_kept = int((cut_rows > 4).sum())  # ids 0-4 are the special tokens
    assert cut.dropped_tokens == corpus_characters - text_tokens_kept > 0.8 * corpus_characters
    assert json.loads((tmp_path / "cut" / METADATA_FILE).read_text())["counts"]["dropped_tokens"] == cut.dropped_tokens
    assert "did not fit into the examples and were dropped" in capsys.readouterr().err
    assert kept.dropped_tokens < 0.2 * corpus_characters
    old = json.loads((tmp_path / "cut" / METADATA_FILE).read_text())["settings"]
    assert "split_sentences" not in old  # data built before the option existed still matches


def test_rebuild_refuses_other_settings_unless_overwrite(english_corpus: Path, vocab_file: Path, tmp_path: Path):
    output = tmp_path / "out"
    build(english_corpus, vocab_file, output)
    before = all_files(output)
    assert build(english_corpus, vocab_file, output).skipped
    with pytest.raises(UserError, match=r"other settings \(differing: max_seq_length 128 -> 64\).*--overwrite"):
        build(english_corpus, vocab_file, output, settings=BuildSettings(max_seq_length=64))
    assert all_files(output) == before
    build(english_corpus, vocab_file, output, settings=BuildSettings(max_seq_length=64), overwrite=True)
    assert PretrainingData(output).max_seq_length == 64
    assert all_files(output).keys() == before.keys()
    # A build recorded before a setting existed: the message says the setting is new, not that it was None.
    metadata = json.loads((output / "pretrain_data.json").read_text())
    settings_key = next(key for key, value in metadata.items() if isinstance(value, dict) and "max_seq_length" in value)
    del metadata[settings_key]["max_seq_length"]
    (output / "pretrain_data.json").write_text(json.dumps(metadata))
    with pytest.raises(UserError, match=r"differing: max_seq_length 64 \(new\)\)"):
        build(english_corpus, vocab_file, output, settings=BuildSettings(max_seq_length=64))


def test_rebuild_notices_a_corpus_file_changed_in_place(tmp_path: Path, vocab_file: Path):
    """Same name, same size, other text (a typo fixed with sed): the data must be rebuilt, not kept."""
    corpus = write_corpus(tmp_path / "corpus", [["the brown fox jumps.", "the lazy dog sleeps."]])
    text_file = corpus / "corpus.txt"
    build(corpus, vocab_file, tmp_path / "out")
    text_file.write_text(text_file.read_text().replace("fox", "cat"))
    status = text_file.stat()
    os.utime(text_file, ns=(status.st_atime_ns, status.st_mtime_ns + 10**9))  # a later edit, whatever the clock
    with pytest.raises(UserError, match=r"differing: the corpus files \(corpus.txt changed\)"):
        build(corpus, vocab_file, tmp_path / "out")
    (corpus / "more.txt").write_text("another document.\n")
    with pytest.raises(UserError, match=r"the corpus files \(more.txt added\)"):
        build(corpus, vocab_file, tmp_path / "out")
    text_file.rename(corpus / "renamed.txt")  # every change is named, not the first alone
    with pytest.raises(UserError, match=r"the corpus files \(more.txt added, renamed.txt added, corpus.txt removed\)"):
        build(corpus, vocab_file, tmp_path / "out")


def test_corpus_folders_links_and_file_names(tmp_path: Path, vocab_file: Path):
    """A linked folder is read (once, however often it is linked, even in a loop); a file name that is not UTF-8
    is recorded with its bytes escaped (pretrain_data.json could not be written before)."""
    elsewhere = write_corpus(tmp_path / "wiki", [["first wiki doc."], ["second wiki doc."]])
    corpus = write_corpus(tmp_path / "corpus", [["local text."]])
    (corpus / "wiki").symlink_to(elsewhere)
    (corpus / "wiki-again").symlink_to(elsewhere)
    (elsewhere / "loop").symlink_to(corpus)
    (corpus / os.fsdecode(b"caf\xe9.txt")).write_text("a latin-1 name.\n")
    files = [path.relative_to(corpus).as_posix() for path in list_corpus_files(corpus)]
    assert files == [os.fsdecode(b"caf\xe9.txt"), "corpus.txt", "wiki/corpus.txt"]
    summary = build(corpus, vocab_file, tmp_path / "out", settings=BuildSettings(max_seq_length=32))
    assert summary.documents == 4
    recorded = json.loads((tmp_path / "out" / METADATA_FILE).read_text(encoding="utf-8"))["corpus"]
    assert [entry["file"] for entry in recorded] == ["caf\\xe9.txt", "corpus.txt", "wiki/corpus.txt"]
    assert build(corpus, vocab_file, tmp_path / "out", settings=BuildSettings(max_seq_length=32)).skipped


def test_files_that_are_not_utf8_text_are_refused(tmp_path: Path):
    corpus = write_corpus(tmp_path / "corpus", [["plain text here."]])
    (corpus / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 8)
    with pytest.raises(UserError, match=r"photo.png is a PNG image, not text: move it out of the corpus folder"):
        list_corpus_files(corpus)
    (corpus / "photo.png").unlink()
    (corpus / "gbk.txt").write_bytes("这是一个中文句子，用来测试编码。".encode("gbk") * 20)
    with pytest.raises(UserError, match=r"gbk.txt:1: not UTF-8 text.*iconv -f GB18030 -t UTF-8"):
        list_corpus_files(corpus)
    (corpus / "gbk.txt").write_bytes("un café, deux cafés.\n".encode("latin-1") + b"plain ascii text.\n" * 20)
    assert len(list_corpus_files(corpus)) == 2  # a stray Latin-1 accent: replaced and reported, as before
    # Compressed, the same GBK text was trained on as replacement characters.
    import gzip
    import io
    import tarfile

    (corpus / "gbk.txt").unlink()
    gbk = "这是一个中文句子，用来测试编码。".encode("gbk") * 20
    (corpus / "gbk.txt.gz").write_bytes(gzip.compress(gbk))
    with pytest.raises(UserError, match=r"gbk\.txt\.gz holds text that is mostly not UTF-8 .*iconv -f GB18030"):
        list(iter_corpus_lines(list_corpus_files(corpus), InvalidUtf8Report()))
    (corpus / "gbk.txt.gz").unlink()
    with tarfile.open(corpus / "pages.tar", "w") as archive:
        member = tarfile.TarInfo("page1.txt")
        member.size = len(gbk)
        archive.addfile(member, io.BytesIO(gbk))
    with pytest.raises(UserError, match=r"pages\.tar \(page1\.txt\) holds text that is mostly not UTF-8"):
        list(iter_corpus_lines(list_corpus_files(corpus), InvalidUtf8Report()))


def test_a_cased_vocabulary_with_lower_cased_data_is_warned_about(tmp_path: Path, capsys):
    corpus = write_corpus(tmp_path / "corpus", ENGLISH_DOCUMENTS * 3)
    vocab = tmp_path / "vocab.txt"
    files = list_corpus_files(corpus)
    write_vocab(train_vocab(files, vocab_size=300, do_lower_case=False, show_progress=False), vocab)
    build(corpus, vocab, tmp_path / "cased", settings=BuildSettings(do_lower_case=False))
    assert "hold capitals" not in capsys.readouterr().err
    build(corpus, vocab, tmp_path / "lowered")
    assert "hold capitals, which lower-cased text never produces" in capsys.readouterr().err


def test_interrupted_build_leaves_nothing_that_looks_complete(english_corpus, vocab_file, tmp_path, monkeypatch):
    calls = {"count": 0}
    real_read_unit = pretrain_data.read_unit

    def read_unit_then_interrupt(unit):
        calls["count"] += 1
        if calls["count"] == 4:
            raise KeyboardInterrupt
        return real_read_unit(unit)

    monkeypatch.setattr(pretrain_data, "read_unit", read_unit_then_interrupt)
    output = tmp_path / "out"
    settings = BuildSettings(max_seq_length=20)
    with pytest.raises(KeyboardInterrupt):
        build(english_corpus, vocab_file, output, settings=settings, unit_bytes=200, examples_per_shard=3)
    names = {path.name for path in output.iterdir()}
    assert METADATA_FILE not in names and "shard-00000.npy" in names
    assert not [name for name in names if name.startswith(".") and name != ".lock"], "no temporary files left behind"
    with pytest.raises(UserError, match="no finished pre-training data"):
        PretrainingData(output)
    monkeypatch.setattr(pretrain_data, "read_unit", real_read_unit)
    build(english_corpus, vocab_file, output, settings=settings, unit_bytes=200, examples_per_shard=3)
    build(english_corpus, vocab_file, tmp_path / "clean", settings=settings, unit_bytes=200, examples_per_shard=3)
    assert all_files(output) == all_files(tmp_path / "clean")


def test_bad_inputs_give_one_clear_line(tmp_path: Path, english_corpus: Path, vocab_file: Path, capsys):
    def error_of(*argv: str) -> str:
        assert main(["build-data", *argv]) == 2
        message = capsys.readouterr().err
        assert message.startswith("electra: error: ") and "Traceback" not in message
        return message

    out = str(tmp_path / "out")
    assert "does not exist" in error_of(
        "--corpus-dir", str(tmp_path / "nope"), "--vocab-file", str(vocab_file), "--output-dir", out
    )
    (tmp_path / "empty").mkdir()
    assert "holds no files" in error_of(
        "--corpus-dir", str(tmp_path / "empty"), "--vocab-file", str(vocab_file), "--output-dir", out
    )
    (tmp_path / "blank").mkdir()
    (tmp_path / "blank" / "a.txt").write_text("")
    assert "are empty" in error_of(
        "--corpus-dir", str(tmp_path / "blank"), "--vocab-file", str(vocab_file), "--output-dir", out
    )
    (tmp_path / "blank" / "a.txt").write_text("\n  \n\t\n")
    assert "no text found" in error_of(
        "--corpus-dir", str(tmp_path / "blank"), "--vocab-file", str(vocab_file), "--output-dir", out
    )
    assert not Path(out).exists()  # the folder it made to hold its lock is gone again
    partial = tmp_path / "partial_vocab.txt"
    partial.write_text("[PAD]\n[UNK]\nfox\n")
    assert "[CLS] [SEP] [MASK]" in error_of(
        "--corpus-dir", str(english_corpus), "--vocab-file", str(partial), "--output-dir", out
    )
    assert "inside --corpus-dir" in error_of(
        "--corpus-dir",
        str(english_corpus),
        "--vocab-file",
        str(vocab_file),
        "--output-dir",
        str(english_corpus / "data"),
    )


def test_reader_partitions_and_gathers_across_shards(english_corpus: Path, vocab_file: Path, tmp_path: Path):
    build(english_corpus, vocab_file, tmp_path / "out", settings=BuildSettings(max_seq_length=16), examples_per_shard=5)
    data = PretrainingData(tmp_path / "out")
    assert len(data.shards) > 2
    everything = np.concatenate([np.load(tmp_path / "out" / shard["file"]) for shard in data.metadata["shards"]])
    chosen = np.array([len(data) - 1, 0, 7, 3, 12])
    assert (data.input_ids(chosen) == everything[chosen]).all()
    parts = [data.partition(part, 3) for part in range(3)]
    assert sorted(index for part in parts for index in part) == list(range(len(data)))
    with pytest.raises(IndexError):
        data.input_ids([len(data)])


def test_reader_refuses_other_vocabulary_and_damaged_shards(english_corpus, vocab_file, tmp_path):
    build(english_corpus, vocab_file, tmp_path / "out")
    other = read_vocab(vocab_file)[:-1]
    with pytest.raises(UserError, match="another vocabulary"):
        PretrainingData(tmp_path / "out", other)
    np.save(tmp_path / "out" / "shard-00000.npy", np.zeros((2, 3), dtype=np.uint16))
    with pytest.raises(UserError, match="rebuild the data"):
        PretrainingData(tmp_path / "out")


def test_unknown_token_share_is_warned_about(tmp_path: Path, vocab_file: Path, capsys):
    corpus = write_corpus(tmp_path / "corpus", [["Ωμέγα λόγος Ζεύς θάλασσα ψυχή"] * 3])
    build(corpus, vocab_file, tmp_path / "out")
    assert "are [UNK]" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize(("corpus_name", "documents"), [("pretrain_zh", 64 + 959), ("pretrain_en", 27305)])
def test_real_corpora_through_the_command_line(tmp_path: Path, corpus_name: str, documents: int):
    corpus = shared_data(corpus_name)
    vocab = tmp_path / "vocab.txt"
    electra = [sys.executable, "-m", "electra.cli"]
    subprocess.run([*electra, "vocab", "--corpus-dir", str(corpus), "--output", str(vocab)], check=True)
    result = subprocess.run(
        [
            *electra,
            "build-data",
            "--corpus-dir",
            str(corpus),
            "--vocab-file",
            str(vocab),
            "--output-dir",
            str(tmp_path / "data"),
            "--num-processes",
            "2",
        ],
        check=True,
        capture_output=True,
        text=True,
    )
    assert "examples" in result.stdout and "MB/s" in result.stdout
    counts = json.loads((tmp_path / "data" / METADATA_FILE).read_text())["counts"]
    assert counts["documents"] == documents
    assert counts["invalid_utf8"] == 0
    assert counts["unknown_tokens"] < 0.001 * counts["tokens"]
    data = PretrainingData(tmp_path / "data", read_vocab(vocab))
    assert len(data) == counts["examples"] > documents // 2


def all_rows(directory: Path) -> np.ndarray:
    data = PretrainingData(directory)
    return data.input_ids(np.arange(len(data)))


def test_archives_and_compressed_files_read_as_the_reference_reads_openwebtext(vocab_file: Path, tmp_path: Path):
    """OpenWebText, extracted as the reference says, is a folder of xz-compressed tars of one-document text files:
    build-data reads it as is, each file inside one document (blank lines within it dropped, as the reference's
    OpenWebText builder does), and a gzip-compressed text file as the text it holds. The examples equal those of
    the same text written out plainly, a blank line after each document."""
    import gzip
    import io
    import tarfile

    documents = ["\n\n".join(lines) for lines in ENGLISH_DOCUMENTS]  # blank lines inside documents
    packed, plain = tmp_path / "openwebtext", tmp_path / "plain"
    packed.mkdir(), plain.mkdir()
    for number, chunk in enumerate((documents[:3], documents[3:])):
        name = f"urlsf_subset00-{number}_data.xz"
        with tarfile.open(packed / name, "w:xz") as archive:
            for index, text in enumerate(chunk):
                data = text.encode()
                member = tarfile.TarInfo(f"{number:04d}-{index}.txt")
                member.size = len(data)
                archive.addfile(member, io.BytesIO(data))
        kept = ["\n".join(line for line in text.splitlines() if line.strip()) for text in chunk]
        (plain / name).write_text("\n\n".join(kept) + "\n\n")
    text = "\n".join(ENGLISH_DOCUMENTS[0]) + "\n"
    (packed / "extra.txt.gz").write_bytes(gzip.compress(text.encode()))
    (plain / "extra.txt.gz").write_text(text)
    from_packed = build(packed, vocab_file, tmp_path / "a", settings=BuildSettings(blanks_separate_docs=False))
    build(plain, vocab_file, tmp_path / "b", settings=BuildSettings(blanks_separate_docs=True))
    assert from_packed.documents == len(documents) + 1
    # Text is counted as text, not as the compressed bytes it came in.
    assert from_packed.bytes == sum(len(text.encode()) for text in documents) + len(text.encode())
    assert np.array_equal(all_rows(tmp_path / "a"), all_rows(tmp_path / "b"))
    assert train_vocab(list_corpus_files(packed), 200, show_progress=False) == train_vocab(
        list_corpus_files(plain), 200, show_progress=False
    )

    (packed / "extra.txt.gz").write_bytes(gzip.compress(text.encode())[:40])  # cut short in a copy
    with pytest.raises(UserError, match=r"extra\.txt\.gz is a damaged compressed file"):
        build(packed, vocab_file, tmp_path / "c")
    (packed / "extra.txt.gz").unlink()
    (packed / "notes.zip").write_bytes(b"PK\x03\x04" + bytes(40))
    with pytest.raises(UserError, match=r"notes\.zip is a zip archive.*extract it"):
        build(packed, vocab_file, tmp_path / "d")
    (packed / "notes.zip").unlink()
    (packed / "notes.txt.zst").write_bytes(b"\x28\xb5\x2f\xfd" + bytes(range(128, 256)))  # not UTF-8 either
    with pytest.raises(UserError, match=r"notes\.txt\.zst is a zstd archive.*extract it"):
        list_corpus_files(packed)


def test_fingerprint_follows_the_data_not_file_times(english_corpus, vocab_file, tmp_path):
    settings = BuildSettings(max_seq_length=20)
    build(english_corpus, vocab_file, tmp_path / "first", settings=settings)
    for path in english_corpus.iterdir():  # the same text, written again later
        path.write_text(path.read_text())
        os.utime(path, (path.stat().st_atime + 100, path.stat().st_mtime + 100))
    build(english_corpus, vocab_file, tmp_path / "again", settings=settings)
    first, again = (PretrainingData(tmp_path / name).fingerprint for name in ("first", "again"))
    assert first == again
    next(iter(sorted(english_corpus.iterdir()))).write_text("other text entirely , and shorter .\n")
    build(english_corpus, vocab_file, tmp_path / "changed", settings=settings)
    assert PretrainingData(tmp_path / "changed").fingerprint != first


def test_the_first_example_of_a_unit_is_sometimes_short_as_every_other():
    """In the reference the first example of a file has the random target its previous file's last example drew;
    a builder of our own per unit started at max_seq_length, so corpora of small files had half the short examples."""
    from electra.pretrain_data import RANDOM_LENGTH_PROB, ExampleBuilder

    firsts = []
    for seed in range(2000):
        builder = ExampleBuilder(128, random.Random(seed))
        segments = None
        while segments is None:  # lines of 10 tokens until the target is reached
            segments = builder.add_line(list(range(10)))
        firsts.append(sum(map(len, segments)))
    short = sum(length < 100 for length in firsts) / len(firsts)
    assert 0.5 * RANDOM_LENGTH_PROB < short < RANDOM_LENGTH_PROB  # a random target is under 100 ~77% of the time
