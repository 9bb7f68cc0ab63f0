"""State-regularized RNN (Wang & Niepert 2019): the centroid mixture written out, hard
assignment as the temperature's limit, the extracted automaton is the hard network, and
(slow) a briefly trained SR-GRU's automaton accepts exactly Tomita grammar 1."""

import itertools
import time

import numpy as np
import pytest
import torch

import rnnzoo
from rnnzoo.cells.gru import GRUCell
from rnnzoo.cells.state_regularized import StateRegularized, extract_automaton
from rnnzoo.tasks import get_task
from rnnzoo.tasks.tomita import tomita_dfa

F64 = torch.float64


def make(assignment="soft", temperature=0.7, k=5, seed=0):
    torch.manual_seed(seed)
    return StateRegularized(3, 4, num_centroids=k, temperature=temperature,
                            assignment=assignment).double()


def test_soft_step_is_the_centroid_mixture_of_the_gru_proposal():
    cell = make()
    gru = GRUCell(3, 4).double()
    gru.load_state_dict(cell.base.state_dict())
    x, h = torch.randn(2, 3, dtype=F64), torch.randn(2, 4, dtype=F64)
    u = gru.recur(gru.project(x), (h,))[0]
    alpha = torch.softmax(u @ cell.centroids.T / 0.7, -1)
    got = cell.recur(cell.project(x), (h,))[0]
    assert (got - alpha @ cell.centroids).abs().max() < 1e-14


def test_hard_assignment_keeps_states_on_centroids_and_is_the_cold_limit():
    hard, cold = make("hard"), make("soft", temperature=1e-4)
    cold.load_state_dict(hard.state_dict())
    x = torch.randn(2, 12, 3, dtype=F64)
    h, _ = hard.loop(x, hard.init_state(2, dtype=F64))
    dist = torch.cdist(h.flatten(0, 1), hard.centroids).min(-1).values
    assert dist.max() == 0
    h_cold, _ = cold.loop(x, cold.init_state(2, dtype=F64))
    assert (h - h_cold).abs().max() < 1e-6


def test_layer_wraps_the_cell_with_its_options():
    layer = rnnzoo.create("state_regularized_rnn", d_model=3, hidden_size=4, num_centroids=6,
                          temperature=0.5, assignment="hard", base="rnn_tanh")
    assert layer.cell.centroids.shape == (6, 4) and layer.cell.base_name == "rnn_tanh"
    with pytest.raises(ValueError, match="base must be a cell with one state tensor"):
        rnnzoo.create("state_regularized_rnn", d_model=3, base="lstm")
    with pytest.raises(ValueError, match="assignment must be one of"):
        rnnzoo.create("state_regularized_rnn", d_model=3, assignment="sharp")
    with pytest.raises(ValueError, match="temperature"):
        rnnzoo.create("state_regularized_rnn", d_model=3, temperature=0.0)


def test_extracted_automaton_is_the_hard_network():
    """Reading any string through (start, delta) lands on the centroid the hard network
    ends on."""
    cell = make("hard", k=6, seed=1)
    symbols = torch.eye(3, dtype=F64)
    start, delta = extract_automaton(cell, symbols, torch.zeros(4, dtype=F64))
    words = [w for n in range(1, 6) for w in itertools.product(range(3), repeat=n)]
    used = set()
    for w in words:
        q = int(start[w[0]])
        for a in w[1:]:
            q = int(delta[q, a])
        h, _ = cell.loop(symbols[list(w)].unsqueeze(0), cell.init_state(1, dtype=F64))
        assert torch.equal(h[0, -1], cell.centroids[q])
        used.add(q)
    assert len(used) > 1


@pytest.mark.slow
def test_trained_sr_gru_automaton_accepts_exactly_tomita_1():
    """An SR-GRU (16 units, 8 centroids, temperature 0.5) trained for 300 Adam steps on
    Tomita 1 (1*); the automaton read off its centroids, each labelled by the readout,
    accepts exactly the language on all 8190 strings of length 1-12."""
    t0 = time.time()
    torch.manual_seed(0)
    cell = StateRegularized(2, 16, num_centroids=8, temperature=0.5)
    head = torch.nn.Linear(16, 1)
    opt = torch.optim.Adam([*cell.parameters(), *head.parameters()], lr=0.02)
    task = get_task("tomita", grammar=1, train_lengths=(1, 14))
    rng = np.random.default_rng(0)
    eye = torch.eye(2)
    for _ in range(300):
        b = task.sample(rng, 64)
        h, _ = cell.loop(eye[b.inputs], cell.init_state(64))
        loss = torch.nn.functional.binary_cross_entropy_with_logits(
            head(h).squeeze(-1), b.targets.float())
        opt.zero_grad()
        loss.backward()
        opt.step()
    start, delta = extract_automaton(cell, eye, torch.zeros(16))
    accepting = (head(cell.centroids).squeeze(-1) > 0).tolist()
    dfa, accept = tomita_dfa(1)
    wrong = total = 0
    for n in range(1, 13):
        for w in itertools.product((0, 1), repeat=n):
            q, r = int(start[w[0]]), 0
            for a in w[1:]:
                q = int(delta[q, a])
            for a in w:
                r = dfa[r, a]
            wrong += accepting[q] != bool(accept[r])
            total += 1
    reachable, frontier = set(), {int(s) for s in start}
    while frontier:  # the centroids some string reaches
        reachable |= frontier
        frontier = {int(delta[q, a]) for q in frontier for a in (0, 1)} - reachable
    print(f"tomita 1: {wrong} of {total} strings misclassified by the extracted automaton "
          f"({len(reachable)} centroids reached), {time.time() - t0:.1f} s")
    assert total == 8190 and wrong == 0
