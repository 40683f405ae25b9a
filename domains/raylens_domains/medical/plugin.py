"""The medical pack's plug-in (entry point ``raylens.plugins: medical``): registers its models and commands."""

from raylens_domains.medical import (
    cli,  # noqa: F401 - registers `raylens train fusion` on import
    fusion,  # noqa: F401 - registers the fusion nets on import
    sources,  # noqa: F401 - registers the dicom data source on import
)

__all__: list[str] = []
