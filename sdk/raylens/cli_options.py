"""Command-line options made from config dataclasses: one source for names, defaults, types and help.

A config dataclass documents each field with a string literal under it; :func:`config_options`
turns the fields into typer options (``max_steps`` becomes ``--max-steps``, its default the
field's default, its help the field's docstring) and hands the command the config built back
from what was typed. It also adds ``--config FILE.yaml`` (the same dataclasses from YAML,
validated before the command runs: an unknown key is named with the valid ones listed) and
``--dry-run`` (print the resolved configs as YAML and exit). Precedence: dataclass defaults, then
the file, then the flags given on the command line.

A ``raylens train KIND`` command is a function with one keyword parameter per config group:

>>> import typer
>>> from typer.testing import CliRunner
>>> from raylens.train.options import RayTrainOptions
>>> app = typer.Typer()
>>> @app.command()
... @config_options(ray_train_options(param="opts"))
... def train(data: str, *, opts: RayTrainOptions):
...     print(data, opts.num_workers, opts.use_gpu)
>>> print(CliRunner().invoke(app, ["digits", "--workers", "4", "--gpu"]).output.strip())
digits 4 True
>>> print(CliRunner().invoke(app, ["digits", "--dry-run"]).output.strip())
ray:
  num_workers: 2
  use_gpu: false
  ...

A new ``raylens train KIND`` pairs its own config with :func:`ray_train_options` (``--workers``,
``--gpu``, ``--storage``, ``--name``, ``--keep``, ...), as ``raylens train clip`` does in
``raylens.cli``: ``OptionGroup(MyTrainConfig, param="cfg", section="train", flags={"max_steps":
"--steps"}, hidden=(...))``. Every shown field needs its docstring (the help text comes from it,
so the class must live in a file); fields users should not set on the command line go in
``hidden`` and stay settable in the ``--config`` file.
"""

from __future__ import annotations

import ast
import dataclasses
import functools
import inspect
import re
import textwrap
import types
import typing
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import typer

__all__ = [
    "OptionGroup",
    "config_options",
    "field_docs",
    "field_help",
    "load_config_file",
    "load_configs",
    "ray_train_options",
    "RAY_TRAIN_FLAGS",
    "RAY_TRAIN_HIDDEN",
]

RAY_TRAIN_FLAGS = {
    "num_workers": "--workers",
    "use_gpu": "--gpu",
    "storage_path": "--storage",
    "num_to_keep": "--keep",
}
"""The short flags users know for :class:`~raylens.train.options.RayTrainOptions` fields."""
RAY_TRAIN_HIDDEN = ("shuffle_buffer", "log_level", "eval_max_rows", "worker_niceness")
"""RayTrainOptions fields left off the command line (tuning knobs; settable in ``--config``)."""


