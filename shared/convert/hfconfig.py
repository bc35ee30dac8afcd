"""Typed reads of a Hugging Face config.json (or its vision_config): one reader for shared.convert.hf and
shared.convert.hf_clip."""
from __future__ import annotations

import math
from typing import Any, Mapping

from .. import limits as L
from ..config import is_int, is_real, shown
from ..errors import ConfigError, MissingFactsError


class ConfigFacts:
    """config.json read field by field with its type checked (a ConfigError naming the file, the key, the expected
    type and the value); a missing (or null) key means transformers' default for the model type."""

    def __init__(self, conf: Mapping[str, Any], defaults: Mapping[str, Any], source: str, where: str | None = None):
        self.conf, self.defaults, self.source = conf, defaults, source
        self.where = where or f"{source}: config.json"

    def get(self, key: str, required: bool = False):
        if key not in self.conf or self.conf[key] is None:
            if required:
                raise MissingFactsError(f"{self.source}: config.json lacks {key!r}")
            return self.defaults.get(key)
        return self.conf[key]

    def as_int(self, key: str, required: bool = False, lo: int = 1, hi: int = L.MAX_WIDTH) -> int | None:
        v = self.get(key, required)
        if v is not None and not (is_int(v) and lo <= v <= hi):
            raise ConfigError(f"{self.where}: {key!r} must be an int in [{lo}, {hi}], got {shown(v)}")
        return None if v is None else int(v)

    def as_real(self, key: str, lo: float, hi: float, lo_open: bool = False, hi_closed: bool = False) -> float:
        v = self.get(key)
        ok = is_real(v) and math.isfinite(v) and (lo < v if lo_open else lo <= v) and (v <= hi if hi_closed else v < hi)
        if not ok:
            raise ConfigError(f"{self.where}: {key!r} must be a finite number in {'(' if lo_open else '['}{lo}, "
                              f"{hi}{']' if hi_closed else ')'}, got {shown(v)}")
        return float(v)

    def as_bool(self, key: str) -> bool:
        v = self.get(key)
        if not isinstance(v, bool):
            raise ConfigError(f"{self.where}: {key!r} must be a bool (true or false), got {shown(v)}")
        return v

    def as_str(self, key: str) -> str:
        v = self.get(key)
        if not isinstance(v, str):
            raise ConfigError(f"{self.where}: {key!r} must be a string, got {shown(v)}")
        return v
