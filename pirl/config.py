"""Typed configs: YAML and dotted ``key=value`` overrides into nested frozen dataclasses.

A config is a frozen dataclass whose fields carry a docstring on the line below (the
docstring is the field's ``--help``). Supported field types: ``bool``, ``int``, ``float``,
``str``, ``Path``, ``Literal[...]``, ``Optional[X]``, unions, ``tuple[X, ...]``, ``tuple[X, Y]``,
``list[X]``, ``dict[str, X]`` and nested config dataclasses. Every error names the dotted
key, the bad value, the expected type and, for unknown keys or choices, the nearest valid ones.

A key that moved into a group is listed in the config's ``moved_keys`` (see :data:`MOVED_KEYS`), so an
old config is told where it went ("env_workers was moved: use runner.env_workers").

A preset is a YAML file in ``configs/`` (looked up by name); it may start from another
preset with ``_base_: <name>`` and override some of its keys.

    cfg = load_config(TrainConfig, "metaworld_ppo", ["algo.lr=3e-4", "env.tasks=[reach, push]"])
    dump_config(cfg, run_dir / "config.yaml")
"""

from __future__ import annotations

import ast
import dataclasses
import difflib
import functools
import inspect
import textwrap
import types
import typing
from pathlib import Path
from typing import Any, Iterable, Literal, Mapping, Sequence, TypeVar, Union

import yaml

from pirl.errors import InputError

T = TypeVar("T")

BASE_KEY = "_base_"
"""Key in a preset YAML naming the preset it extends."""

MOVED_KEYS = "moved_keys"
"""Optional class attribute of a config (a ``ClassVar``): {old key: its new dotted key below the config}, for
keys that moved into a group; giving an old key is an error that names the new one."""

PACKAGE_CONFIGS = Path(__file__).resolve().parent.parent / "configs"
"""The repository's ``configs/`` directory (presets shipped with pirl)."""


class ConfigError(InputError):
    """A config could not be built; the message names the key and what was wrong."""


# ----------------------------------------------------------------------------- field docs


@functools.lru_cache(maxsize=None)
def field_docs(cls: type) -> dict[str, str]:
    """Field name -> docstring (the string literal right below the field), over the class MRO."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        except (OSError, TypeError, SyntaxError):  # no source (e.g. built in a REPL): no docs
            continue
        body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
        for node, nxt in zip(body, body[1:] + [None]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(nxt, ast.Expr)
                and isinstance(nxt.value, ast.Constant)
                and isinstance(nxt.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(nxt.value.value)
    return docs


def _hints(cls: type) -> dict[str, Any]:
    try:
        return typing.get_type_hints(cls)
    except Exception as e:  # a forward reference that does not resolve is a bug in the config class
        raise ConfigError(f"cannot resolve the field types of {cls.__name__}: {e}") from e


def _fields(cls: type) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def type_name(tp: Any) -> str:
    """A readable name for a type annotation: ``int``, ``'ode' | 'flow_sde'``, ``tuple[int, ...]``."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin is Literal:
        return " | ".join(repr(a) for a in args)
    if origin in (Union, types.UnionType):
        return " | ".join("None" if a is type(None) else type_name(a) for a in args)
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return f"tuple[{type_name(args[0])}, ...]"
        return f"tuple[{', '.join(type_name(a) for a in args)}]"
    if origin in (list, dict):
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    if tp is type(None):
        return "None"
    return getattr(tp, "__name__", str(tp))


def _suggest(word: str, options: Iterable[str], n: int = 3) -> str:
    close = difflib.get_close_matches(word, list(options), n=n, cutoff=0.5)
    return f" (did you mean {', '.join(repr(c) for c in close)}?)" if close else ""


# ----------------------------------------------------------------------------- coercion


def _join(path: str, key: Any) -> str:
    return f"{path}.{key}" if path else str(key)


def _bad(path: str, value: Any, tp: Any, extra: str = "") -> ConfigError:
    return ConfigError(f"{path or '<root>'}: expected {type_name(tp)}, got {value!r} ({type(value).__name__}){extra}")


