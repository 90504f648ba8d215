"""The one configuration schema of sspu_ros, shared by the node, the CLI and the benchmarks.

Defaults live in exactly one place, ``config/upsample.yaml`` (ROS 2 ``/**: ros__parameters:``
form); types, ranges, enums and descriptions live in ``config/upsample.schema.json`` beside
it. This module finds both (source checkout, pip install or colcon install tree), merges a
user's parameter file and overrides onto the defaults, and validates the result.

Parameters are handled *flat*, with dotted names as ROS 2 uses them (``crop.max_range``).
"""

from __future__ import annotations

import difflib
import json
import math
import os
import sys
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import yaml

from .errors import ConfigError

PACKAGE = "sspu_ros"
SCHEMA_FILE = "upsample.schema.json"
DEFAULTS_FILE = "upsample.yaml"
# Each configuration NAME has NAME.yaml (defaults) and NAME.schema.json (with the
# parameters under definitions.NAME): 'upsample' (node, CLI, benchmarks), 'train'.
CONFIG_NAMES = ("upsample", "train")


# --------------------------------------------------------------------------- locating files


def data_dir() -> Path:
    """The dev/benchmark data: $SSPU_DATA, else ``../shared/data`` beside the repository
    (``<repo>/../shared/data``; tests and benchmarks skip or say what is missing without)."""
    env = os.environ.get("SSPU_DATA")
    if env:
        return Path(env)
    return Path(__file__).resolve().parents[2] / "shared" / "data"


def find_config_dir() -> Path:
    """Directory holding ``upsample.yaml`` and its schema.

    Looks in the source checkout (``<repo>/config``), then in a ``share/sspu_ros/config``
    above the installed package (pip prefix, colcon install space), then ``sys.prefix``,
    then the ament index when ``ament_index_python`` is importable.
    """
    here = Path(__file__).resolve()
    candidates = [here.parents[1] / "config"]
    candidates += [p / "share" / PACKAGE / "config" for p in here.parents]
    candidates.append(Path(sys.prefix) / "share" / PACKAGE / "config")
    try:  # a real ROS 2 install
        from ament_index_python.packages import get_package_share_directory

        candidates.append(Path(get_package_share_directory(PACKAGE)) / "config")
    except Exception:  # noqa: BLE001 - not installed / package not in the index
        pass
    for c in candidates:
        if (c / SCHEMA_FILE).is_file() and (c / DEFAULTS_FILE).is_file():
            return c
    raise ConfigError(
        f"cannot find {DEFAULTS_FILE} and {SCHEMA_FILE}; looked in: "
        + ", ".join(str(c) for c in candidates[:3])
        + " ... (reinstall the package: pip install -e . or colcon build)"
    )


# --------------------------------------------------------------------------- schema


@dataclass(frozen=True)
class ParameterSpec:
    """One leaf parameter of the schema, with its dotted name."""

    name: str
    schema: Mapping[str, Any] = field(repr=False)

    @property
    def type(self) -> str:
        """JSON-schema type: 'integer', 'number', 'boolean', 'string' or 'array'."""
        return self.schema["type"]

    @property
    def item_type(self) -> str | None:
        return self.schema.get("items", {}).get("type") if self.type == "array" else None

    @property
    def description(self) -> str:
        return self.schema.get("description", "")

    @property
    def read_only(self) -> bool:
        """True for parameters that cannot change while the node runs (model, backend, QoS)."""
        return bool(self.schema.get("readOnly", False))

    def allowed(self) -> str:
        """Human-readable description of the allowed values."""
        s = self.schema
        if "enum" in s:
            return "one of " + ", ".join(repr(v) for v in s["enum"])
        kind = {"integer": "an integer", "number": "a number", "boolean": "true or false",
                "string": "a string", "array": f"a list of {self.item_type or 'values'}"}
        text = kind.get(self.type, self.type)
        bounds = []
        if "minimum" in s:
            bounds.append(f">= {s['minimum']}")
        if "exclusiveMinimum" in s:
            bounds.append(f"> {s['exclusiveMinimum']}")
        if "maximum" in s:
            bounds.append(f"<= {s['maximum']}")
        if "exclusiveMaximum" in s:
            bounds.append(f"< {s['exclusiveMaximum']}")
        if "minLength" in s and s["minLength"] > 0:
            bounds.append("not empty")
        if "minItems" in s:
            bounds.append(f"at least {s['minItems']} items")
        if "multipleOf" in s:
            bounds.append(f"a multiple of {s['multipleOf']}")
        return text + (" " + " and ".join(bounds) if bounds else "")


