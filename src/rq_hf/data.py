"""Image data for training, evaluation and the examples: loading (Hub, ``save_to_disk`` folder, imagefolder,
Fashion-MNIST), transforms written with PIL/numpy/torch (no torchvision here), and a collate function that drops
undecodable images.

Typical use::

    dataset = load_image_dataset(dataset_name=args.dataset_name, image_column=args.image_column)
    transform = ImageTransform(args.resolution, center_crop=args.center_crop, random_flip=args.random_flip)
    dataset = with_image_transform(dataset, transform, image_column=args.image_column)
    loader = torch.utils.data.DataLoader(dataset, batch_size=..., shuffle=True, collate_fn=collate_images)
    for batch in loader:  # {"pixel_values": (B, C, H, W) in [-1, 1] or None, "num_skipped": int, ...}
        ...
"""

from __future__ import annotations

import gzip
import logging
import os
from collections.abc import Sequence
from typing import Any

import datasets
import numpy as np
import PIL.Image
import torch

__all__ = [
    "FASHION_MNIST_CLASSES",
    "ROW_INDEX_COLUMN",
    "ImageBatchTransform",
    "ImageTransform",
    "check_caption_column",
    "check_image_dataset",
    "collate_images",
    "load_fashion_mnist",
    "load_image_dataset",
    "with_image_transform",
]

logger = logging.getLogger(__name__)

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
FASHION_MNIST_DIR = "/usr/share/datasets/fashion-mnist"
#: Column of row indices added by ``with_image_transform(seed=...)`` (per-row augmentation seeds).
ROW_INDEX_COLUMN = "__row_index__"
FASHION_MNIST_HUB_ID = "fashion_mnist"
_FASHION_MNIST_FILES = {"train": "train", "test": "t10k"}


# ----------------------------------------------------------------------------------------------- loading


def load_fashion_mnist(split: str = "train", root: str | os.PathLike | None = None) -> datasets.Dataset:
    """Fashion-MNIST as a ``datasets.Dataset`` with columns ``image`` (``Image``, grayscale 28x28 PIL) and
    ``label`` (``ClassLabel`` with :data:`FASHION_MNIST_CLASSES`).

    Read from the original idx ``.gz`` files in ``root`` (default ``/usr/share/datasets/fashion-mnist``, where
    the Debian package ``dataset-fashion-mnist`` puts them). Each image is stored as the bytes of a binary
    PGM (netpbm) file: lossless, decoded by PIL as mode "L", and built from the numpy array without any
    compression, so the 60,000 training images load in about a second (no cache needed). When the folder
    does not hold the files, the Hub dataset ``fashion_mnist`` is loaded instead (its labels are cast to
    the same class names).

    Args:
        split: ``"train"`` (60,000 images) or ``"test"`` (10,000 images).
        root: folder with ``{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz``.

    Raises:
        ValueError: unknown ``split``, or malformed idx files.
        FileNotFoundError: neither the local files nor the Hub dataset can be read (e.g. offline).
    """
    if split not in _FASHION_MNIST_FILES:
        raise ValueError(f"load_fashion_mnist: `split` must be 'train' or 'test', got {split!r}")
    root = os.fspath(root) if root is not None else FASHION_MNIST_DIR
    prefix = _FASHION_MNIST_FILES[split]
    images_path = os.path.join(root, f"{prefix}-images-idx3-ubyte.gz")
    labels_path = os.path.join(root, f"{prefix}-labels-idx1-ubyte.gz")
    features = datasets.Features(
        {"image": datasets.Image(), "label": datasets.ClassLabel(names=list(FASHION_MNIST_CLASSES))}
    )
    if os.path.isfile(images_path) and os.path.isfile(labels_path):
        images = _read_idx(images_path, expected_magic=2051)
        labels = _read_idx(labels_path, expected_magic=2049)
        if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
            raise ValueError(
                f"load_fashion_mnist: {images_path} and {labels_path} must hold (N, H, W) images and (N,) "
                f"labels, got shapes {images.shape} and {labels.shape}"
            )
        header = f"P5\n{images.shape[2]} {images.shape[1]}\n255\n".encode()
        encoded = [{"bytes": header + image.tobytes(), "path": None} for image in images]
        return datasets.Dataset.from_dict({"image": encoded, "label": labels.tolist()}, features=features)
    try:
        dataset = datasets.load_dataset(FASHION_MNIST_HUB_ID, split=split)
    except Exception as err:  # offline (ConnectionError), missing hub cache, ...
        raise FileNotFoundError(
            f"load_fashion_mnist: no Fashion-MNIST files in {root!r} (expected "
            f"{os.path.basename(images_path)} and {os.path.basename(labels_path)}; "
            "`apt-get install dataset-fashion-mnist` provides them) and the "
            f"Hub dataset {FASHION_MNIST_HUB_ID!r} could not be loaded: {type(err).__name__}: {err}"
        ) from err
    return dataset.cast(features)


