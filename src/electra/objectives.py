"""Pre-training objectives: ELECTRA's replaced-token detection, plain MLM, and Electric.

Everything is vectorised on the device. Randomness comes from a `torch.Generator` seeded per training
step and is drawn for the whole global batch before a process takes its rows, so masking and sampling
do not depend on how many processes or micro-batches share the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from electra.config import PretrainingConfig
from electra.modeling import (
    ElectraEmbeddings,
    ElectraForMaskedLM,
    ElectraForPreTraining,
    ElectraGeneratorPredictions,
    ElectraModel,
    init_weights,
)

MASK_TOKEN_SHARE = 0.85  # of the masked positions get [MASK]; the rest keep their token (no random tokens)


@dataclass
class MaskedBatch:
    input_ids: torch.Tensor  # [batch, seq] original tokens
    attention_mask: torch.Tensor  # [batch, seq]
    token_type_ids: torch.Tensor  # [batch, seq]
    masked_ids: torch.Tensor  # [batch, seq] generator input, [MASK] at most masked positions
    positions: torch.Tensor  # [batch, n] masked positions; 0 in unused slots
    targets: torch.Tensor  # [batch, n] original tokens there ([CLS] in unused slots)
    weights: torch.Tensor  # [batch, n] 1.0 for used slots
    candidates: torch.Tensor  # [batch, seq] positions that may be masked (real, non-special tokens)
    sample_noise: torch.Tensor  # [batch, n] uniform draws for sampling replacements


def mask_batch(
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor,
    token_type_ids: torch.Tensor,
    *,
    special_ids: torch.Tensor,
    mask_id: int,
    mask_prob: float,
    max_predictions: int,
    noise: torch.Generator,
    rows: slice | np.ndarray,
    total_rows: int,
    noise_length: int | None = None,
) -> MaskedBatch:
    """The reference's dynamic masking: round(mask_prob x real tokens) positions (at least 1, at most
    `max_predictions`) drawn uniformly among non-special tokens, 85% replaced by [MASK].

    Positions are drawn without replacement (the reference's categorical draw can repeat a position,
    which only wastes a prediction slot). Noise is drawn for the whole global batch, `total_rows` rows of
    `noise_length` columns (the data's full sequence length), and `rows` picks this batch's rows out of
    it: `input_ids` holds just those rows, possibly cut to fewer columns. So a row is masked the same
    whichever process, micro-batch or padding width it lands in.
    """
    device = input_ids.device
    seq_length = input_ids.shape[1]
    noise_length = noise_length or seq_length
    slots_here = min(max_predictions, seq_length)
    if not isinstance(rows, slice):
        rows = torch.as_tensor(rows, device=device)
    position_noise = torch.rand(total_rows, noise_length, generator=noise, device=device)[rows, :seq_length]
    keep_noise = torch.rand(total_rows, max_predictions, generator=noise, device=device)[rows, :slots_here]
    sample_noise = torch.rand(total_rows, max_predictions, generator=noise, device=device)[rows, :slots_here]

    candidates = attention_mask.bool() & ~torch.isin(input_ids, special_ids)
    num_tokens = attention_mask.sum(1).to(torch.float32)
    num_to_predict = (num_tokens * mask_prob).round().long().clamp(1, slots_here)
    scores = position_noise.masked_fill(~candidates, -1.0)
    positions = scores.topk(slots_here, dim=1).indices
    slots = torch.arange(slots_here, device=device)
    used = (slots[None, :] < num_to_predict[:, None]) & candidates.gather(1, positions)
    positions = positions * used
    originals = input_ids.gather(1, positions)
    use_mask_token = used & (keep_noise < MASK_TOKEN_SHARE)
    masked_ids = input_ids.scatter(1, positions, torch.where(use_mask_token, mask_id, originals))
    return MaskedBatch(
        input_ids,
        attention_mask,
        token_type_ids,
        masked_ids,
        positions,
        originals,
        used.to(torch.float32),
        candidates,
        sample_noise,
    )


def sample_tokens(logits: torch.Tensor, uniform: torch.Tensor, disallow: torch.Tensor | None = None) -> torch.Tensor:
    """One token per row of `logits` [..., vocab] from its softmax, by inverting the CDF at `uniform` [...].

    Equivalent to the reference's Gumbel-max draw but needs one random number per position instead of
    one per vocabulary entry. `disallow` [...] excludes a token (the original, for disallow_correct).
    """
    logits = logits.float()
    if disallow is not None:
        logits = logits.scatter(-1, disallow[..., None], -math.inf)
    cdf = logits.softmax(-1).cumsum(-1)
    threshold = (uniform * cdf[..., -1])[..., None]
    return torch.searchsorted(cdf, threshold, right=True).squeeze(-1).clamp_max(logits.shape[-1] - 1)


class PretrainingModel(nn.Module):
    """Generator and discriminator (or a lone masked LM) with the reference's sharing of weights.

    Module names follow Hugging Face: `discriminator` is an `ElectraForPreTraining`, `generator` an
    `ElectraForMaskedLM` sharing the discriminator's embeddings; Electric's two-tower cloze model is
    `generator_ltr`, `generator_rtl` and `cloze_predictions`.
    """

    def __init__(self, config: PretrainingConfig, vocab_size: int, pad_token_id: int):
        super().__init__()
        self.config = config
        self.discriminator_config = config.discriminator_config(vocab_size, pad_token_id)
        self.generator_config = config.generator_config(self.discriminator_config)
        self.has_discriminator = config.electra_objective or config.electric_objective
        disc = self.discriminator_config
        if not self.has_discriminator:
            self.generator = ElectraForMaskedLM(disc)  # BERT-style MLM: a full-sized model
        else:
            self.discriminator = ElectraForPreTraining(disc)
            shared = None if config.untied_generator_embeddings else self.discriminator.electra.embeddings
            gen = self.generator_config
            if config.uniform_generator:
                pass
            elif config.two_tower_generator:
                # untied, each tower has its own embeddings, as the reference's two scopes do
                ltr, rtl = (shared, shared) if shared is not None else (ElectraEmbeddings(gen), ElectraEmbeddings(gen))
                self.generator_ltr = ElectraModel(gen, ltr)
                self.generator_rtl = ElectraModel(gen, rtl)
                self.cloze_predictions = ElectraGeneratorPredictions(gen, input_size=2 * gen.hidden_size)
                self.cloze_output_bias = nn.Parameter(torch.zeros(vocab_size))
            elif not config.untied_generator:
                self.generator = ElectraForMaskedLM(disc, electra=self.discriminator.electra)
            else:
                self.generator = ElectraForMaskedLM(gen, embeddings=shared)
        init_weights(self, disc.initializer_range)

    @property
    def finetuning_encoder(self) -> ElectraModel:
        """The encoder that fine-tuning starts from: the discriminator's, or a lone masked LM's."""
        return self.discriminator.electra if self.has_discriminator else self.generator.electra

    def cloze_logits(self, batch: MaskedBatch) -> torch.Tensor:
        """Electric's noise distribution at every position [batch, seq, vocab], from the unmasked input:
        the left-to-right tower's state one step back and the right-to-left tower's one step ahead. Where
        there is no such token (before [CLS], after the last real one) the state is zeros, not the other end's
        or a padding position's, so a row's values do not depend on how far its batch is padded."""
        real = batch.attention_mask[:, :, None].to(self.cloze_output_bias.dtype)
        ltr = self.generator_ltr(batch.input_ids, batch.attention_mask, batch.token_type_ids, direction="ltr") * real
        rtl = self.generator_rtl(batch.input_ids, batch.attention_mask, batch.token_type_ids, direction="rtl") * real
        context = torch.cat([F.pad(ltr[:, :-1], (0, 0, 1, 0)), F.pad(rtl[:, 1:], (0, 0, 0, 1))], dim=-1)
        table = self.generator_ltr.embeddings.word_embeddings.weight
        return F.linear(self.cloze_predictions(context), table, self.cloze_output_bias)

    @property
    def normalizers(self) -> dict[str, str]:
        """Which count (see `counts`) divides each sum that `forward` returns."""
        return {
            "mlm_loss": "cloze" if self.config.two_tower_generator else "masked",
            "mlm_correct": "masked",
            "sampled_correct": "masked",
            "disc_loss": "tokens",
            "disc_correct": "tokens",
            "replaced": "tokens",
        }

    @property
    def loss_weights(self) -> dict[str, float]:
        return {"mlm_loss": self.config.gen_weight, "disc_loss": self.config.disc_weight}

    @staticmethod
    def counts(batch: MaskedBatch) -> dict[str, torch.Tensor]:
        return {
            "masked": batch.weights.sum(),
            "cloze": batch.candidates.sum().to(torch.float32),
            "tokens": batch.attention_mask.sum().to(torch.float32),
        }

    def forward(self, batch: MaskedBatch, details: dict | None = None) -> dict[str, torch.Tensor]:
        """Sums over this batch of every loss and metric (see `normalizers`). If `details` is a dict, it
        receives the discriminator's per-token logits, labels and mask, for evaluation."""
        config = self.config
        sums: dict[str, torch.Tensor] = {}
        weights = batch.weights
        cloze_log_probs = None
        if config.uniform_generator:
            logits = torch.zeros(
                *batch.positions.shape, self.discriminator_config.vocab_size, device=batch.input_ids.device
            )
        elif config.two_tower_generator:
            cloze = self.cloze_logits(batch)
            # One log-softmax over [batch, seq, vocab] serves the cloze loss here and the noise log-likelihoods below:
            # a second pass over the largest tensor of an Electric step took a third of the step's time.
            cloze_log_probs = cloze.float().log_softmax(-1)
            token_losses = -cloze_log_probs.gather(-1, batch.input_ids[:, :, None]).squeeze(-1)
            sums["mlm_loss"] = (token_losses * batch.candidates).sum()
            logits = cloze.gather(1, batch.positions[:, :, None].expand(-1, -1, cloze.shape[-1]))
        else:
            logits = self.generator(batch.masked_ids, batch.attention_mask, batch.token_type_ids, batch.positions)
        if "mlm_loss" not in sums:  # Electric's cloze loss covers every position and was summed above
            masked_losses = F.cross_entropy(logits.transpose(1, 2).float(), batch.targets, reduction="none")
            sums["mlm_loss"] = (masked_losses * weights).sum()
        sums["mlm_correct"] = ((logits.argmax(-1) == batch.targets) * weights).sum()
        if not self.has_discriminator:
            return sums

        with torch.no_grad():
            disallow = batch.targets if config.disallow_correct else None
            sampled = sample_tokens(logits.detach() / config.temperature, batch.sample_noise, disallow)
            used = weights.bool()
            fake_ids = batch.input_ids.scatter(1, batch.positions, torch.where(used, sampled, batch.targets))
            if config.electric_objective:
                labels = torch.zeros_like(batch.input_ids).scatter(1, batch.positions, used.long())
                labels[:, 0] = 0  # unused slots point at [CLS], which is never masked
            else:
                labels = (fake_ids != batch.input_ids).long()
        disc_logits = self.discriminator(fake_ids, batch.attention_mask, batch.token_type_ids).float()
        if config.electric_objective:
            log_q = cloze_log_probs.detach().gather(-1, fake_ids[:, :, None]).squeeze(-1)
            disc_logits = disc_logits + log_q + math.log(config.mask_prob / (1 - config.mask_prob))
        real = batch.attention_mask.to(torch.float32)
        token_losses = F.binary_cross_entropy_with_logits(disc_logits, labels.float(), reduction="none")
        predictions = (disc_logits > 0).long()
        sums["disc_loss"] = (token_losses * real).sum()
        sums["disc_correct"] = ((predictions == labels) * real).sum()
        sums["replaced"] = (labels * real).sum()
        sums["sampled_correct"] = ((sampled == batch.targets) * weights).sum()
        if details is not None:
            details.update(disc_logits=disc_logits.detach(), labels=labels, attention_mask=batch.attention_mask)
        return sums
