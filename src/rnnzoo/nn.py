"""Drop-in replacements for torch.nn.RNN / LSTM / GRU, for every cell of the catalogue.

    rnn = rnnzoo.nn.RNN(input_size, hidden_size, num_layers=1, cell="mgu", **cell_options)
    output, h_n = rnn(input, h_0)          # exactly torch.nn.RNN's semantics
    lstm = rnnzoo.nn.LSTM(10, 20, 2, proj_size=5, bidirectional=True)
    output, (h_n, c_n) = lstm(input, (h_0, c_0))

Inputs as torch: `(L, N, H_in)`, `(N, L, H_in)` with `batch_first`, unbatched
`(L, H_in)`, or a `PackedSequence` (the output is then packed too). The state
is the cell's: one tensor `(D*num_layers, N, H_out)` for a one-state cell, a
tuple of them otherwise (LSTM: `(h, c)`, c of width hidden_size), in torch's
layer-major order (layer 0 forward, layer 0 reverse, layer 1 forward, ...).
Dropout applies to the outputs of every layer but the last.

The state dict uses torch's key names (`weight_ih_l0`, `bias_hh_l1_reverse`,
`weight_hr_l0`, ...), so the standard cells (`lstm`, `gru`, `rnn_tanh`,
`rnn_relu`) load into and from torch.nn.LSTM/GRU/RNN; when every layer has
torch's kernel the whole stack runs in one call of it, as torch does.
"""

from __future__ import annotations

import inspect

import torch
from torch import nn
from torch.nn.utils.rnn import PackedSequence

from rnnzoo.checks import choice, flag, positive_int
from rnnzoo.registry import CELLS

_TORCH_KERNELS = {"lstm": "lstm", "gru": "gru", "rnn_tanh": "rnn_tanh", "rnn_relu": "rnn_relu"}


