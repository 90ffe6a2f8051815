"""Question answering data: SQuAD 1.1/2.0 and MRQA examples and their sliding-window features, as the reference.

Reading follows the reference's `qa_tasks.py`: the context is split into words at whitespace (keeping a
map from each character to its word), a training answer becomes a start and end word, and an answer
whose text is not found at its offsets is counted, reported and skipped (never silently). Features
follow BERT/ELECTRA: `[CLS] question [SEP] window of the context [SEP]`, the question cut to
`max_query_length` word pieces, windows of at most `max_seq_length - question - 3` pieces every
`doc_stride` pieces, each piece mapped back to its word and marked where its window gives it the most
context; a training answer outside a window (or none, in SQuAD 2.0) points at [CLS].
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from electra.errors import UserError
from electra.fileio import read_text
from electra.modeling import ElectraQuestionAnsweringHead, QAHeadConfig
from electra.tokenization import CLS, SEP, build_tokenizer


@dataclass
class QAExample:
    qas_id: str
    question: str
    doc_tokens: list[str]  # the context split at whitespace
    answer_text: str = ""
    start_word: int = -1  # training answer, in words; -1 when there is none
    end_word: int = -1
    is_impossible: bool = False
    gold_answers: list[str] = field(default_factory=list)  # every annotated answer, for scoring
    context: str = ""
    word_offsets: list[int] = field(default_factory=list)  # character offset of each word in the context
    source: str = ""  # file:line of a question read for prediction from JSONL


@dataclass
class QAFeature:
    example_index: int
    window_index: int
    input_ids: list[int]
    token_type_ids: list[int]
    token_to_word: dict[int, int]  # position in input_ids -> word of the context
    token_is_max_context: dict[int, bool]
    start_position: int = 0  # training target; 0 ([CLS]) when the window holds no answer
    end_position: int = 0


@dataclass
class ReadReport:
    """Questions read with a problem, for one clear message a file: training answers that could not be placed in
    their context (skipped from training), and questions whose context is empty (kept outside training)."""

    failures: list[str] = field(default_factory=list)
    empty_contexts: list[str] = field(default_factory=list)

    def warn(self, path: Path) -> None:
        if self.failures:
            shown = "; ".join(self.failures[:3])
            print(
                f"warning: {path}: skipped {len(self.failures)} training question(s) whose answer is missing or "
                f"not at its offsets ({shown}{' ...' if len(self.failures) > 3 else ''})",
                file=sys.stderr,
            )
        if self.empty_contexts:
            print(
                f"warning: {path}: {len(self.empty_contexts)} question(s) have an empty context "
                f"({', '.join(self.empty_contexts[:3])}{' ...' if len(self.empty_contexts) > 3 else ''}): they are "
                'answered "", which scores 0 unless the question has no answer',
                file=sys.stderr,
            )


def is_whitespace(character: str) -> bool:
    return character in " \t\r\n" or ord(character) == 0x202F


def split_context(text: str) -> tuple[list[str], list[int]]:
    """Whitespace words of a context and, for each character, the index of its word."""
    words: list[str] = []
    char_to_word: list[int] = []
    previous_is_space = True
    for character in text:
        if is_whitespace(character):
            previous_is_space = True
        else:
            if previous_is_space:
                words.append(character)
            else:
                words[-1] += character
            previous_is_space = False
        char_to_word.append(len(words) - 1)
    return words, char_to_word


def _gold_answers(qa: dict[str, Any], place: str) -> list[str]:
    """Every annotated answer's text: SQuAD's {"text", "answer_start"} objects, or MRQA's strings."""
    answers = qa.get("answers", [])
    if not isinstance(answers, list):
        raise UserError(f'{place}: "answers" must be a list')
    texts = [
        answer if isinstance(answer, str) else answer.get("text") if isinstance(answer, dict) else None
        for answer in answers
    ]
    if any(not isinstance(text, str) for text in texts):
        raise UserError(f'{place}: each answer needs its "text" as a string')
    return texts