@dataclass(frozen=True)
class OptionGroup:
    """How one config dataclass appears on a command line."""

    cls: type
    """The config dataclass (fields documented by a string literal under each)."""
    param: str
    """The command function's keyword parameter that receives the built config."""
    section: str
    """The config's key in a ``--config`` YAML file and in ``--dry-run`` output (``train``, ``ray``)."""
    flags: Mapping[str, str] = field(default_factory=dict)
    """Field name -> flag, where the flag is not ``--field-name`` (``{"max_steps": "--steps"}``)."""
    hidden: Collection[str] = ()
    """Fields left off the command line (internal or tuning knobs); a YAML file may still set them."""
    split: Collection[str] = ()
    """List fields whose values may also be given comma-separated (``--classes a,b,c``)."""
    choices: Mapping[str, Sequence[Any]] = field(default_factory=dict)
    """Field name -> its allowed values, for fields typed ``str`` that the dataclass checks against a
    tuple (``{"loss": LOSSES}``); a ``Literal[...]`` type gives its choices by itself."""
    panel: str | None = None
    """The ``--help`` panel these options are listed under (default: the class's first docstring line)."""
    prepare: Callable[[dict[str, Any]], dict[str, Any]] | None = None
    """Called with the values the user gave (file and flags, nothing else) before the config is built;
    returns the values to build with. For a default that depends on another value (a short run's
    warm-up): the dataclass default stays the one shown, and ``--dry-run`` shows what was derived."""

    def __post_init__(self):
        if not dataclasses.is_dataclass(self.cls):
            raise TypeError(f"OptionGroup `cls` must be a dataclass, got {self.cls!r}")
        if not self.param.isidentifier():
            raise ValueError(f"OptionGroup `param` must be a Python identifier, got {self.param!r}")
        names = {f.name for f in dataclasses.fields(self.cls)}
        for what, given in (
            ("flags", set(self.flags)),
            ("hidden", set(self.hidden)),
            ("split", set(self.split)),
            ("choices", set(self.choices)),
        ):
            unknown = sorted(given - names)
            if unknown:
                raise ValueError(
                    f"OptionGroup `{what}` names {unknown}, not fields of {self.cls.__name__}; fields: {sorted(names)}"
                )
        bad = [f for f in self.flags.values() if not f.startswith("--")]
        if bad:
            raise ValueError(f"OptionGroup `flags` must be long options starting with '--', got {bad}")

    def build(self, values: Mapping[str, Any]) -> Any:
        """The config from ``values`` (what the user gave), after :attr:`prepare`."""
        values = dict(values)
        return self.cls(**(self.prepare(values) if self.prepare else values))

    def shown(self) -> list[dataclasses.Field]:
        """The fields that become options, in declaration order."""
        return [f for f in dataclasses.fields(self.cls) if f.name not in self.hidden and f.init]

    def flag(self, name: str) -> str:
        """The option for field ``name``: ``flags[name]`` or ``--`` + the name with dashes."""
        return self.flags.get(name) or "--" + name.replace("_", "-")

    def title(self) -> str:
        return self.panel or (inspect.getdoc(self.cls) or self.cls.__name__).splitlines()[0].rstrip(".")


def field_docs(cls: type) -> dict[str, str]:
    """The docstring under each field of dataclass ``cls`` (and its dataclass bases), cleaned.

    >>> from raylens.train.config import ClipTrainConfig
    >>> field_docs(ClipTrainConfig)["max_steps"]
    'Optimizer steps in total (every worker runs all of them).'
    """
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        try:
            source = textwrap.dedent(inspect.getsource(klass))
        except (OSError, TypeError):  # defined in a REPL / exec: no source to read
            continue
        body = next(n for n in ast.parse(source).body if isinstance(n, ast.ClassDef)).body
        for node, after in zip(body, body[1:]):
            if (
                isinstance(node, ast.AnnAssign)
                and isinstance(node.target, ast.Name)
                and isinstance(after, ast.Expr)
                and isinstance(after.value, ast.Constant)
                and isinstance(after.value.value, str)
            ):
                docs[node.target.id] = inspect.cleandoc(after.value.value)
    return docs


def field_help(doc: str) -> str:
    """A field docstring as one line of command-line help (reST markup dropped).

    >>> field_help("``clip`` or ``siglip`` (see :func:`~raylens.train.losses.make_loss`).")
    'clip or siglip (see make_loss).'
    """
    text = " ".join(doc.split())
    text = re.sub(r":[a-z]+:`~([\w.]+)`", lambda m: m.group(1).rsplit(".", 1)[-1], text)
    text = re.sub(r":[a-z]+:`([^`]+)`", r"\1", text)
    return text.replace("``", "")


