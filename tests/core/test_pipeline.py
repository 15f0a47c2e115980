"""Loading a user's pipeline: safetensors only, diffusers' ``torch_dtype`` keyword."""

import pytest
import torch

from mist_debias.core.errors import ModelLoadError
from mist_debias.core.pipeline import load_pipeline
from mist_debias.testing import build_pipeline


def test_a_pipeline_with_only_pickled_weights_is_refused_with_one_line(tmp_path):
    folder = tmp_path / "pickled"
    build_pipeline("sd1").save_pretrained(str(folder), safe_serialization=False)
    assert [p.name for p in (folder / "unet").iterdir() if p.suffix != ".json"] == ["diffusion_pytorch_model.bin"]
    with pytest.raises(ModelLoadError) as refused:
        load_pipeline(folder, device="cpu")
    message = str(refused.value)
    assert "only safetensors weights are read" in message and "\n" not in message


def test_torch_dtype_sets_the_weights_dtype(sd1_dir):
    pipe = load_pipeline(sd1_dir, device="cpu", torch_dtype=torch.bfloat16)
    assert pipe.unet.dtype == torch.bfloat16 and pipe.text_encoder.dtype == torch.bfloat16
