"""groupnorm: fast, deterministic, numerically stable Group Normalization.

    >>> import numpy as np, groupnorm
    >>> x = np.random.randn(2, 32, 16, 16).astype(np.float32)
    >>> y = groupnorm.group_norm(x, num_groups=8)
"""
import os as _os
import warnings as _warnings
from typing import Dict, List, Optional

import numpy as _np

from . import _core
from . import _checks
from ._checks import bfloat16
from .functional import group_norm, group_norm_backward
from .layer import GroupNorm
from . import split, distributed  # noqa: F401 (groupnorm.distributed needs mpi4py only when used)
from .split import Moments, BackwardSums, moments, merge_moments, backward_sums, merge_backward_sums

__version__: str = _core.VERSION
__all__ = ["__version__", "group_norm", "group_norm_backward", "GroupNorm", "set_num_threads", "get_num_threads",
           "available_isas", "active_isa", "set_isa", "bfloat16",
           "Moments", "BackwardSums", "moments", "merge_moments", "backward_sums", "merge_backward_sums",
           "set_buffer_cache_limit", "release_memory", "buffer_cache_info", "set_worker_pool", "worker_pool"]


def set_num_threads(n: Optional[int]) -> None:
    """Threads used by calls that do not pass num_threads: an int >= 1, or None
    for the default (the hardware threads). Requests beyond the core's cap run
    with the cap."""
    if n is None:
        _core.set_num_threads(0)
        return
    _core.set_num_threads(_checks.threads(n))


def set_worker_pool(on: bool) -> None:
    """Run parallel work on groupnorm's own small pool of threads (True, the
    default) or in OpenMP regions (False).

    The pool makes a call wait only for the threads that took work, so a thread
    the OS descheduled (a busy machine) does not hold the call up. OpenMP
    regions share threads with a host that uses the same OpenMP runtime:
    importing ``groupnorm.torch`` turns the pool off for that reason. The
    environment variable GROUPNORM_WORKER_POOL=0 turns it off at start.
    Results are bitwise the same either way.
    """
    if type(on) is not bool:
        raise TypeError(f"on must be a bool, got {type(on).__name__}")
    _core.set_worker_pool(on)


def worker_pool() -> bool:
    """Whether parallel work runs on groupnorm's own worker pool (see set_worker_pool)."""
    return _core.worker_pool()


def get_num_threads() -> int:
    """Threads used by calls that do not pass num_threads."""
    return _core.get_num_threads()


def available_isas() -> List[str]:
    """Instruction sets this CPU and build can run, best first (e.g. ['avx512bf16', 'avx512', 'avx2', 'portable'])."""
    return _core.available_isas().split(",")


def active_isa() -> str:
    """The instruction set the kernels run with now."""
    return _core.active_isa()


def set_isa(name: str) -> None:
    """Run the kernels with instruction set `name` (one of available_isas()).

    Results are bitwise the same on every instruction set; this exists for
    testing and benchmarking. The environment variable GROUPNORM_ISA caps the
    choice made at import time.
    """
    if not isinstance(name, str):
        raise TypeError(f"name must be a str, got {type(name).__name__}")
    if "\0" in name or not _core.set_isa(name):
        raise ValueError(f"instruction set {name!r} is not available here; available: {available_isas()}")


def set_buffer_cache_limit(nbytes: int) -> None:
    """Keep at most ``nbytes`` of freed output buffers for reuse (default 512 MiB).

    Outputs the library allocates (``group_norm(x)`` without ``out=``, the
    ``GroupNorm`` layer, ``group_norm_backward``) come from a cache: when such an
    array is freed its memory is kept, already mapped, for the next output of a
    similar size, instead of going back to the OS and faulting in fresh pages
    on the next call. 0 turns the cache off. The environment variable
    GROUPNORM_BUFFER_CACHE_BYTES sets the limit at import: an integer with an
    optional K/M/G (KiB/MiB/GiB, powers of 1024) or KB/MB/GB (powers of 1000)
    suffix; anything else warns and keeps the default.
    """
    if isinstance(nbytes, bool) or not isinstance(nbytes, (int, _np.integer)):
        raise TypeError(f"nbytes must be an int, got {type(nbytes).__name__}")
    nbytes = int(nbytes)
    if nbytes < 0:
        raise ValueError(f"nbytes must be >= 0, got {nbytes}")
    if nbytes > 2**64 - 1:
        raise ValueError(f"nbytes must be at most 2**64 - 1, got {nbytes}")
    _core.set_buffer_cache_limit(nbytes)


def release_memory() -> int:
    """Return every cached output buffer to the OS now; returns the bytes freed.

    On glibc the allocator's own free lists are trimmed too (``malloc_trim``),
    so the process's resident memory drops by what the cache held."""
    return _core.release_memory()


def buffer_cache_info() -> Dict[str, int]:
    """The output-buffer cache: {"cached_bytes", "cached_blocks", "limit_bytes", "hits", "misses"}."""
    return dict(_core.buffer_cache_info())


def _check_isa_env() -> None:
    """GROUPNORM_ISA caps the instruction set chosen at import; a value that names
    none this build can run here is reported, not silently ignored."""
    name = _os.environ.get("GROUPNORM_ISA")
    if name and name not in available_isas():
        _warnings.warn(f"GROUPNORM_ISA={name!r} is not an instruction set available here "
                       f"(available: {', '.join(available_isas())}); running with {active_isa()!r}",
                       RuntimeWarning, stacklevel=3)


def _check_buffer_cache_env() -> None:
    """GROUPNORM_BUFFER_CACHE_BYTES that is not a byte count is reported (the default limit is kept)."""
    if _core.BUFFER_CACHE_ENV_WARNING:
        _warnings.warn(_core.BUFFER_CACHE_ENV_WARNING, RuntimeWarning, stacklevel=3)


_check_isa_env()
_check_buffer_cache_env()
# dir(groupnorm) lists the API, not the names the code above used
del Dict, List, Optional
