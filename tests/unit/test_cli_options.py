"""Command-line options from config dataclasses: one source for names, defaults, types and help."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import pytest
import typer
import yaml
from rich.markup import escape
from typer.testing import CliRunner

from raylens.cli_options import OptionGroup, config_options, field_docs, field_help, load_config_file, load_configs

runner = CliRunner()


@dataclass
class Toy:
    """A toy training config."""

    max_steps: int = 100
    """Optimizer steps in total."""
    lr: float = 1e-3
    """Peak learning rate (see ``lr_schedule``)."""
    loss: Literal["clip", "siglip"] = "clip"
    """Which contrastive loss."""
    precision: str = "fp32"
    """Numeric precision."""
    use_gpu: bool = False
    """One GPU per worker."""
    local_loss: bool = True
    """Score local rows against gathered features."""
    clip_norm: float | None = None
    """Clip the gradient norm (None: no clipping)."""
    classes: list[str] | None = None
    """Class names."""
    templates: list[str] = field(default_factory=lambda: ["a {}"])
    """Prompt templates,
    one ``{}`` each."""
    out: Path = Path("runs")
    """Where things go."""
    internal: dict = field(default_factory=dict)
    """Not for the command line."""

    def __post_init__(self):
        if self.max_steps < 1:
            raise ValueError(f"`max_steps` must be >= 1, got {self.max_steps}")
        if self.precision not in ("fp32", "amp"):
            raise ValueError(f"`precision` must be fp32 or amp, got {self.precision!r}")


@dataclass
class Where:
    num_workers: int = 2
    """Training workers."""
    name: str | None = None
    """Run name."""


TOY = OptionGroup(
    Toy,
    param="cfg",
    section="train",
    flags={"max_steps": "--steps"},
    hidden=("internal",),
    split=("classes",),
    choices={"precision": ("fp32", "amp")},
)
WHERE = OptionGroup(Where, param="opts", section="ray", flags={"num_workers": "--workers"})


def _app(*groups: OptionGroup, seen: list | None = None) -> typer.Typer:
    app = typer.Typer()
    seen = [] if seen is None else seen

    @app.command()
    @config_options(*groups)
    def train(data: str = typer.Argument(...), *, cfg, opts):
        seen.append((data, cfg, opts))

    app.seen = seen
    return app


def test_field_docs_reads_the_string_under_each_field():
    docs = field_docs(Toy)
    assert docs["max_steps"] == "Optimizer steps in total."
    assert docs["templates"] == "Prompt templates,\none ``{}`` each."
    assert field_help(docs["templates"]) == "Prompt templates, one {} each."
    assert set(docs) == {f.name for f in dataclasses.fields(Toy)}
    assert "num_workers" in field_docs(Where)


def test_no_flags_gives_the_dataclass_defaults_and_flags_set_fields():
    app = _app(TOY, WHERE)
    res = runner.invoke(app, ["d"])
    assert res.exit_code == 0, res.output
    _, cfg, opts = app.seen[-1]
    assert cfg == Toy() and opts == Where()
    args = ["d", "--steps", "7", "--lr", "0.5", "--loss", "siglip", "--precision", "amp", "--use-gpu"]
    args += ["--no-local-loss", "--clip-norm", "1.5", "--classes", "a,b", "--classes", "c", "--templates", "x {}"]
    args += ["--out", "elsewhere", "--workers", "3", "--name", "r1"]
    res = runner.invoke(app, args)
    assert res.exit_code == 0, res.output
    _, cfg, opts = app.seen[-1]
    assert cfg == Toy(
        max_steps=7,
        lr=0.5,
        loss="siglip",
        precision="amp",
        use_gpu=True,
        local_loss=False,
        clip_norm=1.5,
        classes=["a", "b", "c"],
        templates=["x {}"],
        out=Path("elsewhere"),
    )
    assert opts == Where(num_workers=3, name="r1")


def test_help_comes_from_the_field_docs_with_defaults_and_choices():
    out = runner.invoke(_app(TOY, WHERE), ["--help"], env={"COLUMNS": "200"}).output
    assert "Optimizer steps in total." in out and "--steps" in out and "--max-steps" not in out
    assert "Peak learning rate (see lr_schedule)." in out and "0.001" in out
    assert "clip|siglip" in out and "fp32|amp" in out
    assert "--use-gpu" in out and "--no-use-gpu" not in out  # off by default: a plain switch
    assert "--no-local-loss" in out  # on by default: it can be turned off
    assert "Repeatable, or comma-separated." in out and "--internal" not in out
    assert "--config" in out and "--dry-run" in out


def test_bad_values_name_the_flag():
    app = _app(TOY, WHERE)
    res = runner.invoke(app, ["d", "--steps", "0"])
    assert res.exit_code == 2 and "'--steps'" in res.output and "max_steps" in res.output
    res = runner.invoke(app, ["d", "--loss", "hinge"])
    assert res.exit_code == 2 and "'--loss'" in res.output and "siglip" in res.output
    assert not app.seen  # nothing ran


def _write(tmp_path: Path, data) -> Path:
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump(data) if not isinstance(data, str) else data)
    return path


def test_config_file_sets_fields_and_flags_given_win(tmp_path):
    path = _write(tmp_path, "train:\n  lr: 3e-3\n  max_steps: 50\n  internal: {a: 1}\nray:\n  num_workers: 4\n")
    app = _app(TOY, WHERE)
    res = runner.invoke(app, ["d", "--config", str(path), "--steps", "9"])
    assert res.exit_code == 0, res.output
    _, cfg, opts = app.seen[-1]
    assert cfg == Toy(max_steps=9, lr=0.003, internal={"a": 1}) and opts == Where(num_workers=4)


def test_dry_run_prints_a_file_that_loads_back(tmp_path):
    app = _app(TOY, WHERE)
    res = runner.invoke(app, ["d", "--steps", "5", "--classes", "a,b", "--dry-run"])
    assert res.exit_code == 0 and not app.seen, res.output
    path = _write(tmp_path, res.output)
    assert load_configs(path, [TOY, WHERE]) == {"train": Toy(max_steps=5, classes=["a", "b"]), "ray": Where()}


@pytest.mark.parametrize(
    "text,match",
    [
        (
            "train:\n  max_stepz: 3\n",
            r"unknown key\(s\) \['max_stepz'\] in section `train`.*valid keys: \[.*'max_steps'",
        ),
        ("trian:\n  max_steps: 3\n", r"unknown section\(s\) \['trian'\]; valid sections: \['ray', 'train'\]"),
        ("train:\n  max_steps: ten\n", r"`train.max_steps` must be an integer, got 'ten'"),
        ("train:\n  use_gpu: 1\n", r"`train.use_gpu` must be true or false"),
        ("train:\n  loss: hinge\n", r"`train.loss` must be one of \['clip', 'siglip'\]"),
        ("train:\n  classes: a\n", r"`train.classes` must be a list"),
        ("- 1\n- 2\n", r"must be a mapping with the sections"),
        ("train: [1\n", r"not valid YAML"),
    ],
)
def test_config_file_errors_name_the_key_and_the_valid_ones(tmp_path, text, match):
    path = _write(tmp_path, text)
    with pytest.raises(ValueError, match=match):
        load_config_file(path, [TOY, WHERE])
    res = runner.invoke(_app(TOY, WHERE), ["d", "--config", str(path)])
    assert res.exit_code == 2 and "'--config'" in res.output


def test_config_file_value_errors_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match=r"run.yaml, section `train`: `max_steps` must be >= 1"):
        load_configs(_write(tmp_path, "train:\n  max_steps: 0\n"), [TOY, WHERE])
    with pytest.raises(ValueError, match="nope.yaml does not exist"):
        load_config_file(tmp_path / "nope.yaml", [TOY])


def test_groups_are_checked_when_the_command_is_declared():
    @dataclass
    class Undocumented:
        steps: int = 1

    with pytest.raises(ValueError, match=r"Undocumented.steps has no docstring"):
        _app(OptionGroup(Undocumented, param="cfg", section="train"), WHERE)
    with pytest.raises(
        TypeError, match=r"Toy.internal: type .* has no command-line form; list it in OptionGroup\(hidden"
    ):
        _app(OptionGroup(Toy, param="cfg", section="train", choices={"precision": ("fp32", "amp")}), WHERE)
    with pytest.raises(ValueError, match=r"`hidden` names \['nope'\], not fields of Toy"):
        OptionGroup(Toy, param="cfg", section="train", hidden=("nope",))
    with pytest.raises(ValueError, match="collide"):
        _app(TOY, OptionGroup(Where, param="opts", section="ray", flags={"num_workers": "--steps"}))
    with pytest.raises(TypeError, match=r"must take the keyword parameter\(s\) \['opts'\]"):
        config_options(TOY, OptionGroup(Where, param="opts", section="ray"))(lambda data, *, cfg: None)


# ---- the real `raylens train` commands -------------------------------------------------------------


def _train_commands():
    from raylens.cli import app

    group = typer.main.get_command(app).commands["train"]
    return {name: cmd for name, cmd in group.commands.items() if getattr(cmd.callback, "config_groups", None)}


def test_train_clip_uses_the_config_dataclasses():
    commands = _train_commands()
    assert "clip" in commands
    sections = {g.section: g.cls.__name__ for g in commands["clip"].callback.config_groups}
    assert sections == {"train": "ClipTrainConfig", "ray": "RayTrainOptions"}


def test_every_train_command_takes_defaults_and_help_from_its_dataclasses():
    for name, command in _train_commands().items():
        params = {p.name: p for p in command.params}
        for group in command.callback.config_groups:
            docs = field_docs(group.cls)
            for f in group.shown():
                p = params[f"{group.param}__{f.name}"]
                default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
                assert p.default == default or (p.default in (None, ()) and default in (None, [])), (name, f.name)
                assert group.flag(f.name) in p.opts, (name, f.name)
                assert p.help.startswith(escape(field_help(docs[f.name]))), (name, f.name)


def test_train_clip_short_flags_and_its_dry_run_defaults():
    from raylens.cli import app
    from raylens.train.config import ClipTrainConfig
    from raylens.train.options import RayTrainOptions

    res = runner.invoke(app, ["train", "clip", "digits", "--dry-run"])
    assert res.exit_code == 0, res.output
    assert yaml.safe_load(res.output) == {
        "train": ClipTrainConfig().to_dict(),
        "ray": dataclasses.asdict(RayTrainOptions()),
    }
    flags = "--steps 50 --workers 3 --gpu --storage /tmp/s --name r1 --keep 1 --classes a,b --warmup-steps 5"
    res = runner.invoke(app, ["train", "clip", "digits", *flags.split(), "--dry-run"])
    got = yaml.safe_load(res.output)
    assert got["train"]["max_steps"] == 50 and got["train"]["zeroshot_classes"] == ["a", "b"]
    assert {k: got["ray"][k] for k in ("num_workers", "use_gpu", "storage_path", "name", "num_to_keep")} == {
        "num_workers": 3,
        "use_gpu": True,
        "storage_path": "/tmp/s",
        "name": "r1",
        "num_to_keep": 1,
    }
    # a short run warms up for all but its last step, unless --warmup-steps says otherwise
    short = yaml.safe_load(runner.invoke(app, ["train", "clip", "digits", "--steps", "10", "--dry-run"]).output)
    assert [short["train"][k] for k in ("max_steps", "warmup_steps", "log_every")] == [10, 9, 1]
    mid = yaml.safe_load(runner.invoke(app, ["train", "clip", "digits", "--steps", "50", "--dry-run"]).output)
    assert [mid["train"][k] for k in ("max_steps", "warmup_steps", "log_every")] == [50, 30, 5]
    given = "--steps 10 --warmup-steps 2 --log-every 3 --dry-run".split()
    given = yaml.safe_load(runner.invoke(app, ["train", "clip", "digits", *given]).output)
    assert [given["train"][k] for k in ("max_steps", "warmup_steps", "log_every")] == [10, 2, 3]
    res = runner.invoke(app, ["train", "clip", "digits", "--steps", "10", "--warmup-steps", "10"])
    assert res.exit_code == 2 and "'--steps' / '--warmup-steps'" in res.output and "max_steps=10" in res.output


def test_prepare_derives_values_from_what_the_user_gave(tmp_path):
    def half_lr_for_short_runs(values):
        if values.get("max_steps", 100) < 10 and "lr" not in values:
            values["lr"] = 5e-4
        return values

    group = dataclasses.replace(TOY, prepare=half_lr_for_short_runs)
    app = _app(group, WHERE)
    assert runner.invoke(app, ["d", "--steps", "5"]).exit_code == 0
    assert app.seen[-1][1].lr == 5e-4
    assert runner.invoke(app, ["d", "--steps", "5", "--lr", "0.01"]).exit_code == 0
    assert app.seen[-1][1].lr == 0.01
    assert load_configs(_write(tmp_path, "train:\n  max_steps: 3\n"), [group])["train"].lr == 5e-4


def test_a_plugin_group_mounts_as_a_command_with_its_subcommands():
    from raylens.cli import app

    out = runner.invoke(app, ["classify", "--help"], terminal_width=120)
    assert out.exit_code == 0, out.output
    assert all(cmd in out.output for cmd in ("explain", "attack", "compress"))
    assert "classify" in runner.invoke(app, ["train", "--help"], terminal_width=120).output
