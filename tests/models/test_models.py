"""Stacks, hybrids, generation with the constant-size state, and checkpoints."""

from __future__ import annotations

import json

import pytest
import torch

import rnnzoo
from rnnzoo.models import ModelConfig, SequenceModel, build_model, save
from rnnzoo.models.checkpoint import from_safetensors_bytes, to_safetensors_bytes

LAYERS = ["lstm", "mingru", "attention"]


def tiny(layer, **kw):
    torch.manual_seed(0)
    kw = dict(dict(layer=layer, d_model=8, num_layers=2, vocab_size=11, mlp_ratio=2.0), **kw)
    if layer == "attention":
        kw.setdefault("layer_options", dict(num_heads=2))
    return build_model(**kw).double()


@pytest.mark.parametrize("layer", LAYERS)
def test_step_equals_forward(layer):
    model = tiny(layer)
    tokens = torch.randint(0, 11, (3, 9), generator=torch.Generator().manual_seed(1))
    ref, s_ref = model(tokens)
    state, outs = model.init_state(3, dtype=torch.float64), []
    for t in range(tokens.shape[1]):
        out, state = model.step(tokens[:, t], state)
        outs.append(out)
    assert (torch.stack(outs, 1) - ref).abs().max() < 1e-10
    # split forward carries the state
    a, s = model(tokens[:, :4])
    b, s = model(tokens[:, 4:], s)
    assert (torch.cat([a, b], 1) - ref).abs().max() < 1e-10


@pytest.mark.parametrize("layer", LAYERS)
def test_greedy_generate_equals_recomputation(layer):
    model = tiny(layer).float()
    # a sharp head so that greedy choices are not ties
    with torch.no_grad():
        model.head.weight.mul_(5)
    prompt = torch.randint(0, 11, (2, 5), generator=torch.Generator().manual_seed(2))
    out = model.generate(prompt, max_new_tokens=7, temperature=0)
    seq = prompt
    for _ in range(7):  # full re-computation of the whole sequence for every new token
        logits, _ = model(seq)
        seq = torch.cat([seq, logits[:, -1].argmax(-1, keepdim=True)], 1)
    assert out.shape == (2, 12)
    assert torch.equal(out, seq)


def test_generate_sampling_top_k_and_errors():
    model = tiny("mingru").float()
    prompt = torch.zeros(4, 3, dtype=torch.long)
    g = torch.Generator().manual_seed(0)
    out = model.generate(prompt, 6, temperature=1.0, top_k=1, generator=g)
    assert torch.equal(out, model.generate(prompt, 6, temperature=0))  # top-1 sampling is greedy
    out = model.generate(prompt, 6, temperature=2.0, top_k=3, generator=g)
    assert out.shape == (4, 9) and int(out.max()) < 11
    with pytest.raises(ValueError, match=r"temperature must lie in \[0, inf\], got -1"):
        model.generate(prompt, 2, temperature=-1)
    with pytest.raises(ValueError, match="top_k must be an int >= 1, got 0"):
        model.generate(prompt, 2, top_k=0)


def test_generate_tiny_temperature_bad_temperature_and_tokens_out_of_the_vocabulary():
    """A temperature that divides the logits to +-inf (1e-40 in float32, 1e-300 rounding to
    0.0 in float32) sampled from NaN probabilities: a RuntimeError from multinomial; now it
    is greedy. A NaN / inf / bool temperature and prompt tokens outside the vocabulary were
    a RuntimeError / silently 1 / an IndexError; now one ValueError naming the argument."""
    model = tiny("mingru").float()
    prompt = torch.tensor([[1, 2, 3], [4, 5, 6]])
    greedy = model.generate(prompt, 5, temperature=0)
    for t in (1e-40, 1e-300, 5e-324):
        g = torch.Generator().manual_seed(0)
        assert torch.equal(model.generate(prompt, 5, temperature=t, generator=g), greedy), t
    for t in (float("nan"), float("inf"), True):
        with pytest.raises(ValueError, match="temperature must be a finite real number"):
            model.generate(prompt, 2, temperature=t)
    for bad in (11, -1, -100):
        with pytest.raises(ValueError, match=r"prompt tokens must lie in \[0, 10\] "
                                             r"\(vocab_size 11\), got -?\d+\.\.\d+"):
            model.generate(torch.tensor([[1, bad]]), 2)


