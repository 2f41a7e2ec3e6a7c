r"""python -m classsr_jax.main --config configs/srresnet.py --workdir runs/classsr_srresnet \
    --config.data.manual_dir=/data/DIV2K_HR

ClassSR-SRResNet ×4 (MSRResNet, 16 blocks) with the paper's recipe.

Differs from configs/fsrcnn.py where the ymls differ: widths 36/52/64 and branch learning rate 2e-4
(train_SRResNet.yml).
"""

from configs import fsrcnn


def get_config():
    config = fsrcnn.get_config()
    config.model.network = "srresnet"
    config.model.widths = (36, 52, 64)  # SRResNet-O = 64
    config.original.learning_rate = 2e-4
    config.branches.learning_rate = 2e-4
    return config
