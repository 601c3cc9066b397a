"""Name -> lazy "module:Object" registries.

An entry holds an import path as a string plus default keyword arguments, so listing
entries (``probekit ls``, ``--help``) never imports torch; the object is imported only
when an entry is built.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any

from probekit.errors import UnknownNameError


@dataclass(frozen=True)
class Entry:
    name: str
    target: str  # "package.module:Object"
    summary: str
    kwargs: dict[str, Any] = field(default_factory=dict)

    def load(self) -> Any:
        module_name, _, attr = self.target.partition(":")
        if not attr:
            raise ValueError(f"registry target {self.target!r} must look like 'module:Object'")
        obj = importlib.import_module(module_name)
        for part in attr.split("."):
            obj = getattr(obj, part)
        return obj

    def build(self, **overrides: Any) -> Any:
        return self.load()(**{**self.kwargs, **overrides})


class Registry:
    def __init__(self, kind: str):
        self.kind = kind
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, target: str, summary: str, /, **kwargs: Any) -> Entry:
        if name in self._entries:
            raise ValueError(f"{self.kind} {name!r} is registered twice")
        entry = Entry(name=name, target=target, summary=summary, kwargs=kwargs)
        self._entries[name] = entry
        return entry

    def get(self, name: str) -> Entry:
        try:
            return self._entries[name]
        except KeyError:
            raise UnknownNameError(self.kind, name, list(self._entries)) from None

    def build(self, name: str, **overrides: Any) -> Any:
        return self.get(name).build(**overrides)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        return name in self._entries
