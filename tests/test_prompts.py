import pytest
from transformers import AutoTokenizer

from saeuron.minicanvas.prompts import (MAX_LENGTH, PLAIN_TEMPLATES, STYLED_TEMPLATES,
                                        build_tokenizer, prompt_for)
from saeuron.minicanvas.render import NO_STYLE, OBJECTS, STYLES
from saeuron.diffusion import check_vocabulary

ALL_PROMPTS = [prompt_for(o, s, t) for o in OBJECTS for s in STYLES for t in STYLED_TEMPLATES] + \
    [prompt_for(o, NO_STYLE, t) for o in OBJECTS for t in PLAIN_TEMPLATES]


def test_every_prompt_round_trips_through_the_tokenizer():
    tok = build_tokenizer()
    for prompt in ALL_PROMPTS:
        ids = tok(prompt).input_ids
        assert ids[0] == tok.bos_token_id and ids[-1] == tok.eos_token_id
        assert len(ids) <= MAX_LENGTH
        assert tok.unk_token_id not in ids
        assert tok.decode(ids, skip_special_tokens=True) == prompt


def test_tokenizer_saves_and_loads_with_transformers(tmp_path):
    tok = build_tokenizer()
    tok.save_pretrained(tmp_path)
    again = AutoTokenizer.from_pretrained(tmp_path)
    prompt = "Sunset painting of a Moon."
    assert again(prompt).input_ids == tok(prompt).input_ids
    assert again.decode(again(prompt).input_ids, skip_special_tokens=True) == "sunset painting of a moon ."
    padded = again([prompt], padding="max_length", max_length=MAX_LENGTH).input_ids[0]
    assert len(padded) == MAX_LENGTH and padded[-1] == again.pad_token_id


def test_unknown_word_is_named_with_the_vocabulary():
    with pytest.raises(ValueError, match=r"unknown word\(s\) \['dragon'\].*circle"):
        check_vocabulary(build_tokenizer(), ["a circle in sunset style", "a dragon in pop style"])
