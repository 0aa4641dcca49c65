"""A word-level tokenizer built in the test (nothing is downloaded), for the tiny transformers models of the tests."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any


def word_tokenizer(words: Sequence[str], **specials: str) -> Any:
    """A PreTrainedTokenizerFast over whitespace-split words: ids [PAD], [UNK], then the given special tokens (e.g.
    bos_token="[BOS]") in their order, then the words."""
    import transformers
    from tokenizers import Tokenizer, models, pre_tokenizers

    tokens = {"pad_token": "[PAD]", "unk_token": "[UNK]", **specials}
    vocab = {token: i for i, token in enumerate([*tokens.values(), *words])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return transformers.PreTrainedTokenizerFast(tokenizer_object=tok, **tokens)
