from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from electra.config import build_pretraining_config
from electra.errors import UserError
from electra.objectives import MASK_TOKEN_SHARE, PretrainingModel, mask_batch, sample_tokens

PAD, CLS, SEP, MASK = 0, 2, 3, 4
SPECIAL = torch.tensor([CLS, SEP, MASK, PAD])


def example_batch(rows: int = 64, seq: int = 40, seed: int = 0) -> tuple[torch.Tensor, ...]:
    generator = torch.Generator().manual_seed(seed)
    lengths = torch.randint(4, seq + 1, (rows,), generator=generator)
    ids = torch.randint(5, 100, (rows, seq), generator=generator)
    positions = torch.arange(seq)
    attention = (positions[None, :] < lengths[:, None]).long()
    ids[:, 0] = CLS
    ids[torch.arange(rows), lengths - 1] = SEP
    ids[attention == 0] = PAD
    return ids, attention, torch.zeros_like(ids)


def masked(ids, attention, types, rows=None, total=None, seed=7, mask_prob=0.15, max_predictions=6, width=None):
    rows = slice(0, len(ids)) if rows is None else rows
    columns = slice(0, width or ids.shape[1])
    return mask_batch(
        ids[rows][:, columns],
        attention[rows][:, columns],
        types[rows][:, columns],
        special_ids=SPECIAL,
        mask_id=MASK,
        mask_prob=mask_prob,
        max_predictions=max_predictions,
        noise=torch.Generator().manual_seed(seed),
        rows=rows,
        total_rows=total or len(ids),
        noise_length=ids.shape[1],
    )


def test_masking_follows_the_reference_rules():
    ids, attention, types = example_batch()
    batch = masked(ids, attention, types)
    expected_counts = (attention.sum(1).float() * 0.15).round().long().clamp(1, 6)
    assert batch.weights.sum(1).long().tolist() == expected_counts.tolist()
    for row in range(len(ids)):
        used = batch.positions[row][batch.weights[row].bool()]
        assert len(set(used.tolist())) == len(used), "no position masked twice"
        assert not torch.isin(ids[row, used], SPECIAL).any(), "special tokens and padding are never masked"
        assert (batch.positions[row][~batch.weights[row].bool()] == 0).all()
        assert (batch.targets[row][batch.weights[row].bool()] == ids[row, used]).all()
    changed = batch.masked_ids != ids
    assert (batch.masked_ids[changed] == MASK).all()
    mask_share = changed.sum() / batch.weights.sum()
    assert abs(mask_share - MASK_TOKEN_SHARE) < 0.1


def test_masking_of_a_row_does_not_depend_on_how_the_global_batch_is_split():
    ids, attention, types = example_batch(rows=12)
    whole = masked(ids, attention, types)
    for rows in (slice(0, 4), slice(4, 10), slice(10, 12)):
        part = masked(ids, attention, types, rows=rows, total=12)
        assert torch.equal(part.masked_ids, whole.masked_ids[rows])
        assert torch.equal(part.positions, whole.positions[rows])
        assert torch.equal(part.sample_noise, whole.sample_noise[rows])


def test_masking_of_a_row_does_not_depend_on_its_padding_width():
    ids, attention, types = example_batch(rows=12, seq=40)
    whole = masked(ids, attention, types)
    lengths = attention.sum(1)
    for rows in (np.array([5, 0, 9]), np.argsort(lengths.numpy())[:4], np.arange(12)):
        width = int(lengths[rows].max())
        part = masked(ids, attention, types, rows=rows, total=12, width=width)
        slots = part.positions.shape[1]
        assert slots == min(6, width)
        assert torch.equal(part.masked_ids, whole.masked_ids[rows, :width])
        assert torch.equal(part.weights, whole.weights[rows, :slots])
        assert torch.equal(part.positions, whole.positions[rows, :slots])
        assert torch.equal(part.targets, whole.targets[rows, :slots])
        assert torch.equal(part.sample_noise, whole.sample_noise[rows, :slots])
        assert (whole.weights[rows, slots:] == 0).all()


def test_sampling_follows_the_softmax_and_respects_disallow():
    logits = torch.log(torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0]))
    uniform = torch.rand(200_000, generator=torch.Generator().manual_seed(0))
    draws = sample_tokens(logits.expand(len(uniform), -1), uniform)
    frequencies = torch.bincount(draws, minlength=5).float() / len(draws)
    assert torch.allclose(frequencies, torch.tensor([0.5, 0.3, 0.15, 0.05, 0.0]), atol=0.005)
    excluded = sample_tokens(logits.expand(len(uniform), -1), uniform, torch.zeros(len(uniform), dtype=torch.long))
    frequencies = torch.bincount(excluded, minlength=5).float() / len(excluded)
    assert frequencies[0] == 0 and torch.allclose(frequencies[1:4], torch.tensor([0.6, 0.3, 0.1]), atol=0.005)


