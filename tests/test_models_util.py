"""RepDistiller's models/util.py helper modules: signatures, shapes, state_dict keys, trainable modules."""
import pytest
import torch

from helper.errors import UserError
from models.util import (ConnectorV2, Connector, ConvReg, Embed, LinearEmbed, MLPEmbed, Normalize, Paraphraser,
                         PoolEmbed, Regress, Translator)
from tests.golden_classic1 import SAME_CHANNEL_TEACHER, build, constructor_and_forward_keep_repdistillers_signatures


# ---- signatures ---------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("cls", [ConvReg, Regress, Embed, LinearEmbed, MLPEmbed, Normalize, PoolEmbed, Connector,
                                 ConnectorV2, Paraphraser, Translator], ids=lambda c: c.__name__)
def test_constructor_and_forward_keep_repdistillers_signatures(cls):
    constructor_and_forward_keep_repdistillers_signatures(cls)


# ---- models/util --------------------------------------------------------------------------------------------------

def test_conv_reg_maps_student_maps_onto_teacher_shape_in_each_supported_case():
    for s_hw, t_hw in [(32, 16), (8, 16), (10, 8), (8, 8)]:
        reg = ConvReg((2, 16, s_hw, s_hw), (2, 32, t_hw, t_hw))
        assert reg(torch.randn(2, 16, s_hw, s_hw)).shape == (2, 32, t_hw, t_hw)


def test_conv_reg_rejects_unsupported_sizes_with_a_hint_layer_message():
    with pytest.raises(UserError, match="--hint_layer"):
        ConvReg((2, 16, 8, 8), (2, 32, 32, 32))
    with pytest.raises(UserError, match="--hint_layer"):
        ConvReg((2, 64), (2, 128))


def test_helper_modules_keep_repdistillers_state_dict_keys():
    def keys(module):
        return [k for k in module.state_dict() if not k.endswith(("running_mean", "running_var", "num_batches_tracked"))]

    conv_keys = lambda prefix, idx: [f"{prefix}.{i}.{w}" for i in idx for w in ("weight", "bias")]
    assert keys(Paraphraser((2, 8, 4, 4))) == conv_keys("encoder", (0, 3, 6)) + conv_keys("decoder", (0, 3, 6))
    assert keys(Translator((2, 4, 4, 4), (2, 8, 4, 4))) == conv_keys("encoder", (0, 1, 3, 4, 6, 7))
    assert keys(Connector([(2, 8, 4, 4), (2, 4, 4, 4)], [(2, 8, 4, 4), (2, 8, 4, 4)])) == [
        "connectors.1.conv.weight", "connectors.1.conv.bias", "connectors.1.bn.weight", "connectors.1.bn.bias"]
    assert keys(ConnectorV2([(2, 4, 4, 4)], [(2, 8, 4, 4)])) == [
        "connectors.0.0.weight", "connectors.0.1.weight", "connectors.0.1.bias"]
    assert keys(MLPEmbed(8, 4)) == ["linear1.weight", "linear1.bias", "linear2.weight", "linear2.bias"]
    assert keys(PoolEmbed(3)) == ["embed.Linear.weight", "embed.Linear.bias"]
    assert keys(Embed(8, 4)) == keys(LinearEmbed(8, 4)) == keys(Regress(8, 4)) == ["linear.weight", "linear.bias"]


def test_embed_outputs_unit_rows_and_paraphraser_reconstructs_the_input_shape():
    assert torch.allclose(Embed(8, 4)(torch.randn(3, 8)).norm(dim=1), torch.ones(3))
    factor, rec = Paraphraser((2, 8, 4, 4))(torch.randn(2, 8, 4, 4))
    assert factor.shape == (2, 4, 4, 4) and rec.shape == (2, 8, 4, 4)


def test_connectors_reject_unequal_numbers_of_stages():
    with pytest.raises(UserError):
        Connector([(2, 8, 4, 4)], [(2, 8, 4, 4), (2, 8, 4, 4)])
    with pytest.raises(UserError):
        ConnectorV2([(2, 8, 4, 4)], [])


# ---- adapters -----------------------------------------------------------------------------------------------------

def test_trainable_modules_are_those_repdistiller_optimises():
    assert sum(p.numel() for p in build("hint").parameters()) > 0
    assert {n.split(".")[0] for n, _ in build("correlation").named_parameters()} == {"embed_s", "embed_t"}
    assert len(build("vid").criterion) == 3
    for name in ("attention", "similarity", "rkd", "pkt", "nst"):
        assert not list(build(name).parameters()), name
    assert not list(build("kdsvd", teacher=SAME_CHANNEL_TEACHER).parameters())
