"""The settings of one training run, their checks, and the learning-rate schedule.

    config = TrainConfig(task="parity", layer="lstm", num_layers=1, steps=2000).validate()
    lr_at(step, config)   # linear warm-up to `lr`, then cosine decay to lr / 10

`TrainConfig.from_dict` reads a saved `train_config.json` (or a checkpoint's
copy), also one written before `layers` became `num_layers` and before layer
options were renamed (models/checkpoint.upgrade_options).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields

from rnnzoo.checks import int_in, real
from rnnzoo.models.checkpoint import upgrade_options
from rnnzoo.models.dsr import DSR_CELLS
from rnnzoo.registry import get_layer_info

# TrainConfig field -> the `rnnzoo train` flag that sets it, where the two differ
FLAGS = {"num_layers": "--depth"}
# fields renamed since run folders were first written: old -> new
RENAMED_FIELDS = {"layers": "num_layers"}


# the dsr-only fields at their defaults (left at these, a stack run takes them)
DSR_DEFAULTS = {"gtf_anneal": 0, "gtf_gamma": 0.999}


def flag(name: str) -> str:
    return FLAGS.get(name, "--" + name.replace("_", "-"))


@dataclass
class TrainConfig:
    task: str
    layer: str
    task_options: dict = field(default_factory=dict)
    layer_options: dict = field(default_factory=dict)
    d_model: int = 64
    num_layers: int = 2
    mlp_ratio: float = 0.0
    hybrid: str | None = None
    attention_options: dict = field(default_factory=dict)
    lr: float = 1e-3
    steps: int = 1000
    batch_size: int = 32
    warmup: int | None = None        # default: 10% of steps
    weight_decay: float = 0.1
    grad_clip: float = 1.0
    seed: int = 0
    device: str = "auto"
    threads: int | None = None       # CPU threads (torch.set_num_threads); None: torch's default
    amp: bool = True                 # bfloat16 autocast on GPU (no effect on CPU)
    eval_every: int = 200
    eval_batches: int = 4
    target: float | None = None      # stop when the headline metric reaches it
    log_every: int = 50
    out: str | None = None
    fsdp: bool = False               # under torchrun: FSDP2 shards the model (else DDP)
    sequence_parallel: bool = False  # under torchrun: split the time axis (LASP-2)
    dist_timeout: float | None = None  # several processes: seconds a collective (or the
    #                                    process group forming) may wait; None: torch's 30 min
    model: str = "stack"             # "dsr": models/dsr.py, a latent plrnn/al_rnn (d_model units)
    #                                  "chimera": grid/chimera.py ChimeraForecaster (--layer chimera)
    gtf_alpha: float | None = None   # dsr: the forcing alpha at the start (None: 1, teacher forcing)
    gtf_anneal: int = 0              # dsr: every N steps alpha <- max(gamma alpha, alpha*); 0: fixed
    gtf_gamma: float = 0.999         # dsr: the annealing's decay

    def validate(self) -> "TrainConfig":
        """Raise ValueError naming the flag of the first bad setting; returns self.
        Every float must be finite (a NaN would pass any `lo <= x <= hi` test by failing it)."""
        for name in ("task", "layer", "device"):
            if not isinstance(getattr(self, name), str):
                raise ValueError(f"{flag(name)} must be a name, got {getattr(self, name)!r}")
        for name in ("task_options", "layer_options", "attention_options"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(f"{name} must be a dict of options, got {getattr(self, name)!r}")
        if self.hybrid is not None and not isinstance(self.hybrid, str):
            raise ValueError(f"--hybrid must be R:A, e.g. '2:1', got {self.hybrid!r}")
        for name in ("amp", "fsdp", "sequence_parallel"):
            if not isinstance(getattr(self, name), bool):
                raise ValueError(f"{name} must be true or false, got {getattr(self, name)!r}")
        if self.fsdp and self.sequence_parallel:
            raise ValueError("--fsdp and --sequence-parallel cannot be combined yet: pick one")
        if self.attention_options and not self.hybrid:
            raise ValueError(f"--window sets the attention blocks of --hybrid, and this model "
                             f"has none (attention options {self.attention_options}); give "
                             f"--hybrid R:A too, or leave --window out")
        if self.model != "chimera":
            get_layer_info(self.layer)  # unknown layer: lists the registered ones
        self._validate_model()
        for name, lo in (("d_model", 1), ("num_layers", 1), ("steps", 1), ("batch_size", 1),
                         ("eval_every", 1), ("eval_batches", 1), ("log_every", 1), ("seed", 0)):
            int_in(flag(name), getattr(self, name), lo)
        if self.threads is not None:
            int_in(flag("threads"), self.threads, 1)
        if self.dist_timeout is not None:
            # at most 1e9 s: past ~9.2e9 s torch's int64 nanoseconds overflow (an instant timeout)
            real(flag("dist_timeout"), self.dist_timeout, 0, 1e9, lo_open=True)
        if self.warmup is not None and (isinstance(self.warmup, bool) or not isinstance(
                self.warmup, int) or not 0 <= self.warmup <= self.steps):
            raise ValueError(f"--warmup must be an int in [0, steps={self.steps}], got {self.warmup!r}")
        real(flag("lr"), self.lr, 0, 10, lo_open=True)
        real(flag("weight_decay"), self.weight_decay, 0, 10)
        real(flag("grad_clip"), self.grad_clip, 0, 1e9, lo_open=True)
        real(flag("mlp_ratio"), self.mlp_ratio, 0, 64)
        if self.target is not None:
            real(flag("target"), self.target)
        return self

    def _validate_model(self) -> None:
        if self.model not in ("stack", "dsr", "chimera"):
            raise ValueError(f"--model must be stack or dsr or chimera, got {self.model!r}")
        if self.model == "chimera":
            _validate_chimera(self)
        if self.model != "dsr":
            for name in ("gtf_alpha", "gtf_anneal", "gtf_gamma"):
                if getattr(self, name) not in (None, DSR_DEFAULTS.get(name)):
                    raise ValueError(f"{flag(name)} needs --model dsr (generalized teacher "
                                     f"forcing of a latent plrnn/al_rnn)")
            return
        if self.layer not in DSR_CELLS:
            raise ValueError(f"--model dsr runs a latent {' or '.join(DSR_CELLS)}, got --layer "
                             f"{self.layer!r}")
        for name in ("hybrid", "fsdp", "sequence_parallel"):
            if getattr(self, name):
                raise ValueError(f"{flag(name)} does not apply to --model dsr")
        if self.gtf_alpha is not None:
            real(flag("gtf_alpha"), self.gtf_alpha, 0, 1)
        int_in(flag("gtf_anneal"), self.gtf_anneal, 0)
        real(flag("gtf_gamma"), self.gtf_gamma, 0, 1, lo_open=True)

    @classmethod
    def from_dict(cls, d: dict, source="train config") -> "TrainConfig":
        """A saved config -> TrainConfig: old field and layer-option names translated,
        unknown fields dropped. A damaged one (not a dict, no task or layer, options
        that are not dicts) raises ValueError naming `source`."""
        if not isinstance(d, dict):
            raise ValueError(f"{source} is damaged: it holds a {type(d).__name__}, not the settings "
                             f"of a run")
        d = dict(d)
        for old, new in RENAMED_FIELDS.items():
            if old in d:
                if new in d:
                    raise ValueError(f"{source}: {old!r} is now {new!r}, which is also set")
                d[new] = d.pop(old)
        for name in ("task", "layer"):
            if not isinstance(d.get(name), str):
                raise ValueError(f"{source} is damaged: {name!r} is {d.get(name)!r}, not a name")
        for name in ("task_options", "layer_options", "attention_options"):
            if not isinstance(d.get(name, {}), dict):
                raise ValueError(f"{source} is damaged: {name!r} is {d[name]!r}, not a dict")
        if "layer_options" in d:
            d["layer_options"] = upgrade_options(d["layer"], d["layer_options"], source)
        if d.get("attention_options"):
            d["attention_options"] = upgrade_options("attention", d["attention_options"], source)
        names = {f.name for f in fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def _validate_chimera(config: TrainConfig) -> None:
    """--model chimera: a stack of Chimera 2-D layers over (time, variates) (grid/chimera.py)."""
    if config.layer != "chimera":
        raise ValueError(f"--model chimera stacks chimera 2-D layers: leave --layer out or give "
                         f"--layer chimera, got --layer {config.layer!r}")
    for name in ("hybrid", "fsdp", "sequence_parallel", "mlp_ratio", "attention_options"):
        if getattr(config, name):
            raise ValueError(f"{flag(name) if name != 'attention_options' else '--window'} does "
                             f"not apply to --model chimera")


def lr_at(step: int, config: TrainConfig) -> float:
    """Linear warm-up to `lr`, then cosine decay to lr / 10 at the last step."""
    warmup = config.warmup if config.warmup is not None else config.steps // 10
    if step < warmup:
        return config.lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, config.steps - warmup)
    return config.lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0))))