def _training_answer(qa: dict[str, Any], place: str) -> tuple[str, int] | None:
    """The first annotated answer and its character offset (None when there is none): SQuAD's answers[0] with
    its answer_start, or MRQA's detected_answers[0] with the start of its first char_spans entry."""
    if "detected_answers" in qa:  # MRQA
        detected = qa["detected_answers"]
        if not isinstance(detected, list) or not detected:
            return None
        answer = detected[0]
        spans = answer.get("char_spans") if isinstance(answer, dict) else None
        offset = spans[0][0] if isinstance(spans, list) and spans and isinstance(spans[0], list) and spans[0] else None
    else:
        answers = qa.get("answers")
        if not isinstance(answers, list) or not answers:
            return None
        answer = answers[0]
        offset = answer.get("answer_start") if isinstance(answer, dict) else None
    if not isinstance(answer, dict) or not isinstance(answer.get("text"), str) or not isinstance(offset, int):
        raise UserError(f'{place}: the first answer needs a "text" string and an integer offset')
    return answer["text"], offset


def _examples_of_paragraph(
    context: Any, questions: Any, training: bool, v2: bool, report: ReadReport, where: str
) -> list[QAExample]:
    """The examples of one context and its questions; `where` names them in errors (file and article, or line)."""
    if not isinstance(context, str):
        raise UserError(f'{where}: no "context" string')
    if not isinstance(questions, list):
        raise UserError(f'{where}: no "qas" list of questions')
    words, char_to_word = split_context(context)
    offsets = [
        index
        for index, word in enumerate(char_to_word)
        if word >= 0 and (index == 0 or char_to_word[index - 1] != word)
    ]
    examples = []
    for number, qa in enumerate(questions, 1):
        raw_id = qa.get("qid", qa.get("id")) if isinstance(qa, dict) else None  # MRQA's official script keys by qid
        if not isinstance(raw_id, (str, int)) or isinstance(raw_id, bool):
            raise UserError(f'{where}, question {number}: no "id" (MRQA: "qid"), which predictions are keyed by')
        qas_id, place = str(raw_id), f"{where}, question {raw_id}"
        if not isinstance(qa.get("question"), str):
            raise UserError(f'{place}: no "question" string')
        golds = _gold_answers(qa, place)
        if not words:
            if training:
                report.failures.append(f"{qas_id}: empty context")
                continue
            report.empty_contexts.append(qas_id)
        example = QAExample(qas_id, qa["question"], words, gold_answers=golds, context=context, word_offsets=offsets)
        example.is_impossible = bool(qa.get("is_impossible", False)) if v2 else False
        if training and not example.is_impossible:
            found = _training_answer(qa, place)
            if found is None:
                report.failures.append(f"{qas_id}: no answer")
                continue
            text, offset = found
            last = offset + len(text) - 1
            if not text or last >= len(char_to_word) or offset < 0:
                report.failures.append(f"{qas_id}: answer offset {offset} outside the context")
                continue
            start, end = char_to_word[offset], char_to_word[last]
            if " ".join(text.split()).lower() not in " ".join(words[start : end + 1]).lower():
                report.failures.append(f"{qas_id}: {text!r} is not at offset {offset}")
                continue
            example.answer_text, example.start_word, example.end_word = text, start, end
        examples.append(example)
    return examples


def _checked_for_scoring(examples: list[QAExample], path: Path, v2: bool) -> list[QAExample]:
    """Evaluation examples need a unique id (predictions are keyed by it) and, unless SQuAD 2.0 marks them
    unanswerable, a gold answer: the official scripts cannot score them otherwise."""
    seen: set[str] = set()
    for example in examples:
        if example.qas_id in seen:
            raise UserError(f"{path}: question id {example.qas_id!r} appears twice: give each question its own id")
        seen.add(example.qas_id)
        if not example.gold_answers and not example.is_impossible:
            hint = 'mark it "is_impossible": true' if v2 else "SQuAD 2.0 data goes to the task squad"
            raise UserError(f"{path}: question {example.qas_id!r} has no gold answer to score against ({hint})")
    return examples