def _unwrap_optional(tp: Any) -> tuple[Any, bool]:
    """``X | None`` -> (X, True); anything else -> (tp, False)."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) == 1 and len(typing.get_args(tp)) == 2:
            return args[0], True
    return tp, False


def _option_annotation(cls: type, f: dataclasses.Field, tp: Any) -> tuple[Any, bool]:
    """The annotation typer gets for field ``f`` and whether it is a list option; TypeError if none fits."""
    inner, optional = _unwrap_optional(tp)
    if typing.get_origin(inner) is list:
        (item,) = typing.get_args(inner) or (str,)
        if item not in (str, int, float, Path):
            raise TypeError(
                f"{cls.__name__}.{f.name}: list[{getattr(item, '__name__', item)}] has no command-line form; "
                "list it in OptionGroup(hidden=...) and set it in the --config file"
            )
        return (list[item] | None) if optional else list[item], True
    if inner in (bool, int, float, str, Path) or typing.get_origin(inner) is Literal:
        return tp, False
    raise TypeError(
        f"{cls.__name__}.{f.name}: type {tp!r} has no command-line form; "
        "list it in OptionGroup(hidden=...) and set it in the --config file"
    )


def _default(f: dataclasses.Field) -> Any:
    if f.default is not dataclasses.MISSING:
        return f.default
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return ...


def _param_name(group: OptionGroup, f: dataclasses.Field) -> str:
    return f"{group.param}__{f.name}"


def _options(group: OptionGroup) -> list[inspect.Parameter]:
    """One keyword parameter (typer option) per shown field of ``group``."""
    from rich.markup import escape

    hints = typing.get_type_hints(group.cls)
    docs = field_docs(group.cls)
    params = []
    for f in group.shown():
        if f.name not in docs:
            raise ValueError(
                f"{group.cls.__name__}.{f.name} has no docstring, and its --help text comes from it: "
                "put a string literal under the field (or list it in OptionGroup(hidden=...))"
            )
        annotation, is_list = _option_annotation(group.cls, f, hints[f.name])
        if f.name in group.choices:
            options = Literal[tuple(group.choices[f.name])]
            annotation = (options | None) if _unwrap_optional(annotation)[1] else options
        flag = group.flag(f.name)
        default = _default(f)
        # a bool that is off by default is a plain switch (--gpu); one that is on also gets --no-...
        on_by_default = _unwrap_optional(hints[f.name])[0] is bool and default is not False
        decls = [f"{flag}/--no-{flag[2:]}"] if on_by_default else [flag]
        text = field_help(docs[f.name])
        if is_list:
            text += " Repeatable" + (", or comma-separated." if f.name in group.split else ".")
        item = typing.get_args(_unwrap_optional(annotation)[0])[0] if is_list else None
        option = typer.Option(
            default,
            *decls,
            help=escape(text),
            rich_help_panel=group.title(),
            show_default=not (default is None or default is False or default is ... or default == []),
            metavar=f"<{item.__name__}>" if item else None,
        )
        params.append(
            inspect.Parameter(
                _param_name(group, f), inspect.Parameter.KEYWORD_ONLY, default=option, annotation=annotation
            )
        )
    return params


def _check_value(tp: Any, value: Any, where: str) -> Any:
    """``value`` (from YAML) checked against field type ``tp``; returns it (ints/strings made floats)."""
    inner, optional = _unwrap_optional(tp)
    if value is None:
        if optional:
            return None
        raise ValueError(f"{where} may not be null")
    origin = typing.get_origin(inner)
    if origin is Literal:
        if value not in typing.get_args(inner):
            raise ValueError(f"{where} must be one of {list(typing.get_args(inner))}, got {value!r}")
        return value
    if origin is list:
        if not isinstance(value, list):
            raise ValueError(f"{where} must be a list (YAML `- item` lines or [a, b]), got {value!r}")
        (item,) = typing.get_args(inner) or (Any,)
        return [_check_value(item, v, f"{where}[{i}]") for i, v in enumerate(value)]
    if inner is bool and not isinstance(value, bool):
        raise ValueError(f"{where} must be true or false, got {value!r}")
    if inner is int and (isinstance(value, bool) or not isinstance(value, int)):
        raise ValueError(f"{where} must be an integer, got {value!r}")
    if inner is float:
        if isinstance(value, str):  # YAML 1.1 reads 3e-3 (no dot) as a string
            try:
                return float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise ValueError(f"{where} must be a number, got {value!r}")
        return float(value)
    if inner is str and not isinstance(value, str):
        raise ValueError(f"{where} must be a string, got {value!r} (quote it in YAML)")
    if inner is Path:
        if not isinstance(value, str | Path):
            raise ValueError(f"{where} must be a path, got {value!r}")
        return Path(value)
    return value


def load_config_file(path: str | Path, groups: Sequence[OptionGroup]) -> dict[str, dict[str, Any]]:
    """Read ``path`` (YAML: one mapping per group ``section``) and check every key and value type.

    Returns ``{section: {field: value}}``; raises ``ValueError`` naming the file and the key, with
    the valid keys listed, for an unknown section or field or a value of the wrong type.
    """
    import yaml

    path = Path(path)
    if not path.is_file():
        raise ValueError(f"config file {path} does not exist; give a YAML file (see --dry-run for its shape)")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ValueError(f"config file {path} is not valid YAML: {e}") from e
    sections = {g.section: g for g in groups}
    if not isinstance(data, dict):
        raise ValueError(f"config file {path} must be a mapping with the sections {sorted(sections)}, got {data!r}")
    unknown = sorted(set(data) - set(sections))
    if unknown:
        raise ValueError(f"config file {path}: unknown section(s) {unknown}; valid sections: {sorted(sections)}")
    out: dict[str, dict[str, Any]] = {}
    for name, values in data.items():
        group = sections[name]
        values = values or {}
        if not isinstance(values, dict):
            raise ValueError(f"config file {path}: section `{name}` must be a mapping of field: value, got {values!r}")
        fields = {f.name: f for f in dataclasses.fields(group.cls) if f.init}
        bad = sorted(set(values) - set(fields))
        if bad:
            raise ValueError(
                f"config file {path}: unknown key(s) {bad} in section `{name}` ({group.cls.__name__}); "
                f"valid keys: {sorted(fields)}"
            )
        hints = typing.get_type_hints(group.cls)
        out[name] = {k: _check_value(hints[k], v, f"config file {path}: `{name}.{k}`") for k, v in values.items()}
    return out


def load_configs(path: str | Path, groups: Sequence[OptionGroup]) -> dict[str, Any]:
    """The configs a YAML file describes, built and validated: ``{section: instance}`` for every group.

    Sections or keys the file leaves out keep the dataclass defaults; what :func:`load_config_file`
    rejects and what the dataclasses' own validation rejects raise ``ValueError`` naming the file.
    """
    values = load_config_file(path, groups)
    built = {}
    for g in groups:
        try:
            built[g.section] = g.build(values.get(g.section, {}))
        except (ValueError, TypeError) as e:
            raise ValueError(f"config file {path}, section `{g.section}`: {e}") from e
    return built


def _explicit(ctx: typer.Context | None, name: str) -> bool:
    """Was option ``name`` typed on the command line (not left at its default)?"""
    if ctx is None:  # called as a plain function: every value counts
        return True
    source = ctx.get_parameter_source(name)
    return source is not None and source.name not in ("DEFAULT", "DEFAULT_MAP")


def _split(values: list[Any]) -> list[str]:
    return [part.strip() for v in values for part in str(v).split(",") if part.strip()]


def _yaml_ready(value: Any) -> Any:
    if isinstance(value, Path):
        return str(value)
    if isinstance(value, dict):
        return {k: _yaml_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_yaml_ready(v) for v in value]
    return value


def _own_hints(fn: Callable, skip: Collection[str]) -> dict[str, Any]:
    """``fn``'s resolved annotations, except those of ``skip`` (config types may be imported lazily)."""
    namespace = getattr(inspect.unwrap(fn), "__globals__", {})
    hints = {}
    for name, annotation in getattr(fn, "__annotations__", {}).items():
        if name in skip or name == "return":
            continue
        hints[name] = eval(annotation, namespace) if isinstance(annotation, str) else annotation
    return hints


