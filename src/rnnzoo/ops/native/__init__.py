"""Native CPU kernels: plain C sources beside this file, compiled on first use with the
system compiler and loaded with ctypes; every op keeps its PyTorch path as the fallback.

    load(name) -> ctypes.CDLL | None     the compiled `<name>.c`, or None when it cannot be built

The build is `$CC -O3 -march=native -fno-trapping-math -fopenmp-simd -shared -fPIC` (CC defaults to `cc`) over
C that sees only float and double pointers (no Python or torch headers: about a second).
The library goes to a cache directory (`RNNZOO_CACHE`, else ~/.cache/rnnzoo/native) under
a name keyed by a hash of the source (and the headers beside it), the flags, the
compiler's version and the CPU (platform.machine() and the /proc/cpuinfo flags line, since
-march=native is that CPU's):
a second process loads it without compiling. It is written to a temporary file in the same
directory and moved into place with os.replace, so that two processes compiling at once
(pytest-xdist workers) never see half a file. When the compiler is missing or fails, load
warns once (one line naming the error) and returns None from then on, and the ops run
their PyTorch path. Whether an op goes native at all is `ops.backend.use_native`
(`RNNZOO_NATIVE=0` turns it off).

    run(fn, arg_lists)   one kernel call per argument list; when there are several, on the
                         threads of torch's own OpenMP team (ops.native.team) where the
                         kernel's arguments allow, else on a thread pool (ctypes lets go of
                         the GIL during each call)
    kernel(lib, name, dtype, argtypes)   the library's `<name>_f32` or `<name>_f64`
    rows(n)              range(n) cut into one contiguous (start, stop) per thread
    ptr(t)               a tensor's data pointer as a kernel argument (NULL for None)
    tile_pad(v)          v rounded up as tile.h's TILE_PAD (a tiled kernel's row width)

Kernels (`<name>.c`, with its Python side in `ops.native.<name>` unless named):
    selective_scan.c    Mamba's selective scan
    conv.c              the short convolution with its SiLU
    ssd_scan.c          Mamba-2's SSD as a recurrence
    ssd_chunk.c         its backward by chunks on mm.h's tiles (`ops.native.ssd_scan`)
    gla_scan.c          vector-decay gated linear attention (and RWKV-6's bonus) as a recurrence
    mlstm_scan.c        the stabilised mLSTM recurrence
    gated_norm.c        the gated RMSNorm heads, gate before or after the norm (mamba2, mamba,
                        longhorn; `ops.native.head_norm`: the delta layers, lightnet, gla,
                        gsa, hgrn2, ...), and mlstm's head
    blockdiag.c         mlstm's block-diagonal q, k, v maps
                        (blockdiag.h: their gated row bodies, shared with mlstm_scan.c's
                        fused q, k and gates pass, mlstm_qk_fwd / _bwd)
    miras_read.c        the per-step reads of Miras' chunk form (memora, moneta)
    miras_chunk.c       Miras' chunk loop for the MLP memory (memora, moneta, yaad)
    memory_gelu.c       the tanh GELU with its first and second derivatives (MLP memories)
    ttt_norm.c          the TTT inner loss's gradient through its layer norm, and its backward
    ttt_read.c          the TTT dual-form read of a mini-batch block (x W + c - A G), and its backward
    ttt_loop.c          TTT-Linear's and TTT-MLP's whole mini-batch loops a (batch x head) row at a time, and their
                        backward (ttt_norm.h: the inner norm's row, shared with ttt_norm.c)
    attention.c         stick-breaking attention's rows; Based / ReBased's packed features
                        (and the causal softmax rows of attention / FoX, rotary positions;
                        PaTH's block attention, path_fwd / path_bwd)
    longhorn_scan.c     Longhorn's diagonal online-learning scan
    delta_scan.c        the gated delta rule as a recurrence (delta_rule and delta_product on a CPU)
    vector_delta.c      the delta rule with a decay per key channel (kda, erase_delta, rwkv7 on a CPU)
    token_mix.c         RWKV-7's six token-shift mixes
                        (and RWKV-6's token shift, its ddlerp mixes with their low-rank products on mm.h)
    momentum_scan.c     the momentum delta rule as a recurrence (momentum_delta on a CPU)
    mesa_scan.c         MesaNet's readout: each step's conjugate gradients on its own H_t
    deltaformer_attn.c  DeltaFormer's attention rows with the forward substitution
    poly_attn.c         Based / ReBased's parallel form: the polynomial kernel matrix by causal
                        tiles of whole (batch x head) rows, and its backward (ops.feature_maps)
    lattice_scan.c      Lattice's orthogonal slot recurrence
    titans_scan.c       Titans' linear weight-only memory: its chunk loop and reads
    linear.py           (no C) x W^T + b through oneDNN's float32 matmul (AVX-512 where MKL's sgemm is AVX2)
    wgrad.c             the weight gradient g^T r of linear.py's products (linear.weight_grad)
    simple_gated.c      cfn, ran and state_regularized_rnn's loops (`ops.native.cells`)
    plain_cells.c       ugrnn, ligru, mgu, star, sgrn, lightru, atr, nbr, br, fastgrnn,
                        gated_antisymmetric_rnn and cornn's loops (`ops.native.cells`)
    lstm_cells.c, slstm.c, normalized.c, para.c, ode_cells.c, searched_cells.c,
    highway_cells.c, gated_cells.c
                        the classic cells' whole loops (`ops.native.cells`)
    newton_schulz.c     Muon's Newton-Schulz iteration on the Gram matrix (atlas's momenta)
    atlas_scan.c        atlas's chunk momenta (the window's outer products) and memories with
                        the memory model's reads as recurrences, a (batch x head) row in cache
                        (ops.atlas.atlas_chunked)
                        and the Omega rule's window gradients of a chunk with their backward
    team.c              (no kernel) `run`'s ranges on torch's own OpenMP team
                        (`ops.native.team`), not on a pool thread of ours
    mamba3_qk.c         Mamba-3's SISO queries and keys (group RMSNorm, head bias, rotation, scale),
                        its angles from their inputs (pi tanh(phi) dt summed in float64,
                        wrapped) with their cos and sin in the same pass
    path_chunk.c        PaTH attention's chunk pieces: each sub-chunk's UT transform and the
                        merges up to the attention block (ops.path_attention)
    log_linear.c        log-linear attention's aligned chunk block: the intra-chunk product with
                        the Fenwick level weights, the chunk states, their reads, the final buckets
Shared headers: exp.h (a vectorisable exp), each_type.h (a kernel file's body compiled for
float and for double), cell_loop.h (the classic cells' loop driver), tile.h (a state row's
column tiles as vector types, 512-bit where the build targets AVX-512 unless a kernel defines
TILE_256; hsum_rows / add_sums: the lane sums of NV rows at once, a transposing shuffle tree:
ssd_scan.c, mlstm_scan.c, delta_scan.c, vector_delta.c, momentum_scan.c).
mm.h: a batched small-matrix product in register tiles (attention.c exports it as mm;
newton_schulz.c's products). assoc_sums.h: reassociated row sums dot / total (miras_read.c,
miras_chunk.c). softmax_row.h: one row's softmax in place (attention.c, deltaformer_attn.c).
log1p.h: a vectorisable log1p on [0, 1], per type (gla_scan.c, selective_scan.c).
transpose.h: trs, a block transpose (float in 8 x 8 vector shuffles; path_chunk.c,
attention.c).
wide.h: a column tile of four vectors (two of tile.h's) and a step's row prefetches, for the
recurrences whose steps wait on a sum over all state rows (delta_scan.c, momentum_scan.c).
bands.h: a causal tile's bands, BANDS / KEY_BANDS (attention.c's sb_heads_* and sm_heads_*,
poly_attn.c).
"""

