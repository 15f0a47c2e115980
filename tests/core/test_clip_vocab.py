from mist_debias.core.clip_vocab import bytes_to_unicode, clip_tokenizer, write_clip_tokenizer


def test_vocab_has_clip_size_and_known_ids():
    tokenizer = clip_tokenizer()
    assert len(tokenizer) == 49408
    assert tokenizer("a photo of a doctor").input_ids == [49406, 320, 1125, 539, 320, 5547, 49407]


def test_byte_map_is_a_bijection_over_256_bytes():
    mapping = bytes_to_unicode()
    assert sorted(mapping) == list(range(256))
    assert len(set(mapping.values())) == 256


def test_padding_tokens_per_family(tmp_path):
    eos = write_clip_tokenizer(tmp_path / "eos")
    from transformers import CLIPTokenizer

    sd1 = CLIPTokenizer.from_pretrained(str(eos))
    ids = sd1("a doctor", padding="max_length", max_length=77).input_ids
    assert ids[:4] == [49406, 320, 5547, 49407] and set(ids[4:]) == {49407}
    bang = clip_tokenizer(pad_token="!")
    ids = bang("a doctor", padding="max_length", max_length=77).input_ids
    assert ids[:4] == [49406, 320, 5547, 49407] and set(ids[4:]) == {0}
