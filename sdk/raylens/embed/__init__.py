"""Batch embedding of images and texts (the Ray Data actor pool lives in ``ray_embed``)."""

__all__: list[str] = []
