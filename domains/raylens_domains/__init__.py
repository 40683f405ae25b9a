"""Domain packs built on the raylens SDK: natural images, medical volumes, multi-view captures."""

__all__: list[str] = []
