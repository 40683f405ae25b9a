"""Medical imaging: DICOM CT/MR series to volumes, de-identification, CT+MR fusion models.

The plain pieces (no Ray) are importable from here; the Ray glue lives in
``raylens_domains.medical.ray_reader`` (Ray Data) and ``raylens_domains.medical.ray_train`` (Ray Train),
imported explicitly so that this package never imports ray.

Flow: :func:`generate_phantoms` (or your folders) -> :func:`ingest_series` / ``ray_reader.read_dicom``
(headers first, grouped by SeriesInstanceUID, sorted along the slice normal, modality LUT, affine,
PS3.15 de-identification) -> :func:`pair_rows` (CT + MR of a study, MR resampled onto the CT grid)
-> :func:`fusion_inputs` (MONAI, once per volume: RAS, spacing, CT window / MR z-score, fixed shape) ->
:func:`train_fusion` (early / mid / late fusion) -> :class:`FusionPredictor` and
:func:`build_case_index` (similar-case retrieval over the model's case embeddings).
"""

from .deid import BASIC_PROFILE as BASIC_PROFILE
from .deid import DEID_KEY_ENV as DEID_KEY_ENV
from .deid import BurnedInAnnotationError as BurnedInAnnotationError
from .deid import DeidConfig as DeidConfig
from .deid import Deidentifier as Deidentifier
from .deid import Pseudonymizer as Pseudonymizer
from .dicom_scan import SliceHeader as SliceHeader
from .dicom_scan import group_series as group_series
from .dicom_scan import list_dicom_files as list_dicom_files
from .dicom_scan import read_header as read_header
from .errors import DicomError as DicomError
from .errors import MissingDecoderError as MissingDecoderError
from .errors import MissingSlicesError as MissingSlicesError
from .errors import MixedSeriesError as MixedSeriesError
from .errors import NotDicomError as NotDicomError
from .errors import SeriesGeometryError as SeriesGeometryError
from .fusion import EarlyFusionNet as EarlyFusionNet
from .fusion import EncoderConfig as EncoderConfig
from .fusion import LateFusionNet as LateFusionNet
from .fusion import MidFusionNet as MidFusionNet
from .fusion import SingleModalityNet as SingleModalityNet
from .geometry import GeometryTolerance as GeometryTolerance
from .geometry import VolumeGeometry as VolumeGeometry
from .geometry import affine as affine
from .geometry import resample_to_grid as resample_to_grid
from .geometry import sort_slices as sort_slices
from .ingest import DicomIngestConfig as DicomIngestConfig
from .ingest import ingest_series as ingest_series
from .metrics import BinaryMetrics as BinaryMetrics
from .metrics import binary_metrics as binary_metrics
from .metrics import save_roc_png as save_roc_png
from .pairing import pair_rows as pair_rows
from .phantom import PhantomConfig as PhantomConfig
from .phantom import generate_phantoms as generate_phantoms
from .predict import FusionPrediction as FusionPrediction
from .predict import FusionPredictor as FusionPredictor
from .retrieval import build_case_index as build_case_index
from .retrieval import embed_arrays as embed_arrays
from .retrieval import similar_cases as similar_cases
from .train import FusionTrainConfig as FusionTrainConfig
from .train import FusionTrainResult as FusionTrainResult
from .train import evaluate as evaluate
from .train import load_checkpoint as load_checkpoint
from .train import save_checkpoint as save_checkpoint
from .train import train_fusion as train_fusion
from .transforms import VolumeTransformConfig as VolumeTransformConfig
from .transforms import fusion_inputs as fusion_inputs
from .transforms import normalize_volume as normalize_volume
from .volume import SeriesVolume as SeriesVolume
from .volume import load_series as load_series

__all__ = [
    "BASIC_PROFILE",
    "DEID_KEY_ENV",
    "DeidConfig",
    "Deidentifier",
    "Pseudonymizer",
    "SliceHeader",
    "group_series",
    "list_dicom_files",
    "read_header",
    "DicomError",
    "MissingDecoderError",
    "MissingSlicesError",
    "BurnedInAnnotationError",
    "MixedSeriesError",
    "NotDicomError",
    "SeriesGeometryError",
    "EarlyFusionNet",
    "EncoderConfig",
    "LateFusionNet",
    "MidFusionNet",
    "SingleModalityNet",
    "GeometryTolerance",
    "VolumeGeometry",
    "affine",
    "resample_to_grid",
    "sort_slices",
    "DicomIngestConfig",
    "ingest_series",
    "BinaryMetrics",
    "binary_metrics",
    "save_roc_png",
    "pair_rows",
    "PhantomConfig",
    "generate_phantoms",
    "FusionPrediction",
    "FusionPredictor",
    "build_case_index",
    "embed_arrays",
    "similar_cases",
    "FusionTrainConfig",
    "FusionTrainResult",
    "evaluate",
    "load_checkpoint",
    "save_checkpoint",
    "train_fusion",
    "VolumeTransformConfig",
    "fusion_inputs",
    "normalize_volume",
    "SeriesVolume",
    "load_series",
]
