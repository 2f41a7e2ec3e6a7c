"""The Python API: open a model by name or path, upscale arrays, PIL images and files.

    import classsr_jax
    model = classsr_jax.load("quickstart")            # a bundled name, a checkpoint folder or a training workdir
    big = model.upscale(image)                        # numpy or PIL in, the same kind out
    model.upscale_file("photo.jpg", "photo_x4.png")   # what `classsr-upscale` does for one file

`upscale` takes numpy arrays of uint8, uint16 or floats in [0, 1], and PIL images (modes L, LA, RGB, RGBA,
I;16), gray (H, W) or (H, W, 1), gray+alpha (H, W, 2), RGB (H, W, 3) or RGBA (H, W, 4), and returns what it was
given: the same dtype, channel layout and PIL mode, `scale` times larger. Colour goes through the network, alpha
is upscaled on its own (bicubic), as the upscale command does. Nothing here imports TensorFlow: the base install
(`pip install classsr_jax`) is enough.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any

import numpy as np
from PIL import Image

from classsr_jax import checkpointing
from classsr_jax.errors import ImageError
from classsr_jax.inference.layouts import upscale_image
from classsr_jax.inference.upscaler import Upscaler, UpscaleResult
from classsr_jax.io import outputs
from classsr_jax.io.images import IMAGE_EXTENSIONS, LoadedImage, output_bit_depth, read_image, write_image
from classsr_jax.io.images import gray_mean as gray_of  # the one channel mean that gray outputs use
from classsr_jax.io.pixels import quantise
from classsr_jax.models.flops import format_flops, model_flops

# 16-bit inputs stay 16-bit where the output format can hold them (JPEG and BMP are 8-bit only).
# PIL modes the API takes, and the channel count of each; any other mode is a ValueError naming it.
PIL_CHANNELS = {"L": 1, "LA": 2, "RGB": 3, "RGBA": 4, "I;16": 1}
_LAYOUTS = {1: "gray", 2: "gray_alpha", 3: "rgb", 4: "rgba"}


@dataclasses.dataclass(frozen=True)
class ModelInfo:
    """What a model is: its network, scale, branch widths and the FLOPs of one 32×32 LR tile (paper convention).

    Attributes:
      kind: 'classsr' (a Class-Module and branches) or 'network' (one SR network).
      network: 'fsrcnn', 'carn', 'srresnet' or 'rcan'.
      scale: the upscaling factor.
      widths: the width of each branch, simplest first (one width for a single network).
      branch_flops: FLOPs of one tile through each branch.
      classifier_flops: FLOPs of the Class-Module on one tile (0 for a single network).
      parameters: the number of parameters.
      path: the checkpoint folder.
    """

    kind: str
    network: str
    scale: int
    widths: tuple[int, ...]
    branch_flops: tuple[float, ...]
    classifier_flops: float
    parameters: int
    path: str

    def __str__(self) -> str:
        name = f"ClassSR-{self.network}" if self.kind == "classsr" else self.network
        flops = "/".join(format_flops(f) for f in self.branch_flops)
        return (f"{name} x{self.scale}, widths {'/'.join(map(str, self.widths))}, {self.parameters:,} parameters, "
                f"FLOPs per 32x32 tile {flops} (Class-Module {format_flops(self.classifier_flops)})")


def _float_to_uint16(values: np.ndarray) -> np.ndarray:
    """Floats in [0, 1] → uint16 samples; anything outside (0–255 floats, NaN) is a ValueError naming the range."""
    finite = np.isfinite(values)
    if not finite.all():
        raise ValueError("float pixels must lie in [0, 1], but the image holds NaN or infinity")
    low, high = float(values.min()), float(values.max())
    if low < 0.0 or high > 1.0:
        hint = "; divide 0–255 values by 255" if low >= 0.0 and high <= 255.0 else ""
        raise ValueError(f"float pixels must lie in [0, 1], but these range from {low:g} to {high:g}{hint}")
    return quantise(values, 16)


def _as_samples(image: Any) -> tuple[np.ndarray, str | None, np.dtype]:
    """(H, W, C) integer samples of an array or PIL image, the PIL mode (None for arrays) and the input dtype."""
    if isinstance(image, Image.Image):
        if image.mode not in PIL_CHANNELS:
            raise ValueError(f"PIL images of mode {image.mode!r} are not supported; use one of "
                             f"{', '.join(PIL_CHANNELS)} (e.g. image.convert('RGB'))")
        array = np.asarray(image)
        mode = image.mode
    else:
        array, mode = np.asarray(image), None
    dtype = array.dtype
    if array.ndim == 2:
        array = array[..., None]
    if array.ndim != 3 or array.shape[2] not in _LAYOUTS or 0 in array.shape[:2]:
        raise ValueError(f"expected an image of shape (H, W) or (H, W, C) with C in 1–4, got {np.shape(image)}")
    if dtype.kind == "f":
        array = _float_to_uint16(array)
    elif dtype not in (np.uint8, np.uint16):
        raise ValueError(f"expected uint8, uint16 or float pixels in [0, 1], got {dtype}")
    return array, mode, dtype


def _loaded(samples: np.ndarray) -> LoadedImage:
    """A LoadedImage of (H, W, C) integer samples, as `read_image` would return for a file holding them."""
    channels = samples.shape[2]
    colour = samples[..., : channels - 1] if channels in (2, 4) else samples
    alpha = samples[..., -1] if channels in (2, 4) else None
    return LoadedImage(colour_pixels=np.ascontiguousarray(colour), alpha_pixels=alpha,
                       bit_depth=16 if samples.dtype == np.uint16 else 8, mode=_LAYOUTS[channels], path="<array>")


class Model:
    """A loaded model and its compiled upscaler; make one with `classsr_jax.load`."""

    def __init__(self, loaded: checkpointing.LoadedModel, upscaler: Upscaler):
        self.loaded = loaded
        self.upscaler = upscaler
        flops = model_flops(loaded.spec)
        spec = loaded.spec
        self.info = ModelInfo(spec.kind, spec.network, spec.scale, tuple(spec.widths), flops.branches,
                              flops.classifier, checkpointing.count_params(loaded.variables), loaded.path)

    def __repr__(self) -> str:
        return f"<classsr_jax.Model {self.info}>"

    def upscale(self, image: Any, budget: float | None = None, force_class: int | None = None) -> Any:
        """The image `scale` times larger, of the kind it was given (see the module docstring).

        Args:
          image: a numpy array (uint8, uint16, or floats in [0, 1]) or a PIL image; gray, gray+alpha, RGB, RGBA.
          budget: cap the FLOPs per tile at this fraction of the -O network's (free routing when it fits).
          force_class: send every tile to this branch (0-based).

        Raises:
          ValueError: for an unsupported dtype, shape or PIL mode, or floats outside [0, 1] (naming their range).
        """
        samples, pil_mode, dtype = _as_samples(image)
        loaded = _loaded(samples)
        result, alpha = upscale_image(self.upscaler, loaded, bit_depth=loaded.bit_depth, budget=budget,
                                      force_class=force_class)
        colour = gray_of(result.sr) if samples.shape[2] in (1, 2) else result.sr
        out = colour if alpha is None else np.concatenate([colour, alpha[..., None]], axis=2)
        if dtype.kind == "f":
            out = (out.astype(np.float64) / 65535.0).astype(dtype)
        if pil_mode is not None or np.ndim(image) == 2:
            out = out[..., 0] if out.shape[2] == 1 else out
        return Image.fromarray(out) if pil_mode is not None else out  # Pillow infers the same mode back

    def upscale_file(self, src: str | os.PathLike, dst: str | os.PathLike, *, budget: float | None = None,
                     force_class: int | None = None, overwrite: bool = False,
                     max_pixels: int | None = None) -> UpscaleResult:
        """Upscales the image file `src` into `dst` as `classsr-upscale` does: the input's layout, 16-bit depth
        where the format holds it and ICC profile kept, written atomically, never over `src`.

        Raises:
          classsr_jax.errors.UserError: one line naming the file: an unreadable input, an output that is the
            input, exists (without `overwrite`), has an unknown extension or cannot be written.
        """
        src, dst = os.fspath(src), os.fspath(dst)
        if os.path.splitext(dst)[1].lower() not in IMAGE_EXTENSIONS:
            raise ImageError(f"cannot write image {dst}: unknown extension (use one of {', '.join(IMAGE_EXTENSIONS)})")
        plan = outputs.OutputPlan([src], [self.loaded.path], overwrite=overwrite)
        plan.add(dst, "output")
        plan.prepare_folders()
        image = read_image(src, max_pixels)
        result, alpha = upscale_image(self.upscaler, image, bit_depth=output_bit_depth(image, dst), budget=budget,
                                      force_class=force_class)
        write_image(dst, result.sr, like=image, alpha=alpha)
        return result


def load(name_or_path: str | os.PathLike = checkpointing.DEFAULT_MODEL, dtype: str = "float32",
         protocol: str = "full") -> Model:
    """Opens a model for upscaling.

    Args:
      name_or_path: a bundled model ('quickstart', 'quickstart-original'), a checkpoint folder (converted or
        exported) or a training workdir (its export/classsr).
      dtype: 'float32', or 'bfloat16' for accelerators.
      protocol: 'full' (every pixel, overlaps blended) or 'paper' (the original's test pipeline).

    Raises:
      classsr_jax.errors.CheckpointError: one line, for a path that holds no model.
      ValueError: for an unknown dtype or protocol.
    """
    loaded = checkpointing.open_model(os.fspath(name_or_path))
    return Model(loaded, Upscaler(loaded.spec, loaded.variables, protocol=protocol, dtype=dtype))
