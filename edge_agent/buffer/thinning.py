"""Thinning: when the buffer is full, old telemetry gives up part of its readings before
whole batches are evicted.

Two rules (``buffer.thin``):

* ``keep_every: N`` keeps every Nth good sample of each device (a time decimation: all the
  points read at one instant stay together);
* ``min_max_window_s: W`` keeps, per device, point and window of W seconds, the reading
  with the lowest and the one with the highest value (peaks survive, which a decimation
  would lose); non-numeric values keep their first reading per window.

Bad-quality samples are always kept (they say when a device failed, and cost little).
A thinned batch keeps its sequence number: it is still delivered, with fewer readings, and
the readings removed are counted in the ledger (reason ``thinned``).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import orjson

from edge_agent.config.model import ThinRule
from edge_agent.telemetry.contract import parse_ts

__all__ = ["thin_bodies"]


def thin_bodies(bodies: Sequence[bytes], rule: ThinRule) -> list[tuple[bytes, int]]:
    """Thin consecutive telemetry bodies together (a rule needs more than one batch to act
    on); returns each body rewritten with the readings it keeps, in order."""
    docs = [orjson.loads(b"{" + body + b"}") for body in bodies]
    samples = [(i, s) for i, doc in enumerate(docs) for s in doc.get("samples", ())]
    if rule.keep_every is not None:
        kept = _every_nth(samples, rule.keep_every)
    else:
        assert rule.min_max_window_s is not None
        kept = _min_max(samples, rule.min_max_window_s)
    out: list[tuple[bytes, int]] = []
    for i, doc in enumerate(docs):
        doc["samples"] = [s for j, s in kept if j == i]
        readings = sum(len(s["values"]) for s in doc["samples"])
        out.append((orjson.dumps(doc)[1:-1], readings))
    return out


def _every_nth(samples: list[tuple[int, dict[str, Any]]], n: int
               ) -> list[tuple[int, dict[str, Any]]]:
    counters: dict[str, int] = {}
    kept = []
    for i, sample in samples:
        if sample["quality"] != "good":
            kept.append((i, sample))
            continue
        count = counters.get(sample["device"], 0)
        counters[sample["device"]] = count + 1
        if count % n == 0:
            kept.append((i, sample))
    return kept


def _min_max(samples: list[tuple[int, dict[str, Any]]], window_s: float
             ) -> list[tuple[int, dict[str, Any]]]:
    # (device, point, window) -> positions of the samples holding the lowest and highest value
    extremes: dict[tuple[str, str, int], list[Any]] = {}
    for position, (_, sample) in enumerate(samples):
        if sample["quality"] != "good":
            continue
        window = math.floor(parse_ts(sample["ts"]) / window_s)
        for point, value in sample["values"].items():
            key = (sample["device"], point, window)
            best = extremes.get(key)
            if best is None or (_number(value) and not _number(best[1])):
                extremes[key] = [position, value, position, value]
            elif _number(value):
                if value < best[1]:
                    best[0], best[1] = position, value
                if value > best[3]:
                    best[2], best[3] = position, value
    keep: dict[int, set[str]] = {}
    for (_, point, _), (low, _, high, _) in extremes.items():
        keep.setdefault(low, set()).add(point)
        keep.setdefault(high, set()).add(point)
    kept = []
    for position, (i, sample) in enumerate(samples):
        if sample["quality"] != "good":
            kept.append((i, sample))
        elif position in keep:
            points = keep[position]
            sample["values"] = {k: v for k, v in sample["values"].items() if k in points}
            kept.append((i, sample))
    return kept


def _number(value: object) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
