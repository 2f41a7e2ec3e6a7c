r"""A tiny ClassSR-FSRCNN ×2 for tests: widths 4/6/8, a few steps per stage, small batches.

  python -m classsr_jax.main --config tests/tiny_config.py --workdir /tmp/tiny \
      --config.data.manual_dir=PHOTOS --config.data.data_dir=TFDS_DIR

PHOTOS is a folder of photos (those under validation/ are the validation split), e.g. `tiny_photos(dir)`.
"""

from configs import fsrcnn


def get_config():
    config = fsrcnn.get_config()
    config.model.widths = (4, 6, 8)
    config.model.scale = 2
    config.model.extra = {"s": 4, "m": 1}
    config.data.dataset = "classsr_folder/x2"
    config.data.validation_dataset = "classsr_folder/x2"
    config.data.validation_split = "validation"
    config.data.prefetch = 1
    for name in ("original", "branches", "joint", "finetune"):
        config[name] = fsrcnn.stage(8, 4, 1e-3, 1e-7, 100, log_every=2, eval_every=4, checkpoint_every=2)
    config.branches.init_from_original = True
    for name in ("joint", "finetune"):
        config[name].l1_weight = 1000.0
        config[name].class_loss_weight = 0.5
        config[name].average_loss_weight = 3.0
    config.finetune.enabled = False
    config.division.batch_size = 16
    config.validation.num_tiles = 16
    config.validation.batch_size = 8
    config.evaluate.protocol = "full"
    return config
