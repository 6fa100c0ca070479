"""Typed access to a parsed YAML document that remembers where every value came from.

Validation walks the document through :class:`Cursor` objects; every problem is collected
in :class:`Problems` with its config path and line, so an installer sees all mistakes at
once (``devices[2] (boiler-plc).points[5].address (line 48): ...``) and never a traceback.
"""

from __future__ import annotations

import builtins
import math
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from enum import Enum
from typing import Any, TypeVar

import yaml

__all__ = ["MISSING", "ConfigInvalid", "Cursor", "Problem", "Problems", "load_yaml"]

E = TypeVar("E", bound=Enum)

try:  # the C loader is ~10x faster on large device maps; fall back where libyaml is absent
    _Loader: type[yaml.SafeLoader] = yaml.CSafeLoader  # type: ignore[assignment]
except AttributeError:  # pragma: no cover
    _Loader = yaml.SafeLoader


_CONSTRUCTOR = yaml.constructor.SafeConstructor()


class _Missing:
    def __repr__(self) -> str:
        return "MISSING"


MISSING: Any = _Missing()


@dataclass(frozen=True, slots=True)
class Problem:
    """One mistake in a configuration file."""

    path: str
    line: int | None
    message: str

    def __str__(self) -> str:
        if not self.path:
            return f"line {self.line}: {self.message}" if self.line else self.message
        where = f"{self.path} (line {self.line})" if self.line is not None else self.path
        return f"{where}: {self.message}"


@dataclass(slots=True)
class Problems:
    """Every problem found so far, in document order."""

    source: str
    items: list[Problem] = field(default_factory=list)

    def add(self, path: str, line: int | None, message: str) -> None:
        self.items.append(Problem(path, line, message))

    def __bool__(self) -> bool:
        return bool(self.items)


class ConfigInvalid(Exception):
    """The configuration has one or more problems; ``problems`` lists them all."""

    def __init__(self, source: str, problems: list[Problem]) -> None:
        self.source = source
        self.problems = problems
        lines = "\n".join(f"  {p}" for p in problems)
        super().__init__(f"{source}: {len(problems)} problem(s) in the configuration:\n{lines}")


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|KiB|MiB|GiB)?\s*$", re.IGNORECASE)
_SIZE_UNITS = {
    "b": 1,
    "kb": 1000,
    "mb": 1000**2,
    "gb": 1000**3,
    "kib": 1024,
    "mib": 1024**2,
    "gib": 1024**3,
}


