"""Generalizing rules: numeric ``bucket`` and ``generalize`` (prefix, date, map), each a
ladder of :mod:`.generalize` whose level 0 is what the rule releases."""

from __future__ import annotations

import math
from collections.abc import Hashable, Mapping, Sequence

from airflow_privacy.core.deid.generalize import (
    DATE_LEVELS,
    Hierarchy,
    bucket_hierarchy,
    date_hierarchy,
    map_hierarchy,
    prefix_hierarchy,
)
from airflow_privacy.core.deid.rule_base import MISSING, Applied, Batch, Params, Rule, header, plain
from airflow_privacy.core.errors import InvalidParameterError

__all__ = ["Bucket", "Generalize"]


class Bucket(Rule):
    name = "bucket"
    generalizing = True

    def __init__(self, column: Hashable, params: Params) -> None:
        super().__init__(column, params)
        has_width, has_edges = "width" in params.raw, "edges" in params.raw
        if has_width == has_edges:
            raise InvalidParameterError(
                params.where("width"), params.raw.get("width"), "give exactly one of width or edges"
            )
        self.width = self.edges = None
        if has_width:
            self.width = params.number("width", MISSING, positive=True)
            self.origin = params.number("origin", 0)
            self.top = params.number("top", None)
            self.params = {"width": self.width, "origin": self.origin, "top": self.top}
        else:
            edges = params.get("edges")
            if (
                isinstance(edges, (str, bytes))
                or not isinstance(edges, Sequence)
                or len(edges) < 2
                or any(
                    isinstance(e, bool) or not isinstance(e, (int, float)) or not math.isfinite(e)
                    for e in edges
                )
                or any(b <= a for a, b in zip(edges, edges[1:], strict=False))
            ):
                raise InvalidParameterError(
                    params.where("edges"), edges, "expected >= 2 strictly increasing numbers"
                )
            self.edges = [float(e) for e in edges]
            self.origin, self.top = 0.0, None
            self.params = {"edges": list(edges)}
        self.params = {k: plain(v) for k, v in self.params.items() if v is not None}

    def hierarchy(self, batch: Batch) -> Hierarchy:
        return bucket_hierarchy(
            batch.distinct(self.column),
            header(batch, self.column),
            width=self.width,
            edges=self.edges,
            origin=self.origin,
            top=self.top,
        )

    def apply(self, batch: Batch) -> Applied:
        return Applied(self.hierarchy(batch).output(0))


class Generalize(Rule):
    name = "generalize"
    generalizing = True

    def __init__(self, column: Hashable, params: Params) -> None:
        super().__init__(column, params)
        kinds = [k for k in ("prefix", "date", "map") if k in params.raw]
        if len(kinds) != 1:
            raise InvalidParameterError(
                params.where("prefix"), kinds or None, "give exactly one of prefix, date or map"
            )
        self.kind = kinds[0]
        if self.kind == "prefix":
            self.prefix = params.integer("prefix", None, 0)
            self.fill = params.text("fill", "*")
            if len(self.fill) > 1:
                raise InvalidParameterError(
                    params.where("fill"), self.fill, "expected one character or ''"
                )
            self.params = {"prefix": self.prefix, "fill": self.fill}
        elif self.kind == "date":
            self.date = params.get("date")
            if self.date not in DATE_LEVELS:
                raise InvalidParameterError(
                    params.where("date"), self.date, f"expected one of {list(DATE_LEVELS)}"
                )
            self.params = {"date": self.date}
        else:
            raw = params.get("map")
            maps = [raw] if isinstance(raw, Mapping) else raw
            if (
                isinstance(maps, (str, bytes))
                or not isinstance(maps, Sequence)
                or not maps
                or not all(isinstance(m, Mapping) and m for m in maps)
                or not all(
                    isinstance(v, (str, int, float)) and not isinstance(v, bool)
                    for m in maps
                    for v in m.values()
                )
            ):
                raise InvalidParameterError(
                    params.where("map"),
                    raw,
                    "expected a non-empty mapping value -> label, or a list of them (one per "
                    "hierarchy level)",
                )
            self.maps = list(maps)
            default = params.get("default", None)
            if default is not None and not isinstance(default, str):
                raise InvalidParameterError(params.where("default"), default, "expected a string")
            self.default = default
            self.params = {"map_levels": len(self.maps), "map_entries": [len(m) for m in maps]}
            if default is not None:
                self.params["default"] = default

    def hierarchy(self, batch: Batch) -> Hierarchy:
        source = batch.distinct(self.column)
        name = header(batch, self.column)
        if self.kind == "prefix":
            return prefix_hierarchy(source, name, prefix=self.prefix, fill=self.fill)
        if self.kind == "date":
            return date_hierarchy(source, name, start=self.date)
        return map_hierarchy(source, name, maps=self.maps, default=self.default)

    def apply(self, batch: Batch) -> Applied:
        return Applied(self.hierarchy(batch).output(0))