def tiny_model(**hparams) -> PretrainingModel:
    config = build_pretraining_config({"debug": True, "model_hparam_overrides": {}, **hparams})
    torch.manual_seed(0)
    return PretrainingModel(config, vocab_size=100, pad_token_id=PAD)


def batch_for(model: PretrainingModel, seed: int = 0):
    ids, attention, types = example_batch(rows=6, seq=24, seed=seed)
    return masked(ids, attention, types, max_predictions=model.config.max_predictions_per_seq)


def test_electra_labels_replaced_only_where_the_sample_differs():
    model = tiny_model(uniform_generator=True).eval()
    batch = batch_for(model)
    details: dict = {}
    sums = model(batch, details)
    labels = details["labels"]
    assert labels.sum() == sums["replaced"]
    masked_positions = torch.zeros_like(labels).scatter(1, batch.positions, batch.weights.long())
    masked_positions[:, 0] = 0
    assert (labels <= masked_positions).all(), "only masked positions can be labelled replaced"
    assert labels.sum() > 0
    # uniform generator: the loss is log(vocab) at every masked position
    assert math.isclose(float(sums["mlm_loss"] / batch.weights.sum()), math.log(100), rel_tol=1e-5)


def test_disallow_correct_makes_every_masked_token_replaced():
    model = tiny_model(disallow_correct=True).eval()
    batch = batch_for(model)
    details: dict = {}
    model(batch, details)
    assert details["labels"].sum() == batch.weights.sum()


def test_discriminator_loss_is_mean_sigmoid_cross_entropy_over_real_tokens():
    model = tiny_model().eval()
    batch = batch_for(model)
    details: dict = {}
    sums = model(batch, details)
    real = batch.attention_mask.bool()
    expected = torch.nn.functional.binary_cross_entropy_with_logits(
        details["disc_logits"][real], details["labels"][real].float(), reduction="sum"
    )
    assert torch.allclose(sums["disc_loss"], expected, rtol=1e-5)
    assert model.counts(batch)["tokens"] == real.sum()


@pytest.mark.parametrize(
    "hparams",
    [
        {"electra_objective": False},
        {"electra_objective": False, "electric_objective": True},
        {"untied_generator_embeddings": True},
        {"untied_generator": False},
    ],
)
def test_other_objectives_produce_finite_losses_and_gradients(hparams):
    model = tiny_model(**hparams)
    sums = model(batch_for(model))
    loss = sum(weight * sums[name] for name, weight in model.loss_weights.items() if name in sums)
    loss.backward()
    assert torch.isfinite(loss)
    grads = [param.grad for param in model.parameters() if param.grad is not None]
    assert grads and all(torch.isfinite(grad).all() for grad in grads)
    if not model.has_discriminator:
        assert "disc_loss" not in sums and model.generator.config.hidden_size == 144


@pytest.mark.parametrize("hparams", [{}, {"electra_objective": False, "electric_objective": True}])
def test_training_forward_compiles_to_one_graph(hparams):
    """torch.compile (the "compile" hparam; CUDA graphs with "reduce-overhead") captures a whole training forward:
    no host synchronisation, data-dependent shape or unsupported op splits it, dropout included."""
    torch._dynamo.reset()
    model = tiny_model(**hparams).train()
    explanation = torch._dynamo.explain(model)(batch_for(model))
    assert (explanation.graph_count, explanation.graph_break_count) == (1, 0), explanation.break_reasons


def test_generator_shares_the_discriminator_embeddings_and_is_smaller():
    model = tiny_model()
    assert model.generator.electra.embeddings is model.discriminator.electra.embeddings
    assert model.generator.config.hidden_size == round(144 * 0.25)
    assert model.generator.generator_lm_head.weight is model.discriminator.electra.embeddings.word_embeddings.weight
    untied = tiny_model(untied_generator_embeddings=True)
    assert untied.generator.electra.embeddings is not untied.discriminator.electra.embeddings


@pytest.mark.parametrize("setting", [{"uniform_generator": True}, {"two_tower_generator": False}])
def test_electric_refuses_a_noise_model_whose_probabilities_it_does_not_have(setting):
    with pytest.raises(UserError, match="does not go with Electric"):
        build_pretraining_config({"electra_objective": False, "electric_objective": True, **setting})