class RNN(nn.Module):
    """A stack of `num_layers` (x2 when `bidirectional`) cells of one kind, with torch.nn.RNN's
    constructor order, shapes and state layout. `cell` is any catalogue name
    (`rnnzoo.registry.CELLS`); without it, an Elman RNN with `nonlinearity` ("tanh"/"relu").
    Extra keyword options go to every cell (e.g. `proj_size` and `peepholes` for "lstm")."""

    def __init__(self, input_size: int, hidden_size: int, num_layers: int = 1,
                 nonlinearity: str | None = None, bias: bool = True, batch_first: bool = False,
                 dropout: float = 0.0, bidirectional: bool = False, device=None, dtype=None,
                 *, cell: str | None = None, **cell_options):
        super().__init__()
        if cell is None:
            if nonlinearity is not None:
                choice("nonlinearity", nonlinearity, ("tanh", "relu"))
            cell = f"rnn_{nonlinearity or 'tanh'}"
        elif nonlinearity is not None:
            raise ValueError(f"nonlinearity={nonlinearity!r} applies to the Elman RNN only; "
                             f"got cell={cell!r} as well (drop one)")
        choice("cell", cell, sorted(CELLS))
        positive_int("num_layers", num_layers)
        if not isinstance(dropout, (int, float)) or isinstance(dropout, bool) \
                or not 0 <= dropout <= 1:
            raise ValueError(f"dropout must be a number in [0, 1], got {dropout!r}")
        for arg, v in (("bias", bias), ("batch_first", batch_first),
                       ("bidirectional", bidirectional)):
            flag(arg, v)
        cls = CELLS[cell].cls
        if not bias:
            if "bias" not in inspect.signature(cls.__init__).parameters:
                raise ValueError(f"cell {cell!r} has no bias option; got bias=False")
            cell_options["bias"] = False
        self.cell_name, self.input_size, self.hidden_size = cell, input_size, hidden_size
        self.num_layers, self.bias, self.batch_first = num_layers, bias, batch_first
        self.dropout, self.bidirectional = float(dropout), bidirectional
        self.proj_size = cell_options.get("proj_size", 0)
        D = 2 if bidirectional else 1
        cells = []
        for layer in range(num_layers):
            for _ in range(D):
                in_size = input_size if layer == 0 else D * cells[-1].output_size
                cells.append(cls(in_size, hidden_size, **cell_options))
        sizes = {c.state_sizes for c in cells}
        if len(sizes) > 1:  # the state is one (D*num_layers, N, n) tensor per part, as torch's
            raise ValueError(
                f"cell {cell!r} keeps state of its input's width, which differs between the "
                f"layers here (state sizes {', '.join(map(str, sorted(sizes)))}), so hx cannot "
                f"be (D*num_layers, N, n) tensors; use num_layers=1, or an input_size equal "
                f"to the later layers' input width ({D} x the cell's output width)")
        self.cells = nn.ModuleList(cells).to(device=device, dtype=dtype)
        self._register_state_dict_hook(_to_torch_keys)
        self._register_load_state_dict_pre_hook(self._from_torch_keys)

    # -- torch's names for the parameters --------------------------------------------------------
    def _torch_name(self, index: int, param: str) -> str:
        layer, direction = divmod(index, 2 if self.bidirectional else 1)
        return f"{param.replace('.', '_')}_l{layer}{'_reverse' if direction else ''}"

    def _name_map(self) -> dict[str, str]:
        """cells.{i}.{param} -> torch's key (weight_ih_l0, bias_hh_l1_reverse, ...)."""
        return {f"cells.{i}.{n}": self._torch_name(i, n)
                for i, c in enumerate(self.cells) for n, _ in c.named_parameters()}

    def _from_torch_keys(self, state_dict, prefix, *args):
        for ours, theirs in self._name_map().items():
            if prefix + theirs in state_dict:
                state_dict[prefix + ours] = state_dict.pop(prefix + theirs)

    def __getattr__(self, name):
        try:
            return super().__getattr__(name)
        except AttributeError:
            cells = self._modules.get("cells")
            for ours, theirs in (self._name_map().items() if cells is not None else ()):
                if theirs == name:
                    return cells.get_parameter(ours[len("cells."):])
            raise

    def flatten_parameters(self) -> None:
        """No-op, for code written for torch.nn.LSTM (its weights are never copied here)."""

    # -- forward -----------------------------------------------------------------------------
    @property
    def state_sizes(self) -> tuple[int, ...]:
        return self.cells[-1].state_sizes

    def forward(self, input, hx=None):
        packed = isinstance(input, PackedSequence)
        if packed:
            x, batch_sizes, sorted_idx, unsorted_idx = input
            N = int(batch_sizes[0])
        else:
            if not isinstance(input, torch.Tensor) or input.dim() not in (2, 3):
                raise ValueError(f"input must be (L, N, H_in), (N, L, H_in) with batch_first, "
                                 f"(L, H_in) or a PackedSequence, got "
                                 f"{getattr(input, 'shape', type(input).__name__)}")
            batched = input.dim() == 3
            x = input if batched else input.unsqueeze(1)
            if batched and self.batch_first:
                x = x.transpose(0, 1)
            N, batch_sizes, sorted_idx, unsorted_idx = x.shape[1], None, None, None
        if x.shape[-1] != self.input_size:
            raise ValueError(f"input must have {self.input_size} features (input_size), got "
                             f"shape {tuple(x.shape)}")
        state = self._check_hx(hx, N, x, batched=packed or input.dim() == 3)
        if sorted_idx is not None:
            state = tuple(s.index_select(1, sorted_idx) for s in state)

        if self._torch_kernel() is not None:
            out, final = self._run_torch_kernel(x, batch_sizes, state)
        else:
            out, final = self._run_cells(x, batch_sizes, state)

        if unsorted_idx is not None:
            final = tuple(s.index_select(1, unsorted_idx) for s in final)
        if packed:
            out = PackedSequence(out, batch_sizes, sorted_idx, unsorted_idx)
        elif not batched:
            out, final = out.squeeze(1), tuple(s.squeeze(1) for s in final)
        elif self.batch_first:
            out = out.transpose(0, 1)
        return out, final[0] if len(final) == 1 else final

    def _check_hx(self, hx, N, x, batched):
        D = 2 if self.bidirectional else 1
        shapes = [(D * self.num_layers, N, n) for n in self.state_sizes]
        if hx is None:
            return tuple(torch.zeros(s, device=x.device, dtype=x.dtype) for s in shapes)
        got = tuple(hx) if isinstance(hx, (tuple, list)) else (hx,)
        if not batched:
            got = tuple(h.unsqueeze(1) if isinstance(h, torch.Tensor) else h for h in got)
        want = " and ".join(str(s if batched else (s[0], s[2])) for s in shapes)
        if len(got) != len(shapes) or not all(isinstance(h, torch.Tensor) for h in got):
            raise TypeError(f"hx must be {len(shapes)} tensor(s) of shape {want} for cell "
                            f"{self.cell_name!r}, got {type(hx).__name__}")
        for h, s in zip(got, shapes):
            if tuple(h.shape) != s:
                raise ValueError(f"hx must have shape {want}, got {tuple(h.shape)}")
            if h.dtype != x.dtype:
                raise TypeError(f"hx has dtype {h.dtype} but input has {x.dtype}")
        return got

    def _torch_kernel(self):
        kernel = _TORCH_KERNELS.get(self.cell_name)
        return kernel if kernel and all(c.has_torch_kernel for c in self.cells) else None

    def _run_torch_kernel(self, x, batch_sizes, state):
        """The whole stack in one call of torch's kernel, as torch.nn.LSTM/GRU/RNN do."""
        fn = getattr(torch._VF, self._torch_kernel())
        weights = [w for c in self.cells for w in c.flat_weights()]
        hx = state if len(state) > 1 else state[0]
        args = (hx, weights, self.bias, self.num_layers, self.dropout, self.training,
                self.bidirectional)
        result = fn(x, batch_sizes, *args) if batch_sizes is not None \
            else fn(x, *args, False)
        return result[0], tuple(result[1:])

    def _run_cells(self, x, batch_sizes, state):
        """Layer by layer, direction by direction: x (L, N, H_in) or packed data (sum L, H_in)."""
        D = 2 if self.bidirectional else 1
        finals = [[] for _ in state]
        for layer in range(self.num_layers):
            if layer > 0 and self.dropout > 0 and self.training:
                x = nn.functional.dropout(x, self.dropout, True)
            outs = []
            for d in range(D):
                i = layer * D + d
                s0 = tuple(s[i] for s in state)
                run = _run_packed if batch_sizes is not None else _run_dense
                out, s = run(self.cells[i], x, batch_sizes, s0, reverse=d == 1)
                outs.append(out)
                for f, t in zip(finals, s):
                    f.append(t)
            x = torch.cat(outs, -1) if D == 2 else outs[0]
        return x, tuple(torch.stack(f) for f in finals)

    def extra_repr(self):
        s = f"{self.input_size}, {self.hidden_size}, cell={self.cell_name!r}"
        if self.num_layers != 1:
            s += f", num_layers={self.num_layers}"
        for k, default in (("proj_size", 0), ("bias", True), ("batch_first", False),
                           ("dropout", 0.0), ("bidirectional", False)):
            if getattr(self, k) != default:
                s += f", {k}={getattr(self, k)}"
        return s


