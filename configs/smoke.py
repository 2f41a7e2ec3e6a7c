r"""python -m classsr_jax.main --config configs/smoke.py --workdir /tmp/smoke \
    --config.data.manual_dir=PHOTOS --config.data.data_dir=TFDS_DIR

A tiny ClassSR-FSRCNN (widths 4/6/8) that runs every stage in a minute or two on a CPU: tests and notebooks.

Variants, chosen as `--config=configs/smoke.py:VARIANT`:
- `folder` (the default): ×2 on a folder of photos, `data.manual_dir` (those under validation/ are the
  validation split); the tests make one with `tiny_photos(dir)`.
- `bundled`: ×4 on the photos bundled with scikit-image, the quickstart's recipe shrunk (the notebooks' smoke
  mode); set `data.data_dir` to a fresh TFDS folder.
Each stage trains 4 steps of batch 8 (which splits over 1, 2, 4 or 8 devices).
"""

from configs import fsrcnn, quickstart

VARIANTS = ("folder", "bundled")


def get_config(variant="folder"):
    if variant not in VARIANTS:
        raise ValueError(f"unknown smoke variant {variant!r}: use one of {', '.join(VARIANTS)}")
    if variant == "bundled":
        config = quickstart.get_config()
        # The plain photos: preparing the quickstart's 0.9…0.6 scale copies would take most of a smoke run.
        config.data.dataset = "classsr_bundled/x4"
        config.data.train_split = "train"
        checkpoint_every = 4
    else:
        config = fsrcnn.get_config()
        config.model.scale = 2
        config.data.dataset = "classsr_folder/x2"
        config.data.validation_dataset = "classsr_folder/x2"
        config.data.validation_split = "validation"
        config.evaluate.protocol = "full"
        checkpoint_every = 2
    config.model.widths = (4, 6, 8)
    config.model.extra = {"s": 4, "m": 1}
    config.data.prefetch = 1
    for name in ("original", "branches", "joint", "finetune"):
        settings = fsrcnn.stage(8, 4, 1e-3, 1e-7, 100, log_every=2, eval_every=4, checkpoint_every=checkpoint_every)
        for key, value in settings.items():
            config[name][key] = value
    config.branches.init_from_original = variant == "folder"
    config.joint.calibration_tiles = config.finetune.calibration_tiles = 256
    config.division.batch_size = 16
    config.validation.num_tiles = 16
    config.validation.batch_size = 8
    return config
