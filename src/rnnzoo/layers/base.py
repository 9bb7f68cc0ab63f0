"""The layer protocol shared by every token mixer (docs/design.md, section 2).

    y, state = layer(x, state=None, *, mode="auto", lengths=None)   # x: (B, T, d_model)
    y, state = layer(x, state, cu_seqlens=cu, max_seqlen=None)       # packed: x (1, T, d_model)
    y_t, state = layer.step(x_t, state)                              # x_t: (B, d_model)
    state = layer.init_state(batch_size, device=None, dtype=None)

A subclass sets `modes` (the reference mode, "sequential", first) and implements

    _forward(x, state, mode) -> (y, state)   # x validated, state never None
    init_state(batch_size, device, dtype)

and may override `_step` (by default the reference mode on a sequence of one step),
`_forward_lengths` (right-padded batches), `_forward_packed` (packed sequences,
`cu_seqlens`) and `auto_mode`.
States are tensors or tuples of tensors kept in float32 / complex64, or in
float64 / complex128 when the input is float64 (rnnzoo.dtypes).
The diagonal layers share one masked recurrence (`_diagonal.DiagonalLayer`).
"""

from __future__ import annotations

import torch
from torch import nn

from rnnzoo.checks import positive_int
from rnnzoo.ops import backend

State = torch.Tensor | tuple[torch.Tensor, ...]


def _shape(t) -> str:
    return "x".join(str(s) for s in t.shape) if isinstance(t, torch.Tensor) else type(t).__name__


