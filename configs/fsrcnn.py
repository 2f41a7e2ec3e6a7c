r"""python -m classsr_jax.main --config configs/fsrcnn.py --workdir runs/classsr_fsrcnn \
    --config.data.manual_dir=/data/DIV2K_HR

ClassSR-FSRCNN ×4 with the paper's recipe on DIV2K.

`manual_dir` holds DIV2K's HR PNGs 0001.png … 0900.png (train 0001–0800 with the paper's 1/0.9/0.8/0.7/0.6
scale copies; validation = val_10, 0801–0810). The other networks' configs (carn.py, srresnet.py, rcan.py)
start from this one and change only what their ymls change.
"""

import ml_collections


def stage(batch_size, num_steps, learning_rate, eta_min, cosine_period, *, log_every, eval_every, checkpoint_every):
    """One training stage: Adam on a cosine from learning_rate to eta_min with period cosine_period."""
    return ml_collections.ConfigDict(
        dict(
            batch_size=batch_size,
            num_steps=num_steps,
            learning_rate=learning_rate,
            eta_min=eta_min,
            cosine_period=cosine_period,
            log_every_steps=log_every,
            eval_every_steps=eval_every,
            checkpoint_every_steps=checkpoint_every,
        )
    )


def get_config():
    config = ml_collections.ConfigDict()
    config.seed = 10  # manual_seed in every yml
    config.stages = "all"  # or a comma list of: original,divide,branches,joint,finetune,evaluate
    config.half_precision = False  # bfloat16 compute (for TPUs); parameters and losses stay float32
    config.collapse_threshold = 0.9  # warn when one class takes more than this share of the tiles
    # On a CPU, run JAX as this many devices, each batch split between them (0: JAX's default, one device).
    # One XLA:CPU program leaves cores idle between its small ops; with one device per core they overlap.
    config.cpu_devices = 0
    # A rerun in a used workdir must keep its config.json's values, but for the stages and step counts; list here
    # (comma-separated dotted names, e.g. "original.learning_rate") the fields you mean to change anyway.
    config.allow_changed = ""

    config.model = ml_collections.ConfigDict()
    config.model.network = "fsrcnn"
    config.model.widths = (16, 36, 56)  # branches simple / medium / hard; the hard one is FSRCNN-O
    config.model.scale = 4
    config.model.extra = ml_collections.ConfigDict()  # extra network fields, e.g. FSRCNN's s, m
    # How a network trained from scratch starts: "paper" (the original's random initialisation) or, FSRCNN only,
    # "interpolation": as cubic interpolation, its colours right from the first step (not in the paper;
    # classsr_jax/models/interpolation_init.py).
    config.model.init = "paper"

    config.data = ml_collections.ConfigDict()
    config.data.dataset = "classsr_div2k/x4_aug"  # DIV2K 0001–0800 and its 0.9/0.8/0.7/0.6 copies
    config.data.train_split = "train"  # any TFDS split expression
    config.data.data_dir = ""  # TFDS data dir; empty: ~/tensorflow_datasets
    config.data.manual_dir = ""  # the source photos, for builders that need them
    config.data.validation_dataset = "classsr_div2k/x4"
    config.data.validation_split = "validation[:10]"  # val_10 = DIV2K 0801–0810
    config.data.lr_patch = 32  # LR tiles 32x32, HR 128x128
    config.data.prefetch = 2
    # Colour augmentation of the training pairs, one linear recolouring for LR and HR alike (the fields of
    # input_pipeline.ColourAugment). Off in the paper's recipe: 800 DIV2K photos already cover the colours.
    config.data.colour_augment = ml_collections.ConfigDict()
    config.data.colour_augment.permute_channels = False  # one of the 6 channel orders per tile pair
    config.data.colour_augment.hue_degrees = 0.0  # a hue turn uniform in ±hue_degrees (180: any hue)
    config.data.colour_augment.saturation = 0.0  # saturation scaled by a factor uniform in 1 ± saturation
    config.data.colour_augment.probability = 1.0  # the share of tile pairs recoloured

    config.loss = ml_collections.ConfigDict()
    config.loss.pixel_range = 1.0  # the L1 is taken on [0, 1]

    config.optimizer = ml_collections.ConfigDict()
    config.optimizer.b1 = 0.9
    config.optimizer.b2 = 0.99
    config.optimizer.eps = 1e-8

    # (a) FSRCNN-O on all tiles, and (c) each branch on its class: train_FSRCNN.yml (batch 16, lr 1e-3, one
    # cosine to 1e-7 over 500k iterations, validation and checkpoints every 5000).
    config.original = stage(16, 500_000, 1e-3, 1e-7, 500_000, log_every=100, eval_every=5000, checkpoint_every=5000)
    config.branches = stage(16, 500_000, 1e-3, 1e-7, 500_000, log_every=100, eval_every=5000, checkpoint_every=5000)
    config.branches.init_from_original = False  # start the branch as wide as -O from -O instead of from scratch
    config.branches.reuse_original = False  # the branch as wide as -O is -O itself, not trained again
    config.branches.slim_from_original = False  # start the narrower branches from -O's most important channels
    config.branches.tiles = "class"  # each branch on its class's tiles; "any": every branch on any training tile

    # (b) The division: PSNR of the reference network on every 32x32 tile (grid step 16), split into thirds.
    config.division = ml_collections.ConfigDict()
    config.division.thresholds = "tertiles"  # or "paper" (27.16882, 35.149761 dB, from MSRResNet) or "t1,t2"
    config.division.reference = "original"  # the -O network of stage (a); "bicubic" without one
    config.division.batch_size = 64

    # (d) Joint training, train_ClassSR_FSRCNN.yml: batch 96, lr 2e-4, cosine with T = 500k stopped at 200k
    # (lr 1.3094e-4 at the end), validation every 1000, checkpoints every 2000.
    config.joint = stage(96, 200_000, 2e-4, 1e-7, 500_000, log_every=100, eval_every=1000, checkpoint_every=2000)
    config.joint.l1_weight = 1000.0
    config.joint.class_loss_weight = 0.5
    config.joint.average_loss_weight = 3.0
    config.joint.tiles = "grid"  # the division's grid tiles (the original's); "any": random tiles, like stage (a)
    # Not in the original: shift the Class-Module's bias after the stage (and at each validation) so routing
    # sends equal shares of the stage's training tiles to the branches (classsr_jax/calibration.py).
    config.joint.calibrate_routing = False
    config.joint.calibration_tiles = 4096  # training tiles the shares are measured on (all processes together)

    # (e) Optional fine-tuning of classifier and branches together (not in the paper).
    config.finetune = stage(96, 50_000, 2e-5, 1e-7, 50_000, log_every=100, eval_every=1000, checkpoint_every=2000)
    config.finetune.l1_weight = 1000.0
    config.finetune.class_loss_weight = 0.5
    config.finetune.average_loss_weight = 3.0
    config.finetune.tiles = "grid"
    config.finetune.calibrate_routing = False
    config.finetune.calibration_tiles = 4096
    config.finetune.enabled = False

    # Converted official checkpoints (python -m classsr_jax.convert): they start the stage that makes that
    # network and stand in for it when the stage is not run, e.g. --config.stages=joint,evaluate
    # --config.pretrained.branches=FSRCNN_b1,FSRCNN_b2,FSRCNN_b3.
    config.pretrained = ml_collections.ConfigDict()
    config.pretrained.original = ""
    config.pretrained.branches = ""  # three checkpoints, comma-separated
    config.pretrained.classsr = ""

    config.validation = ml_collections.ConfigDict()
    config.validation.protocol = "paper"  # the original's test pipeline (32/28 grid); "full" covers every pixel
    config.validation.num_tiles = 1024  # validation tiles for the losses and class statistics
    config.validation.batch_size = 64

    config.evaluate = ml_collections.ConfigDict()
    config.evaluate.datasets = "validation"  # comma list of "validation" or "tfds_name:split", each as "label=…" or not
    config.evaluate.protocol = "paper"
    config.evaluate.budget = 0.0  # > 0: one more ClassSR row, its logits shifted to at most this share of the -O FLOPs

    config.checkpoint = ml_collections.ConfigDict()
    config.checkpoint.keep_last = 3  # plus the best by validation PSNR
    config.checkpoint.asynchronous = True
    return config
