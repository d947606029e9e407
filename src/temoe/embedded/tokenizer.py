"""Byte-level BPE tokenizer of the embedded model, trained on the corpus with the `tokenizers` library.

Digits are split into single tokens (helps arithmetic); every sequence starts with <|bos|>; documents end
with <|eos|>; <|pad|> pads batches. Byte-level means every language round-trips exactly.
"""

from __future__ import annotations

import random
from collections.abc import Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import PreTrainedTokenizerFast

from temoe.embedded.corpus import Corpus

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
SPECIAL_TOKENS = [PAD, BOS, EOS]


def _training_texts(corpus: Corpus, task_docs: int, natural_chars_per_category: int) -> Iterator[str]:
    rng = random.Random(f"tokenizer-{corpus.seed}")
    for _ in range(task_docs):
        label, text = corpus.sample(rng)
        if not label.startswith("natural/"):
            yield text
    for cat in corpus.categories:
        total = 0
        for text in corpus.natural[cat]:
            yield text
            total += len(text)
            if total >= natural_chars_per_category:
                break


def train_tokenizer(
    corpus: Corpus, vocab_size: int = 4096, task_docs: int = 20_000, natural_chars_per_category: int = 400_000
) -> PreTrainedTokenizerFast:
    """Train the BPE tokenizer on task documents plus a slice of every natural-text category."""
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )
    tok.train_from_iterator(_training_texts(corpus, task_docs, natural_chars_per_category), trainer)
    bos_id = tok.token_to_id(BOS)
    tok.post_processor = processors.TemplateProcessing(
        single=f"{BOS} $A", pair=f"{BOS} $A {BOS} $B", special_tokens=[(BOS, bos_id)]
    )
    return PreTrainedTokenizerFast(
        tokenizer_object=tok, bos_token=BOS, eos_token=EOS, pad_token=PAD, model_max_length=2048
    )