def read_squad(path: Path, training: bool, v2: bool, scored: bool = False) -> list[QAExample]:
    """Examples of a SQuAD JSON file (`data` -> paragraphs -> qas); `scored`: they will be scored (evaluation)."""
    try:
        data = json.loads(read_text(path))["data"]
    except (json.JSONDecodeError, KeyError, TypeError) as error:
        raise UserError(f'{path} is not a SQuAD JSON file with a top-level "data" list ({error})') from None
    if not isinstance(data, list):
        raise UserError(f'{path}: "data" must be a list of articles')
    report = ReadReport()
    examples = []
    for article_number, article in enumerate(data, 1):
        paragraphs = article.get("paragraphs") if isinstance(article, dict) else None
        if not isinstance(paragraphs, list):
            raise UserError(f'{path}, article {article_number}: no "paragraphs" list')
        for paragraph_number, paragraph in enumerate(paragraphs, 1):
            where = f"{path}, article {article_number}, paragraph {paragraph_number}"
            if not isinstance(paragraph, dict):
                raise UserError(f"{where}: not a JSON object")
            examples += _examples_of_paragraph(
                paragraph.get("context"), paragraph.get("qas"), training, v2, report, where
            )
    report.warn(path)
    return _checked_for_scoring(examples, path, v2) if scored else examples


def read_mrqa(
    path: Path, training: bool, rows: list[tuple[int, dict[str, Any]]] | None = None, scored: bool = False
) -> list[QAExample]:
    """Examples of an MRQA jsonl file (one context and its questions a line; a header line is skipped);
    `rows`: the file's lines when the caller has already read them; `scored`: they will be scored."""
    from electra.tasks import read_jsonl_rows

    report = ReadReport()
    examples = []
    for number, record in rows if rows is not None else read_jsonl_rows(path):
        if "header" not in record:
            where = f"{path}:{number}"
            examples += _examples_of_paragraph(record.get("context"), record.get("qas"), training, False, report, where)
    report.warn(path)
    return _checked_for_scoring(examples, path, False) if scored else examples