from __future__ import annotations

import ctypes
import hashlib
import os
import platform
import shlex
import subprocess
import tempfile
import warnings
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import torch

from rnnzoo.ops.native import team

FLAGS = ["-O3", "-march=native", "-fno-trapping-math", "-fopenmp-simd", "-shared", "-fPIC"]
_HERE = Path(__file__).resolve().parent
_libs: dict[str, ctypes.CDLL | None] = {}  # name -> library, or None after a failed build
_pool: ThreadPoolExecutor | None = None
_pool_size = 0  # its number of workers


def cache_dir() -> Path:
    env = os.environ.get("RNNZOO_CACHE", "").strip()
    return Path(env) if env else Path.home() / ".cache" / "rnnzoo" / "native"


def _compiler() -> list[str]:
    return shlex.split(os.environ.get("CC", "").strip() or "cc")


def _cpu() -> str:
    flags = ""
    try:
        with open("/proc/cpuinfo") as f:
            flags = next((line for line in f if line.startswith("flags")), "")
    except OSError:
        pass
    return platform.machine() + "\n" + flags


def _compile(name: str) -> Path:
    """The path of the compiled library of `<name>.c`, building it when not cached.
    Raises RuntimeError (the compiler's own message) when it cannot be built."""
    src = _HERE / f"{name}.c"
    cc = _compiler()
    try:
        version = subprocess.run([*cc, "--version"], capture_output=True, text=True,
                                 timeout=60).stdout
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"{' '.join(cc)} not runnable: {e}") from None
    headers = [h.read_text() for h in sorted(_HERE.glob("*.h"))]  # what the sources include
    key = hashlib.sha256("\0".join([src.read_text(), *headers, " ".join(cc + FLAGS), version,
                                    _cpu()]).encode()).hexdigest()[:20]
    out = cache_dir() / f"{name}-{key}.so"
    if out.exists():
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{name}-", suffix=".so", dir=out.parent)
    os.close(fd)
    try:
        r = subprocess.run([*cc, *FLAGS, str(src), "-o", tmp], capture_output=True, text=True,
                           timeout=300)
        if r.returncode != 0:
            msg = (r.stderr or r.stdout).strip().splitlines()
            raise RuntimeError(f"{' '.join(cc)} exited {r.returncode}"
                               + (f": {msg[0]}" if msg else ""))
        os.replace(tmp, out)  # atomic: a reader sees the old name absent or the whole file
    except (OSError, subprocess.SubprocessError) as e:
        raise RuntimeError(f"{' '.join(cc)} failed: {e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return out


def load(name: str) -> ctypes.CDLL | None:
    """The ctypes library of `<name>.c` (compiled on first use, then cached on disk and in
    this process), or None when it cannot be built: then a warning, once per process."""
    if name not in _libs:
        try:
            _libs[name] = ctypes.CDLL(str(_compile(name)))
        except (RuntimeError, OSError) as e:
            _libs[name] = None
            warnings.warn(f"rnnzoo.ops.native: cannot build {name}.c ({e}); using the "
                          "PyTorch path", RuntimeWarning, stacklevel=2)
    return _libs[name]


def run(fn, arg_lists) -> None:
    """fn(*args) for each args in arg_lists (the kernels split their work by these ranges:
    torch.get_num_threads()): on torch's own OpenMP team where `ops.native.team` can pass
    fn's arguments, else the first on this thread and the others on a thread pool."""
    global _pool, _pool_size
    arg_lists = list(arg_lists)
    if len(arg_lists) > 1:
        if team.run(fn, arg_lists, load):
            return
    if len(arg_lists) - 1 > _pool_size:
        if _pool is not None:
            _pool.shutdown(wait=False)
        _pool_size = len(arg_lists) - 1
        _pool = ThreadPoolExecutor(max_workers=_pool_size, thread_name_prefix="rnnzoo-native")
    futures = [_pool.submit(fn, *args) for args in arg_lists[1:]]
    fn(*arg_lists[0])
    for f in futures:
        f.result()


def kernel(lib: ctypes.CDLL, name: str, dtype: torch.dtype, argtypes: list):
    """lib's `<name>_f64` for float64, else `<name>_f32`, with argtypes (and no result) set
    on first use."""
    fn = getattr(lib, f"{name}_{'f64' if dtype == torch.float64 else 'f32'}")
    if fn.argtypes is None:
        fn.argtypes, fn.restype = argtypes, None
    return fn


def rows(n: int) -> list[tuple[int, int]]:
    """[(start, stop)]: range(n) in torch.get_num_threads() contiguous parts (fewer when n is
    smaller; none when n is 0), one kernel call each."""
    p = max(1, min(torch.get_num_threads(), n))
    cuts = [n * i // p for i in range(p + 1)]
    return [(a, b) for a, b in zip(cuts, cuts[1:]) if b > a]


def elementwise(lib: ctypes.CDLL, name: str, *tensors) -> None:
    """The kernel `name`(pointers of tensors..., j0, j1) over tensors (inputs, then outputs,
    all contiguous, one shape and dtype), element ranges [j0, j1) split by `rows`."""
    fn = kernel(lib, name, tensors[0].dtype, [ctypes.c_void_p] * len(tensors)
                + [ctypes.c_long] * 2)
    ptrs = [ptr(t) for t in tensors]
    run(fn, [(*ptrs, *r) for r in rows(tensors[0].numel()) or [(0, 0)]])


def tile_pad(v: int) -> int:
    """v rounded up to a multiple of 32, as tile.h's TILE_PAD: the row width of a tiled
    kernel's checkpoint buffer (every tile width, 256- or 512-bit, float or double, divides it)."""
    return -(-v // 32) * 32


def ptr(t):
    """t's data pointer as a kernel argument, None (NULL) for None."""
    return None if t is None else ctypes.c_void_p(t.data_ptr())
