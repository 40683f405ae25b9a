"""Medical imaging: DICOM CT/MR series to volumes, de-identification, fusion models."""
__all__: list[str] = []