class QAFeaturizer:
    """Sliding-window features of QA examples with the reference's layout and targets."""

    def __init__(
        self,
        vocab: list[str],
        max_seq_length: int,
        max_query_length: int,
        doc_stride: int,
        do_lower_case: bool = True,
        tokenizer: Any = None,
    ):
        """`tokenizer`: an already built one for `vocab` (e.g. the fine-tuning featurizer's), to share it."""
        self.tokenizer = tokenizer or build_tokenizer(vocab, do_lower_case=do_lower_case)
        self.index = {token: i for i, token in enumerate(vocab)}
        self.max_seq_length = max_seq_length
        self.max_query_length = max_query_length
        self.doc_stride = doc_stride
        self.truncation_reported = False

    def _pieces(self, texts: list[str]) -> list[list[str]]:
        return [encoding.tokens for encoding in self.tokenizer.encode_batch(texts, add_special_tokens=False)]

    def features(self, examples: list[QAExample]) -> list[QAFeature]:
        """Windows of every example; targets for those read for training (with an answer, or impossible)."""
        questions = self._pieces([example.question for example in examples])
        answers = self._pieces([example.answer_text for example in examples])
        documents = self.tokenizer.encode_batch(
            [example.doc_tokens for example in examples], is_pretokenized=True, add_special_tokens=False
        )
        features: list[QAFeature] = []
        truncated = 0
        for index, (example, question, answer, document) in enumerate(
            zip(examples, questions, answers, documents, strict=True)
        ):
            if len(question) > self.max_query_length:
                truncated += 1
                question = question[: self.max_query_length]
            training = example.start_word >= 0 or example.is_impossible
            features += self._windows(index, example, question, answer, document.tokens, document.word_ids, training)
        if truncated and not self.truncation_reported:  # said once, not for every split or served batch
            self.truncation_reported = True
            print(
                f"warning: questions longer than max_query_length ({self.max_query_length} word pieces) are cut "
                f"to it, as the reference does ({truncated} of the first {len(examples):,} read; said once): raise "
                "max_query_length to keep them whole",
                file=sys.stderr,
            )
        return features

    def _windows(
        self,
        index: int,
        example: QAExample,
        question: list[str],
        answer: list[str],
        pieces: list[str],
        piece_words: list[int | None],
        training: bool,
    ) -> list[QAFeature]:
        word_first_piece: dict[int, int] = {}
        for position, word in enumerate(piece_words):
            word_first_piece.setdefault(word, position)

        def first_piece_from(word: int) -> int:  # words without pieces (stray control characters) take the next
            return next(
                (word_first_piece[w] for w in range(word, len(example.doc_tokens)) if w in word_first_piece),
                len(pieces),
            )

        start = end = -1
        if training and not example.is_impossible:
            start = first_piece_from(example.start_word)
            end = first_piece_from(example.end_word + 1) - 1
            start, end = improve_answer_span(pieces, start, end, " ".join(answer))
        budget = self.max_seq_length - len(question) - 3
        if budget < 1:
            raise UserError(
                f"max_seq_length {self.max_seq_length} leaves no room for the context after a question "
                f"of {len(question)} pieces: raise max_seq_length or lower max_query_length"
            )
        spans = []
        offset = 0
        while offset < len(pieces):
            length = min(len(pieces) - offset, budget)
            spans.append((offset, length))
            if offset + length == len(pieces):
                break
            offset += min(length, self.doc_stride)
        if not spans:
            spans = [(0, 0)]
        prefix = [CLS, *question, SEP]
        owner = max_context_windows(spans, len(pieces))
        features = []
        for window, (span_start, span_length) in enumerate(spans):
            tokens = prefix + pieces[span_start : span_start + span_length] + [SEP]
            token_to_word = {}
            is_max = {}
            for i in range(span_length):
                position = len(prefix) + i
                token_to_word[position] = piece_words[span_start + i]
                is_max[position] = owner[span_start + i] == window
            feature = QAFeature(
                index,
                window,
                [self.index.get(token, self.index["[UNK]"]) for token in tokens],
                [0] * len(prefix) + [1] * (span_length + 1),
                token_to_word,
                is_max,
            )
            if training and not example.is_impossible and span_start <= start and end <= span_start + span_length - 1:
                feature.start_position = start - span_start + len(prefix)
                feature.end_position = end - span_start + len(prefix)
            features.append(feature)
        return features


def improve_answer_span(pieces: list[str], start: int, end: int, answer_pieces: str) -> tuple[int, int]:
    """The sub-span of [start, end] whose pieces spell the answer exactly (e.g. "1895" in "(1895-1943)"), if any."""
    for new_start in range(start, end + 1):
        for new_end in range(end, new_start - 1, -1):
            if " ".join(pieces[new_start : new_end + 1]) == answer_pieces:
                return new_start, new_end
    return start, end


def max_context_windows(spans: list[tuple[int, int]], length: int) -> list[int]:
    """For each of `length` pieces, the window in which it has the most context: the largest min(left, right) +
    0.01 x the window's length (the first such window on a tie), as the reference's _check_is_max_context. One pass
    over the windows: a long context's many windows would make asking window by window quadratic."""
    best_score, best = [-1.0] * length, [-1] * length
    for window, (start, span_length) in enumerate(spans):
        end = start + span_length - 1
        for position in range(start, end + 1):
            score = min(position - start, end - position) + 0.01 * span_length
            if score > best_score[position]:
                best_score[position], best[position] = score, window
    return best


# ----------------------------------------------------------------------------------------------- answers
def final_text_span(predicted: str, original: str, normalizer: Any, pre_tokenizer: Any) -> tuple[int, int]:
    """[start, end) of the part of `original` (the predicted words, joined by spaces) that the normalised,
    word-piece prediction covers, as BERT's get_final_text: align the two texts without spaces and map the
    prediction's ends back, so "(1895-1943)." yields "1895". All of `original` when they cannot be aligned
    (e.g. accents stripped)."""
    whole = (0, len(original))
    normalised = " ".join(piece for piece, _ in pre_tokenizer.pre_tokenize_str(normalizer.normalize_str(original)))
    start = normalised.find(predicted)
    if start == -1:
        return whole

    def without_spaces(text: str) -> tuple[str, dict[int, int]]:
        kept = [(index, character) for index, character in enumerate(text) if character != " "]
        return "".join(character for _, character in kept), {new: old for new, (old, _) in enumerate(kept)}

    original_chars, original_map = without_spaces(original)
    normalised_chars, normalised_map = without_spaces(normalised)
    if len(original_chars) != len(normalised_chars):
        return whole
    to_compact = {old: new for new, old in normalised_map.items()}
    end = start + len(predicted) - 1
    if start not in to_compact or end not in to_compact:
        return whole
    return original_map[to_compact[start]], original_map[to_compact[end]] + 1