def _run_dense(cell, x, batch_sizes, state, reverse):
    """x (L, N, H_in) -> (L, N, H_out), final state: the cell's own loop or fused kernel."""
    xb = x.transpose(0, 1)
    if reverse:
        xb = xb.flip(1)
    out, s = cell(xb, state, fused=hasattr(cell, "fused"))
    if reverse:
        out = out.flip(1)
    return out.transpose(0, 1), s


def _run_packed(cell, data, batch_sizes, state, reverse):
    """Packed data (sum L, H_in), sequences sorted by decreasing length: at step t only the
    first batch_sizes[t] sequences are active, the others keep their state."""
    xp = cell.project(data)
    offsets = [0] + torch.cumsum(batch_sizes, 0).tolist()
    steps = range(len(batch_sizes))
    outs = [None] * len(batch_sizes)
    for t in (reversed(steps) if reverse else steps):
        n = int(batch_sizes[t])
        new = cell.recur(xp[offsets[t]:offsets[t + 1]], tuple(s[:n] for s in state))
        outs[t] = cell.output(new)
        state = tuple(torch.cat([a, s[n:]]) for a, s in zip(new, state))
    return torch.cat(outs), state


def _to_torch_keys(module, state_dict, prefix, local_metadata):
    for ours, theirs in module._name_map().items():
        if prefix + ours in state_dict:
            state_dict[prefix + theirs] = state_dict.pop(prefix + ours)
    return state_dict


class LSTM(RNN):
    """torch.nn.LSTM's constructor: (input_size, hidden_size, num_layers, bias, batch_first,
    dropout, bidirectional, proj_size); `cell` may name another LSTM-like cell."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, proj_size=0, device=None, dtype=None,
                 *, cell="lstm", **cell_options):
        if proj_size:
            cell_options["proj_size"] = proj_size
        super().__init__(input_size, hidden_size, num_layers, None, bias, batch_first, dropout,
                         bidirectional, device, dtype, cell=cell, **cell_options)


class GRU(RNN):
    """torch.nn.GRU's constructor: (input_size, hidden_size, num_layers, bias, batch_first,
    dropout, bidirectional); `cell="gru_v3"` gives the paper's reset placement."""

    def __init__(self, input_size, hidden_size, num_layers=1, bias=True, batch_first=False,
                 dropout=0.0, bidirectional=False, device=None, dtype=None,
                 *, cell="gru", **cell_options):
        super().__init__(input_size, hidden_size, num_layers, None, bias, batch_first, dropout,
                         bidirectional, device, dtype, cell=cell, **cell_options)
