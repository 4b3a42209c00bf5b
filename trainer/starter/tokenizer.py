"""A byte-level BPE tokenizer trained on the FAQ itself.

Byte-level, so any text (Korean, English, emoji, a correction nobody foresaw)
encodes without unknown tokens; trained on the FAQ, so its ~2,000 merges cover
whole Korean syllables and common words and an answer is ~24 tokens, not ~106
bytes, on average (shorter sequences are what make training fit in under a minute).
"""

from __future__ import annotations

from typing import Iterable

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import PreTrainedTokenizerFast

from trainer.starter.chat import CHAT_TEMPLATE, END, PAD, SPECIAL_TOKENS


def train_tokenizer(texts: Iterable[str], vocab_size: int, *, template: str = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    """A transformers tokenizer (with the chat ``template``) whose BPE merges are learned from ``texts``."""
    bpe = Tokenizer(models.BPE())
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    bpe.train_from_iterator(
        list(texts),
        trainers.BpeTrainer(
            vocab_size=vocab_size,
            special_tokens=SPECIAL_TOKENS,
            initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
            # A merge seen once is memorizing, not tokenizing: it only bloats the vocabulary.
            min_frequency=2,
            show_progress=False,
        ),
    )
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        pad_token=PAD,
        eos_token=END,
        additional_special_tokens=[t for t in SPECIAL_TOKENS if t not in (PAD, END)],
        clean_up_tokenization_spaces=False,
        model_max_length=1 << 30,
    )
    tokenizer.chat_template = template
    return tokenizer
