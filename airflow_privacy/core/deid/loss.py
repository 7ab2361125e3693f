"""How much a k-anonymous / l-diverse release lost: NCP and the discernibility metric.

Generalization and suppression buy anonymity with information; a release where every
quasi-identifier became ``"*"`` satisfies any ``k`` and tells the analyst nothing. Two
standard figures go into the audit report:

* **NCP** -- the normalized certainty penalty (Xu, Wang, Pei, Wang, Shi & Fu 2006,
  "Utility-based anonymization using local recoding", KDD, §2.2), averaged over the table
  as the global certainty penalty of Ghinita, Karras, Kalnis & Mamoulis (2007, "Fast data
  anonymization with low information loss", VLDB, §2). A released value of a numeric (or
  date) quasi-identifier that stands for a class of original values spanning
  ``[lo, hi]`` costs ``(hi - lo) / (max - min)`` of the column's range in the batch; a
  categorical value standing for ``u`` of the column's ``|A|`` distinct values costs
  ``u / |A|`` (0 when ``u = 1``). A suppressed row costs 1 in every quasi-identifier, a
  null 0 (it stays null). ``ncp`` is the mean over rows-in and quasi-identifiers: 0 is the
  data as its rules release it, 1 is everything ``"*"`` or suppressed. The class span is
  measured on the values present, so for a bucket it can be narrower than the bucket's
  label (``"40-49"`` holding only 41..47); at the top it is the whole range.
* **Discernibility** (Bayardo & Agrawal 2005, "Data privacy through optimal
  k-anonymization", ICDE, §2): ``C_DM = Σ |E|² over released classes + |D| · suppressed``
  -- every row is charged the size of the class it cannot be told apart from, a suppressed
  row the whole table. ``discernibility_normalized = C_DM / |D|²`` lies in ``[1/|D|, 1]``;
  1 when all rows are one class or suppressed.

:func:`apply_policy` compares them with the caller's :class:`~.spec.LossPolicy`:
:class:`InformationLossWarning` or :class:`InformationLossError` (nothing released).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Sequence
from typing import Any

import numpy as np
import pandas as pd
from pandas.api.types import is_bool_dtype, is_numeric_dtype

from airflow_privacy.core.deid.generalize import Hierarchy, as_days, is_date_like
from airflow_privacy.core.deid.spec import LossPolicy
from airflow_privacy.core.errors import PrivacyError, SchemaError

__all__ = ["InformationLossError", "InformationLossWarning", "apply_policy", "information_loss", "kept_counts"]


class InformationLossWarning(UserWarning):
    """The release is anonymous but lost more information than the policy's threshold."""


class InformationLossError(PrivacyError):
    """The policy says fail: the release would lose more than its threshold. Nothing is
    released."""


def _positions(h: Hierarchy) -> np.ndarray | None:
    """Per distinct value, its position on a line (numbers, dates as days), or None when the
    column is categorical."""
    uniques = h.source.uniques
    if is_numeric_dtype(uniques.dtype) and not is_bool_dtype(uniques.dtype):
        x = uniques.to_numpy(dtype=np.float64, na_value=np.nan)
    elif is_date_like(pd.Series(uniques)):
        try:
            x = as_days(uniques, str(h.name), "information loss").astype(np.int64).astype(np.float64)
        except SchemaError:
            return None
    else:
        return None
    return np.where(np.isfinite(x), x, np.nan)


def _class_penalty(h: Hierarchy, level: int) -> np.ndarray:
    """NCP of every distinct source value's class at ``level``."""
    codes = np.asarray(h.codes(level), dtype=np.int64)
    if len(codes) == 0:
        return np.zeros(0)
    x = _positions(h)
    if x is not None and np.isfinite(x).sum() >= 2:
        spread = np.nanmax(x) - np.nanmin(x)
        frame = pd.DataFrame({"c": codes, "x": x}).groupby("c")["x"]
        width = (frame.transform("max") - frame.transform("min")).fillna(0.0).to_numpy()
        return width / spread if spread > 0 else np.zeros(len(codes))
    size = np.bincount(codes)[codes]
    return np.where(size > 1, size / len(codes), 0.0)


def kept_counts(h: Hierarchy, keep: np.ndarray | None) -> np.ndarray:
    """Rows holding each distinct source value of ``h`` among the rows kept (``keep``: a
    row mask, None: all rows)."""
    codes = h.source.codes if keep is None else h.source.codes[keep]
    return np.bincount(codes[codes >= 0], minlength=h.source.size)


def information_loss(
    hierarchies: Sequence[Hierarchy],
    names: Sequence[str],
    levels: Sequence[int],
    counts: Sequence[np.ndarray],
    rows_in: int,
    class_rows: np.ndarray,
) -> dict[str, Any]:
    """NCP (per quasi-identifier and overall) and discernibility of a release (module
    docstring).

    :param hierarchies: the quasi-identifiers' ladders over their distinct values.
    :param levels: the level released for each.
    :param counts: per quasi-identifier, the released rows holding each of its distinct
        values (:func:`kept_counts`).
    :param rows_in: rows before suppression.
    :param class_rows: rows in each released equivalence class.

    Sums are exactly rounded (:func:`math.fsum`), so the figures do not depend on the order
    of the distinct values: the in-memory and the out-of-core engine report the same.
    """
    class_rows = np.asarray(class_rows, dtype=np.int64)
    suppressed = rows_in - int(class_rows.sum())
    by_column = {}
    for h, name, level, count in zip(hierarchies, names, levels, counts, strict=True):
        total = math.fsum(_class_penalty(h, level) * count) + suppressed
        by_column[name] = round(total / rows_in, 6) if rows_in else 0.0
    dm = int(np.square(class_rows).sum()) + suppressed * rows_in
    return {
        "ncp": round(math.fsum(by_column.values()) / len(by_column), 6) if by_column else 0.0,
        "ncp_by_column": by_column,
        "discernibility": dm,
        "discernibility_normalized": round(dm / rows_in**2, 6) if rows_in else 0.0,
    }


def apply_policy(loss: dict[str, Any], policy: LossPolicy, levels: dict[str, dict[str, Any]]) -> None:
    """Record the policy in ``loss`` and act on it: warn, or raise :class:`InformationLossError`."""
    exceeded = []
    if policy.max_ncp is not None and loss["ncp"] > policy.max_ncp:
        exceeded.append(f"NCP {loss['ncp']:.3f} > information_loss.max_ncp={policy.max_ncp:g}")
    if policy.max_discernibility is not None and loss["discernibility_normalized"] > policy.max_discernibility:
        exceeded.append(
            f"normalized discernibility {loss['discernibility_normalized']:.3f} > "
            f"information_loss.max_discernibility={policy.max_discernibility:g}"
        )
    loss["policy"] = {"max_ncp": policy.max_ncp, "max_discernibility": policy.max_discernibility,
                      "on_exceed": policy.on_exceed}
    loss["exceeded"] = bool(exceeded)
    if not exceeded:
        return
    generalized = ", ".join(f"{c} -> {v['description']!r} (level {v['level']})" for c, v in levels.items())
    message = (
        f"de-identification lost too much information: {'; '.join(exceeded)} (quasi-identifiers: "
        f"{generalized}). Lower k or l, allow more max_suppression, cap levels with "
        "max_generalization, or raise the threshold"
    )
    if policy.on_exceed == "fail":
        raise InformationLossError(message)
    warnings.warn(message, InformationLossWarning, stacklevel=3)
