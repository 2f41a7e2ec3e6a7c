r"""python -m classsr_jax.main --config configs/quickstart.py --workdir runs/quickstart

ClassSR-FSRCNN ×4 on the images bundled with scikit-image, every stage on a 2-core CPU (9.6 min measured; README.md,
"The quickstart's result").

Trains FSRCNN-O, divides its training tiles into simple / medium / hard, trains the two narrow branches on every
training tile, starting from -O's most important channels (the hard branch is -O itself), trains the
Class-Module with the branches frozen on the division's tiles and calibrates its routing to equal shares of
them, and ends with the paper's table (ClassSR-FSRCNN, FSRCNN-O and bicubic, and ClassSR held to 75% of the -O
FLOPs) on photos never trained on: the 2 held-out photos (chelsea, coffee) as they are, with their channels
permuted and with their hue turned; and on the 4 training photos.

The recipe is the paper's (configs/fsrcnn.py) made short: FSRCNN-O starts as cubic interpolation (not in the
paper) and trains 4000 steps of batch 16, each narrow branch 2000, all on a fully decayed cosine from 5e-3 to
1e-5; then 2000 joint steps of batch 16 from 1e-3 with 10× the paper's Class-Loss. On a CPU each batch is
split over 2 JAX devices, one per core (`cpu_devices`).
The data: the 4 natural photos of the bundled train split (astronaut, motorcycle_left, motorcycle_right,
rocket) and scikit-image's colour wheel, each with the paper's 0.9/0.8/0.7/0.6 scale copies; half the tile
pairs recoloured. The colour augmentation and the colour wheel are what keep colours right on photos unlike
the training ones (benchmarks/JOURNAL.md, "The quickstart's recipe", measures each change).
"""
from configs import fsrcnn


def get_config():
    config = fsrcnn.get_config()
    # No download: the photos ship with scikit-image. `_aug` adds the paper's 0.9/0.8/0.7/0.6 scale copies
    # (5 examples per photo, in photo order), so these slices are astronaut, motorcycle_left/right and rocket.
    config.data.dataset = "classsr_bundled/x4_aug"
    config.data.train_split = "train[:5]+train[15:25]+train[30:]+colorwheel"
    config.data.validation_dataset = "classsr_bundled/x4"
    config.data.validation_split = "validation"  # chelsea, coffee: never trained on
    # Half the tile pairs recoloured (any channel order, any hue, saturation ×0.75–1.25): 4 photos hold too few
    # colours for the network to learn that a colour maps to itself.
    config.data.colour_augment.permute_channels = True
    config.data.colour_augment.hue_degrees = 180.0
    config.data.colour_augment.saturation = 0.25
    config.data.colour_augment.probability = 0.5
    # The CPU's 2 cores as 2 JAX devices, each batch split between them: more tiles per second than one device
    # (benchmarks/JOURNAL.md, "CPU devices"). What the networks learn depends on the tile pairs seen, not the steps, so
    # batches of 16 take half the steps of the batches of 8 this recipe was first measured with.
    config.cpu_devices = 2
    # FSRCNN-O starts as cubic interpolation (not in the paper): it has no skip connection, and from a random start
    # it spent much of its 128k tile pairs learning to copy colours. From this start 64k pairs give as much on
    # the held-out photos and more on the recoloured ones (benchmarks/JOURNAL.md, "An interpolating start").
    config.model.init = "interpolation"
    config.original.update(fsrcnn.stage(16, 4000, 5e-3, 1e-5, 4000, log_every=250, eval_every=2000,
                                        checkpoint_every=1000))
    config.branches.update(fsrcnn.stage(16, 2000, 5e-3, 1e-5, 2000, log_every=250, eval_every=1000,
                                        checkpoint_every=1000))
    # The narrow branches learn from every tile, not a third of the division's 762: trained on its class alone,
    # the medium branch fell below bicubic on recoloured photos. The hard branch is -O itself, unchanged.
    config.branches.tiles = "any"
    config.branches.reuse_original = True
    # Each narrow branch starts as -O's most important channels: from there 32k tile pairs keep ClassSR within
    # 0.02 dB of -O; from scratch they were given 128k (benchmarks/JOURNAL.md, "Narrow branches cut from -O").
    config.branches.slim_from_original = True
    # The Class-Module: 2000 steps of batch 16 on the division's grid tiles. At the paper's Class-Loss (0.5) the
    # soft mixture of three branches this close is an ensemble that beats any routing, so the probabilities stay
    # uniform and the logits differ from tile to tile by 1e-9: routing follows float rounding (bfloat16 agrees
    # on a quarter of the tiles). Ten times that weight gives one-hot outputs with logits that rank the tiles;
    # the L1 then sends them all to the hard branch, and the calibration routes equal shares of the training
    # tiles to each branch in that order.
    config.joint.update(fsrcnn.stage(16, 2000, 1e-3, 1e-5, 2000, log_every=250, eval_every=1000, checkpoint_every=1000))
    config.joint.class_loss_weight = 5.0
    config.joint.calibrate_routing = True
    config.validation.num_tiles = 256
    # The table: the 2 held-out photos, and the 4 training photos (at scale 1) to show the routing in-domain.
    # The recoloured copies of the held-out photos have colours the training photos lack.
    config.evaluate.datasets = ",".join([
        "held-out=validation",
        "held-out permuted=classsr_bundled/x4:validation_permuted",
        "held-out hue-turned=classsr_bundled/x4:validation_hue",
        "seen=classsr_bundled/x4:train[:1]+train[3:5]+train[6:]",
    ])
    config.evaluate.protocol = "full"  # every pixel
    config.evaluate.budget = 0.75  # and ClassSR held to 75% of the -O FLOPs
    return config
