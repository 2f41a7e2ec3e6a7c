"""What every stage shares (`StageContext`): the config, the workdir, the model, the device mesh, and the datasets,
opened once.

A dataset prepared from a folder of photos (`config.data.manual_dir`) is keyed by that folder: a marker beside
the prepared TFDS data records the folder and a digest of its files' names and sizes, and a later run with
another folder, or with files changed, is refused with one line instead of training on the old photos.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from typing import Any

import jax
import numpy as np
import tensorflow_datasets as tfds
from absl import logging

from classsr_jax import parallel
from classsr_jax.data.loading import load_dataset
from classsr_jax.errors import DataError, TrainError
from classsr_jax.io import atomic
from classsr_jax.models.spec import ModelSpec
from classsr_jax.training.workdir import Workdir

SOURCES_MARKER = "classsr_sources.json"
# TFDS' words for a split that got no examples while a dataset was prepared.
EMPTY_SPLIT = re.compile(r'split "([^"]+)": No examples were yielded')


@dataclasses.dataclass
class StageContext:
    """What every stage gets: the config, the workdir, the model, the device mesh, and the datasets (opened
    once, on first use)."""

    config: Any
    workdir: Workdir
    spec: ModelSpec
    mesh: jax.sharding.Mesh
    compute_dtype: Any
    datasets: dict[str, Any] = dataclasses.field(default_factory=dict)
    _validation_pairs: list | None = None

    @property
    def lr_patch(self) -> int:
        return int(self.config.data.lr_patch)

    @property
    def data_dir(self) -> str:
        return os.path.expanduser(self.config.data.data_dir or "~/tensorflow_datasets")

    def dataset(self, name: str, split: str):
        """A TFDS dataset (prepared on first use; with several processes, process 0 prepares it first)."""
        key = f"{name}:{split}"
        if key not in self.datasets:
            manual = os.path.expanduser(self.config.data.manual_dir) if self.config.data.manual_dir else None
            if not parallel.is_primary_process():
                parallel.sync_processes(f"dataset:{key}")
            self.datasets[key] = _load_keyed(name, split, self.data_dir, manual)
            if parallel.is_primary_process():
                parallel.sync_processes(f"dataset:{key}")
        return self.datasets[key]

    def train_dataset(self):
        return self.dataset(self.config.data.dataset, self.config.data.train_split)

    def validation_pairs(self) -> list[tuple[str, np.ndarray, np.ndarray]]:
        """(name, lr uint8, hr uint8) of the validation set, read once."""
        if self._validation_pairs is None:
            ds = self.dataset(self.config.data.validation_dataset, self.config.data.validation_split)
            self._validation_pairs = dataset_pairs(ds)
            if not self._validation_pairs:
                raise DataError(
                    f"validation set {self.config.data.validation_dataset} {self.config.data.validation_split!r} is "
                    "empty"
                )
        return self._validation_pairs


def dataset_pairs(ds) -> list[tuple[str, np.ndarray, np.ndarray]]:
    pairs = []
    for ex in ds.as_numpy_iterator():
        name = ex["name"].decode() if isinstance(ex["name"], bytes) else str(ex["name"])
        pairs.append((name, np.asarray(ex["lr"]), np.asarray(ex["hr"])))
    return pairs


def _load(name: str, split: str, data_dir: str, manual: str | None):
    """`load_dataset`, its failures as one line: TFDS raises many types with long messages."""
    try:
        return load_dataset(name, split, data_dir, manual)
    except (DataError, TrainError):
        raise
    except Exception as e:  # noqa: BLE001 - the user needs one line
        first = (str(e).strip().splitlines() or [""])[0]
        empty = EMPTY_SPLIT.search(first)
        if empty:  # found while preparing every split, whichever was asked for
            raise DataError(
                f"cannot prepare dataset {name} in {data_dir}: its split {empty.group(1)!r} has no images in {manual}"
            ) from e
        raise DataError(
            f"cannot load dataset {name} split {split!r} from {data_dir}: {type(e).__name__}: {first}"
        ) from e


# ------------------------------------------------------------------------------------ keyed by its sources


def manual_sources(manual_dir: str, data_dir: str | None = None) -> dict[str, Any]:
    """The folder and a digest of every file's path (relative) and size under it: what a prepared dataset was
    made from. A TFDS `data_dir` inside it is left out (preparing writes there)."""
    entries = []
    skip = os.path.abspath(data_dir) if data_dir else None
    for folder, dirs, files in os.walk(manual_dir):
        dirs[:] = [d for d in dirs if os.path.abspath(os.path.join(folder, d)) != skip]
        for name in files:
            path = os.path.join(folder, name)
            entries.append(f"{os.path.relpath(path, manual_dir)}|{os.path.getsize(path)}")
    digest = hashlib.sha256("\n".join(sorted(entries)).encode()).hexdigest()
    return {"manual_dir": os.path.abspath(manual_dir), "files": len(entries), "digest": f"sha256:{digest}"}


def _prepared_dir(name: str, data_dir: str) -> str | None:
    """Where TFDS keeps `name` prepared from a manual dir, or None for a dataset that needs none."""
    try:
        builder = tfds.builder(name, data_dir=data_dir)
    except Exception:  # noqa: BLE001 - an unknown name: load_dataset says so in one line
        return None
    return str(builder.data_dir) if getattr(type(builder), "MANUAL_DOWNLOAD_INSTRUCTIONS", None) else None


def _read_marker(path: str) -> dict[str, Any] | None:
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def _load_keyed(name: str, split: str, data_dir: str, manual: str | None):
    """The dataset, refused if it was prepared from other photos than `manual` holds now; the marker is written
    when the dataset is prepared (or found prepared without one)."""
    prepared = _prepared_dir(name, data_dir) if manual else None
    if prepared is None:
        return _load(name, split, data_dir, manual)
    sources = manual_sources(manual, data_dir) if os.path.isdir(manual) else None
    marker = os.path.join(prepared, SOURCES_MARKER)
    recorded = _read_marker(marker) if os.path.isdir(prepared) else None
    if recorded is not None and sources is not None and recorded != sources:
        what = "another folder" if recorded.get("manual_dir") != sources["manual_dir"] else "other files"
        raise DataError(
            f"dataset {name} in {prepared} was prepared from {what} ({recorded.get('manual_dir')}, "
            f"{recorded.get('files')} files) than config.data.manual_dir has now ({sources['manual_dir']}, "
            f"{sources['files']} files): use another config.data.data_dir, or delete {prepared} to prepare it again"
        )
    ds = _load(name, split, data_dir, manual)
    if recorded is None and sources is not None and parallel.is_primary_process() and os.path.isdir(prepared):
        try:
            atomic.write_json(marker, sources)
        except Exception as e:  # noqa: BLE001 - a read-only data dir: the check is skipped, the data still reads
            logging.warning("cannot record the sources of %s in %s: %s", name, marker, e)
    return ds
