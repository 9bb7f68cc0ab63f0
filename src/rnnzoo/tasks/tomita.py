"""The Tomita grammars (Tomita 1982, "Dynamic Construction of Finite-State Automata from
Examples Using Hill-Climbing"), the regular languages over {0, 1} on which recurrent
networks' extracted automata are checked (Wang & Niepert 2019, arXiv:1901.08817):

    1  1*
    2  (10)*
    3  no maximal run of 1s of odd length immediately followed by a maximal run of 0s of
       odd length
    4  no three consecutive 0s
    5  an even number of 0s and an even number of 1s
    6  (number of 0s - number of 1s) divisible by 3
    7  0*1*0*1*

Each grammar is a minimal DFA here (state 0 the start, a table of transitions and the
accepting states). A batch is half members, half non-members (of the drawn length, where
both exist), each drawn uniformly among the strings of its class, by counting accepted
completions. The label of every prefix is supervised (1: in the language), the whole
string's scored.
"""

from __future__ import annotations

import numpy as np

from rnnzoo.checks import int_in
from rnnzoo.tasks.base import last_position_mask, pick_length, task, tokens_batch
from rnnzoo.tasks.formal import _Formal

# grammar -> (delta[state] = (next on 0, next on 1), accepting states); state 0 starts
DFAS: dict[int, tuple[tuple[tuple[int, int], ...], frozenset[int]]] = {
    1: (((1, 0), (1, 1)), frozenset({0})),
    2: (((2, 1), (0, 2), (2, 2)), frozenset({0})),
    # 0: no odd 1-run pending, 1: inside an odd 1-run, 2: inside an even 1-run,
    # 3: odd 0-run after an odd 1-run, 4: even 0-run after an odd 1-run, 5: dead
    3: (((0, 1), (3, 2), (0, 1), (4, 5), (3, 1), (5, 5)), frozenset({0, 1, 2, 4})),
    4: (((1, 0), (2, 0), (3, 0), (3, 3)), frozenset({0, 1, 2})),
    # (zeros mod 2) + 2 (ones mod 2)
    5: (((1, 2), (0, 3), (3, 0), (2, 1)), frozenset({0})),
    6: (((1, 2), (2, 0), (0, 1)), frozenset({0})),  # (zeros - ones) mod 3
    7: (((0, 1), (2, 1), (2, 3), (4, 3), (4, 4)), frozenset({0, 1, 2, 3})),
}


def tomita_dfa(grammar: int) -> tuple[np.ndarray, np.ndarray]:
    """(delta (states, 2) int, accepting (states,) bool) of Tomita grammar 1-7."""
    delta, accept = DFAS[int_in("grammar", grammar, lo=1, hi=7)]
    return np.array(delta), np.array([q in accept for q in range(len(delta))])


def completions(delta: np.ndarray, accept: np.ndarray, length: int) -> np.ndarray:
    """counts (2, length + 1, states) float64: counts[c, r, q] is the number of strings of
    length r that lead from q to an accepting (c = 1) or rejecting (c = 0) state."""
    counts = np.zeros((2, length + 1, len(delta)))
    counts[1, 0], counts[0, 0] = accept, ~accept
    for r in range(1, length + 1):
        counts[:, r] = counts[:, r - 1][:, delta].sum(-1)
    return counts


@task("tomita", family="formal")
class Tomita(_Formal):
    """Tomita grammar `grammar` (1-7): is the bit string in the language?"""

    vocab_size, output_dim, chance, metric = 2, 2, 0.5, "scaled_acc"
    option_help = {"grammar": "which Tomita grammar, 1-7 (tasks/tomita.py lists them)"}

    def __init__(self, grammar: int = 3, **kw):
        kw.setdefault("train_lengths", (1, 20))
        kw.setdefault("test_lengths", (21, 50, 100))
        super().__init__(**kw)
        self.delta, self.accept = tomita_dfa(grammar)
        self.grammar = int(grammar)

    def options(self):
        return dict(super().options(), grammar=self.grammar)

    def sample(self, rng, batch_size, length=None, split="train"):
        T = pick_length(rng, self, length)
        counts = completions(self.delta, self.accept, T)
        label = (np.arange(batch_size) % 2).astype(np.int64)
        rng.shuffle(label)
        label = np.where(counts[label, T, 0] > 0, label, 1 - label)  # one class may be empty
        q = np.zeros(batch_size, dtype=np.int64)
        bits = np.empty((batch_size, T), dtype=np.int64)
        prefix = np.empty((batch_size, T), dtype=np.int64)
        for t in range(T):
            rest = T - t - 1
            ones = counts[label, rest, self.delta[q, 1]]
            total = ones + counts[label, rest, self.delta[q, 0]]
            bits[:, t] = rng.random(batch_size) * total < ones
            q = self.delta[q, bits[:, t]]
            prefix[:, t] = self.accept[q]
        return tokens_batch(bits, prefix, last_position_mask(batch_size, T))