@pytest.mark.parametrize("setting", ["uniform_generator", "two_tower_generator"])
def test_a_masked_lm_refuses_generator_settings_of_the_other_objectives(setting):
    """Both crashed at the first step (an AttributeError, and a loss without a gradient)."""
    with pytest.raises(UserError, match=f'"{setting}": true with electra_objective and electric_objective both false'):
        build_pretraining_config({"electra_objective": False, setting: True})


def test_electric_noise_model_does_not_depend_on_the_padding_width():
    """Rows are padded to their micro-batch's longest, which length grouping changes from step to step: the noise
    logits of every real position, [CLS] and a full row's [SEP] included, must not move with the width."""
    from dataclasses import replace

    model = tiny_model(electra_objective=False, electric_objective=True).eval()
    ids, attention, types = example_batch(rows=6, seq=24)
    ids[0, 1:-1], ids[0, -1], attention[0] = 50, SEP, 1  # the first row fills the width
    batch = masked(ids, attention, types, max_predictions=model.config.max_predictions_per_seq)
    wider = replace(
        batch,
        input_ids=torch.nn.functional.pad(batch.input_ids, (0, 9), value=PAD),
        attention_mask=torch.nn.functional.pad(batch.attention_mask, (0, 9)),
        token_type_ids=torch.nn.functional.pad(batch.token_type_ids, (0, 9)),
    )
    real = batch.attention_mask.bool()
    narrow_logits, wide_logits = model.cloze_logits(batch), model.cloze_logits(wider)[:, : real.shape[1]]
    assert torch.allclose(narrow_logits[real], wide_logits[real], atol=1e-5)


def test_electric_cloze_model_never_sees_the_token_it_predicts():
    model = tiny_model(electra_objective=False, electric_objective=True).eval()
    batch = batch_for(model)
    before = model.cloze_logits(batch)
    changed = batch.input_ids.clone()
    changed[:, 5] = 50  # change one token: its own cloze distribution must not move
    from dataclasses import replace

    after = model.cloze_logits(replace(batch, input_ids=changed))
    assert torch.allclose(before[:, 5], after[:, 5], atol=1e-5)
    assert not torch.allclose(before[:, 4], after[:, 4], atol=1e-5)
    assert not torch.allclose(before[:, 6], after[:, 6], atol=1e-5)


def test_electric_scores_energy_plus_noise_log_likelihood_plus_prior_odds():
    """Electric's discriminator logit is the energy model's output plus log q(x) of the token it sees (q: the
    two-tower cloze model) plus log(k / (1 - k)), k the masking rate (the paper's noise-contrastive estimation).
    Every masked position is labelled noise (sampled, even when the sample equals the original), and the cloze
    loss is -log q of the original token at every candidate position."""
    model = tiny_model(electra_objective=False, electric_objective=True, mask_prob=0.25).eval()
    batch = batch_for(model)
    seen: dict = {}
    model.discriminator.register_forward_pre_hook(lambda module, inputs: seen.setdefault("ids", inputs[0]))
    details: dict = {}
    sums = model(batch, details)
    fake_ids = seen["ids"]
    with torch.no_grad():
        energy = model.discriminator(fake_ids, batch.attention_mask, batch.token_type_ids).float()
        log_q = model.cloze_logits(batch).float().log_softmax(-1)
    expected = energy + log_q.gather(-1, fake_ids[:, :, None]).squeeze(-1) + math.log(0.25 / 0.75)
    assert torch.allclose(details["disc_logits"], expected, atol=1e-5)
    masked_positions = torch.zeros_like(fake_ids).scatter(1, batch.positions, batch.weights.long())
    masked_positions[:, 0] = 0
    assert torch.equal(details["labels"], masked_positions) and masked_positions.sum() > 0
    cloze_loss = -(log_q.gather(-1, batch.input_ids[:, :, None]).squeeze(-1) * batch.candidates).sum()
    assert torch.allclose(sums["mlm_loss"], cloze_loss, rtol=1e-5)
    assert model.normalizers["mlm_loss"] == "cloze"


def test_masked_lm_loss_is_cross_entropy_at_the_masked_positions():
    model = tiny_model(electra_objective=False).eval()
    batch = batch_for(model)
    sums = model(batch)
    logits = model.generator(batch.masked_ids, batch.attention_mask, batch.token_type_ids, batch.positions)
    log_probs = logits.float().log_softmax(-1).gather(-1, batch.targets[:, :, None]).squeeze(-1)
    assert torch.allclose(sums["mlm_loss"], -(log_probs * batch.weights).sum(), rtol=1e-5)
    assert batch.weights.sum() > 0 and model.normalizers["mlm_loss"] == "masked"
