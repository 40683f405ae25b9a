"""Classifiers after training: explain them, attack them, make them small and fast, measure it all.

* :mod:`~raylens.classify.gradcam`: Grad-CAM heatmaps and overlay grids (captum's ``LayerGradCam``);
* :mod:`~raylens.classify.robust`: FGSM/PGD accuracy under attack at given ``eps`` (captum.robust),
  and :func:`pgd_batch_transform` for adversarial training in the training recipe;
* compression, each step a checkpoint the classifier service serves: :mod:`~raylens.classify.onnx_export`
  (dynamo exporter + ONNX Runtime), :mod:`~raylens.classify.quantize` (ONNX Runtime INT8),
  :mod:`~raylens.classify.prune` (structured L1 channel pruning), :mod:`~raylens.classify.distill`
  (knowledge distillation), measured in one table by :mod:`~raylens.classify.compress`.

Every tool takes ``[0, 1]`` pixel tensors ``(N, 3, S, S)`` and the model's mean/std
(:mod:`~raylens.classify.common`); :func:`~raylens.classify.data.load_labelled` reads digits or a class folder.
"""

from raylens.classify.common import PixelModel, accuracy, count_parameters, logits_of
from raylens.classify.compress import CompressConfig, CompressionReport, compress_classifier
from raylens.classify.data import Labelled, load_labelled
from raylens.classify.distill import DistillConfig, distill, distillation_loss
from raylens.classify.finetune import FineTuneConfig, FineTuneResult, fine_tune
from raylens.classify.gradcam import GradCamResult, grad_cam, overlay, save_cam_grid
from raylens.classify.onnx_export import OnnxModel, export_onnx, save_onnx_classifier
from raylens.classify.prune import PruneResult, prune_channels
from raylens.classify.quantize import quantize_onnx_int8
from raylens.classify.report import CompressionRow, compare, markdown_table
from raylens.classify.robust import AttackResult, PgdBatchTransform, fgsm, pgd, pgd_batch_transform, robust_accuracy

__all__ = [
    "AttackResult",
    "CompressConfig",
    "CompressionReport",
    "CompressionRow",
    "DistillConfig",
    "FineTuneConfig",
    "FineTuneResult",
    "GradCamResult",
    "Labelled",
    "OnnxModel",
    "PgdBatchTransform",
    "PixelModel",
    "PruneResult",
    "accuracy",
    "compare",
    "compress_classifier",
    "count_parameters",
    "distill",
    "distillation_loss",
    "export_onnx",
    "fgsm",
    "fine_tune",
    "grad_cam",
    "load_labelled",
    "logits_of",
    "markdown_table",
    "overlay",
    "pgd",
    "pgd_batch_transform",
    "prune_channels",
    "quantize_onnx_int8",
    "robust_accuracy",
    "save_cam_grid",
    "save_onnx_classifier",
]
