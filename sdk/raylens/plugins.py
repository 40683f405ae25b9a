"""How domain packs plug into the sdk without the sdk naming them.

A pack declares a module in the entry-point group ``raylens.plugins`` (pyproject.toml)::

    [project.entry-points."raylens.plugins"]
    medical = "raylens_domains.medical.plugin"

and that module registers, on import, whatever the pack brings: models (``raylens.models.register_model``),
data sources, and command-line pieces into the three registries below. :func:`load_plugins` imports
every such module once; the model registry and the CLI call it before their first lookup.

>>> from raylens.plugins import DEMOS, TRAIN_COMMANDS
>>> TRAIN_COMMANDS.kind, DEMOS.kind
('training kind', 'demo')
"""

from __future__ import annotations

import logging
from importlib import import_module
from importlib.metadata import entry_points

from raylens.registry import Registry

__all__ = ["PLUGIN_GROUP", "TRAIN_COMMANDS", "DEMOS", "COMMANDS", "load_plugins", "loaded_plugins"]

log = logging.getLogger("raylens.plugins")

PLUGIN_GROUP = "raylens.plugins"
TRAIN_COMMANDS = Registry("training kind")
"""typer command functions for ``raylens train KIND ...`` (``clip`` is the sdk's own)."""
DEMOS = Registry("demo")
"""typer command functions for ``raylens demo NAME`` (the shapes search demo runs with no NAME)."""
COMMANDS = Registry("command")
"""Extra top-level typer commands a pack brings (``raylens render`` from the multiview pack)."""

_loaded: dict[str, str] = {}
_failed: dict[str, str] = {}


def load_plugins() -> dict[str, str]:
    """Import every ``raylens.plugins`` entry point once; returns ``{name: module}`` of those loaded.

    A pack that fails to import is reported once (with the error and the fix) and left out; the
    rest of raylens keeps working.
    """
    for ep in entry_points(group=PLUGIN_GROUP):
        if ep.name in _loaded or ep.name in _failed:
            continue
        try:
            import_module(ep.value.split(":")[0])
        except Exception as e:  # noqa: BLE001 - one broken pack must not take the SDK down
            _failed[ep.name] = f"{type(e).__name__}: {e}"
            log.warning(
                "raylens plugin %r (%s) failed to load: %s. Reinstall the pack (pip install -e .) or remove it.",
                ep.name,
                ep.value,
                _failed[ep.name],
            )
            continue
        _loaded[ep.name] = ep.value
    return dict(_loaded)


def loaded_plugins() -> dict[str, str]:
    """The plugins loaded so far and the ones that failed (``{name: "failed: reason"}``)."""
    return {**_loaded, **{k: f"failed: {v}" for k, v in _failed.items()}}
