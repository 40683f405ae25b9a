"""The classification tools' plug-in (entry point ``raylens.plugins: classify``): registers the
``pruned`` classifier (so pruned checkpoints load anywhere) and the ``raylens classify`` commands."""

from raylens.classify import prune  # noqa: F401 - registers the "pruned" classifier

__all__: list[str] = []
