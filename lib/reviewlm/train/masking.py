"""Masked-LM masks over token blocks, with transformers' collator and the tokenizer's words."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from transformers import DataCollatorForLanguageModeling


class _WordIdCollator(DataCollatorForLanguageModeling):
    """transformers' collator, with words from the tokenizer's word ids.

    Its own whole-word masking joins tokens whose character offsets touch, so "comfortable."
    is one word and the period is always masked with it. BERT's whole-word masking splits on
    whitespace and punctuation, as a fast tokenizer's `word_ids()` does: the collator gets
    those ids in place of the offsets.
    """

    @staticmethod
    def _calc_word_ids_and_prob_mask(word_ids: np.ndarray, special_tokens_mask: np.ndarray):
        previous = np.roll(word_ids, 1, axis=1)
        previous[:, 0] = -1
        first_piece = (word_ids >= 0) & (word_ids != previous)
        return word_ids, ~first_piece  # a word is drawn at its first piece, then masked whole


class BlockMasker:
    """Masks blocks of token ids: whole words with `probability`, or single tokens (80/10/10).

    Never writes into its inputs (Ray hands batches that are views of its object store).
    """

    def __init__(self, tokenizer, probability: float, whole_word: bool):
        self.whole_word = whole_word
        self.mask_id = tokenizer.mask_token_id
        replace = {"mask_replace_prob": 1.0, "random_replace_prob": 0.0} if whole_word else {}
        self.collator = _WordIdCollator(tokenizer, mlm_probability=probability, whole_word_mask=whole_word, **replace)

    def __call__(self, ids: np.ndarray, words: np.ndarray, generator: torch.Generator):
        """(masked input ids, labels with -100 where nothing is masked), int64 tensors."""
        self.collator.generator = generator
        words = np.asarray(words)
        return self.collator.torch_mask_tokens(
            torch.tensor(np.asarray(ids), dtype=torch.long),  # a copy: the collator masks in place
            special_tokens_mask=torch.as_tensor(words < 0),
            offset_mapping=words if self.whole_word else None)


def block_seed(block: np.ndarray, seed: int) -> int:
    """A seed from a block's tokens: its masks do not depend on batching, shards or workers."""
    return int.from_bytes(hashlib.blake2b(block.tobytes(), digest_size=8, key=str(seed).encode()).digest(), "big")


def mask_eval_blocks(batch: dict, tokenizer, probability: float, whole_word: bool, seed: int) -> dict:
    """Masks fixed once per eval block (seeded by its tokens): every evaluation scores the same ones."""
    masker = BlockMasker(tokenizer, probability, whole_word)
    inputs, labels = [], []
    for ids, words in zip(batch["input_ids"], batch["word_ids"]):
        x, y = masker(ids[None], words[None], torch.Generator().manual_seed(block_seed(ids, seed)))
        inputs.append(x[0].numpy().astype(np.int32))
        labels.append(y[0].numpy().astype(np.int32))
    empty = np.zeros((0, batch["input_ids"].shape[1]), np.int32)
    return {"input_ids": np.stack(inputs) if inputs else empty, "labels": np.stack(labels) if labels else empty}