def _read_idx(path: str, expected_magic: int) -> np.ndarray:
    with gzip.open(path, "rb") as f:
        data = f.read()
    magic = int.from_bytes(data[:4], "big")
    if magic != expected_magic:
        raise ValueError(
            f"load_fashion_mnist: {path} is not an idx file (magic {magic}, expected {expected_magic})"
        )
    ndim = data[3]
    dims = [int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    offset = 4 + 4 * ndim
    array = np.frombuffer(data, dtype=np.uint8, offset=offset)
    if array.size != int(np.prod(dims)):
        raise ValueError(f"load_fashion_mnist: {path} holds {array.size} values, its header says {dims}")
    return array.reshape(dims)


def load_image_dataset(
    dataset_name: str | None = None,
    dataset_config_name: str | None = None,
    train_data_dir: str | None = None,
    split: str = "train",
    cache_dir: str | None = None,
    image_column: str = "image",
    label_column: str | None = None,
) -> datasets.Dataset:
    """Load one split of an image dataset the way diffusers' training scripts do, and check it.

    Exactly one source:

    - ``dataset_name``: a local folder written by ``save_to_disk`` (read with ``load_from_disk``; a
      ``DatasetDict`` gives its ``split``), or else anything ``datasets.load_dataset`` accepts (a Hub id,
      a local dataset folder), with ``dataset_config_name``;
    - ``train_data_dir``: a folder of images read by the ``imagefolder`` builder (class subfolders become a
      ``label`` column).

    Args:
        split: the split to return.
        cache_dir: ``datasets`` cache folder for ``load_dataset``.
        image_column: must exist and be an ``Image`` feature.
        label_column: if given, must exist too.

    Raises:
        ValueError: no or two sources, a missing split, a missing column (the message lists the columns),
            a non-image ``image_column``, or an empty dataset.
    """
    if (dataset_name is None) == (train_data_dir is None):
        raise ValueError(
            "load_image_dataset: give exactly one of `dataset_name` and `train_data_dir`, got "
            f"dataset_name={dataset_name!r}, train_data_dir={train_data_dir!r}"
        )
    if train_data_dir is not None:
        if not os.path.isdir(train_data_dir):
            raise ValueError(f"load_image_dataset: `train_data_dir` must be a folder, got {train_data_dir!r}")
        source = f"train_data_dir={train_data_dir!r}"
        try:
            dataset = datasets.load_dataset(
                "imagefolder", data_dir=train_data_dir, split=split, cache_dir=cache_dir
            )
        except datasets.data_files.EmptyDatasetError as err:
            raise ValueError(f"load_image_dataset: {source} contains no image files") from err
    elif _is_saved_dataset(dataset_name):
        source = f"dataset_name={dataset_name!r} (a save_to_disk folder)"
        try:
            dataset = datasets.load_from_disk(dataset_name)
        except IndexError as err:  # datasets cannot reload a saved dataset with 0 rows (0 arrow shards)
            raise ValueError(
                f"load_image_dataset: {source} holds no arrow shards: the dataset is empty"
            ) from err
        if isinstance(dataset, datasets.DatasetDict):
            if split not in dataset:
                raise ValueError(
                    f"load_image_dataset: `split` {split!r} is not in {source}; available: {list(dataset)}"
                )
            dataset = dataset[split]
    else:
        source = f"dataset_name={dataset_name!r}"
        dataset = datasets.load_dataset(dataset_name, dataset_config_name, split=split, cache_dir=cache_dir)
    check_image_dataset(dataset, image_column=image_column, label_column=label_column, source=source)
    return dataset


def check_image_dataset(
    dataset: datasets.Dataset,
    image_column: str = "image",
    label_column: str | None = None,
    source: str = "dataset",
    caption_column: str | None = None,
) -> None:
    """Raise ``ValueError`` if ``dataset`` is empty, lacks ``image_column`` / ``label_column`` /
    ``caption_column``, if ``image_column`` is not an ``Image`` feature or ``caption_column`` not a string
    ``Value``. Messages name the argument and list the columns."""
    if len(dataset) == 0:
        raise ValueError(f"load_image_dataset: {source} is empty (0 rows)")
    check_caption_column(dataset, caption_column, source)
    for argument, column in (("image_column", image_column), ("label_column", label_column)):
        if column is not None and column not in dataset.column_names:
            raise ValueError(
                f"load_image_dataset: `{argument}` {column!r} is not a column of {source}; "
                f"available columns: {dataset.column_names}"
            )
    feature = dataset.features[image_column]
    if not isinstance(feature, datasets.Image):
        raise ValueError(
            f"load_image_dataset: `image_column` {image_column!r} must be a datasets.Image feature, "
            f"got {feature}"
        )


def check_caption_column(dataset: datasets.Dataset, caption_column: str | None, source: str = "dataset") -> None:
    """Raise ``ValueError`` unless ``caption_column`` (when given) is a string column of ``dataset``."""
    if caption_column is None:
        return
    if caption_column not in dataset.column_names:
        raise ValueError(
            f"`caption_column` {caption_column!r} is not a column of {source}; available columns: "
            f"{dataset.column_names}"
        )
    feature = dataset.features[caption_column]
    if not (isinstance(feature, datasets.Value) and feature.dtype in ("string", "large_string")):
        raise ValueError(f"`caption_column` {caption_column!r} of {source} must hold strings, got {feature}")


def _is_saved_dataset(path: str) -> bool:
    return os.path.isdir(path) and any(
        os.path.isfile(os.path.join(path, name))
        for name in ("dataset_info.json", "state.json", "dataset_dict.json")
    )


# -------------------------------------------------------------------------------------------- transforms

_RESAMPLE = {"bilinear": PIL.Image.Resampling.BILINEAR, "bicubic": PIL.Image.Resampling.BICUBIC}
_GRAY_MODES = {"1", "L", "LA", "I", "I;16", "F"}


class ImageTransform:
    """PIL image -> float tensor (C, H, W) in [-1, 1], as diffusers' training scripts do with torchvision.

    Steps: convert to ``num_channels`` (3: RGB, 1: grayscale, None: keep grayscale as 1 channel and make
    everything else RGB); then either pad or resize; then crop to ``resolution`` x ``resolution``
    (center, or random when ``center_crop=False``); then a horizontal flip with probability 0.5 when
    ``random_flip``.

    - Resize: the shorter side to ``resolution`` with ``interpolation`` (bilinear by default, as diffusers
      and the official RQ-VAE code).
    - ``pad_to_resolution=True``: an image whose sides are both <= ``resolution`` is padded (centred, with
      ``pad_value``) instead of being upscaled, so its pixels stay exact. This is what the Fashion-MNIST
      quickstart uses: 28x28 -> 32x32 with a 2-pixel black border (the background is black there). Larger
      images are still resized.

    Randomness (random crop, flip) comes from the ``generator`` passed to ``__call__`` or, when it is None,
    from torch's global RNG. In a ``DataLoader`` that global RNG is seeded per worker from the main
    process's RNG, which ``accelerate.utils.set_seed`` seeds, so runs repeat with the same seed.
    """

    def __init__(
        self,
        resolution: int,
        center_crop: bool = False,
        random_flip: bool = False,
        num_channels: int | None = 3,
        interpolation: str = "bilinear",
        pad_to_resolution: bool = False,
        pad_value: int = 0,
    ):
        if not isinstance(resolution, int) or isinstance(resolution, bool) or resolution < 1:
            raise ValueError(f"ImageTransform: `resolution` must be a positive int, got {resolution!r}")
        if num_channels not in (1, 3, None):
            raise ValueError(f"ImageTransform: `num_channels` must be 1, 3 or None, got {num_channels!r}")
        if interpolation not in _RESAMPLE:
            raise ValueError(
                f"ImageTransform: `interpolation` must be one of {sorted(_RESAMPLE)}, got {interpolation!r}"
            )
        if not 0 <= pad_value <= 255:
            raise ValueError(f"ImageTransform: `pad_value` must be in [0, 255], got {pad_value!r}")
        self.resolution = resolution
        self.center_crop = center_crop
        self.random_flip = random_flip
        self.num_channels = num_channels
        self.interpolation = interpolation
        self.pad_to_resolution = pad_to_resolution
        self.pad_value = pad_value

    def __repr__(self) -> str:
        return (
            f"ImageTransform(resolution={self.resolution}, center_crop={self.center_crop}, "
            f"random_flip={self.random_flip}, num_channels={self.num_channels}, "
            f"interpolation={self.interpolation!r}, pad_to_resolution={self.pad_to_resolution})"
        )

    def __call__(self, image: PIL.Image.Image, generator: torch.Generator | None = None) -> torch.Tensor:
        """Transform one PIL image; see the class docstring."""
        if not isinstance(image, PIL.Image.Image):
            raise TypeError(f"ImageTransform: `image` must be a PIL.Image.Image, got {type(image).__name__}")
        image = self._convert(image)
        res = self.resolution
        width, height = image.size
        if self.pad_to_resolution and width <= res and height <= res:
            canvas = PIL.Image.new(image.mode, (res, res), (self.pad_value,) * len(image.getbands()))
            canvas.paste(image, ((res - width) // 2, (res - height) // 2))
            image = canvas
        else:
            scale = res / min(width, height)
            size = (max(res, round(width * scale)), max(res, round(height * scale)))
            if size != image.size:
                image = image.resize(size, resample=_RESAMPLE[self.interpolation])
        array = np.array(image, dtype=np.uint8)  # a writable copy
        if array.ndim == 2:
            array = array[:, :, None]
        height, width = array.shape[:2]
        if self.center_crop:
            top, left = (height - res) // 2, (width - res) // 2
        else:
            top = int(torch.randint(0, height - res + 1, (1,), generator=generator))
            left = int(torch.randint(0, width - res + 1, (1,), generator=generator))
        array = array[top : top + res, left : left + res]
        if self.random_flip and bool(torch.rand((), generator=generator) < 0.5):
            array = array[:, ::-1]
        tensor = torch.from_numpy(np.ascontiguousarray(array)).permute(2, 0, 1)
        return tensor.float().div_(127.5).sub_(1.0)

    def _convert(self, image: PIL.Image.Image) -> PIL.Image.Image:
        if self.num_channels == 1 or (self.num_channels is None and image.mode in _GRAY_MODES):
            return image if image.mode == "L" else image.convert("L")
        return image if image.mode == "RGB" else image.convert("RGB")


class ImageBatchTransform:
    """Batch function for ``Dataset.with_transform``: decodes and transforms ``image_column`` itself.

    The image column is expected undecoded (``datasets.Image(decode=False)``: dicts with ``bytes`` /
    ``path``), so an undecodable file is caught here rather than deep inside ``datasets``. Already
    decoded PIL images are accepted too.

    Undecodable images (``on_decode_error``):

    - ``"skip"`` (default): the row's ``pixel_values`` is None, a warning names the file, and
      ``num_skipped`` counts it in this process; :func:`collate_images` drops such rows and reports how
      many it dropped per batch (``batch["num_skipped"]``, the way to count across DataLoader workers).
      Chosen so that one bad file among millions does not stop a long run.
    - ``"raise"``: a ``ValueError`` naming the file (and row) stops the run.

    Output rows: ``pixel_values`` (tensor or None), ``class_labels`` (when ``label_column`` is given),
    ``captions`` (when ``caption_column`` is given) and ``image_source`` (the file path, or ``"<bytes>"``).

    Random augmentations (``seed``): with ``seed=None`` the transform draws from torch's global RNG. With
    an int ``seed``, each row gets its own ``torch.Generator`` seeded from ``(seed, epoch, row index)``
    (the row index comes from the :data:`ROW_INDEX_COLUMN` column that :func:`with_image_transform` adds),
    so an augmentation depends only on the seed, the epoch (:meth:`set_epoch`) and the row: it is the same
    whichever process, DataLoader worker or resumed run loads the row, and loading data never touches the
    global RNG (which checkpoints save for the model's own randomness).
    """

    def __init__(
        self,
        transform: ImageTransform,
        image_column: str = "image",
        label_column: str | None = None,
        on_decode_error: str = "skip",
        seed: int | None = None,
        caption_column: str | None = None,
    ):
        if on_decode_error not in ("skip", "raise"):
            raise ValueError(
                f"ImageBatchTransform: `on_decode_error` must be 'skip' or 'raise', got {on_decode_error!r}"
            )
        if seed is not None and (not isinstance(seed, int) or isinstance(seed, bool) or seed < 0):
            raise ValueError(f"ImageBatchTransform: `seed` must be None or an int >= 0, got {seed!r}")
        self.seed = seed
        self.epoch = 0
        self.transform = transform
        self.image_column = image_column
        self.label_column = label_column
        self.caption_column = caption_column
        self.on_decode_error = on_decode_error
        self.num_skipped = 0
        self._decoder = datasets.Image()

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, list[Any]]:
        if self.image_column not in batch:
            raise ValueError(
                f"ImageBatchTransform: `image_column` {self.image_column!r} is not in the batch; "
                f"got columns {list(batch)}"
            )
        if self.seed is not None and ROW_INDEX_COLUMN not in batch:
            raise ValueError(
                f"ImageBatchTransform: with `seed` the batch needs the {ROW_INDEX_COLUMN!r} column "
                f"(added by with_image_transform(seed=...)); got columns {list(batch)}"
            )
        pixel_values: list[torch.Tensor | None] = []
        sources: list[str] = []
        for row, value in enumerate(batch[self.image_column]):
            source = _source_of(value)
            sources.append(source)
            try:
                image = value if isinstance(value, PIL.Image.Image) else self._decoder.decode_example(value)
            except Exception as err:  # PIL.UnidentifiedImageError, truncated files, missing files, ...
                if self.on_decode_error == "raise":
                    raise ValueError(f"undecodable image {source}: {type(err).__name__}: {err}") from err
                self.num_skipped += 1
                logger.warning("Skipping undecodable image %s (%s: %s)", source, type(err).__name__, err)
                pixel_values.append(None)
                continue
            generator = None
            if self.seed is not None:
                index = int(batch[ROW_INDEX_COLUMN][row])
                state = np.random.SeedSequence([self.seed, self.epoch, index]).generate_state(2, np.uint32)
                generator = torch.Generator().manual_seed(int(state[0]) << 32 | int(state[1]))
            pixel_values.append(self.transform(image, generator=generator))
        out: dict[str, list[Any]] = {"pixel_values": pixel_values, "image_source": sources}
        if self.label_column is not None:
            out["class_labels"] = list(batch[self.label_column])
        if self.caption_column is not None:
            out["captions"] = list(batch[self.caption_column])
        return out


    def set_epoch(self, epoch: int) -> None:
        """Select the epoch whose augmentations are drawn (only matters with ``seed``)."""
        self.epoch = int(epoch)


def _source_of(value: Any) -> str:
    if isinstance(value, dict):
        return str(value.get("path") or "<bytes>")
    if isinstance(value, str):
        return value
    return f"<{type(value).__name__}>"


def with_image_transform(
    dataset: datasets.Dataset,
    transform: ImageTransform,
    image_column: str = "image",
    label_column: str | None = None,
    on_decode_error: str = "skip",
    seed: int | None = None,
    caption_column: str | None = None,
) -> datasets.Dataset:
    """Return ``dataset`` with ``image_column`` cast to ``Image(decode=False)`` and an
    :class:`ImageBatchTransform` set with ``with_transform`` (rows are transformed lazily on access).

    Only ``image_column``, ``label_column`` and ``caption_column`` are read. See :class:`ImageBatchTransform`
    for the rows it yields, ``on_decode_error`` and ``seed`` (which adds a :data:`ROW_INDEX_COLUMN` column). The
    transform object is ``dataset.format["format_kwargs"]["transform"]``; call its ``set_epoch`` before
    each epoch (``rq_hf.training.script_utils.iterate_epochs`` does).
    """
    check_image_dataset(dataset, image_column=image_column, label_column=label_column, caption_column=caption_column)
    dataset = dataset.cast_column(image_column, datasets.Image(decode=False))
    columns = [image_column] + [c for c in (label_column, caption_column) if c is not None]
    if seed is not None:
        if ROW_INDEX_COLUMN in dataset.column_names:
            dataset = dataset.remove_columns(ROW_INDEX_COLUMN)
        dataset = dataset.add_column(ROW_INDEX_COLUMN, np.arange(len(dataset), dtype=np.int64))
        columns.append(ROW_INDEX_COLUMN)
    batch_transform = ImageBatchTransform(
        transform, image_column, label_column, on_decode_error, seed=seed, caption_column=caption_column
    )
    return dataset.with_transform(batch_transform, columns=columns)


def collate_images(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Collate rows of :func:`with_image_transform`, dropping those whose image could not be decoded.

    Returns ``{"pixel_values": (B', C, H, W) float tensor, or None when every row was dropped,
    "class_labels": (B',) long tensor (when present), "captions": list of B' strings (when present),
    "num_skipped": int}``. A training loop must skip a
    batch whose ``pixel_values`` is None (under DDP, all processes must then skip together, e.g. by an
    all-reduce of the flag, or the collective ops will wait forever).
    """
    kept = [example for example in examples if example["pixel_values"] is not None]
    num_skipped = len(examples) - len(kept)
    batch: dict[str, Any] = {
        "pixel_values": torch.stack([e["pixel_values"] for e in kept]) if kept else None,
        "num_skipped": num_skipped,
    }
    if examples and "class_labels" in examples[0]:
        batch["class_labels"] = torch.tensor([e["class_labels"] for e in kept], dtype=torch.long)
    if examples and "captions" in examples[0]:
        batch["captions"] = [e["captions"] for e in kept]
    return batch