def test_hybrid_pattern_and_hooks():
    cfg = ModelConfig(layer="mingru", d_model=8, num_layers=6, vocab_size=5, hybrid="2:1",
                      attention_options=dict(num_heads=2, window=4), max_len=77)
    assert cfg.layer_names() == ["mingru", "mingru", "attention"] * 2
    model = SequenceModel(cfg)
    att = model.blocks[2].mixer
    assert att.name == "attention" and att.window == 4 and att.max_len == 77
    with pytest.raises(ValueError, match="hybrid must be 'R:A'"):
        ModelConfig(layer="lstm", vocab_size=5, hybrid="2-1")


def test_layer_idx_hook_reaches_layers_that_take_it():
    from rnnzoo.layers.mingru import MinGRU

    seen = []

    class Deep(MinGRU):  # a layer whose constructor takes the stack's depth
        def __init__(self, d_model, layer_idx=None, num_layers=None):
            super().__init__(d_model)
            seen.append((layer_idx, num_layers))

    rnnzoo.register("test_deep_mingru", family="diagonal", paper="test")(Deep)
    try:
        build_model(layer="test_deep_mingru", d_model=4, num_layers=3, vocab_size=5)
    finally:  # keep the registry (and the README table test) as it was
        rnnzoo.registry.LAYERS.remove("test_deep_mingru")
    assert seen == [(0, 3), (1, 3), (2, 3)]


def test_bad_options_name_themselves():
    with pytest.raises(ValueError, match="unknown layer 'nope'.*lstm"):
        build_model(layer="nope", vocab_size=4)
    with pytest.raises(ValueError, match="d_model must be an int >= 1, got 0"):
        build_model(layer="lstm", vocab_size=4, d_model=0)
    with pytest.raises(ValueError, match="bad option for layer 'mingru'.*accepts.*expand"):
        build_model(layer="mingru", vocab_size=4, layer_options=dict(nope=1))
    with pytest.raises(ValueError, match="exactly one of vocab_size and input_dim"):
        build_model(layer="lstm")


def test_real_valued_input():
    model = build_model(layer="lstm", d_model=8, input_dim=3, output_dim=2)
    y, _ = model(torch.randn(2, 5, 3))
    assert y.shape == (2, 5, 2)


@pytest.mark.parametrize("layer", ["lstm", "mingru"])
def test_checkpoint_round_trip(tmp_path, layer):
    model = tiny(layer).float()
    save(model, tmp_path / "run")
    assert json.loads((tmp_path / "run" / "config.json").read_text())["layer"] == layer
    loaded = rnnzoo.load(tmp_path / "run")
    tokens = torch.randint(0, 11, (2, 6))
    assert torch.equal(model(tokens)[0], loaded(tokens)[0])
    assert torch.equal(loaded(tokens)[0], rnnzoo.load(tmp_path / "run" / "model.safetensors")(tokens)[0])
    assert not list((tmp_path / "run").glob("*.tmp"))  # atomic writes leave no temporaries


def test_safetensors_bytes_every_dtype():
    tensors = {"f64": torch.randn(2, 3, dtype=torch.float64), "bf16": torch.randn(4).bfloat16(),
               "i64": torch.arange(5), "b": torch.tensor([True, False]), "c": torch.randn(3, dtype=torch.cfloat),
               "empty": torch.zeros(0, 2), "scalar": torch.tensor(3.5)}
    back, meta = from_safetensors_bytes(to_safetensors_bytes(tensors, {"k": "v"}))
    assert meta["k"] == "v"
    for k, t in tensors.items():
        assert back[k].dtype == t.dtype and back[k].shape == t.shape and torch.equal(back[k], t)


