import pytest

from mist_debias.core.errors import ModelLoadError
from mist_debias.core.layers import find_cross_attention_projections
from mist_debias.testing import build_pipeline


def test_sd1_layout_has_16_cross_attentions():
    layers = find_cross_attention_projections(build_pipeline("sd1").unet)
    assert len(layers) == 32
    assert all(".attn2.to_" in layer.name for layer in layers)
    assert all(layer.module.bias is None and layer.weight_shape[1] == 32 for layer in layers)


def test_sdxl_has_several_transformer_blocks_per_attention():
    layers = find_cross_attention_projections(build_pipeline("sdxl").unet)
    names = [layer.name for layer in layers]
    assert any("transformer_blocks.1.attn2" in name for name in names)
    assert all(layer.weight_shape[1] == 64 for layer in layers)


def test_filters():
    unet = build_pipeline("sd1").unet
    keys = find_cross_attention_projections(unet, projections=["k"])
    assert len(keys) == 16 and all(layer.name.endswith("to_k") for layer in keys)
    mid = find_cross_attention_projections(unet, blocks=["mid_block"])
    assert [layer.name for layer in mid] == [
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_k",
        "mid_block.attentions.0.transformer_blocks.0.attn2.to_v",
    ]


def test_unet_without_cross_attention_is_refused():
    from diffusers import UNet2DModel

    unet = UNet2DModel(  # self-attention only
        block_out_channels=(32, 64),
        down_block_types=("DownBlock2D", "AttnDownBlock2D"),
        up_block_types=("AttnUpBlock2D", "UpBlock2D"),
        norm_num_groups=16,
        sample_size=8,
    )
    with pytest.raises(ModelLoadError, match="no cross-attention"):
        find_cross_attention_projections(unet)
    with pytest.raises(ModelLoadError):
        find_cross_attention_projections(build_pipeline("sd1").unet, blocks=["nowhere"])