@lru_cache(maxsize=4)
def _load_schema_file(path: str) -> dict:
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def _schema_root(name: str) -> dict:
    if name not in CONFIG_NAMES:
        raise ConfigError(f"unknown configuration '{name}' (known: {', '.join(CONFIG_NAMES)})")
    return _load_schema_file(str(find_config_dir() / f"{name}.schema.json"))


def load_schema(name: str = "upsample") -> dict:
    """The schema of the ``ros__parameters`` object of configuration ``name``."""
    return _schema_root(name)["definitions"][name]


def _resolve(node: Mapping[str, Any], root: Mapping[str, Any]) -> Mapping[str, Any]:
    ref = node.get("$ref")
    if ref is None:
        return node
    target: Any = root
    for part in ref.lstrip("#/").split("/"):
        target = target[part]
    return target


def parameter_specs(name: str = "upsample") -> dict[str, ParameterSpec]:
    """All leaf parameters of configuration ``name``, by dotted name, in schema order."""
    root = _schema_root(name)
    out: dict[str, ParameterSpec] = {}

    def walk(node: Mapping[str, Any], prefix: str) -> None:
        node = _resolve(node, root)
        if node.get("type") == "object":
            for key, sub in node.get("properties", {}).items():
                walk(sub, f"{prefix}{key}.")
        else:
            out[prefix[:-1]] = ParameterSpec(prefix[:-1], node)

    walk(root["definitions"][name], "")
    return out


# --------------------------------------------------------------------------- flat <-> nested


def flatten(nested: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'crop': {'max_range': 60.0}}`` -> ``{'crop.max_range': 60.0}``."""
    out: dict[str, Any] = {}
    for key, value in nested.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flatten(value, name + "."))
        else:
            out[name] = value
    return out


def unflatten(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Inverse of :func:`flatten`."""
    out: dict[str, Any] = {}
    for name, value in flat.items():
        node = out
        parts = name.split(".")
        for p in parts[:-1]:
            node = node.setdefault(p, {})
            if not isinstance(node, dict):
                raise ConfigError(f"parameter '{name}': '{p}' is both a value and a group")
        node[parts[-1]] = value
    return out


# --------------------------------------------------------------------------- reading files


