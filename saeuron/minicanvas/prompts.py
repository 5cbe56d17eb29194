"""MiniCanvas prompts and its word-level tokenizer (a real transformers tokenizer)."""

from __future__ import annotations

from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors
from transformers import PreTrainedTokenizerFast

from saeuron.minicanvas.render import NO_STYLE, OBJECTS, STYLES

STYLED_TEMPLATES: tuple[str, ...] = (
    "a {object} in {style} style",
    "{style} painting of a {object}",
    "a {style} style picture of a {object}",
    "an image of a {object} in {style} style",
    "a {object} drawn in the style of {style}",
)
PLAIN_TEMPLATES: tuple[str, ...] = (
    "a {object}",
    "a picture of a {object}",
    "an image of a {object}",
)
EVAL_TEMPLATE = STYLED_TEMPLATES[0]
"""The template the benchmark samples with (MiniCanvas's 'An {object} image in {style} style.')."""
EVAL_PLAIN_TEMPLATE = PLAIN_TEMPLATES[0]

PAD, UNK, BOS, EOS = "<pad>", "<unk>", "<|startoftext|>", "<|endoftext|>"
MAX_LENGTH = 16
"""Tokens per prompt, start and end tokens included (CLIP uses 77; MiniCanvas prompts are short)."""


def prompt_for(obj: str, style: str, template: str | None = None) -> str:
    """The prompt for one (object, style) cell; style NO_STYLE uses a plain template."""
    if style == NO_STYLE:
        return (template or EVAL_PLAIN_TEMPLATE).format(object=obj)
    return (template or EVAL_TEMPLATE).format(object=obj, style=style)


def vocabulary() -> list[str]:
    """Every word the MiniCanvas prompts use, after the special tokens."""
    words: set[str] = set(OBJECTS) | set(STYLES) | {".", ","}
    for template in STYLED_TEMPLATES + PLAIN_TEMPLATES:
        words |= {w for w in template.split() if not w.startswith("{")}
    # Special token ids: the pooled output of CLIPTextModel treats eos_token_id == 2 as a legacy
    # case (argmax of the ids), so the end token must not have id 2.
    return [PAD, UNK, BOS, EOS] + sorted(words)


def build_tokenizer() -> PreTrainedTokenizerFast:
    """A word-level tokenizer: lower-cased words and punctuation, start/end tokens, padding."""
    vocab = {word: i for i, word in enumerate(vocabulary())}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNK))
    core.normalizer = normalizers.Sequence([normalizers.NFKC(), normalizers.Lowercase()])
    core.pre_tokenizer = pre_tokenizers.Whitespace()
    core.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A {EOS}", special_tokens=[(BOS, vocab[BOS]), (EOS, vocab[EOS])])
    return PreTrainedTokenizerFast(
        tokenizer_object=core, bos_token=BOS, eos_token=EOS, unk_token=UNK, pad_token=PAD,
        model_max_length=MAX_LENGTH, padding_side="right")