def test_safetensors_files_read_by_the_reference_package(tmp_path):
    st = pytest.importorskip("safetensors.torch", reason="safetensors (dev extra) checks the format")
    model = tiny("lstm").float()
    save(model, tmp_path)
    theirs = st.load_file(str(tmp_path / "model.safetensors"))
    ours = model.state_dict()
    assert set(theirs) == set(ours) and all(torch.equal(theirs[k], ours[k]) for k in ours)
    st.save_file({"a": torch.randn(3, 2), "b": torch.arange(4, dtype=torch.int32)},
                 str(tmp_path / "theirs.safetensors"), metadata={"x": "y"})
    back, meta = from_safetensors_bytes((tmp_path / "theirs.safetensors").read_bytes())
    assert meta == {"x": "y"} and back["b"].tolist() == [0, 1, 2, 3]


def test_load_missing_path_names_it(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        rnnzoo.load(tmp_path / "nothing_here")


def test_hybrid_with_sliding_window_generates_like_recomputation():
    torch.manual_seed(0)
    model = build_model(layer="lstm", d_model=8, num_layers=3, vocab_size=11, hybrid="2:1",
                        attention_options=dict(num_heads=2, window=3), mlp_ratio=2.0)
    with torch.no_grad():
        model.head.weight.mul_(5)
    prompt = torch.randint(0, 11, (2, 4), generator=torch.Generator().manual_seed(3))
    out = model.generate(prompt, max_new_tokens=8, temperature=0)
    seq = prompt
    for _ in range(8):
        seq = torch.cat([seq, model(seq)[0][:, -1].argmax(-1, keepdim=True)], 1)
    assert torch.equal(out, seq)


@pytest.fixture
def gain_layer():
    """A throw-away layer with one option, `gain`, registered for the test only."""
    from rnnzoo.layers.mingru import MinGRU

    class Gain(MinGRU):
        def __init__(self, d_model, gain: int = 1):
            super().__init__(d_model)
            self.gain = gain

        def forward(self, x, state=None, **kw):
            y, state = super().forward(x, state, **kw)
            return self.gain * y, state

    rnnzoo.register("test_gain", family="diagonal", paper="test")(Gain)
    yield "test_gain"
    rnnzoo.registry.LAYERS.remove("test_gain")


def _save_as_old(model, run, **config_changes):
    """Save `model`, then rewrite its config as an older rnnzoo would have written it."""
    from rnnzoo.models.checkpoint import load_tensors, save_tensors
    save(model, run)
    tensors, meta = load_tensors(run / "model.safetensors")
    config = json.loads(meta["rnnzoo.config"])
    config.update(config_changes)
    save_tensors(run / "model.safetensors", tensors, dict(meta, **{"rnnzoo.config": json.dumps(config)}))
    (run / "config.json").write_text(json.dumps(config))


@pytest.mark.parametrize("table_key", ["test_gain", "*"])
def test_old_checkpoint_with_a_renamed_option_loads(tmp_path, monkeypatch, gain_layer, table_key):
    from rnnzoo.layers import renames
    model = build_model(layer=gain_layer, d_model=8, num_layers=2, vocab_size=11,
                        layer_options={"gain": 3})
    _save_as_old(model, tmp_path, layer_options={"old_gain": 3})
    monkeypatch.setitem(renames.RENAMED_OPTIONS, table_key, {"old_gain": "gain"})
    loaded = rnnzoo.load(tmp_path)
    assert loaded.config.layer_options == {"gain": 3}
    tokens = torch.randint(0, 11, (2, 6))
    assert torch.equal(model(tokens)[0], loaded(tokens)[0])


def test_old_checkpoint_with_an_unknown_option_fails_in_one_line(tmp_path, gain_layer):
    model = build_model(layer=gain_layer, d_model=8, num_layers=1, vocab_size=11)
    _save_as_old(model, tmp_path, layer_options={"old_gain": 3})
    with pytest.raises(ValueError, match="layer 'test_gain' has no option 'old_gain'.*accepts "
                                         r"\['gain'\]") as e:
        rnnzoo.load(tmp_path)
    assert "\n" not in str(e.value) and "model.safetensors" in str(e.value)


def test_old_checkpoint_misfits_fail_in_one_line(tmp_path):
    """A config field ModelConfig dropped, a classic layer's unknown option, a tensor
    that no longer fits: each one line naming it."""
    model = tiny("lstm").float()
    _save_as_old(model, tmp_path / "field", old_field=1)
    _save_as_old(model, tmp_path / "option", layer_options={"old_size": 3})
    _save_as_old(model, tmp_path / "shape", d_model=6)
    for run, message in (("field", r"has \['old_field'\], which ModelConfig no longer has"),
                         ("option", "old_size"),
                         ("shape", r"does not fit the model of its config \(shape differs")):
        with pytest.raises(ValueError, match=message) as e:
            rnnzoo.load(tmp_path / run)
        assert "\n" not in str(e.value)


@pytest.mark.parametrize("layer, old_names", [
    ("mamba2", {"conv.weight": ("conv.conv.weight", lambda w: w.unsqueeze(1))}),
    ("hawk", {"conv.weight": ("conv_weight", lambda w: w), "conv.bias": ("conv_bias", None)}),
])
def test_checkpoint_from_before_the_one_short_convolution_loads(tmp_path, layer, old_names):
    """Checkpoints written before every layer shared one ShortConv held its parameters
    under other names (and mamba2 / mlstm as an nn.Conv1d weight (C, 1, K)) and the width
    option as conv_size: they load, giving the same outputs."""
    from rnnzoo.models.checkpoint import load_tensors, save_tensors
    torch.manual_seed(0)
    options = {"head_dim": 4} if layer == "mamba2" else {}
    model = build_model(layer=layer, d_model=8, num_layers=2, vocab_size=11,
                        layer_options=options)
    _save_as_old(model, tmp_path, layer_options=dict(options, conv_size=4))
    tensors, meta = load_tensors(tmp_path / "model.safetensors")
    old = {}
    for key, value in tensors.items():
        for new, (name, reshape) in old_names.items():
            if key.endswith(".mixer." + new):
                key, value = key[:-len(new)] + name, (reshape or (lambda w: w))(value)
        old[key] = value
    assert old.keys() != tensors.keys()
    save_tensors(tmp_path / "model.safetensors", old, meta)
    loaded = rnnzoo.load(tmp_path)
    assert loaded.config.layer_options.get("d_conv") == 4
    tokens = torch.randint(0, 11, (2, 6))
    assert torch.equal(model(tokens)[0], loaded(tokens)[0])


def _assert_padding_unread(model, call, clean, valid, pad):
    """call(x) -> (y, state) on `clean` and on it with every padded position (valid False)
    holding `pad`: valid outputs, states and the parameter gradients of a loss on the valid
    outputs equal; padded outputs exactly 0."""
    dirty = torch.where(valid.view(*valid.shape, *(1,) * (clean.dim() - 2)), clean,
                        torch.tensor(pad, dtype=clean.dtype))
    results = []
    for x in (clean, dirty):
        model.zero_grad()
        y, state = call(x)
        (y[valid] ** 2).sum().backward()
        results.append((y, state, [p.grad.clone() for p in model.parameters()]))
    (y0, s0, g0), (y1, s1, g1) = results
    assert torch.equal(y1[~valid], torch.zeros_like(y1[~valid])), pad
    assert torch.allclose(y1, y0, atol=1e-12), pad
    leaves = torch.utils._pytree.tree_leaves
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(leaves(s1), leaves(s0)))
    assert all(torch.allclose(a, b, atol=1e-12) for a, b in zip(g1, g0)), pad


