"""The Tomita grammars: each DFA against the language's own definition (regular expressions
and counts, written independently), on every string up to length 12; the task's batches
labelled by that definition, balanced, every prefix labelled."""

import itertools
import re

import numpy as np
import pytest

from rnnzoo.tasks import get_task
from rnnzoo.tasks.tomita import completions, tomita_dfa


def _tomita3(s):
    runs = [(m.group()[0], len(m.group())) for m in re.finditer(r"0+|1+", s)]
    return not any(a == "1" and n % 2 and b == "0" and m % 2
                   for (a, n), (b, m) in zip(runs, runs[1:]))


DEFINITIONS = {
    1: lambda s: re.fullmatch(r"1*", s) is not None,
    2: lambda s: re.fullmatch(r"(10)*", s) is not None,
    3: _tomita3,
    4: lambda s: "000" not in s,
    5: lambda s: s.count("0") % 2 == 0 and s.count("1") % 2 == 0,
    6: lambda s: (s.count("0") - s.count("1")) % 3 == 0,
    7: lambda s: re.fullmatch(r"0*1*0*1*", s) is not None,
}


def run(delta, accept, s):
    q = 0
    for c in s:
        q = delta[q, int(c)]
    return bool(accept[q])


@pytest.mark.parametrize("grammar", range(1, 8))
def test_dfa_accepts_exactly_the_language(grammar):
    delta, accept = tomita_dfa(grammar)
    seen = {True: 0, False: 0}
    for n in range(13):
        for bits in itertools.product("01", repeat=n):
            s = "".join(bits)
            member = DEFINITIONS[grammar](s)
            assert run(delta, accept, s) == member, s
            seen[member] += 1
    assert seen[True] and seen[False]
    counts = completions(delta, accept, 12)  # the counts the sampler draws by
    assert counts[1, 12, 0] == sum(DEFINITIONS[grammar]("".join(b))
                                   for b in itertools.product("01", repeat=12))


@pytest.mark.parametrize("grammar", range(1, 8))
def test_batches_are_labelled_by_the_definition_and_balanced(grammar):
    task = get_task("tomita", grammar=grammar)
    rng = np.random.default_rng(0)
    b = task.sample(rng, 64, length=12)
    assert b.inputs.shape == (64, 12) and b.metric_mask[:, -1].all()
    for row, tgt in zip(b.inputs.tolist(), b.targets.tolist()):
        s = "".join(map(str, row))
        assert tgt == [int(DEFINITIONS[grammar](s[:t + 1])) for t in range(12)]
    assert b.targets[:, -1].sum() == 32  # every grammar has members and non-members at 12


def test_a_class_with_no_string_of_that_length_gives_the_other():
    b = get_task("tomita", grammar=2).sample(np.random.default_rng(1), 8, length=5)
    assert (b.targets[:, -1] == 0).all()  # (10)* has no string of odd length


def test_grammar_is_checked():
    with pytest.raises(ValueError, match="grammar"):
        get_task("tomita", grammar=8)