def span_candidates(
    output: np.ndarray, head: QAHeadConfig, n_best_size: int, context: list[int] | None = None
) -> Iterator[tuple[float, int, int]]:
    """(score, start, end) of the spans the reference's decoding weighs in one window, from the head's rows
    (see `ElectraQuestionAnsweringHead`): the `n_best_size` best starts x best ends by logit among the `context`
    positions (the context's, its closing [SEP] and [CLS]: the reference masks the others before choosing; Hugging
    Face's plain head does not mask them, and spans that start or end outside the context are dropped afterwards), or
    with the joint head each beam start with its `beam_size` most likely ends, scored by log-probability."""
    if head.joint_prediction:
        beam = output.shape[1] - ElectraQuestionAnsweringHead.BEAM_ENDS
        for i in range(min(beam, len(output))):
            start = int(output[i, ElectraQuestionAnsweringHead.END_OR_BEAM_START])
            if not 0 <= start < len(output):  # a padding position of a longer batch
                continue
            ends = output[:, ElectraQuestionAnsweringHead.BEAM_ENDS + i]
            for end in np.argsort(-ends, kind="stable")[:beam]:
                yield float(output[start, ElectraQuestionAnsweringHead.START] + ends[end]), start, int(end)
        return
    positions = np.asarray(context if context is not None else range(len(output)), dtype=np.int64)
    starts, ends = output[positions, 0], output[positions, 1]
    top_ends = positions[np.argsort(-ends, kind="stable")[:n_best_size]]
    for start in positions[np.argsort(-starts, kind="stable")[:n_best_size]]:
        for end in top_ends:
            yield float(output[start, 0] + output[end, 1]), int(start), int(end)


def null_score(output: np.ndarray, head: QAHeadConfig) -> float:
    """How strongly one window says "no answer": the answerability logit, else the score of the [CLS] span (the
    joint head's: its raw start logit, which the head puts in the answerability column, as the reference)."""
    if head.answerable_classifier or head.joint_prediction:
        return float(output[0, ElectraQuestionAnsweringHead.ANSWERABLE])
    return float(output[0, 0] + output[0, 1])


@dataclass(frozen=True)
class QADecoding:
    """How answers are read from a QA head's outputs, the same at evaluation (from the fine-tuning config) and
    in a fine-tuned folder (its electra_task.json, which `record` writes and `from_record` reads)."""

    n_best_size: int = 20
    max_answer_length: int = 30
    allow_no_answer: bool = False  # SQuAD 2.0
    no_answer_threshold: float = 0.0  # qa_na_threshold; folders written before the reference's head: 0

    @classmethod
    def from_config(cls, config: Any, allow_no_answer: bool) -> QADecoding:
        """From a `FinetuningConfig` (the reference's hparam names)."""
        return cls(config.n_best_size, config.max_answer_length, allow_no_answer, config.qa_na_threshold)

    @classmethod
    def from_record(cls, record: dict[str, Any]) -> QADecoding:
        defaults = cls()
        return cls(
            record.get("n_best_size", defaults.n_best_size),
            record.get("max_answer_length", defaults.max_answer_length),
            record.get("v2", defaults.allow_no_answer),
            record.get("qa_na_threshold", defaults.no_answer_threshold),
        )

    def record(self) -> dict[str, Any]:
        return {
            "n_best_size": self.n_best_size,
            "max_answer_length": self.max_answer_length,
            "v2": self.allow_no_answer,
            "qa_na_threshold": self.no_answer_threshold,
        }


