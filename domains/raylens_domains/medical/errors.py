"""Runtime errors of the medical pack.

Every class derives from :class:`raylens.errors.RaylensError`, so one ``except RaylensError`` catches
them, and every class pickles (an error raised in a Ray worker reaches the driver intact). Messages
never carry PHI: they name files by path and series by their pseudonymised UID only.
"""

from __future__ import annotations

from raylens.errors import RaylensError

__all__ = [
    "DicomError",
    "NotDicomError",
    "MissingDecoderError",
    "SeriesGeometryError",
    "MissingSlicesError",
    "MixedSeriesError",
]


class DicomError(RaylensError):
    """A DICOM file or series could not be turned into a volume."""


class NotDicomError(DicomError):
    """A file is not a DICOM file (no ``DICM`` preamble) or holds no pixel data."""


class MissingDecoderError(DicomError):
    """Pixel data use a compressed transfer syntax and no installed decoder handles it."""


class SeriesGeometryError(DicomError):
    """A series has no usable geometry (orientation, position or spacing tags)."""


class MissingSlicesError(SeriesGeometryError):
    """The slice positions of a series have a gap: slices are missing."""


class MixedSeriesError(SeriesGeometryError):
    """One SeriesInstanceUID holds slices that do not form one volume (sizes, orientations, echoes)."""
