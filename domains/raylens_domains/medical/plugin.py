"""The medical pack's plug-in (entry point ``raylens.plugins: medical``): registers its models and commands."""

from raylens_domains.medical import fusion  # noqa: F401 - registers the fusion nets on import

__all__: list[str] = []
