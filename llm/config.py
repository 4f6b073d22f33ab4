"""Load a config file and command-line overrides, validate them and lock the result.

A config is `path/to/file.py[:arg]` whose `get_config(arg)` returns an
`ml_collections.ConfigDict`; overrides are `--config.key.sub=value`. Every error names the
key (with close matches for unknown keys) or the file and says what was expected.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import json
import pathlib
import sys
from collections.abc import Iterable, Sequence
from typing import Any

import ml_collections

# Keys whose change between a checkpoint and a resumed run is harmless.
RESUME_SAFE_KEYS = (
    "total_steps", "num_epochs", "log.", "eval.every_steps", "eval.steps", "eval.patience",
    "eval.tasks",
    "checkpoint.every_steps", "checkpoint.keep", "checkpoint.async_save",
    "workdir", "take_over_lock", "init_from", "mesh.", "resolved.total_steps",
)


class ConfigError(ValueError):
    """A config file, key or value that is wrong; the message names it."""


def load_module(path: str) -> Any:
    """Import a config file by path."""
    file = pathlib.Path(path)
    if not file.is_file():
        raise ConfigError(f"--config={path}: no such config file")
    if file.suffix != ".py":
        raise ConfigError(f"--config={path}: expected a Python config file (.py) defining "
                          "get_config(arg)")
    root = str(pathlib.Path(__file__).resolve().parents[1])
    if root not in sys.path:  # so `from configs import base` works from any cwd
        sys.path.insert(0, root)
    spec = importlib.util.spec_from_file_location(f"_llm_config_{file.stem}", file)
    module = importlib.util.module_from_spec(spec)
    try:
        spec.loader.exec_module(module)
    except Exception as error:  # the user's file: report it, not our import machinery
        raise ConfigError(f"--config={path}: the file failed to load: "
                          f"{type(error).__name__}: {error}") from None
    if not hasattr(module, "get_config"):
        raise ConfigError(f"--config={path}: the file defines no get_config(arg)")
    return module


def load_config(spec: str, overrides: Sequence[str] = ()) -> ml_collections.ConfigDict:
    """`file.py[:arg]` plus `key=value` overrides → a validated, locked ConfigDict."""
    path, _, arg = spec.partition(":")
    config = load_module(path).get_config(arg or None)
    if not isinstance(config, ml_collections.ConfigDict):
        raise ConfigError(f"--config={path}: get_config must return an ml_collections.ConfigDict")
    config.lock()
    # model.size refills the whole model section: apply it first, so that a model key given
    # on the command line survives whatever its position relative to model.size.
    overrides = sorted(overrides, key=lambda item: item.partition("=")[0] != "model.size")
    for item in overrides:
        key, sep, raw = item.partition("=")
        if not sep:
            raise ConfigError(f"--config.{item}: expected --config.KEY=VALUE")
        set_value(config, key, raw)
    return config


def split_argv(argv: Sequence[str]) -> tuple[str | None, list[str], list[str]]:
    """Separate `--config=...` and `--config.k=v` from other command-line flags."""
    spec, overrides, rest = None, [], []
    args = list(argv)
    while args:
        arg = args.pop(0)
        if arg.startswith("--config="):
            spec = arg.split("=", 1)[1]
        elif arg == "--config" and args:
            spec = args.pop(0)
        elif arg.startswith("--config."):
            body = arg[len("--config."):]
            if "=" not in body and args and not args[0].startswith("--"):
                body = f"{body}={args.pop(0)}"
            overrides.append(body)
        else:
            rest.append(arg)
    return spec, overrides, rest


def all_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
    """Every dotted leaf key of a config."""
    keys = []
    for name, value in config.items():
        full = f"{prefix}{name}"
        if isinstance(value, ml_collections.ConfigDict):
            keys.extend(all_keys(value, full + "."))
        keys.append(full)
    return keys


def _unknown_key(config: ml_collections.ConfigDict, key: str) -> ConfigError:
    close = difflib.get_close_matches(key, all_keys(config), n=4, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else ""
    return ConfigError(f"--config.{key}: unknown config key{hint}")


def _parse(raw: str, current: Any, key: str) -> Any:
    if isinstance(current, bool):
        if raw.lower() in ("true", "1", "yes"):
            return True
        if raw.lower() in ("false", "0", "no"):
            return False
        raise ConfigError(f"--config.{key}={raw}: expected true or false")
    if isinstance(current, int):
        try:
            return int(raw)
        except ValueError:
            try:
                as_float = float(raw)
            except ValueError:
                as_float = None
            if as_float is not None and as_float.is_integer():
                return int(as_float)
            raise ConfigError(f"--config.{key}={raw}: expected an integer") from None
    if isinstance(current, float):
        try:
            return float(raw)
        except ValueError:
            raise ConfigError(f"--config.{key}={raw}: expected a number") from None
    if isinstance(current, str):
        return raw
    if isinstance(current, tuple | list):
        if raw.strip() == "":
            return type(current)()
        try:
            value = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            value = [part.strip() for part in raw.split(",")]
        if not isinstance(value, tuple | list):
            value = [value]
        return type(current)(value)
    if current is None or isinstance(current, dict | ml_collections.ConfigDict):
        try:
            return ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            return raw
    raise ConfigError(f"--config.{key}: cannot set a value of type {type(current).__name__}")


def set_value(config: ml_collections.ConfigDict, key: str, raw: str) -> None:
    """Set one dotted key from its command-line string, converted to the existing type."""
    *parents, leaf = key.split(".")
    node = config
    for i, part in enumerate(parents):
        if not isinstance(node, ml_collections.ConfigDict) or part not in node:
            raise _unknown_key(config, ".".join(parents[: i + 1]) if i < len(parents) else key)
        node = node[part]
    if not isinstance(node, ml_collections.ConfigDict) or leaf not in node:
        raise _unknown_key(config, key)
    current = node[leaf]
    if isinstance(current, ml_collections.ConfigDict):
        value = _parse(raw, None, key)
        if not isinstance(value, dict):
            raise ConfigError(f"--config.{key}={raw}: expected a dict for this section")
        for sub, sub_value in value.items():
            set_value(config, f"{key}.{sub}", json.dumps(sub_value)
                      if not isinstance(sub_value, str) else sub_value)
        return
    if key == "model.size":
        _refill_model(config, raw)
        return
    node[leaf] = _parse(raw, current, key)


def _refill_model(config: ml_collections.ConfigDict, size: str) -> None:
    from configs import models  # the size table lives with the configs

    fresh = models.model_config(size)
    with config.model.unlocked():
        for name, value in fresh.items():
            config.model[name] = value


def to_json(config: ml_collections.ConfigDict) -> str:
    """Serialise a resolved config (sorted, stable) for `workdir/config.json`."""
    return json.dumps(config.to_dict(), indent=2, sort_keys=True, default=str)


def flatten(tree: dict, prefix: str = "") -> dict[str, Any]:
    """Nested dict → {'a.b': value}."""
    flat = {}
    for name, value in tree.items():
        if isinstance(value, dict):
            flat.update(flatten(value, f"{prefix}{name}."))
        else:
            flat[f"{prefix}{name}"] = value
    return flat


def changed_keys(saved: dict, current: dict, safe: Iterable[str] = RESUME_SAFE_KEYS
                 ) -> list[str]:
    """Keys whose values differ between two resolved configs, ignoring resume-safe keys."""
    a = flatten(json.loads(json.dumps(saved, default=str)))
    b = flatten(json.loads(json.dumps(current, default=str)))
    changed = []
    for key in sorted(set(a) | set(b)):
        if a.get(key) == b.get(key):
            continue
        if any(key == s or (s.endswith(".") and key.startswith(s)) for s in safe):
            continue
        changed.append(key)
    return changed


_CLI: dict[str, Any] = {}


def absl_flags_parser(argv: list[str]) -> list[str]:
    """absl `flags_parser`: keeps --config / --config.* for `cli_config`, parses the rest."""
    from absl import flags

    spec, overrides, rest = split_argv(argv[1:])
    try:
        flags.FLAGS([argv[0], *rest])
    except flags.Error as error:  # e.g. a mistyped --cofig.total_steps
        print(f"error: {error}", file=sys.stderr)
        sys.exit(2)
    _CLI.update(spec=spec, overrides=overrides)
    return [argv[0]]


def cli_config() -> ml_collections.ConfigDict:
    """The config named on the command line (after `absl_flags_parser` ran)."""
    if not _CLI.get("spec"):
        raise ConfigError("--config=configs/<task>.py[:args] is required")
    return load_config(_CLI["spec"], _CLI["overrides"])