class Cursor:
    """A node of the document plus its path; typed getters report problems and return
    ``MISSING`` instead of raising, so validation always runs to the end."""

    __slots__ = ("node", "path", "problems")

    def __init__(self, node: yaml.Node | None, path: str, problems: Problems) -> None:
        self.node = node
        self.path = path
        self.problems = problems

    @property
    def line(self) -> int | None:
        return self.node.start_mark.line + 1 if self.node is not None else None

    def error(self, message: str) -> None:
        self.problems.add(self.path, self.line, message)

    def _kind(self) -> str:
        if isinstance(self.node, yaml.MappingNode):
            return "a mapping"
        if isinstance(self.node, yaml.SequenceNode):
            return "a list"
        return f"{self.scalar()!r}"

    def scalar(self) -> Any:
        if not isinstance(self.node, yaml.ScalarNode):
            return MISSING
        try:
            return _CONSTRUCTOR.construct_object(self.node, deep=True)
        except yaml.YAMLError:
            return self.node.value

    # structure -----------------------------------------------------------------------

    def mapping(self, *, required: set[str], optional: set[str]) -> dict[str, Cursor] | None:
        """The keys of a mapping node; unknown, duplicate and missing keys are reported."""
        if not isinstance(self.node, yaml.MappingNode):
            self.error(f"expected a mapping with keys {sorted(required | optional)}, "
                       f"got {self._kind()}")
            return None
        out: dict[str, Cursor] = {}
        allowed = required | optional
        for key_node, value_node in self.node.value:
            key = key_node.value if isinstance(key_node, yaml.ScalarNode) else None
            child_path = f"{self.path}.{key}" if self.path else str(key)
            line = key_node.start_mark.line + 1
            if key is None or key not in allowed:
                hint = _closest(str(key), allowed)
                self.problems.add(child_path, line, "unknown key"
                                  + (f" (did you mean {hint!r}?)" if hint else "")
                                  + f"; allowed here: {', '.join(sorted(allowed))}")
                continue
            if key in out:
                self.problems.add(child_path, line, "duplicate key")
                continue
            out[key] = Cursor(value_node, child_path, self.problems)
        for key in sorted(required - out.keys()):
            self.error(f"missing required key {key!r}")
        return out

    def items(self) -> Iterator[tuple[int, Cursor]]:
        """The elements of a list node (nothing, after reporting, if it is not a list)."""
        if not isinstance(self.node, yaml.SequenceNode):
            self.error(f"expected a list, got {self._kind()}")
            return
        for i, child in enumerate(self.node.value):
            yield i, Cursor(child, f"{self.path}[{i}]", self.problems)

    def relabel(self, label: str) -> Cursor:
        """The same node with a human label in its path (``devices[2] (boiler-plc)``)."""
        return Cursor(self.node, f"{self.path} ({label})", self.problems)

    # scalars -------------------------------------------------------------------------

    def str(self, *, pattern: re.Pattern[str] | None = None, what: str = "") -> Any:
        value = self.scalar()
        if not isinstance(value, str) or value == "":
            self.error(f"expected a non-empty string, got {self._kind()}")
            return MISSING
        if pattern is not None and not pattern.fullmatch(value):
            self.error(f"{value!r} is not a valid {what or 'value'}")
            return MISSING
        return value

    def int(self, *, minimum: int | None = None, maximum: int | None = None) -> Any:
        value = self.scalar()
        if isinstance(value, bool) or not isinstance(value, int):
            self.error(f"expected a whole number, got {self._kind()}")
            return MISSING
        return self._bounded(value, minimum, maximum)

    def float(self, *, minimum: float | None = None, maximum: float | None = None,
              exclusive_minimum: bool = False) -> Any:
        value = self.scalar()
        if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(
                value):
            self.error(f"expected a number, got {self._kind()}")
            return MISSING
        if exclusive_minimum and minimum is not None and value <= minimum:
            self.error(f"{value} must be greater than {minimum}")
            return MISSING
        return self._bounded(float(value), minimum, maximum)

    def bool(self) -> Any:
        value = self.scalar()
        if not isinstance(value, bool):
            self.error(f"expected true or false, got {self._kind()}")
            return MISSING
        return value

    def size(self, *, minimum: builtins.int = 0,
             maximum: builtins.int | None = None) -> Any:
        """A byte size: a whole number or a string such as ``512 MiB``."""
        value = self.scalar()
        if isinstance(value, int) and not isinstance(value, bool):
            return self._bounded(value, minimum, maximum)
        match = _SIZE.match(value) if isinstance(value, str) else None
        if match is None:
            self.error(f"expected a size such as 1048576 or '512 MiB', got {self._kind()}")
            return MISSING
        unit = (match.group(2) or "b").lower()
        return self._bounded(int(float(match.group(1)) * _SIZE_UNITS[unit]), minimum, maximum)

    def enum(self, enum_type: type[E]) -> Any:
        value = self.scalar()
        for member in enum_type:
            if value == member.value or (isinstance(value, str)
                                         and str(member.value).lower() == value.lower()):
                return member
        choices = ", ".join(str(m.value) for m in enum_type)
        self.error(f"{value!r} is not one of: {choices}")
        return MISSING

    def _bounded(self, value: Any, minimum: Any, maximum: Any) -> Any:
        if minimum is not None and value < minimum:
            self.error(f"{value} is below the minimum of {minimum}")
            return MISSING
        if maximum is not None and value > maximum:
            self.error(f"{value} is over the maximum of {maximum}")
            return MISSING
        return value


def _closest(key: str, allowed: set[str]) -> str | None:
    import difflib

    matches = difflib.get_close_matches(key, sorted(allowed), n=1, cutoff=0.7)
    return matches[0] if matches else None


def load_yaml(text: str, source: str, problems: Problems) -> Cursor | None:
    """Parse YAML text into a root cursor; a syntax error becomes a problem with its line."""
    try:
        node = yaml.compose(text, Loader=_Loader)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        problems.add("", mark.line + 1 if mark is not None else None,
                     f"not valid YAML: {exc.problem}" + (f" {exc.context}" if exc.context else ""))
        return None
    except yaml.YAMLError as exc:
        problems.add("", None, f"not valid YAML: {exc}")
        return None
    if node is None:
        problems.add("", None, "the file is empty")
        return None
    return Cursor(node, "", problems)
