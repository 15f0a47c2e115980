import pytest
import torch

from mist_debias.core.errors import PromptError
from mist_debias.core.text import PromptEncoder


def test_positions_on_real_tokenizations(any_pipe):
    encoder = PromptEncoder(any_pipe)
    doctor = encoder.tokenize("a photo of a doctor")
    assert doctor.input_ids[:7] == (49406, 320, 1125, 539, 320, 5547, 49407)
    assert doctor.eos_index == 6
    assert doctor.last_word_index == 5 and doctor.input_ids[5] == 5547
    # a word split into several BPE tokens: the last-word key is its last piece, right before the EOS
    long_word = encoder.tokenize("an anesthesiologist")
    assert long_word.input_ids[long_word.eos_index] == 49407
    assert long_word.eos_index == 5 and long_word.last_word_index == 4


def test_first_eos_not_padding_length(any_pipe):
    encoder = PromptEncoder(any_pipe)
    empty = encoder.tokenize("")
    assert empty.eos_index == 1
    pad_id = any_pipe.tokenizer.pad_token_id
    assert empty.input_ids[2] == pad_id


def test_encoding_matches_the_pipeline(any_pipe):
    encoder = PromptEncoder(any_pipe)
    prompts = ["a photo of a doctor", "a nurse"]
    ours = encoder.encode(prompts)
    encoded = any_pipe.encode_prompt(prompts, device="cpu", num_images_per_prompt=1, do_classifier_free_guidance=False)
    theirs = encoded[0]
    assert ours.shape == theirs.shape == (2, 77, encoder.embedding_dim)
    torch.testing.assert_close(ours, theirs)


def test_truncated_encoding_equals_prefix_of_full(any_pipe):
    encoder = PromptEncoder(any_pipe)
    full = encoder.encode(["a photo of a doctor", "an old man"])
    part = encoder.encode(["a photo of a doctor", "an old man"], num_positions=7)
    torch.testing.assert_close(part, full[:, :7], atol=1e-5, rtol=1e-5)


def test_prompt_whose_eos_would_be_truncated_is_an_error(any_pipe):
    encoder = PromptEncoder(any_pipe)
    assert encoder.tokenize("a " * 75).eos_index == 76
    with pytest.raises(PromptError, match="too long"):
        encoder.tokenize("a " * 76)
