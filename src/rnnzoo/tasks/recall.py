"""Recall and copying: MQAR (Zoology), selective copying and induction heads (Mamba).

- MQAR, multi-query associative recall (Arora et al. 2023, "Zoology",
  arXiv:2312.04927): K key-value pairs, keys from the first half of the
  vocabulary and values from the second; then the keys are queried again at
  positions drawn with power-law gaps (most queries close to the context,
  a few far), the rest filled with token 0. The target at a query position is
  its key's value; nothing else is scored.
- Selective copying (Gu & Dao 2023, arXiv:2312.00752, section 4.1.1): N data
  tokens scattered among noise tokens, then N marker tokens at whose positions
  the data tokens must be output in order. Test lengths longer than training.
- Induction heads (Gu & Dao 2023, section 4.1.2; Olsson et al. 2022): random
  tokens with a trigger token followed by an answer token somewhere; the
  sequence ends with the trigger, and the answer must be recalled.
"""

from __future__ import annotations

import numpy as np

from rnnzoo.checks import int_in, real
from rnnzoo.tasks.base import IGNORE, Task, check_lengths, task, tokens_batch


@task("mqar", family="recall")
class MQAR(Task):
    def __init__(self, vocab_size: int = 256, seq_len: int = 64, num_pairs: int = 4,
                 power_a: float = 0.01, test_lengths=None):
        self.vocab_size = int_in("vocab_size", vocab_size, lo=4)
        self.seq_len = int_in("seq_len", seq_len, lo=4)
        self.num_pairs = int_in("num_pairs", num_pairs, lo=1, hi=min(seq_len // 4,
                                                                       vocab_size // 2 - 1))
        self.power_a = real("power_a", power_a, 0, 1, lo_open=True)
        self.output_dim = self.vocab_size
        self.test_lengths = check_lengths("test_lengths", test_lengths or (self.seq_len,),
                                          lo=4 * self.num_pairs)
        self.train_lengths = (self.seq_len, self.seq_len)

    def options(self):
        return dict(vocab_size=self.vocab_size, seq_len=self.seq_len, num_pairs=self.num_pairs)

    def sample(self, rng, batch_size, length=None, split="train"):
        L, K = length or self.seq_len, self.num_pairs
        half = self.vocab_size // 2
        keys = np.stack([rng.choice(np.arange(1, half), K, replace=False) for _ in range(batch_size)])
        values = rng.integers(half, self.vocab_size, size=(batch_size, K))
        inputs = np.zeros((batch_size, L), dtype=np.int64)
        targets = np.full((batch_size, L), IGNORE, dtype=np.int64)
        inputs[:, 0:2 * K:2], inputs[:, 1:2 * K:2] = keys, values
        # query slots: every other position after the context, gap g drawn with p(g) ~ g^(a-1)
        slots = (L - 2 * K) // 2
        p = self.power_a * np.arange(1, slots + 1) ** (self.power_a - 1)
        p /= p.sum()
        for b in range(batch_size):
            gaps = rng.choice(slots, K, replace=False, p=p)
            pos = 2 * K + 2 * gaps
            order = rng.permutation(K)
            inputs[b, pos], targets[b, pos] = keys[b, order], values[b, order]
        return tokens_batch(inputs, targets)


@task("selective_copy", family="recall")
class SelectiveCopying(Task):
    def __init__(self, num_tokens: int = 8, num_colors: int = 16, train_length: int = 64,
                 test_lengths=(128, 256, 512)):
        self.num_tokens = int_in("num_tokens", num_tokens)
        self.num_colors = int_in("num_colors", num_colors, lo=2)
        train_length = int_in("train_length", train_length, lo=self.num_tokens)
        self.train_lengths = (train_length, train_length)
        self.test_lengths = check_lengths("test_lengths", test_lengths, lo=self.num_tokens)
        self.vocab_size = self.num_colors + 2   # 0 noise, 1..C colours, C + 1 marker
        self.output_dim = self.vocab_size
        self.chance = 1 / self.num_colors

    def options(self):
        return dict(num_tokens=self.num_tokens, num_colors=self.num_colors,
                    train_length=self.train_lengths[0])

    def max_length(self):
        return max(*self.test_lengths, self.train_lengths[0]) + self.num_tokens

    def sample(self, rng, batch_size, length=None, split="train"):
        L, N = length or self.train_lengths[0], self.num_tokens
        marker = self.num_colors + 1
        inputs = np.zeros((batch_size, L + N), dtype=np.int64)
        targets = np.full((batch_size, L + N), IGNORE, dtype=np.int64)
        colors = rng.integers(1, self.num_colors + 1, size=(batch_size, N))
        for b in range(batch_size):
            pos = np.sort(rng.choice(L, N, replace=False))
            inputs[b, pos] = colors[b]
        inputs[:, L:] = marker
        targets[:, L:] = colors
        return tokens_batch(inputs, targets)


@task("induction", family="recall")
class InductionHeads(Task):
    def __init__(self, vocab_size: int = 16, train_length: int = 64, test_lengths=(128, 256, 512)):
        self.vocab_size = int_in("vocab_size", vocab_size, lo=3)  # last token: the trigger
        self.output_dim = self.vocab_size
        self.train_lengths = (int_in("train_length", train_length, lo=4),) * 2
        self.test_lengths = check_lengths("test_lengths", test_lengths, lo=4)
        self.chance = 1 / (self.vocab_size - 1)

    def options(self):
        return dict(vocab_size=self.vocab_size, train_length=self.train_lengths[0])

    def sample(self, rng, batch_size, length=None, split="train"):
        L = length or self.train_lengths[0]
        trigger = self.vocab_size - 1
        inputs = rng.integers(0, trigger, size=(batch_size, L))
        targets = np.full((batch_size, L), IGNORE, dtype=np.int64)
        pos = rng.integers(0, L - 2, size=batch_size)
        rows = np.arange(batch_size)
        inputs[rows, pos] = trigger
        inputs[:, -1] = trigger
        targets[:, -1] = inputs[rows, pos + 1]
        return tokens_batch(inputs, targets)
