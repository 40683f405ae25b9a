"""The multiview pack's plug-in (entry point ``raylens.plugins: multiview``)."""

__all__: list[str] = []