class RecurrentLayer(nn.Module):
    """Base class of every registered token mixer. See the module docstring."""

    name: str = "?"  # set by `registry.register`
    modes: tuple[str, ...] = ()
    # The cases (a mode, "step" or "lengths") that must read tensor values on the host, with
    # the reason (docs/design.md section 4, item 8); the conformance suite checks on the
    # `meta` device that exactly these read.
    host_reads: dict[str, str] = {
        "lengths": "the generic right-padding path re-runs each group of equal lengths on its "
                   "prefix, so it reads the lengths (a masked recurrence, as the diagonal "
                   "layers', reads nothing)"}
    # Packed sequences (cu_seqlens) go through `_forward_packed`: by default the generic
    # path below, which lays the documents out as a right-padded batch and runs the
    # `lengths` path, so it reads on the host exactly when "lengths" does (given max_seqlen
    # or a CPU cu_seqlens; a device cu_seqlens without max_seqlen costs one read).

    bidirectional: bool = False  # LION (layers/bidirectional.py), where a layer has lion_inputs

    @property
    def _lion(self) -> bool:
        """True when LION's two-way reading runs here; a layer with a bidirectional option of
        its own (s5: a second SSM read backwards) handles the flag itself."""
        return self.bidirectional and getattr(type(self), "lion_inputs", None) is not None

    def __init_subclass__(cls, **kwargs):
        super().__init_subclass__(**kwargs)
        if vars(cls).get("lion_inputs") is not None:
            from rnnzoo.layers.bidirectional import add_bidirectional_option
            add_bidirectional_option(cls)

    def __init__(self, d_model: int):
        super().__init__()
        self.d_model = positive_int("d_model", d_model)

    # -- to implement ---------------------------------------------------------------
    def init_state(self, batch_size: int, device=None, dtype=None) -> State:
        raise NotImplementedError

    def _forward(self, x: torch.Tensor, state: State, mode: str) -> tuple[torch.Tensor, State]:
        raise NotImplementedError

    def _step(self, x_t: torch.Tensor, state: State) -> tuple[torch.Tensor, State]:
        y, state = self._forward(x_t.unsqueeze(1), state, self.reference_mode)
        return y[:, 0], state

    def auto_mode(self, x: torch.Tensor) -> str:
        """The mode `mode="auto"` picks for `x`; the fastest non-reference mode by default."""
        return self.modes[1] if len(self.modes) > 1 else self.modes[0]

    # -- the protocol -----------------------------------------------------------------
    @property
    def reference_mode(self) -> str:
        return self.modes[0]

    def forward(self, x: torch.Tensor, state: State | None = None, *, mode: str = "auto",
                lengths: torch.Tensor | None = None, cu_seqlens: torch.Tensor | None = None,
                max_seqlen: int | None = None) -> tuple[torch.Tensor, State]:
        """x: (batch, time, d_model) -> y: (batch, time, d_model), final state.

        Packed sequences: x (1, T, d_model) holds N documents end to end, cu_seqlens
        (N + 1,) their boundaries (0 = cu[0] <= cu[1] <= ... <= cu[N] = T); document n
        is x[0, cu[n]:cu[n+1]], run from state[n] (state and the returned state have
        batch N, one per document); max_seqlen (a Python int >= the longest document)
        spares reading it from a device cu_seqlens.
        """
        y, state = self._dispatch(x, state, mode, lengths, cu_seqlens, max_seqlen)
        return y, owned_state(state, x)

    def _dispatch(self, x, state, mode, lengths, cu_seqlens, max_seqlen):
        device_type = _autocast_device(x)
        if device_type:  # the layer computes in its parameters' dtype (see _autocast_device)
            with torch.autocast(device_type, enabled=False):
                return self._dispatch(self._autocast_input(x), state, mode, lengths,
                                      cu_seqlens, max_seqlen)
        self._check_input(x, "x", 3)
        mode = self._check_mode(mode, x)
        if cu_seqlens is not None:
            if lengths is not None:
                raise ValueError("give lengths (right padding) or cu_seqlens (packed "
                                 "sequences), not both")
            cu, max_seqlen = check_cu_seqlens(cu_seqlens, x, max_seqlen)
            # state has one row a document (an expanded view of x gives the batch N)
            state = self._check_or_init_state(state, x.expand(cu.shape[0] - 1, -1, -1))
            return self._forward_packed(x, state, mode, cu, max_seqlen)
        state = self._check_or_init_state(state, x)
        if self._lion:
            lengths = None if lengths is None else self._check_lengths(lengths, x)
            from rnnzoo.layers.bidirectional import lion_forward
            return lion_forward(self, x, state, mode, lengths)
        if lengths is None:
            return self._forward(x, state, mode)
        lengths = self._check_lengths(lengths, x)
        # Padding never reaches a layer, whatever it holds (NaN, inf): padded inputs are
        # zeros and padded outputs are set to zero (torch.where: a NaN times 0 is NaN).
        valid = valid_mask(lengths, x.shape[1]).unsqueeze(-1)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        y, state = self._forward_lengths(torch.where(valid, x, zero), state, mode, lengths)
        return torch.where(valid, y, zero), state

    def step(self, x_t: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """x_t: (batch, d_model) -> y_t: (batch, d_model), next state."""
        device_type = _autocast_device(x_t)
        if device_type:
            with torch.autocast(device_type, enabled=False):
                return self.step(self._autocast_input(x_t), state)
        self._check_input(x_t, "x_t", 2)
        if self._lion:
            raise ValueError(f"layer {self.name!r} was built with bidirectional=True: its outputs "
                             f"read the whole sequence, so it has no step (build it with "
                             f"bidirectional=False to decode)")
        state = self._check_or_init_state(state, x_t)
        y, state = self._step(x_t, state)
        return y, owned_state(state, x_t)

    def _forward_lengths(self, x, state, mode, lengths):
        """Right padding: valid outputs and each sequence's state at its own last step.

        `forward` calls this with zeros at the padded steps of x and sets the padded
        outputs to zero afterwards, so an override only has to get the state right.
        Generic and exact for causal layers: outputs come from the padded run (a
        causal layer's valid outputs never see the padding), and each group of
        sequences of equal length is re-run on its prefix for its final state.
        Layers override this with a masked recurrence where that is cheaper.
        """
        y, final = self._forward(x, state, mode)
        T = x.shape[1]
        if bool((lengths == T).all()):
            return y, final
        finals = _as_tuple(final)
        out = [f.clone() for f in finals]
        for n in lengths.unique().tolist():
            if n == T:
                continue
            idx = (lengths == n).nonzero().squeeze(1)
            sub_state = _index_state(state, idx)
            if n == 0:
                part = _as_tuple(sub_state)
            else:
                part = _as_tuple(self._forward(x[idx, :n], sub_state, mode)[1])
            for o, p in zip(out, part):
                o[idx] = p.to(o.dtype)
        return y, out[0] if isinstance(final, torch.Tensor) else tuple(out)

    def _forward_packed(self, x, state, mode, cu_seqlens, max_seqlen):
        """Packed sequences: x (1, T, d), state batch N, cu_seqlens (N + 1,) long on x's
        device, max_seqlen an int >= every document's length -> y (1, T, d), state (N, ...).

        Generic and exact for every layer: the documents are gathered into a right-padded
        batch (N, max_seqlen, d), run through the `lengths` path (so each starts from its own
        state and nothing crosses a boundary, short convolutions included), and the outputs
        gathered back. Index arithmetic only, no host read. Where the `lengths` path reads
        the lengths anyway (it re-runs each group of equal length for its state; see
        `host_reads`), each group of documents of equal length runs once as a batch instead
        (`_forward_packed_groups`): T steps in all, no padding. A layer may override this
        with a native reset-at-boundary path.
        """
        T = x.shape[1]
        starts, lengths = cu_seqlens[:-1], cu_seqlens[1:] - cu_seqlens[:-1]
        if "lengths" in self.host_reads:  # that path reads the lengths anyway: group by them
            return self._forward_packed_groups(x, state, mode, cu_seqlens)
        L = max(int(max_seqlen), 1)
        t = torch.arange(L, device=x.device)
        valid = (t < lengths.unsqueeze(1)).unsqueeze(-1)                       # (N, L, 1)
        src = (starts.unsqueeze(1) + t).clamp(max=T - 1)                       # (N, L)
        zero = torch.zeros((), dtype=x.dtype, device=x.device)
        xp = torch.where(valid, x[0][src], zero)
        yp, state = self._forward_lengths(xp, state, mode, lengths)
        # packed position p belongs to document n(p), at offset p - cu[n(p)]
        p = torch.arange(T, device=x.device)
        doc = torch.searchsorted(cu_seqlens[1:], p, right=True).clamp(max=lengths.shape[0] - 1)
        y = yp[doc, (p - cu_seqlens[doc]).clamp(max=L - 1)]
        return y.unsqueeze(0), state

    def _forward_packed_groups(self, x, state, mode, cu_seqlens):
        """Packed sequences for a layer whose `lengths` path reads the lengths (and re-runs
        each group of equal length for its state): run each group of documents of equal
        length as one batch instead, outputs and final states at once, T steps in all and
        no padding."""
        cu = cu_seqlens.tolist()
        by_length: dict[int, list[int]] = {}
        for n, (a, b) in enumerate(zip(cu, cu[1:])):
            by_length.setdefault(b - a, []).append(n)
        ys, positions, docs, finals = [], [], [], []
        for n, group in by_length.items():
            idx = torch.tensor(group, device=x.device)
            sub_state = _index_state(state, idx)
            if n == 0:
                finals.append(_as_tuple(sub_state))
            else:
                src = cu_seqlens[idx].unsqueeze(1) + torch.arange(n, device=x.device)  # (g, n)
                y, final = self._forward(x[0][src], sub_state, mode)
                ys.append(y.reshape(-1, y.shape[-1]))
                positions.append(src.reshape(-1))
                finals.append(_as_tuple(final))
            docs.append(idx)
        # every packed position and every document appears once: undo the grouping's order
        y = torch.cat(ys)[torch.argsort(torch.cat(positions))].unsqueeze(0)
        order = torch.argsort(torch.cat(docs))
        out = tuple(torch.cat([f[i].to(_as_tuple(state)[i].dtype) for f in finals])[order]
                    for i in range(len(finals[0])))
        return y, out[0] if isinstance(state, torch.Tensor) else out

    # -- validation ----------------------------------------------------------------------
    def _param_dtype(self) -> torch.dtype | None:
        for p in self.parameters():
            if p.is_floating_point():
                return p.dtype
        return None

    def _autocast_input(self, x):
        """x in the parameters' dtype under autocast (an autocast region upstream hands
        bfloat16 activations to a float32 layer); anything else as it is, for _check_input."""
        pdt = self._param_dtype()
        if isinstance(x, torch.Tensor) and x.is_floating_point() and pdt is not None:
            return x.to(pdt)
        return x

    def _check_input(self, x, name: str, ndim: int) -> None:
        expected = "(batch, time, d_model)" if ndim == 3 else "(batch, d_model)"
        if not isinstance(x, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor of shape {expected}, got {type(x).__name__}")
        if not x.is_floating_point():
            raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
        if x.dim() != ndim or x.shape[-1] != self.d_model:
            raise ValueError(f"{name} must have shape {expected} with d_model={self.d_model}, "
                             f"got shape {tuple(x.shape)}")
        if ndim == 3 and x.shape[1] == 0:
            raise ValueError(f"{name} must have at least one time step, got shape {tuple(x.shape)}")
        if x.shape[0] == 0:  # refused as T = 0 is: many paths cannot run an empty batch
            raise ValueError(f"{name} must hold at least one sequence (batch >= 1), got shape "
                             f"{tuple(x.shape)}")
        pdt = self._param_dtype()
        if pdt is not None and x.dtype != pdt:
            raise TypeError(f"{name} has dtype {x.dtype} but the layer's parameters are {pdt}; "
                            f"cast one to the other (layer.to({x.dtype}) or x.to({pdt}))")

    def _check_mode(self, mode, x) -> str:
        if mode == "auto":
            return self.auto_mode(x)
        if mode not in self.modes:
            raise ValueError(f"mode must be 'auto' or one of {self.modes} for layer "
                             f"{self.name!r}, got {mode!r}")
        return mode

    def _check_or_init_state(self, state, x) -> State:
        expected = self.init_state(x.shape[0], device=x.device, dtype=x.dtype)
        if state is None:
            return expected
        if isinstance(state, list):
            state = tuple(state)
        exp, got = _as_tuple(expected), _as_tuple(state)
        if isinstance(expected, tuple) != isinstance(state, tuple) or len(got) != len(exp) \
                or not all(isinstance(s, torch.Tensor) for s in got):
            raise TypeError(f"state must be {_describe(expected)} for layer {self.name!r}, "
                            f"got {_describe(state)}")
        for i, (e, s) in enumerate(zip(exp, got)):
            where = "state" if len(exp) == 1 else f"state[{i}]"
            if s.shape != e.shape:
                raise ValueError(f"{where} must have shape {tuple(e.shape)} for batch "
                                 f"{x.shape[0]}, got {tuple(s.shape)}")
            if s.is_complex() != e.is_complex() or not (s.is_floating_point() or s.is_complex()):
                raise TypeError(f"{where} must have dtype {e.dtype}, got {s.dtype}")
            if s.device != e.device:
                raise ValueError(f"{where} is on {s.device} but x is on {e.device}")
        cast = tuple(s.to(e.dtype) for s, e in zip(got, exp))
        return cast if isinstance(expected, tuple) else cast[0]

    def _check_lengths(self, lengths, x) -> torch.Tensor:
        B, T = x.shape[:2]
        if not isinstance(lengths, torch.Tensor) or lengths.dtype.is_floating_point or \
                lengths.is_complex() or lengths.dtype == torch.bool:
            raise TypeError(f"lengths must be an integer tensor of shape ({B},), got "
                            f"{getattr(lengths, 'dtype', type(lengths).__name__)}")
        if lengths.shape != (B,):
            raise ValueError(f"lengths must have shape ({B},), got {tuple(lengths.shape)}")
        if bool(((lengths < 0) | (lengths > T)).any()):
            raise ValueError(f"lengths must lie in [0, {T}], got {lengths.tolist()}")
        return lengths.to(device=x.device, dtype=torch.long)

    def extra_repr(self) -> str:
        return f"d_model={self.d_model}, modes={self.modes}"


def check_cu_seqlens(cu_seqlens, x: torch.Tensor, max_seqlen: int | None = None
                     ) -> tuple[torch.Tensor, int]:
    """Validate packed-sequence boundaries for x (1, T, ...) -> (cu_seqlens as long on x's
    device, max_seqlen). One clear ValueError / TypeError for anything wrong.

    The values (0 first, never decreasing, T last) are checked when cu_seqlens is on the
    CPU, where that reads nothing from an accelerator (the text loader makes it there);
    a device cu_seqlens is trusted, as flash-attention does, and read once for max_seqlen
    only when max_seqlen is not given.
    """
    B, T = x.shape[:2]
    if not isinstance(cu_seqlens, torch.Tensor) or cu_seqlens.dtype.is_floating_point or \
            cu_seqlens.is_complex() or cu_seqlens.dtype == torch.bool:
        raise TypeError(f"cu_seqlens must be an integer tensor of shape (N + 1,), got "
                        f"{getattr(cu_seqlens, 'dtype', type(cu_seqlens).__name__)}")
    if B != 1:
        raise ValueError(f"cu_seqlens (packed sequences) needs x of batch 1, shape (1, T, ...), "
                         f"got shape {tuple(x.shape)}")
    if cu_seqlens.dim() != 1 or cu_seqlens.shape[0] < 2:
        raise ValueError(f"cu_seqlens must have shape (N + 1,) with N >= 1 sequences, got "
                         f"shape {tuple(cu_seqlens.shape)}")
    if max_seqlen is not None and (isinstance(max_seqlen, bool) or not isinstance(max_seqlen, int)
                                   or max_seqlen < 0):
        raise ValueError(f"max_seqlen must be an int >= 0, got {max_seqlen!r}")
    if cu_seqlens.device.type == "cpu":
        v = cu_seqlens.tolist()
        if v[0] != 0 or v[-1] != T or any(b < a for a, b in zip(v, v[1:])):
            raise ValueError(f"cu_seqlens must start at 0, never decrease and end at T={T}, "
                             f"got {v if len(v) <= 12 else v[:6] + ['...'] + v[-3:]}")
        longest = max(b - a for a, b in zip(v, v[1:]))
        if max_seqlen is not None and max_seqlen < longest:
            raise ValueError(f"max_seqlen={max_seqlen} is shorter than the longest sequence "
                             f"({longest})")
        max_seqlen = longest if max_seqlen is None else max_seqlen
    elif max_seqlen is None:
        max_seqlen = int((cu_seqlens[1:] - cu_seqlens[:-1]).max())
    return cu_seqlens.to(device=x.device, dtype=torch.long), max_seqlen


class MaskedLayer(RecurrentLayer):
    """A layer computed by one method,

        _run(x, state, mode, mask=None) -> (y, state)        x: (B, T, d_model)

    where mask (B, T, 1) bool marks the valid steps of right-padded sequences (None: every
    step) and a masked step leaves the state as it is. The whole sequence, the padded batch
    (its padded outputs zeroed here) and the single step all call `_run`, so right padding
    is handled in place and nothing is read on the host. Base of the diagonal layers
    (layers/_diagonal.py) and of the windowed ones (pgn, fsmn)."""

    host_reads: dict[str, str] = {}

    def _run(self, x, state, mode, mask=None):
        raise NotImplementedError

    def _forward(self, x, state, mode):
        return self._run(x, state, mode)

    def _forward_lengths(self, x, state, mode, lengths):
        mask = valid_mask(lengths, x.shape[1]).unsqueeze(-1)
        y, state = self._run(x, state, mode, mask)
        return torch.where(mask, y, torch.zeros((), dtype=y.dtype, device=y.device)), state


def _autocast_device(x: torch.Tensor) -> str | None:
    """x's device type when autocast is on for it (torch.autocast("cpu"), ("cuda"), ...),
    else None: a layer then runs with autocast off for that device, in its parameters'
    dtype, as its kernels and float32 states need (under CPU autocast its projections came
    out in bfloat16 beside float32 tensors: 21 layers raised dtype errors, some states were
    kept in bfloat16, and titans_mac's chunk kernel read past its buffers). Cast the layer
    (layer.to(torch.bfloat16)) to compute in bfloat16."""
    if not isinstance(x, torch.Tensor):
        return None
    device_type = x.device.type  # meta has no autocast (torch.is_autocast_enabled raises)
    if torch.amp.is_autocast_available(device_type) and torch.is_autocast_enabled(device_type):
        return device_type
    return None


def valid_mask(lengths: torch.Tensor, T: int) -> torch.Tensor:
    """(batch, T) bool mask, True at positions t < lengths[b]."""
    return torch.arange(T, device=lengths.device) < lengths.unsqueeze(1)


def owned_state(state, x: torch.Tensor):
    """`state` with each tensor that is x or a view (of x, or of a (batch, time, ...)
    intermediate: a conv state's last K - 1 steps) replaced by a copy: a view would keep
    its whole base alive after the call (a 0.14 MB mamba2 state held 21 MB at T = 8192)
    and would change when x is written in place. Skipped under torch.compile and
    torch.func's transforms, whose tensors are the tracer's."""
    if torch.compiler.is_compiling() or backend.transforming():
        return state
    return _copy_views(state, x)


def _copy_views(state, x):
    if isinstance(state, tuple):
        return tuple(_copy_views(s, x) for s in state)
    return state.clone() if state is x or state._base is not None else state


def _as_tuple(state) -> tuple:
    return state if isinstance(state, tuple) else (state,)


def _index_state(state, idx):
    if isinstance(state, tuple):
        return tuple(s[idx] for s in state)
    return state[idx]


def _describe(state) -> str:
    if isinstance(state, (tuple, list)):
        return "a tuple of " + ", ".join(
            f"{_shape(s)} {getattr(s, 'dtype', '')}".strip() for s in state)
    if isinstance(state, torch.Tensor):
        return f"a tensor {_shape(state)} {state.dtype}"
    return type(state).__name__
