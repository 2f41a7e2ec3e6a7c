r"""python -m classsr_jax.main --config configs/carn.py --workdir runs/classsr_carn \
    --config.data.manual_dir=/data/DIV2K_HR

ClassSR-CARN ×4 (CARN-M as in the original) with the paper's recipe.

Differs from configs/fsrcnn.py where the ymls differ: widths 36/52/64 and branch learning rate 2e-4
(train_CARN.yml); joint training is train_ClassSR_CARN.yml (its restart weight 0.05 is never reached).
"""

from configs import fsrcnn


def get_config():
    config = fsrcnn.get_config()
    config.model.network = "carn"
    config.model.widths = (36, 52, 64)  # CARN-O = 64
    config.original.learning_rate = 2e-4
    config.branches.learning_rate = 2e-4
    return config