def coerce(tp: Any, value: Any, path: str = "") -> Any:
    """Checks ``value`` (plain YAML data) against annotation ``tp`` and converts it
    (lists to tuples, mappings to dataclasses, ints to floats). Raises :class:`ConfigError`."""
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if tp is Any:
        return value
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, Mapping):
            raise _bad(path, value, tp, _group_hint(tp, value, path))
        return from_dict(tp, value, path)
    if origin is Literal:
        if any(value == a and type(value) is type(a) for a in args):  # True must not match Literal[1]
            return value
        extra = _suggest(value, [a for a in args if isinstance(a, str)]) if isinstance(value, str) else ""
        raise ConfigError(
            f"{path or '<root>'}: expected one of {', '.join(repr(a) for a in args)}, got {value!r}{extra}"
        )
    if origin in (Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return coerce(a, value, path)
            except ConfigError as e:
                errors.append(e)
        if len(errors) == 1:  # Optional[X]: X's own message is the most precise one
            raise errors[0]
        raise _bad(path, value, tp)
    if tp is type(None):
        if value is None:
            return None
        raise _bad(path, value, tp)
    if origin in (tuple, list):
        if not isinstance(value, (list, tuple)):
            raise _bad(path, value, tp, " (write a YAML list, e.g. [a, b])")
        if origin is tuple and not (len(args) == 2 and args[1] is Ellipsis) and args:
            if len(value) != len(args):
                raise _bad(path, value, tp, f" (needs exactly {len(args)} items)")
            return tuple(coerce(a, v, f"{path}[{i}]") for i, (a, v) in enumerate(zip(args, value)))
        item = args[0] if args else Any
        items = [coerce(item, v, f"{path}[{i}]") for i, v in enumerate(value)]
        return tuple(items) if origin is tuple else items
    if origin is dict or tp is dict:
        if not isinstance(value, Mapping):
            raise _bad(path, value, tp)
        kt, vt = args if args else (Any, Any)
        for k, v in value.items():  # YAML reads {a:b} (no space after the colon) as the key 'a:b' with no value
            if v is None and isinstance(k, str) and ":" in k and type(None) not in typing.get_args(vt) and vt is not Any:
                a, b = k.split(":", 1)
                raise ConfigError(f"{_join(path, k)}: no value; write {{{a}: {b}}} (YAML needs a space after the colon)")
        return {coerce(kt, k, _join(path, k)): coerce(vt, v, _join(path, k)) for k, v in value.items()}
    if tp is bool:
        if isinstance(value, bool):
            return value
        raise _bad(path, value, tp, " (write true or false)")
    if tp is int:
        if isinstance(value, int) and not isinstance(value, bool):
            return value
        if isinstance(value, str):  # YAML 1.1 reads 1e6 (no dot) as a string
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, float) and value.is_integer():
            return int(value)
        raise _bad(path, value, tp)
    if tp is float:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):  # YAML 1.1 reads 3e-4 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        raise _bad(path, value, tp)
    if tp is str:
        if isinstance(value, str):
            return value
        raise _bad(path, value, tp)
    if tp is Path or (isinstance(tp, type) and issubclass(tp, Path)):
        if isinstance(value, (str, Path)):
            return Path(value)
        raise _bad(path, value, tp)
    if isinstance(tp, type) and isinstance(value, tp):
        return value
    raise ConfigError(f"{path or '<root>'}: unsupported field type {type_name(tp)}")


def _unknown_key(cls: type, path: str, key: str, names: Sequence[str]) -> ConfigError:
    """The error for ``key`` not among config ``cls``'s fields: where it moved to, or the nearest valid keys."""
    moved = getattr(cls, MOVED_KEYS, {})
    if key in moved:
        return ConfigError(f"{_join(path, key)} was moved: use {_join(path, moved[key])}")
    return ConfigError(
        f"unknown key {_join(path, key)!r}{_suggest(key, names)}; "
        f"valid keys{' under ' + repr(path) if path else ''}: {', '.join(names)}"
    )


def _group_hint(cls: type, value: Any, path: str) -> str:
    """For a plain value given to a group of keys (``runner=ray``): the choice field it fits, if one does."""
    hints = _hints(cls)
    for f in _fields(cls):
        if typing.get_origin(hints[f.name]) is Literal and value in typing.get_args(hints[f.name]):
            return f" ({path} is a group of keys: did you mean {path}.{f.name}={value}?)"
    return " (a mapping of its fields)"


