"""One door to every training dataset by name: this project's builders and the TFDS catalogue's DIV2K."""

from __future__ import annotations

import os
import re

import tensorflow as tf
import tensorflow_datasets as tfds

import classsr_jax.data.builders  # noqa: F401  (registers the classsr_* builders)
from classsr_jax.errors import DataError

CLASSSR_DATASETS = ("classsr_div2k", "classsr_div8k", "classsr_flickr2k", "classsr_folder", "classsr_bundled")
# The catalogue's DIV2K configs whose LR is the standard MATLAB bicubic degradation at a scale this project trains.
CATALOGUE_DATASETS = ("div2k/bicubic_x2", "div2k/bicubic_x3", "div2k/bicubic_x4")

_CLASSSR_NAME = re.compile(r"^(classsr_[a-z0-9]+)(?:/(x[234](?:_aug)?))?(?::[0-9.]+)?$")


def _accepted() -> str:
    return ", ".join([f"{n}/x4[_aug]" for n in CLASSSR_DATASETS] + list(CATALOGUE_DATASETS))


def crop_hr_to_lr(example: dict[str, tf.Tensor], scale: int) -> dict[str, tf.Tensor]:
    """Crops HR to exactly scale × the LR size (top-left), which is modcrop when LR = floor(HR / scale)."""
    lr = example["lr"]
    hr = example["hr"][: tf.shape(lr)[0] * scale, : tf.shape(lr)[1] * scale]
    return {"name": example["name"], "hr": hr, "lr": lr}


def load_dataset(
    name: str,
    split: str,
    data_dir: str | os.PathLike[str],
    manual_dir: str | os.PathLike[str] | None = None,
    *,
    shuffle_files: bool = False,
) -> tf.data.Dataset:
    """A dataset of `{'name': tf.string, 'hr': uint8 HxWx3, 'lr': uint8 (H/s)x(W/s)x3}` by name.

    Args:
      name: `classsr_div2k/x4`, `classsr_bundled/x2_aug`, … (this project's builders, prepared from
        `manual_dir` on first use), or the catalogue's `div2k/bicubic_x2|3|4` (downloaded by TFDS on first use
        where the machine can reach the internet; its HR is cropped to scale × LR and `name` is the TFDS id).
      split: 'train' or 'validation' (or any TFDS split expression).
      data_dir: where TFDS keeps prepared datasets.
      manual_dir: folder of source photos for the manual builders (not needed for classsr_bundled).
    """
    read_config = tfds.ReadConfig(add_tfds_id=True)
    match = _CLASSSR_NAME.match(name)
    if match and match.group(1) in CLASSSR_DATASETS:
        kwargs = {}
        if manual_dir is not None:
            kwargs = {"download_config": tfds.download.DownloadConfig(manual_dir=os.fspath(manual_dir))}
        ds = tfds.load(
            name,
            split=split,
            data_dir=os.fspath(data_dir),
            shuffle_files=shuffle_files,
            download_and_prepare_kwargs=kwargs,
        )
        return ds.map(lambda ex: {"name": ex["name"], "hr": ex["hr"], "lr": ex["lr"]})
    if name in CATALOGUE_DATASETS:
        scale = int(name[-1])
        try:
            ds = tfds.load(
                name, split=split, data_dir=os.fspath(data_dir), shuffle_files=shuffle_files, read_config=read_config
            )
        except ModuleNotFoundError as err:
            if err.name != "importlib_resources":
                raise
            # TFDS 4.9.10 imports it to look up download checksums but does not declare it as a dependency.
            raise DataError(
                f"{name}: preparing a TFDS catalogue dataset needs the importlib_resources package, which "
                "tensorflow-datasets does not install; run: pip install importlib_resources"
            ) from None
        return ds.map(lambda ex: crop_hr_to_lr({"name": ex["tfds_id"], "hr": ex["hr"], "lr": ex["lr"]}, scale))
    raise ValueError(f"unknown dataset {name!r}; accepted: {_accepted()}")
