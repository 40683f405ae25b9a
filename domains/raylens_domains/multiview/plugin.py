"""The multiview pack's plug-in (entry point ``raylens.plugins: multiview``)."""

from raylens_domains.multiview import (
    cli,  # noqa: F401 - registers `raylens train nerf`, `raylens render` and `raylens demo 3d`
    models,  # noqa: F401 - registers the nerf models (kind "nerf")
    sources,  # noqa: F401 - registers the multiview data source on import
)

__all__: list[str] = []
