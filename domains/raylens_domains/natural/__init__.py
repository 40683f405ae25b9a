"""Natural images: generated and bundled datasets with captions."""

from raylens_domains.natural.shapes import COLOURS, SHAPES, ShapesDataset, generate_shapes, render_shape

__all__ = ["COLOURS", "SHAPES", "ShapesDataset", "generate_shapes", "render_shape"]