@pytest.mark.parametrize("layer", ["lstm", "mingru", "gla"])
def test_right_padding_never_reaches_valid_outputs_states_or_gradients(layer):
    """SequenceModel(..., lengths=): whatever the padding holds (NaN/inf floats, tokens out
    of the vocabulary such as -100), valid outputs, states and every parameter gradient of a
    loss on the valid outputs equal those of a batch padded with zeros; padded outputs are
    0. Before, NaN padding gave NaN gradients (the embedding's weight gradient reads its
    inputs: NaN * 0) and NaN padded outputs, and token -100 an IndexError."""
    lengths = torch.tensor([5, 2, 0, 3])
    valid = torch.arange(5) < lengths[:, None]
    for kind, pad in (("floats", float("nan")), ("floats", float("inf")), ("tokens", -100)):
        torch.manual_seed(0)
        if kind == "floats":
            model = build_model(layer=layer, d_model=8, num_layers=2, input_dim=3,
                                output_dim=2, mlp_ratio=2.0).double()
            clean = torch.randn(4, 5, 3, dtype=torch.float64) * valid[..., None]
        else:
            model = build_model(layer=layer, d_model=8, num_layers=2, vocab_size=7,
                                mlp_ratio=2.0).double()
            clean = torch.randint(0, 7, (4, 5)) * valid
        _assert_padding_unread(model, lambda x: model(x, lengths=lengths), clean, valid, pad)
    with pytest.raises(ValueError, match=r"lengths must lie in \[0, 5\]"):
        model(clean, lengths=torch.tensor([6, 1, 1, 1]))


