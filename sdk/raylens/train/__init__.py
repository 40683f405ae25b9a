"""Training: plain loops on a :class:`TrainContext` (unit-testable without Ray), one Ray Train wrapper
(``raylens.train.ray_fit.fit``) and one checkpoint/resume/curves module (``raylens.train.checkpointing``)."""

from raylens.train.clip_loop import train_clip
from raylens.train.config import ClipTrainConfig
from raylens.train.context import LocalContext, TrainContext
from raylens.train.options import RayTrainOptions
from raylens.train.result import TrainResult

__all__ = ["ClipTrainConfig", "LocalContext", "RayTrainOptions", "TrainContext", "TrainResult", "train_clip"]