def best_answer(
    example: QAExample,
    windows: list[tuple[QAFeature, np.ndarray]],
    vocab: list[str],
    tokenizer: Any,
    head: QAHeadConfig,
    decoding: QADecoding,
) -> dict[str, Any]:
    """{"answer", "no_answer_odds", "score", "start", "end"} (plus "best_span" with `allow_no_answer`) from
    each window's head output, as the reference decodes: the best-scoring valid span (start in its
    max-context window, end after it, at most `max_answer_length` pieces); with `allow_no_answer` (SQuAD
    2.0), "" when the no-answer odds exceed the threshold. The odds are the lowest answerability logit over
    the windows, or without that classifier the lowest [CLS] score minus the best span's."""
    best: tuple[float, QAFeature, int, int] | None = None
    lowest_null = float("inf")
    for feature, output in windows:
        lowest_null = min(lowest_null, null_score(output, head))
        # What the reference leaves unmasked (segment B, so the context and its closing [SEP], and [CLS]): the
        # n-best places include [CLS] and [SEP], whose spans are dropped below.
        ranked = [0, *sorted(feature.token_to_word), len(feature.input_ids) - 1]
        for score, start, end in span_candidates(output, head, decoding.n_best_size, ranked):
            if best is not None and score <= best[0]:
                continue
            if start not in feature.token_to_word or not feature.token_is_max_context.get(start, False):
                continue
            if end not in feature.token_to_word or end < start or end - start + 1 > decoding.max_answer_length:
                continue
            best = (score, feature, start, end)
    best_text, span = "", (-1, -1)
    if best is not None:
        _, feature, start, end = best
        pieces = " ".join(vocab[i] for i in feature.input_ids[start : end + 1])
        predicted = " ".join(pieces.replace(" ##", "").replace("##", "").split())
        first_word = feature.token_to_word[start]
        words = example.doc_tokens[first_word : feature.token_to_word[end] + 1]
        begin, finish = final_text_span(predicted, " ".join(words), tokenizer.normalizer, tokenizer.pre_tokenizer)
        # From the words joined by single spaces back to the context itself, whatever spaces or line breaks
        # separate them there: word k of the span starts at its own offset.
        joined_starts = np.cumsum([0] + [len(word) + 1 for word in words])

        def in_context(position: int) -> int:
            k = int(np.searchsorted(joined_starts, position, side="right")) - 1
            return example.word_offsets[first_word + k] + position - int(joined_starts[k])

        span = (in_context(begin), in_context(finish - 1) + 1)
        best_text = example.context[span[0] : span[1]]
    best_score = best[0] if best is not None else 0.0  # none valid: the reference's "empty" entry, logits 0
    odds = lowest_null if head.answerable_classifier else lowest_null - best_score
    answer = best_text
    if decoding.allow_no_answer and (best is None or odds > decoding.no_answer_threshold):
        answer = ""
    return {
        "answer": answer,
        "no_answer_odds": odds,
        "score": best_score if answer else lowest_null,
        "start": span[0] if answer else -1,
        "end": span[1] if answer else -1,
        **({"best_span": best_text} if decoding.allow_no_answer else {}),
    }


def records_to_examples(path: Path | str, rows: list[tuple[int, dict[str, Any]]]) -> list[QAExample]:
    """Examples from {"context", "question", "id"?} records, for prediction; `path` and the row numbers say
    where a bad record is (a file and its lines, or a request and its questions)."""
    examples = []
    report = ReadReport()
    for number, row in rows:
        if not isinstance(row.get("context"), str) or not isinstance(row.get("question"), str):
            raise UserError(f'{path}:{number}: each line needs a "context" and a "question" (strings)')
        if not row["question"].strip():
            raise UserError(f"{path}:{number}: the question is empty")
        qa = {"id": str(row.get("id", number)), "question": row["question"], "answers": []}
        (example,) = _examples_of_paragraph(row["context"], [qa], False, False, report, f"{path}:{number}")
        if not example.doc_tokens:
            raise UserError(f"{path}:{number}: the context is empty")
        example.source = f"{path}:{number}"
        examples.append(example)
    return examples