def from_dict(cls: type[T], data: Mapping[str, Any], path: str = "") -> T:
    """Builds config ``cls`` from plain data; missing keys take their defaults."""
    if not isinstance(data, Mapping):
        raise _bad(path, data, cls, " (a mapping of its fields)")
    hints = _hints(cls)
    names = [f.name for f in _fields(cls)]
    for key in data:
        if key not in names:
            raise _unknown_key(cls, path, str(key), names)
    kwargs = {}
    for f in _fields(cls):
        if f.name in data:
            kwargs[f.name] = coerce(hints[f.name], data[f.name], _join(path, f.name))
        elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
            raise ConfigError(f"missing required key {_join(path, f.name)!r} ({type_name(hints[f.name])})")
    try:
        return cls(**kwargs)
    except ConfigError:
        raise
    except (ValueError, TypeError) as e:  # __post_init__ validation: say where it happened
        raise ConfigError(f"{path or cls.__name__}: {e}") from e


# ----------------------------------------------------------------------------- to plain data


def to_dict(cfg: Any) -> Any:
    """Plain YAML-able data of a config (tuples -> lists, Paths -> str), in field order."""
    if dataclasses.is_dataclass(cfg) and not isinstance(cfg, type):
        return {f.name: to_dict(getattr(cfg, f.name)) for f in _fields(type(cfg))}
    if isinstance(cfg, (list, tuple)):
        return [to_dict(v) for v in cfg]
    if isinstance(cfg, Mapping):
        return {k: to_dict(v) for k, v in cfg.items()}
    if isinstance(cfg, Path):
        return str(cfg)
    return cfg


class _Dumper(yaml.SafeDumper):
    """Groups as indented blocks, one key a line (so a group reads as one), lists on one line: [a, b]."""


_Dumper.add_representer(list, lambda d, data: d.represent_sequence("tag:yaml.org,2002:seq", data, flow_style=True))


def dump_yaml(cfg: Any) -> str:
    """The resolved config as YAML text (loading it back gives an equal config)."""
    return yaml.dump(to_dict(cfg), Dumper=_Dumper, sort_keys=False, default_flow_style=False, width=100)


