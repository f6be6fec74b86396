"""Strict JSON: the one writer of every JSON file and payload the package produces.

``json.dumps`` writes ``NaN`` and ``Infinity`` by default, which are not JSON (RFC 8259) and
which many readers reject. Here non-finite floats become ``null`` and the text is then encoded
with ``allow_nan=False``, so a value that slipped through is an error, never invalid output.
numpy scalars and arrays become Python values, paths and other objects their ``str``.

Used by ``fusion-eval`` and ``fusion-demo`` reports, the bag tools' summaries and the node's
detections payload (``messages.detections``), so all of them follow one rule::

    write_json(out / "summary.json", {"mAP50": float("nan")})   # {"mAP50": null}
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np


def to_json_value(value: Any) -> Any:
    """``value`` as plain JSON types: non-finite floats (also numpy's) as None, numpy scalars and
    arrays as Python numbers and lists, tuples and sets as lists, mapping keys as str, anything
    else that JSON cannot hold as its ``str``."""
    if value is None or isinstance(value, (bool, str, int)) and not isinstance(value, np.generic):
        return value
    if isinstance(value, float):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.ndarray):
        return to_json_value(value.tolist())
    if isinstance(value, np.generic):
        return to_json_value(value.item())
    if isinstance(value, Mapping):
        return {str(key): to_json_value(item) for key, item in value.items()}
    if isinstance(value, (list, tuple, set, frozenset)):
        return [to_json_value(item) for item in value]
    return str(value)


def dumps(value: Any, indent: int | None = None, **kwargs: Any) -> str:
    """Strict JSON text of ``value`` (see :func:`to_json_value`); ``kwargs`` go to
    ``json.dumps`` (``sort_keys`` etc.)."""
    return json.dumps(to_json_value(value), indent=indent, allow_nan=False, **kwargs)


def write_json(path: str | Path, value: Any, indent: int | None = 1) -> Path:
    """Write :func:`dumps` of ``value`` to ``path`` (parent folders created); returns the path."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(dumps(value, indent=indent) + "\n")
    return path
