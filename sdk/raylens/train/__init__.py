"""Training: plain loops (unit-testable without Ray) and their Ray Train wrappers (``ray_clip``)."""

from raylens.train.clip_loop import TrainResult, train_clip
from raylens.train.config import ClipTrainConfig
from raylens.train.context import LocalContext, TrainContext

__all__ = ["ClipTrainConfig", "LocalContext", "TrainContext", "TrainResult", "train_clip"]
