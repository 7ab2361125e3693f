"""What the step functions return."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class SiteOutput:
    """Result of one site step.

    :ivar state: the site's secret state -- keep it site-local (never in XCom or shared
        storage), persist it *before* publishing ``message``, and pass it to the next step.
    :ivar message: what the site publishes for the aggregator (shared storage).
    """

    state: bytes
    message: bytes


@dataclass(frozen=True)
class SecureSumResult:
    """The released aggregate of one round.

    :ivar total: float64 sum of the survivors' clipped inputs (plus their noise shares, if
        any); per coordinate within ``len(survivors) * 2**-frac_bits`` of the exact sum.
    :ivar fixed_total: the same sum, exactly, as int64 fixed-point units (``total *
        2**frac_bits``); with ``frac_bits=0`` and integral bounds, the exact integer sum.
    :ivar survivors: sites whose input is in the sum, sorted.
    :ivar dropped: cohort sites whose input is not in the sum, sorted.
    :ivar transcript: messages the aggregator received, in order (filled by ``simulate``).
    """

    total: np.ndarray
    fixed_total: np.ndarray
    survivors: list[str]
    dropped: list[str]
    protocol: str
    frac_bits: int
    transcript: list[bytes] = field(default_factory=list)