def dump_config(cfg: Any, path: str | Path) -> Path:
    """Writes the resolved config to ``path`` atomically (temp file, then rename)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(dump_yaml(cfg))
    tmp.replace(path)
    return path


# ----------------------------------------------------------------------------- overrides


def parse_override(text: str) -> tuple[str, Any, str]:
    """``'a.b=3e-4'`` -> ``('a.b', <YAML scalar>, '3e-4')``; the raw text is kept for str fields."""
    if "=" not in text:
        raise ConfigError(f"override {text!r} is not of the form key=value")
    key, raw = text.split("=", 1)
    key = key.strip()
    if not key:
        raise ConfigError(f"override {text!r} has an empty key")
    try:
        value = yaml.safe_load(raw) if raw.strip() else ""
    except yaml.YAMLError:
        value = raw  # not valid YAML (e.g. an unbalanced bracket): let the type check decide
    return key, value, raw


def _admits_str(tp: Any) -> bool:
    if tp is str or tp is Path:
        return True
    origin, args = typing.get_origin(tp), typing.get_args(tp)
    if origin in (Union, types.UnionType):
        return any(_admits_str(a) for a in args)
    return False


def apply_overrides(cls: type, data: Mapping[str, Any], overrides: Sequence[str]) -> dict[str, Any]:
    """Applies dotted ``key=value`` overrides to plain data for config ``cls``; unknown keys
    are errors naming the nearest valid ones. Returns a new nested dict."""
    out = _deepcopy(dict(data))
    for text in overrides:
        key, value, raw = parse_override(text)
        parts = key.split(".")
        klass: Any = cls
        node = out
        for i, part in enumerate(parts):
            here = ".".join(parts[: i + 1])
            if not (isinstance(klass, type) and dataclasses.is_dataclass(klass)):
                raise ConfigError(f"unknown key {key!r}: {'.'.join(parts[:i])!r} has no sub-keys")
            names = [f.name for f in _fields(klass)]
            if part not in names:
                raise _unknown_key(klass, ".".join(parts[:i]), part, names)
            tp = _hints(klass)[part]
            if i == len(parts) - 1:
                # `name=on` or `name=123` for a str field means the text, not YAML's bool/int
                if _admits_str(tp) and value is not None and not isinstance(value, str):
                    try:
                        coerce(tp, value, here)
                    except ConfigError:
                        value = raw
                node[part] = value
                break
            sub = _dataclass_in(tp)
            if sub is None and _is_dict(tp) and i == len(parts) - 2:  # `weights.reach=2` sets one entry
                if not isinstance(node.get(part), Mapping):
                    node[part] = {}
                node[part][parts[-1]] = value
                break
            if sub is None:
                raise ConfigError(f"unknown key {key!r}: {here!r} ({type_name(tp)}) has no sub-keys")
            if not isinstance(node.get(part), Mapping):
                node[part] = {}  # absent or None (an Optional sub-config): start from its defaults
            node = node[part]
            klass = sub
    return out


def _is_dict(tp: Any) -> bool:
    if tp is dict or typing.get_origin(tp) is dict:
        return True
    if typing.get_origin(tp) in (Union, types.UnionType):
        return any(_is_dict(a) for a in typing.get_args(tp))
    return False


def _dataclass_in(tp: Any) -> type | None:
    if dataclasses.is_dataclass(tp):
        return tp
    if typing.get_origin(tp) in (Union, types.UnionType):
        subs = [a for a in typing.get_args(tp) if dataclasses.is_dataclass(a)]
        return subs[0] if len(subs) == 1 else None
    return None


def _deepcopy(x: Any) -> Any:
    if isinstance(x, Mapping):
        return {k: _deepcopy(v) for k, v in x.items()}
    if isinstance(x, list):
        return [_deepcopy(v) for v in x]
    return x


def _merge(base: Mapping[str, Any], over: Mapping[str, Any]) -> dict[str, Any]:
    out = _deepcopy(dict(base))
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, Mapping) and isinstance(out.get(k), Mapping) else _deepcopy(v)
    return out


# ----------------------------------------------------------------------------- presets and loading


def list_presets(search: Sequence[str | Path] = (PACKAGE_CONFIGS,)) -> list[str]:
    """Preset names (YAML files, relative to a search directory, without suffix)."""
    names = set()
    for d in map(Path, search):
        if d.is_dir():
            names.update(str(p.relative_to(d).with_suffix("")) for p in d.rglob("*.y*ml"))
    return sorted(names)


def resolve_preset(name_or_path: str | Path, search: Sequence[str | Path] = (PACKAGE_CONFIGS,)) -> Path:
    """A YAML path as given, or preset ``name`` found as ``<dir>/<name>.yaml`` in ``search``."""
    p = Path(name_or_path)
    if p.is_file():
        return p
    for d in map(Path, search):
        for cand in (d / f"{name_or_path}.yaml", d / f"{name_or_path}.yml", d / str(name_or_path)):
            if cand.is_file():
                return cand
    presets = list_presets(search)
    raise ConfigError(
        f"no config file or preset {str(name_or_path)!r}{_suggest(str(name_or_path), presets)}; "
        f"presets: {', '.join(presets) or '(none)'}"
    )


def load_yaml(path: str | Path, search: Sequence[str | Path] = (PACKAGE_CONFIGS,), _seen: tuple = ()) -> dict:
    """Reads a config YAML file, following ``_base_`` presets (relative to the file, then ``search``)."""
    path = Path(path).resolve()
    if path in _seen:
        raise ConfigError(f"{path}: _base_ cycle through {' -> '.join(map(str, _seen))}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"{path}: not valid YAML: {e}") from e
    if not isinstance(data, Mapping):
        raise ConfigError(f"{path}: a config file must be a mapping, got {type(data).__name__}")
    data = dict(data)
    base = data.pop(BASE_KEY, None)
    if base is None:
        return data
    base_path = resolve_preset(base, [path.parent, *search])
    return _merge(load_yaml(base_path, search, _seen + (path,)), data)


def load_config(
    cls: type[T],
    source: str | Path | Mapping[str, Any] | None = None,
    overrides: Sequence[str] = (),
    search: Sequence[str | Path] = (PACKAGE_CONFIGS,),
) -> T:
    """Config ``cls`` from a YAML path, preset name or mapping (None: the defaults), then
    ``key=value`` overrides. Raises :class:`ConfigError` naming the offending key."""
    if source is None:
        data: dict = {}
    elif isinstance(source, Mapping):
        data = dict(source)
    else:
        path = resolve_preset(source, search)
        data = load_yaml(path, search)
        merged = apply_overrides(cls, data, overrides)  # its errors name the override's key
        try:
            return from_dict(cls, merged)
        except ConfigError as e:
            raise ConfigError(f"config {path}{' + overrides' if overrides else ''}: {e}") from None
    return _build(cls, data, overrides)


def migrate_moved_keys(cls: type, data: Mapping[str, Any]) -> tuple[dict[str, Any], list[str]]:
    """A config saved by an older pirl, with keys that have since moved into groups (``cls.moved_keys``, top
    level), rewritten to the new places; returns (data, ["old -> new", ...]). For a run's own saved config
    (``--resume``): a user's config still gets the "was moved" error, which teaches the new name."""
    moved = getattr(cls, MOVED_KEYS, {})
    out: dict[str, Any] = {k: (dict(v) if isinstance(v, Mapping) else v) for k, v in data.items()}
    notes = []
    hints = _hints(cls)
    for f in _fields(cls):  # a group that was one choice (runner: ray): that choice's field in the group
        sub = _dataclass_in(hints[f.name])
        value = out.get(f.name)
        if sub is None or value is None or isinstance(value, Mapping):
            continue
        sub_hints = _hints(sub)
        choice = next((g.name for g in _fields(sub) if typing.get_origin(sub_hints[g.name]) is Literal
                       and value in typing.get_args(sub_hints[g.name])), None)
        if choice is not None:
            out[f.name] = {choice: value}
            notes.append(f"{f.name}: {value} -> {f.name}.{choice}")
    for old, new in moved.items():
        if old not in out:
            continue
        value = out.pop(old)
        node = out
        *groups, leaf = new.split(".")
        for g in groups:
            node = node.setdefault(g, {})
            if not isinstance(node, dict):
                raise ConfigError(f"{old} was moved to {new}, but {g} is not a group in this config")
        node.setdefault(leaf, value)
        notes.append(f"{old} -> {new}")
    return out, notes


