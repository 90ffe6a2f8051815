from __future__ import annotations

import pytest
import torch
import transformers

from electra.config import ModelConfig
from electra.modeling import ElectraForMaskedLM, ElectraForPreTraining, attention_bias, init_weights

SMALL_SHAPE = ModelConfig(
    vocab_size=300,
    embedding_size=32,
    hidden_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    intermediate_size=96,
    max_position_embeddings=64,
)


def hf_config(config: ModelConfig) -> transformers.ElectraConfig:
    return transformers.ElectraConfig(**config.to_dict())


def batch(config: ModelConfig, seed: int = 0) -> dict[str, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(5, config.vocab_size, (3, 20), generator=generator)
    attention_mask = torch.ones_like(input_ids)
    attention_mask[1, 12:] = 0
    attention_mask[2, 5:] = 0
    input_ids[attention_mask == 0] = 0
    token_type_ids = torch.zeros_like(input_ids)
    token_type_ids[0, 9:] = 1
    return {"input_ids": input_ids, "attention_mask": attention_mask, "token_type_ids": token_type_ids}


@pytest.mark.parametrize(
    "shape",
    [
        SMALL_SHAPE,
        ModelConfig(
            vocab_size=300,
            embedding_size=48,
            hidden_size=48,
            num_hidden_layers=1,
            num_attention_heads=2,
            intermediate_size=64,
        ),
    ],
)
def test_discriminator_matches_transformers(shape: ModelConfig):
    torch.manual_seed(0)
    ours = ElectraForPreTraining(shape).eval()
    init_weights(ours, 0.5)  # large weights make any mismatch visible
    theirs = transformers.ElectraForPreTraining(hf_config(shape)).eval()
    missing, unexpected = theirs.load_state_dict(ours.state_dict(), strict=False)
    assert not unexpected and all("position_ids" in name for name in missing)
    inputs = batch(shape)
    with torch.no_grad():
        expected = theirs(**inputs).logits
        got = ours(**inputs)
    real = inputs["attention_mask"].bool()
    assert (got[real] - expected[real]).abs().max() <= 1e-5


def test_generator_matches_transformers_at_all_and_selected_positions():
    torch.manual_seed(0)
    ours = ElectraForMaskedLM(SMALL_SHAPE).eval()
    init_weights(ours, 0.5)
    theirs = transformers.ElectraForMaskedLM(hf_config(SMALL_SHAPE)).eval()
    theirs.load_state_dict(ours.state_dict(), strict=False)
    assert theirs.generator_lm_head.weight.data_ptr() == theirs.electra.embeddings.word_embeddings.weight.data_ptr()
    inputs = batch(SMALL_SHAPE)
    positions = torch.tensor([[1, 4, 9], [0, 2, 11], [3, 3, 1]])
    with torch.no_grad():
        expected = theirs(**inputs).logits
        everywhere = ours(**inputs)
        selected = ours(**inputs, positions=positions)
    real = inputs["attention_mask"].bool()
    assert (everywhere[real] - expected[real]).abs().max() <= 1e-5
    assert (selected - expected.gather(1, positions[:, :, None].expand(-1, -1, 300))).abs().max() <= 1e-5


def test_generator_output_layer_is_tied_to_word_embeddings():
    model = ElectraForMaskedLM(SMALL_SHAPE)
    assert model.generator_lm_head.weight is model.electra.embeddings.word_embeddings.weight


def test_causal_masks_see_one_side_and_padding_rows_stay_finite():
    mask = torch.tensor([[1, 1, 1, 0]])
    ltr = attention_bias(mask, "ltr")[0, 0]
    rtl = attention_bias(mask, "rtl")[0, 0]
    assert ltr[2].tolist() == [True, True, True, False]
    assert rtl[1].tolist() == [False, True, True, False]
    assert rtl[3].tolist() == [False, False, False, True]  # the padding query sees itself, never NaN


def test_initialisation_follows_the_reference() -> None:
    """Truncated normal(0.02) inside the encoder and the prediction heads' first layers; TensorFlow's default Glorot
    uniform where the reference's dense layers name no initializer (the embedding projection, the discriminator's
    output layer)."""
    config = ModelConfig(
        **{**SMALL_SHAPE.to_dict(), "embedding_size": 128, "hidden_size": 512, "intermediate_size": 1024}
    )
    torch.manual_seed(0)
    model = ElectraForPreTraining(config)
    init_weights(model, 0.02)
    query = model.electra.encoder.layer[0].attention.self.query.weight
    assert query.std().item() == pytest.approx(0.0176, rel=0.03)  # a normal(0.02) cut at two deviations
    assert query.abs().max().item() <= 0.04
    for layer in (model.electra.embeddings_project, model.discriminator_predictions.dense_prediction):
        fan_out, fan_in = layer.weight.shape
        bound = (6 / (fan_in + fan_out)) ** 0.5
        assert layer.weight.abs().max().item() <= bound
        assert layer.weight.std().item() == pytest.approx(bound / 3**0.5, rel=0.05)
        assert not layer.bias.any()
    assert model.discriminator_predictions.dense.weight.std().item() == pytest.approx(0.0176, rel=0.03)
