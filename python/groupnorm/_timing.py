"""One timing helper for the demo, ``python -m groupnorm bench`` and the bench
scripts: interleaved rounds against a same-size copy, medians, and a verdict
that refuses to print a ratio the machine's load made up."""
from typing import Callable, List, Optional, Tuple
import time

import numpy as np

# A group norm reads x and writes y as a copy does: a ratio to a copy below this
# means the copy's timing was disturbed (a busy machine), not that the kernels
# beat memory.
MIN_PLAUSIBLE_RATIO = 0.5
# the ratios of the rounds may spread this much (interquartile range / median)
MAX_SPREAD = 0.35


def median_time(fn: Callable[[], object], seconds: float = 0.3) -> float:
    """Median seconds of one call of fn, over as many calls as fit in ``seconds``
    (at least 5, at most 1000), after a warm-up call."""
    fn()
    t0 = time.perf_counter()
    fn()
    once = max(time.perf_counter() - t0, 1e-7)
    times = []
    for _ in range(max(5, min(1000, int(seconds / once)))):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


def interleaved_times(fns: List[Callable[[], object]], rounds: int = 7,
                      seconds: float = 0.6) -> List[List[float]]:
    """Median times of each of ``fns`` in ``rounds`` interleaved rounds (the order
    alternates), so all see the same machine load: one list of seconds per fn."""
    out: List[List[float]] = [[] for _ in fns]
    per = seconds / (len(fns) * rounds)
    for r in range(rounds):
        order = list(range(len(fns)))
        if r % 2:
            order.reverse()
        for i in order:
            out[i].append(median_time(fns[i], per))
    return out


def speed_verdict(t_gn: List[float], t_copy: List[float]) -> Tuple[Optional[float], str]:
    """(ratio or None, text) from interleaved round times: the median ratio to a
    same-size copy, or None with the reason when the measurement is unreliable
    (a busy machine: the rounds disagree, or the copy looks impossibly slow)."""
    ratios = np.asarray(t_gn, np.float64) / np.asarray(t_copy, np.float64)
    ratio = float(np.median(ratios))
    q1, q3 = (float(v) for v in np.percentile(ratios, [25, 75]))
    spread = (q3 - q1) / ratio
    if ratio < MIN_PLAUSIBLE_RATIO or spread > MAX_SPREAD:
        return None, (f"speed not measurable: the machine was too busy to time (the ratio to a same-size copy "
                      f"ranged {ratios.min():.2f}-{ratios.max():.2f}x over {len(ratios)} rounds; a group norm "
                      f"cannot beat a copy by that much); rerun on an idle machine")
    return ratio, f"{ratio:4.2f}x a same-size copy (rounds {q1:.2f}-{q3:.2f}x)"
