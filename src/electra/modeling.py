"""The ELECTRA transformer in plain PyTorch.

Module and parameter names are those of Hugging Face's `modeling_electra` (`ElectraModel`,
`ElectraForPreTraining`, `ElectraForMaskedLM`), so a state dict exports by renaming nothing. The
encoder is BERT's: word + position + token-type embeddings, LayerNorm and dropout; a projection when
the embedding size differs from the hidden size; post-LayerNorm layers with exact GELU. Attention runs
through `scaled_dot_product_attention` (flash or memory-efficient kernels on GPU).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from electra.config import ModelConfig

DROPOUT_RESOLUTION = 1 << 15  # keep-masks compare 15 random bits with the drop probability


def keep_mask(shape: torch.Size, drop_prob: float, device: torch.device) -> torch.Tensor:
    """Boolean mask keeping each element with probability 1 - drop_prob (to 1 part in 32768).

    On CPUs this is about 4x faster than `bernoulli_`, which costs ELECTRA's step more than any
    kernel but the matmuls: one 64-bit random word gives four 15-bit draws.
    """
    count = shape.numel()
    words = torch.empty((count + 3) // 4, dtype=torch.int64, device=device).random_()
    lanes = words.view(torch.int16)[:count].view(shape)
    return (lanes & (DROPOUT_RESOLUTION - 1)) >= round(drop_prob * DROPOUT_RESOLUTION)


def dropout(hidden: torch.Tensor, drop_prob: float, training: bool) -> torch.Tensor:
    if not training or drop_prob == 0.0:
        return hidden
    # The fast mask is for eager CPU steps; compiled code fuses dropout itself, and `random_` would break its graph.
    if hidden.device.type != "cpu" or torch.compiler.is_compiling():
        return F.dropout(hidden, drop_prob, training=True)
    return torch.where(keep_mask(hidden.shape, drop_prob, hidden.device), hidden * (1.0 / (1.0 - drop_prob)), 0.0)


class Dropout(nn.Dropout):
    """`nn.Dropout` with the fast CPU keep-mask above."""

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return dropout(hidden, self.p, self.training)


class ElectraEmbeddings(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.word_embeddings = nn.Embedding(config.vocab_size, config.embedding_size, padding_idx=config.pad_token_id)
        self.position_embeddings = nn.Embedding(config.max_position_embeddings, config.embedding_size)
        self.token_type_embeddings = nn.Embedding(config.type_vocab_size, config.embedding_size)
        self.LayerNorm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, input_ids: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        seq_length = input_ids.shape[1]
        embeddings = (
            self.word_embeddings(input_ids)
            + self.token_type_embeddings(token_type_ids)
            + self.position_embeddings.weight[:seq_length]
        )
        return self.dropout(self.LayerNorm(embeddings))  # [batch, seq, embedding_size]


class ElectraSelfAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.num_heads = config.num_attention_heads
        self.query = nn.Linear(config.hidden_size, config.hidden_size)
        self.key = nn.Linear(config.hidden_size, config.hidden_size)
        self.value = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout_prob = config.attention_probs_dropout_prob

    def _fused_projection(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The three projections as one [3 x hidden, hidden] matrix; kept while no gradient is recorded and
        the weights are unchanged (inference), rebuilt on every call in training."""
        parts = (self.query.weight, self.key.weight, self.value.weight, self.query.bias, self.key.bias, self.value.bias)
        if torch.is_grad_enabled():
            return torch.cat(parts[:3]), torch.cat(parts[3:])
        versions = tuple((part.data_ptr(), part._version, part.dtype) for part in parts)
        cached = getattr(self, "_fused", None)
        if cached is None or cached[0] != versions:
            cached = (versions, torch.cat(parts[:3]), torch.cat(parts[3:]))
            self._fused = cached
        return cached[1], cached[2]

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        batch, seq_length, width = hidden.shape
        # One matmul for the three projections: faster than three, and the parameters keep their own names.
        weight, bias = self._fused_projection()
        qkv = F.linear(hidden, weight, bias).view(batch, seq_length, 3, self.num_heads, width // self.num_heads)
        query, key, value = qkv.permute(2, 0, 3, 1, 4).unbind(0)  # each [batch, heads, seq, head_dim]
        if self.training and self.dropout_prob > 0 and hidden.device.type == "cpu":
            # SDPA's CPU path with dropout is its slow reference path; spelled out with the fast mask it is ~2x faster.
            scores = (query @ key.transpose(-1, -2)) * query.shape[-1] ** -0.5
            probs = scores.masked_fill(~attention_mask, -math.inf).softmax(-1)
            context = dropout(probs, self.dropout_prob, True) @ value
        else:
            context = F.scaled_dot_product_attention(
                query, key, value, attn_mask=attention_mask, dropout_p=self.dropout_prob if self.training else 0.0
            )
        return context.transpose(1, 2).reshape(batch, seq_length, width)


class ElectraSelfOutput(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, context: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(context)) + residual)