def read_parameter_file(path: str | Path) -> dict[str, Any]:
    """Read a ROS 2 parameter YAML (``/**:``, ``node_name:`` or ``/ns/node:`` keys holding
    ``ros__parameters``) or a plain mapping of parameters; returns flat parameters."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as e:
        raise ConfigError(f"cannot read parameter file {path}: {e.strerror or e}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from None
    if data is None:
        return {}
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: expected a mapping of parameters, got {type(data).__name__}")
    blocks = [v for v in data.values() if isinstance(v, Mapping) and "ros__parameters" in v]
    if blocks:
        flat: dict[str, Any] = {}
        for block in blocks:  # several node keys (e.g. '/**' and 'upsample_node') merge in order
            params = block["ros__parameters"]
            if not isinstance(params, Mapping):
                raise ConfigError(f"{path}: ros__parameters must be a mapping")
            flat.update(flatten(params))
        return flat
    if "ros__parameters" in data:
        raise ConfigError(f"{path}: ros__parameters must sit under a node name such as '/**'")
    return flatten(data)


@lru_cache(maxsize=4)
def _defaults_cached(path: str) -> tuple[tuple[str, Any], ...]:
    return tuple(read_parameter_file(path).items())


def default_parameters(name: str = "upsample") -> dict[str, Any]:
    """The shipped defaults (``config/NAME.yaml``), flat."""
    _schema_root(name)
    path = find_config_dir() / f"{name}.yaml"
    return dict(_defaults_cached(str(path)))


# --------------------------------------------------------------------------- validation


def _fmt(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def coerce_value(spec: ParameterSpec, value: Any) -> Any:
    """Type coercions a YAML author or a ROS user expects: an integer where a number is
    wanted (``60`` for ``60.0``), a tuple where a list is wanted."""
    if spec.type == "number" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if spec.type == "array" and isinstance(value, tuple):
        value = list(value)
    if spec.type == "array" and isinstance(value, list) and spec.item_type == "number":
        return [float(v) if isinstance(v, int) and not isinstance(v, bool) else v for v in value]
    return value


def _check_value(spec: ParameterSpec, value: Any) -> None:
    import jsonschema

    if isinstance(value, float) and not math.isfinite(value):
        raise ConfigError(
            f"parameter '{spec.name}' = {_fmt(value)} is not allowed: not a finite number; "
            f"allowed: {spec.allowed()} ({spec.description})"
        )
    validator = jsonschema.Draft7Validator(dict(spec.schema))
    errors = sorted(validator.iter_errors(value), key=lambda e: list(e.path))
    if errors:
        e = errors[0]
        where = "".join(f"[{p}]" for p in e.path)
        raise ConfigError(
            f"parameter '{spec.name}{where}' = {_fmt(value)} is not allowed: "
            f"{e.message}; allowed: {spec.allowed()} ({spec.description})"
        )


def _cross_checks(flat: Mapping[str, Any]) -> None:
    """Constraints between parameters that a JSON schema cannot express."""
    pairs = [("crop.min_range", "crop.max_range", False), ("crop.min_z", "crop.max_z", False),
             ("data.augment.scale_min", "data.augment.scale_max", True)]
    for lo, hi, equal_ok in pairs:
        if lo in flat and hi in flat and not (flat[lo] < flat[hi]
                                              or (equal_ok and flat[lo] == flat[hi])):
            raise ConfigError(
                f"parameter '{lo}' = {_fmt(flat[lo])} must be "
                f"{'at most' if equal_ok else 'smaller than'} '{hi}' = {_fmt(flat[hi])}"
            )
    if "roi.boxes" in flat:  # flat list, 6 numbers per box (ROS 2 cannot nest lists)
        from .config import roi_boxes

        try:
            roi_boxes(flat["roi.boxes"])
        except ValueError as e:
            raise ConfigError(f"parameter 'roi.boxes' = {_fmt(flat['roi.boxes'])}: {e}") from None


def _unknown_message(name: str, specs: Mapping[str, ParameterSpec]) -> str:
    close = difflib.get_close_matches(name, list(specs), n=3, cutoff=0.5)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else ""
    return f"unknown parameter '{name}'{hint} (known parameters: {', '.join(specs)})"


def validate_parameters(flat: Mapping[str, Any], name: str = "upsample") -> dict:
    """Validate a complete flat parameter set; returns it with values coerced.

    Raises :class:`ConfigError` naming the first offending parameter (unknown names come
    with the closest known names).
    """
    specs = parameter_specs(name)
    unknown = [k for k in flat if k not in specs]
    if unknown:
        raise ConfigError(_unknown_message(unknown[0], specs))
    missing = [k for k in specs if k not in flat]
    if missing:
        raise ConfigError(f"missing parameter '{missing[0]}' ({specs[missing[0]].description})")
    out = {}
    for name, spec in specs.items():
        value = coerce_value(spec, flat[name])
        _check_value(spec, value)
        out[name] = value
    _cross_checks(out)
    return out


def validate_parameter(param: str, value: Any, current: Mapping[str, Any], *,
                       runtime: bool = True, name: str = "upsample") -> Any:
    """Validate one changed parameter against the schema and the other current values.

    With ``runtime=True`` (the node's set-parameters callback), read-only parameters are
    refused. Returns the coerced value; raises :class:`ConfigError` with the reason.
    """
    specs = parameter_specs(name)
    spec = specs.get(param)
    if spec is None:
        raise ConfigError(_unknown_message(param, specs))
    if runtime and spec.read_only:
        raise ConfigError(
            f"parameter '{param}' is read-only while the node runs; set it in the parameter "
            "file or on the command line and restart the node"
        )
    value = coerce_value(spec, value)
    _check_value(spec, value)
    merged = dict(current)
    merged[param] = value
    _cross_checks(merged)
    return value


# --------------------------------------------------------------------------- the config object


class Config(Mapping[str, Any]):
    """A validated, read-only flat parameter set (``cfg['crop.max_range']``)."""

    def __init__(self, flat: Mapping[str, Any], source: str = "defaults",
                 name: str = "upsample") -> None:
        self._flat = dict(flat)
        self.source = source
        self.name = name

    def __getitem__(self, key: str) -> Any:
        try:
            return self._flat[key]
        except KeyError:
            raise KeyError(f"no parameter '{key}'") from None

    def __iter__(self) -> Iterator[str]:
        return iter(self._flat)

    def __len__(self) -> int:
        return len(self._flat)

    def nested(self) -> dict[str, Any]:
        return unflatten(self._flat)

    def to_yaml(self) -> str:
        """The parameters as a ROS 2 parameter file."""
        return yaml.safe_dump({"/**": {"ros__parameters": self.nested()}}, sort_keys=False)

    def replace(self, **overrides: Any) -> Config:
        """A validated copy with some parameters changed (dotted names as ``a__b``)."""
        flat = dict(self._flat)
        flat.update({k.replace("__", "."): v for k, v in overrides.items()})
        return Config(validate_parameters(flat, self.name), self.source, self.name)

    def __repr__(self) -> str:
        return f"Config({self._flat!r}, source={self.source!r})"


def load_config(path: str | Path | None = None,
                overrides: Mapping[str, Any] | None = None, *,
                name: str = "upsample") -> Config:
    """Defaults of configuration ``name``, then the parameters of ``path`` (if any), then
    ``overrides`` (flat dotted names); validated as a whole."""
    flat = default_parameters(name)
    source = "defaults"
    if path is not None:
        flat.update(read_parameter_file(path))
        source = str(path)
    if overrides:
        flat.update(overrides)
    try:
        return Config(validate_parameters(flat, name), source, name)
    except ConfigError as e:
        if path is not None:
            raise ConfigError(f"{path}: {e}") from None
        raise


def roi_boxes(values) -> np.ndarray:
    """Flat ``roi.boxes`` (6 numbers per box: xmin, xmax, ymin, ymax, zmin, zmax) -> (K, 6)
    float64. Raises ValueError when the length is not a multiple of 6 or a min >= max."""
    flat = np.asarray(list(values), dtype=np.float64).reshape(-1)
    if flat.size % 6:
        raise ValueError(f"roi.boxes needs 6 numbers per box (xmin, xmax, ymin, ymax, zmin, "
                         f"zmax), got {flat.size} numbers")
    boxes = flat.reshape(-1, 6)
    bad = np.flatnonzero((boxes[:, 0::2] >= boxes[:, 1::2]).any(axis=1))
    if bad.size:
        raise ValueError(f"roi.boxes box {int(bad[0])} = {boxes[bad[0]].tolist()}: each min "
                         "must be smaller than its max (xmin, xmax, ymin, ymax, zmin, zmax)")
    return boxes