def config_options(*groups: OptionGroup, config_file: bool = True) -> Callable[[Callable], Callable]:
    """Decorate a typer command so each group's dataclass fields become its options.

    The command function declares one keyword parameter per group (``group.param``) and receives
    the built config there; its other parameters stay its own typer arguments and options. With
    ``config_file`` the command also takes ``--config FILE.yaml`` and ``--dry-run``. Configs are
    built (and validated) before the command body runs; a bad value exits with a usage error that
    names the flag.
    """
    sections = [g.section for g in groups]
    if len(set(sections)) != len(sections):
        raise ValueError(f"config_options: each group needs its own `section`, got {sections}")

    def decorate(fn: Callable) -> Callable:
        sig = inspect.signature(fn)
        hints = _own_hints(fn, skip={g.param for g in groups})
        missing = [g.param for g in groups if g.param not in sig.parameters]
        if missing:
            raise TypeError(f"{fn.__name__} must take the keyword parameter(s) {missing} for the built configs")
        own = [
            p.replace(annotation=hints.get(p.name, p.annotation))
            for p in sig.parameters.values()
            if p.name not in {g.param for g in groups}
        ]
        added = [p for g in groups for p in _options(g)]
        added.append(
            inspect.Parameter("cli__context", inspect.Parameter.KEYWORD_ONLY, default=None, annotation=typer.Context)
        )
        if config_file:
            added += [
                inspect.Parameter(
                    "cli__config_file",
                    inspect.Parameter.KEYWORD_ONLY,
                    default=typer.Option(
                        None,
                        "--config",
                        help=f"YAML file with the sections {', '.join(sections)} (keys: the field names); "
                        "flags given on the command line win. `--dry-run` prints one.",
                        rich_help_panel="Config file",
                    ),
                    annotation=Path | None,
                ),
                inspect.Parameter(
                    "cli__dry_run",
                    inspect.Parameter.KEYWORD_ONLY,
                    default=typer.Option(
                        False,
                        "--dry-run",
                        help="Print the resolved configs as YAML (loadable with --config) and exit.",
                        rich_help_panel="Config file",
                    ),
                    annotation=bool,
                ),
            ]
        flags = [d for p in added if p.default is not None for d in p.default.param_decls]
        taken = {p.name for p in own} & {p.name for p in added}
        dupes = sorted({f for f in flags if flags.count(f) > 1})
        if taken or dupes:
            raise ValueError(f"{fn.__name__}: option names collide: {sorted(taken) or dupes}")
        positional = [p for p in own if p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
        keyword = [p.replace(kind=p.KEYWORD_ONLY) for p in own if p not in positional]

        @functools.wraps(fn)
        def command(*args: Any, **kwargs: Any) -> Any:
            ctx = kwargs.pop("cli__context", None)
            path = kwargs.pop("cli__config_file", None)
            dry_run = kwargs.pop("cli__dry_run", False)
            try:
                from_file = load_config_file(path, groups) if path else {}
            except ValueError as e:
                raise typer.BadParameter(str(e), ctx=ctx, param_hint="'--config'") from e
            built = {}
            for g in groups:
                values = dict(from_file.get(g.section, {}))
                for f in g.shown():
                    value = kwargs.pop(_param_name(g, f))
                    if _explicit(ctx, _param_name(g, f)):
                        values[f.name] = _split(value) if f.name in g.split and value else value
                try:
                    built[g.param] = g.build(values)
                except (ValueError, TypeError) as e:
                    named = [f.name for f in g.shown() if re.search(rf"\b{f.name}\b", str(e))]
                    hint = " / ".join(f"'{g.flag(n)}'" for n in named) or ("'--config'" if path else None)
                    raise typer.BadParameter(str(e), ctx=ctx, param_hint=hint) from e
            if dry_run:
                import yaml

                typer.echo(
                    yaml.safe_dump(
                        {g.section: _yaml_ready(dataclasses.asdict(built[g.param])) for g in groups}, sort_keys=False
                    ).rstrip()
                )
                return None
            return fn(*args, **kwargs, **built)

        command.__signature__ = sig.replace(parameters=[*positional, *keyword, *added])
        command.__annotations__ = {p.name: p.annotation for p in command.__signature__.parameters.values()}
        command.config_groups = groups
        return command

    return decorate


def ray_train_options(param: str = "opts", section: str = "ray") -> OptionGroup:
    """The :class:`~raylens.train.options.RayTrainOptions` group every ``raylens train KIND`` shares.

    >>> ray_train_options().flag("num_workers"), ray_train_options().flag("max_failures")
    ('--workers', '--max-failures')
    """
    from raylens.train.options import PLACEMENTS, RayTrainOptions  # the class raylens.train.ray_clip re-exports

    return OptionGroup(
        RayTrainOptions,
        param=param,
        section=section,
        flags=RAY_TRAIN_FLAGS,
        hidden=RAY_TRAIN_HIDDEN,
        choices={"placement": PLACEMENTS},
        panel="Where it runs (Ray Train)",
    )
