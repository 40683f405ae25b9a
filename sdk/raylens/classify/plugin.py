"""The classification tools' plug-in (entry point ``raylens.plugins: classify``): registers the
``pruned`` classifier (so pruned checkpoints load anywhere), the adversarial-training batch
transforms ``pgd`` and ``fgsm`` of the training recipe (``ClassifyTrainConfig.adversarial``), and the
commands ``raylens train classify`` and ``raylens classify explain|attack|compress``."""

from raylens import cli_classify  # noqa: F401 - registers `raylens train classify`
from raylens.classify import prune  # noqa: F401 - registers the "pruned" classifier
from raylens.classify.robust import fgsm_batch_transform, pgd_batch_transform
from raylens.cli_classify_tools import classify_app
from raylens.plugins import COMMANDS
from raylens.train.classify_loop import BATCH_TRANSFORMS, register_batch_transform

__all__: list[str] = []

for _name, _factory in (("pgd", pgd_batch_transform), ("fgsm", fgsm_batch_transform)):
    if _name not in BATCH_TRANSFORMS:
        register_batch_transform(_name, doc=(_factory.__doc__ or "").splitlines()[0])(_factory)

if "classify" not in COMMANDS:
    COMMANDS.register("classify", doc="Classifier tools: Grad-CAM grids, adversarial robustness, distil/prune/INT8.")(
        classify_app
    )