@pytest.mark.parametrize("kind", ["universal", "recurrent_depth"])
def test_depth_models_never_read_padding(kind):
    """The SequenceModel subclasses that take lengths= (UniversalTransformer, RecurrentDepth)
    keep SequenceModel's contract: NaN padding or a token out of the vocabulary (-100) changes
    no valid output, state or parameter gradient, and padded outputs are 0. Before: -100 raised
    IndexError in the embedding, NaN padding made every embedding gradient NaN, and padded
    outputs held the head's values."""
    from rnnzoo.models.recurrent_depth import build_recurrent_depth
    from rnnzoo.models.universal import build_universal
    build = build_universal if kind == "universal" else build_recurrent_depth
    lengths = torch.tensor([5, 2, 3])
    valid = torch.arange(5) < lengths[:, None]
    for inputs, pad in (("floats", float("nan")), ("tokens", -100)):
        torch.manual_seed(0)
        size = dict(input_dim=3, output_dim=2) if inputs == "floats" else dict(vocab_size=7)
        model = build(layer="gru", d_model=8, **size).double()
        clean = torch.randn(3, 5, 3, dtype=torch.float64) * valid[..., None] \
            if inputs == "floats" else torch.randint(0, 7, (3, 5)) * valid

        def call(x):
            extra = {} if kind == "universal" else {"generator": torch.Generator().manual_seed(1)}
            return model(x, lengths=lengths, **extra)
        _assert_padding_unread(model, call, clean, valid, pad)


@pytest.mark.parametrize("layer,gate", [("gru", "fixed"), ("attention", "lstm")])
def test_block_recurrent_never_reads_padding(layer, gate):
    """BlockRecurrentTransformer(..., lengths=) keeps SequenceModel's contract (NaN / inf
    padding or a token out of the vocabulary changes no valid output, state or parameter
    gradient; padded outputs are 0), and each row's outputs and state are those of the row
    run alone on its valid steps: segments of 2 over T=5, so rows end mid-segment, on a
    boundary, and before whole segments (their state kept), one with no step at all. Before,
    forward took no lengths."""
    from rnnzoo.models.block_recurrent import build_block_recurrent
    lengths = torch.tensor([5, 2, 0, 3])
    valid = torch.arange(5) < lengths[:, None]
    opts = dict(num_heads=2, max_len=8) if layer == "attention" else {}
    for inputs, pad in (("floats", float("nan")), ("floats", float("inf")), ("tokens", -100)):
        torch.manual_seed(0)
        size = dict(input_dim=3, output_dim=2) if inputs == "floats" else dict(vocab_size=7)
        model = build_block_recurrent(layer=layer, d_model=8, num_layers=2, mlp_ratio=2.0,
                                      layer_options=opts, segment_len=2, num_state=3,
                                      num_heads=2, gate=gate, recurrent_layers=(0,),
                                      **size).double()
        clean = torch.randn(4, 5, 3, dtype=torch.float64) * valid[..., None] \
            if inputs == "floats" else torch.randint(0, 7, (4, 5)) * valid
        _assert_padding_unread(model, lambda x: model(x, lengths=lengths), clean, valid, pad)
    y, state = model(clean, lengths=lengths)
    leaves = torch.utils._pytree.tree_leaves
    for b, n in enumerate(lengths.tolist()):
        row = model.init_state(1, dtype=torch.float64) if n == 0 else None
        if n:
            y_b, row = model(clean[b:b + 1, :n])
            assert torch.allclose(y[b:b + 1, :n], y_b, atol=1e-12)
        for got, want in zip(leaves(state), leaves(row)):
            assert torch.allclose(got[b:b + 1], want.to(got.dtype), atol=1e-12), (b, n)