class ElectraAttention(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.self = ElectraSelfAttention(config)
        self.output = ElectraSelfOutput(config)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.output(self.self(hidden, attention_mask), hidden)


class ElectraIntermediate(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.intermediate_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return F.gelu(self.dense(hidden))


class ElectraOutput(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.intermediate_size, config.hidden_size)
        self.LayerNorm = nn.LayerNorm(config.hidden_size, eps=config.layer_norm_eps)
        self.dropout = Dropout(config.hidden_dropout_prob)

    def forward(self, intermediate: torch.Tensor, residual: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(self.dropout(self.dense(intermediate)) + residual)


class ElectraLayer(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.attention = ElectraAttention(config)
        self.intermediate = ElectraIntermediate(config)
        self.output = ElectraOutput(config)

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        attended = self.attention(hidden, attention_mask)
        return self.output(self.intermediate(attended), attended)


class ElectraEncoder(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.layer = nn.ModuleList(ElectraLayer(config) for _ in range(config.num_hidden_layers))

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        for layer in self.layer:
            hidden = layer(hidden, attention_mask)
        return hidden


def attention_bias(attention_mask: torch.Tensor, direction: str | None = None) -> torch.Tensor:
    """Boolean [batch, 1, seq|1, seq] mask for SDPA: keys that are real tokens, optionally causal one way.

    `direction="ltr"` lets each position see itself and the left; `"rtl"` itself and the right, as the
    two towers of Electric's cloze model.
    """
    keys = attention_mask.bool()[:, None, None, :]
    if direction is None:
        return keys
    seq_length = attention_mask.shape[1]
    causal = torch.ones(seq_length, seq_length, dtype=torch.bool, device=attention_mask.device)
    causal = causal.tril() if direction == "ltr" else causal.triu()
    # A query with no visible real key (a padding row) would give NaN; let it see itself.
    return (keys & causal) | torch.eye(seq_length, dtype=torch.bool, device=attention_mask.device)


class ElectraModel(nn.Module):
    def __init__(self, config: ModelConfig, embeddings: ElectraEmbeddings | None = None):
        super().__init__()
        self.config = config
        self.embeddings = embeddings if embeddings is not None else ElectraEmbeddings(config)
        if config.embedding_size != config.hidden_size:
            self.embeddings_project = nn.Linear(config.embedding_size, config.hidden_size)
        self.encoder = ElectraEncoder(config)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        direction: str | None = None,
    ) -> torch.Tensor:
        """Hidden states [batch, seq, hidden_size]."""
        if attention_mask is None:
            attention_mask = torch.ones_like(input_ids)
        if token_type_ids is None:
            token_type_ids = torch.zeros_like(input_ids)
        hidden = self.embeddings(input_ids, token_type_ids)
        if hasattr(self, "embeddings_project"):
            hidden = self.embeddings_project(hidden)
        return self.encoder(hidden, attention_bias(attention_mask, direction))


class ElectraDiscriminatorPredictions(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dense_prediction = nn.Linear(config.hidden_size, 1)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.dense_prediction(F.gelu(self.dense(hidden))).squeeze(-1)


class ElectraGeneratorPredictions(nn.Module):
    def __init__(self, config: ModelConfig, input_size: int | None = None):
        super().__init__()
        self.LayerNorm = nn.LayerNorm(config.embedding_size, eps=config.layer_norm_eps)
        self.dense = nn.Linear(input_size or config.hidden_size, config.embedding_size)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.LayerNorm(F.gelu(self.dense(hidden)))


class ElectraForPreTraining(nn.Module):
    """The discriminator: a replaced-token logit for every position."""

    def __init__(self, config: ModelConfig, embeddings: ElectraEmbeddings | None = None):
        super().__init__()
        self.config = config
        self.electra = ElectraModel(config, embeddings)
        self.discriminator_predictions = ElectraDiscriminatorPredictions(config)

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [batch, seq]: positive means "replaced"."""
        return self.discriminator_predictions(self.electra(input_ids, attention_mask, token_type_ids))


class ElectraForMaskedLM(nn.Module):
    """The generator: a masked language model whose output layer is tied to the word embeddings."""

    def __init__(
        self, config: ModelConfig, embeddings: ElectraEmbeddings | None = None, electra: ElectraModel | None = None
    ):
        super().__init__()
        self.config = config
        self.electra = electra if electra is not None else ElectraModel(config, embeddings)
        self.generator_predictions = ElectraGeneratorPredictions(config)
        self.generator_lm_head = nn.Linear(config.embedding_size, config.vocab_size)
        self.generator_lm_head.weight = self.electra.embeddings.word_embeddings.weight

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.Tensor | None = None,
        positions: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Logits [batch, seq, vocab], or [batch, n, vocab] at `positions` [batch, n] only (what training needs)."""
        hidden = self.electra(input_ids, attention_mask, token_type_ids)
        if positions is not None:
            hidden = hidden.gather(1, positions[:, :, None].expand(-1, -1, hidden.shape[-1]))
        return self.generator_lm_head(self.generator_predictions(hidden))


class ElectraClassificationHead(nn.Module):
    """Hugging Face's sequence-classification head on the [CLS] state: dropout, dense, GELU, dropout, projection.

    (The reference puts a single dense layer on the [CLS] state; this head keeps `transformers`'
    layout so a fine-tuned model exports as `ElectraForSequenceClassification` by renaming only.)
    """

    def __init__(self, config: ModelConfig, num_labels: int):
        super().__init__()
        self.dense = nn.Linear(config.hidden_size, config.hidden_size)
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.out_proj = nn.Linear(config.hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [batch, num_labels] from hidden states [batch, seq, hidden_size]."""
        first = self.dropout(hidden[:, 0])
        return self.out_proj(self.dropout(F.gelu(self.dense(first))))


class ElectraTokenClassificationHead(nn.Module):
    """Hugging Face's token-classification head: dropout and one linear layer at every position."""

    def __init__(self, config: ModelConfig, num_labels: int):
        super().__init__()
        self.dropout = Dropout(config.hidden_dropout_prob)
        self.classifier = nn.Linear(config.hidden_size, num_labels)

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        """Logits [batch, seq, num_labels]."""
        return self.classifier(self.dropout(hidden))


QA_HIDDEN_SIZE = 512  # the reference's width of the end-given-start and answerability layers
MASKED_LOGIT = -10000.0


@dataclass
class QAHeadConfig:
    """The reference's QA head options (its hparam names); all off is Hugging Face's plain head."""

    joint_prediction: bool = False
    answerable_classifier: bool = False
    answerable_uses_start_logits: bool = True
    answerable_weight: float = 0.5
    beam_size: int = 20

    @property
    def plain(self) -> bool:
        return not (self.joint_prediction or self.answerable_classifier)


class ElectraQuestionAnsweringHead(nn.Module):
    """Extractive question answering: where the answer starts and ends, and for SQuAD 2.0 whether there is one.

    Plain (`QAHeadConfig()`): Hugging Face's `ElectraForQuestionAnswering` head, `qa_outputs`, start and end
    logits at every position, so a model exports to `transformers` by renaming. The reference's head (its
    defaults): start logits, then end logits from a GELU layer over [the start's hidden state; each position's
    hidden state] (`joint_prediction`: the gold start in training, a beam of the `beam_size` most likely
    starts at inference), and an answerability logit from [CLS] and the hidden states weighted by the start
    probabilities (`answerable_classifier`, `answerable_uses_start_logits`).

    `forward` gives one row per position, what prediction and ONNX graphs return: [start, end] logits for the
    plain head; otherwise START, END_OR_BEAM_START (joint: the position of the i-th beam start, in row i),
    ANSWERABLE (every row: the answerability logit; joint without that classifier: [CLS]'s raw start logit, the
    reference's no-answer score) and, joint only, BEAM_ENDS + i: the end log-probabilities given the i-th beam
    start.
    """

    START, END_OR_BEAM_START, ANSWERABLE, BEAM_ENDS = 0, 1, 2, 3

    def __init__(self, config: ModelConfig, options: QAHeadConfig | None = None):
        super().__init__()
        self.options = options = options or QAHeadConfig()
        hidden = config.hidden_size
        if options.joint_prediction:
            self.start_outputs = nn.Linear(hidden, 1)
            self.end_hidden = nn.Linear(2 * hidden, QA_HIDDEN_SIZE)  # input: [start state; end state]
            self.end_outputs = nn.Linear(QA_HIDDEN_SIZE, 1)
        else:
            self.qa_outputs = nn.Linear(hidden, 2)
        if options.answerable_classifier:
            if options.answerable_uses_start_logits:
                self.answerable_hidden = nn.Linear(2 * hidden, QA_HIDDEN_SIZE)  # input: [CLS; expected start]
                self.answerable_outputs = nn.Linear(QA_HIDDEN_SIZE, 1)
            else:
                self.answerable_outputs = nn.Linear(hidden, 1)

    @staticmethod
    def answer_mask(attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        """[batch, seq] True where an answer may start or end: the context (second segment) and [CLS]."""
        mask = attention_mask.bool() & token_type_ids.bool()
        mask[:, 0] = True
        return mask

    @staticmethod
    def _masked(logits: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        # A distinct value per masked position: beams that reach them are ordered alike in every runtime. In float32,
        # whatever the autocast dtype: bf16 holds only 9 distinct values from -10000 to -10511.
        logits = logits.float()
        positions = torch.arange(logits.shape[-1], device=logits.device, dtype=logits.dtype)
        return torch.where(mask, logits, MASKED_LOGIT - positions)

    def _end_logits(self, hidden: torch.Tensor, start_states: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """End logits [batch, starts, seq] given start states [batch, starts, hidden]: the dense layer over the
        concatenation, computed as its two halves so no [batch, starts, seq, 2 x hidden] tensor is built."""
        size = hidden.shape[-1]
        weight = self.end_hidden.weight
        from_start = F.linear(start_states, weight[:, :size], self.end_hidden.bias)  # [b, starts, 512]
        from_end = F.linear(hidden, weight[:, size:])  # [b, seq, 512]
        joint = F.gelu(from_start[:, :, None, :] + from_end[:, None, :, :])
        return self._masked(self.end_outputs(joint).squeeze(-1), mask[:, None, :])

    def _answerable_logit(self, hidden: torch.Tensor, start_logits: torch.Tensor) -> torch.Tensor:
        """[batch]: the logit of "this window holds no answer"."""
        features = hidden[:, 0]
        if self.options.answerable_uses_start_logits:
            expected_start = torch.einsum("bs,bsh->bh", start_logits.softmax(-1).to(hidden.dtype), hidden)
            features = F.gelu(self.answerable_hidden(torch.cat([features, expected_start], -1)))
        return self.answerable_outputs(features).squeeze(-1)

    def _start_end_logits(self, hidden: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Masked start logits [batch, seq], and the end logits of the independent head (the joint head's ends
        depend on the start: None)."""
        if self.options.joint_prediction:
            return self._masked(self.start_outputs(hidden).squeeze(-1), mask), None
        start_logits, end_logits = self._masked(self.qa_outputs(hidden).movedim(-1, 0), mask)
        return start_logits, end_logits

    def loss(
        self,
        hidden: torch.Tensor,
        attention_mask: torch.Tensor,
        token_type_ids: torch.Tensor,
        spans: torch.Tensor,
        impossible: torch.Tensor,
    ) -> torch.Tensor:
        """Summed over the batch: the mean of the start and end cross-entropies (end given the gold start when
        joint), plus `answerable_weight` x the sigmoid cross-entropy of "no answer" (`impossible`: 1.0 or 0.0)."""
        mask = self.answer_mask(attention_mask, token_type_ids)
        start_logits, end_logits = self._start_end_logits(hidden, mask)
        start_logits = start_logits.float()
        if end_logits is None:
            gold_starts = hidden[torch.arange(len(hidden), device=hidden.device), spans[:, 0]]
            end_logits = self._end_logits(hidden, gold_starts[:, None, :], mask)[:, 0]
        total = 0.5 * (
            F.cross_entropy(start_logits, spans[:, 0], reduction="sum")
            + F.cross_entropy(end_logits.float(), spans[:, 1], reduction="sum")
        )
        if self.options.answerable_classifier:
            answerable = self._answerable_logit(hidden, start_logits).float()
            total = total + self.options.answerable_weight * F.binary_cross_entropy_with_logits(
                answerable, impossible, reduction="sum"
            )
        return total

    def forward(self, hidden: torch.Tensor, attention_mask: torch.Tensor, token_type_ids: torch.Tensor) -> torch.Tensor:
        """Per position [batch, seq, columns], as the class docstring lays out."""
        if self.options.plain:
            return self.qa_outputs(hidden)
        mask = self.answer_mask(attention_mask, token_type_ids)
        start_logits, end_logits = self._start_end_logits(hidden, mask)
        if end_logits is None:
            start_log_probs = start_logits.float().log_softmax(-1)
            beam = min(self.options.beam_size, hidden.shape[1])
            _, beam_starts = start_log_probs.topk(beam, dim=-1)  # [b, beam]
            start_states = torch.gather(hidden, 1, beam_starts[:, :, None].expand(-1, -1, hidden.shape[-1]))
            end_log_probs = self._end_logits(hidden, start_states, mask).float().log_softmax(-1)  # [b, beam, seq]
            unused_rows = start_log_probs[:, beam:].new_full(start_log_probs[:, beam:].shape, -1.0)
            columns = [start_log_probs, torch.cat([beam_starts.to(start_log_probs.dtype), unused_rows], 1)]
        else:
            columns = [start_logits, end_logits]
        if self.options.answerable_classifier:
            columns.append(self._answerable_logit(hidden, start_logits)[:, None].expand_as(start_logits))
        elif end_logits is None:  # joint, no classifier: the reference's no-answer score, [CLS]'s raw start logit
            columns.append(start_logits[:, :1].expand_as(start_logits))
        else:
            columns.append(torch.zeros_like(start_logits))
        out = torch.stack([column.float() for column in columns], -1)
        if self.options.joint_prediction:
            out = torch.cat([out, end_log_probs.transpose(1, 2)], -1)
        return out


# Layers the reference builds with tf.layers.dense and no initializer, i.e. TensorFlow's default Glorot uniform:
# the embedding projection, the discriminator's output, and the fine-tuning heads' output layers.
GLOROT_LAYERS = {
    "embeddings_project",
    "dense_prediction",
    "out_proj",
    "classifier",
    "start_outputs",
    "end_hidden",
    "end_outputs",
    "qa_outputs",
    "answerable_hidden",
    "answerable_outputs",
}


def init_weights(module: nn.Module, initializer_range: float) -> None:
    """The reference's initialisation: truncated normal(0, initializer_range) weights (Glorot uniform for
    GLOROT_LAYERS), zero biases, unit LayerNorm."""
    for name, child in module.named_modules():
        if isinstance(child, nn.Linear) and name.rsplit(".", 1)[-1] in GLOROT_LAYERS:
            nn.init.xavier_uniform_(child.weight)
            if child.bias is not None:
                nn.init.zeros_(child.bias)
        elif isinstance(child, (nn.Linear, nn.Embedding)):
            nn.init.trunc_normal_(
                child.weight, std=initializer_range, a=-2 * initializer_range, b=2 * initializer_range
            )
            if isinstance(child, nn.Linear) and child.bias is not None:
                nn.init.zeros_(child.bias)
            if isinstance(child, nn.Embedding) and child.padding_idx is not None:
                with torch.no_grad():
                    child.weight[child.padding_idx].zero_()
        elif isinstance(child, nn.LayerNorm):
            nn.init.ones_(child.weight)
            nn.init.zeros_(child.bias)
