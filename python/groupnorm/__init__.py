"""groupnorm: fast, deterministic, numerically stable Group Normalization.

    >>> import numpy as np, groupnorm
    >>> x = np.random.randn(2, 32, 16, 16).astype(np.float32)
    >>> y = groupnorm.group_norm(x, num_groups=8)
"""
from . import _core
from ._checks import bfloat16
from .functional import group_norm, group_norm_backward
from .layer import GroupNorm
from . import split, distributed  # noqa: F401 (groupnorm.distributed needs mpi4py only when used)
from .split import Moments, BackwardSums, moments, merge_moments, backward_sums, merge_backward_sums

__version__ = "0.1.0"
__all__ = ["group_norm", "group_norm_backward", "GroupNorm", "set_num_threads", "get_num_threads",
           "available_isas", "active_isa", "set_isa", "bfloat16",
           "Moments", "BackwardSums", "moments", "merge_moments", "backward_sums", "merge_backward_sums"]


def set_num_threads(n):
    """Threads used by calls that do not pass num_threads (n >= 1)."""
    n = int(n)
    if n <= 0:
        raise ValueError(f"num_threads must be positive, got {n}")
    _core.set_num_threads(n)


def get_num_threads():
    """Threads used by calls that do not pass num_threads."""
    return _core.get_num_threads()


def available_isas():
    """Instruction sets this CPU and build can run, best first (e.g. ['avx512', 'avx2', 'portable'])."""
    return _core.available_isas().split(",")


def active_isa():
    """The instruction set the kernels run with now."""
    return _core.active_isa()


def set_isa(name):
    """Run the kernels with instruction set `name` (one of available_isas()).

    Results are bitwise the same on every instruction set; this exists for
    testing and benchmarking. The environment variable GROUPNORM_ISA caps the
    choice made at import time.
    """
    if not _core.set_isa(str(name)):
        raise ValueError(f"instruction set {name!r} is not available here; available: {available_isas()}")