def _build(cls: type[T], data: Mapping[str, Any], overrides: Sequence[str]) -> T:
    return from_dict(cls, apply_overrides(cls, data, overrides))


# ----------------------------------------------------------------------------- help


def describe(cls: type, prefix: str = "", width: int = 100) -> str:
    """``--help``-style listing of every (nested) field: dotted key, type, default, docstring."""
    lines: list[str] = []
    hints, docs = _hints(cls), field_docs(cls)
    for f in _fields(cls):
        key, tp = _join(prefix, f.name), hints[f.name]
        sub = _dataclass_in(tp)
        if f.default is not dataclasses.MISSING:
            default = f.default
        elif f.default_factory is not dataclasses.MISSING:
            default = f.default_factory()
        else:
            default = dataclasses.MISSING
        if sub is not None and (default is None or default is dataclasses.MISSING or dataclasses.is_dataclass(default)):
            # an Optional sub-config that defaults to None is created by setting any of its keys
            head = sub.__name__ + (" | None = null" if default is None else "")
            lines.append(f"  {key}: {head}" + (f"  — {docs[f.name]}" if f.name in docs else ""))
            lines.append(describe(sub, key, width))
            continue
        shown = "(required)" if default is dataclasses.MISSING else yaml.safe_dump(
            to_dict(default), default_flow_style=True, width=10_000
        ).strip().removesuffix("...").strip()
        lines.append(f"  {key}: {type_name(tp)} = {shown}")
        if f.name in docs:
            lines.extend(textwrap.wrap(docs[f.name], width, initial_indent=" " * 6, subsequent_indent=" " * 6))
    return "\n".join(line for line in lines if line)
