r"""python -m classsr_jax.main --config configs/quickstart.py --workdir runs/quickstart

ClassSR-FSRCNN ×4 on the photos bundled with scikit-image: every stage in 7–11 minutes on a 2-core CPU.

Trains FSRCNN-O, divides its training tiles into simple / medium / hard, trains the three branches on their
classes, trains the Class-Module with the branches frozen, and ends with the paper's table (ClassSR-FSRCNN,
FSRCNN-O and bicubic) on the 2 held-out photos (chelsea, coffee) and on the 4 training photos.

The recipe is the paper's (configs/fsrcnn.py) made short: 8000 (-O) and 6000 (branch) steps of batch 8 on a
fully decayed cosine from 5e-3 to 1e-5, then 1000 joint steps of batch 32 at 1e-3. Training uses the 4 natural
photos of the bundled train split (astronaut, motorcycle_left, motorcycle_right, rocket) with the paper's
0.9/0.8/0.7/0.6 scale copies; its other 3 (a retina scan, a micrograph, a deep-field sky) are half its tiles
and teach colours that natural photos do not have. With 4 photos the Class-Module routes the training photos
(about 68% of the -O FLOPs) but sends almost every tile of the held-out photos to the hard branch, and says so
(the classifier-collapse warning).
"""

from configs import fsrcnn


def get_config():
    config = fsrcnn.get_config()
    # No download: the photos ship with scikit-image. `_aug` adds the paper's 0.9/0.8/0.7/0.6 scale copies
    # (5 examples per photo, in photo order), so these slices are astronaut, motorcycle_left/right and rocket.
    config.data.dataset = "classsr_bundled/x4_aug"
    config.data.train_split = "train[:5]+train[15:25]+train[30:]"
    config.data.validation_dataset = "classsr_bundled/x4"
    config.data.validation_split = "validation"  # chelsea, coffee: never trained on
    config.original = fsrcnn.stage(8, 8000, 5e-3, 1e-5, 8000, log_every=500, eval_every=2000, checkpoint_every=1000)
    config.branches = fsrcnn.stage(8, 6000, 5e-3, 1e-5, 6000, log_every=500, eval_every=2000, checkpoint_every=1000)
    config.branches.init_from_original = False
    config.joint.batch_size = 32
    config.joint.num_steps = 1000
    config.joint.learning_rate = 1e-3
    config.joint.eta_min = 1e-5
    config.joint.cosine_period = 1000
    config.joint.eval_every_steps = 250
    config.joint.checkpoint_every_steps = 250
    config.validation.num_tiles = 256
    # The table: the 2 held-out photos, and the 4 training photos (at scale 1) to show the routing in-domain.
    config.evaluate.datasets = "held-out=validation,seen=classsr_bundled/x4:train[:1]+train[3:5]+train[6:]"
    config.evaluate.protocol = "full"  # every pixel
    return config
