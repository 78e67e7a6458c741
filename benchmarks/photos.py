"""Natural photos that ship in pip wheels and Debian packages, split by photo for the RQ-VAE studies.

Each photo is named with its package and licence. Training crops come only from ``TRAIN`` photos, test crops
only from ``TEST`` photos (never seen in training). The ``wheels`` set needs nothing beyond the ``bench``
extra (scikit-image, scikit-learn); the ``all`` set adds photos from two Debian packages::

    apt-get install lomiri-wallpapers-16.04 lomiri-wallpapers-20.04 mate-backgrounds

Photos are resized so that their short side is ``short_side`` pixels (Lanczos; JPEGs are decoded at a reduced
size first with PIL's ``draft``), then cut into random square crops (random flips in training).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any

LOMIRI = "/usr/share/backgrounds"  # lomiri-wallpapers-16.04 and -20.04 (Debian)
MATE = "/usr/share/backgrounds/mate/nature"  # mate-backgrounds (Debian)
DEBIAN_PACKAGES = ("lomiri-wallpapers-16.04", "lomiri-wallpapers-20.04", "mate-backgrounds")


@dataclass(frozen=True)
class Photo:
    """A photo: ``source`` is ``skimage:<name>``, ``sklearn:<file>`` or an absolute file path."""

    name: str
    source: str
    package: str
    licence: str


def _lomiri(file: str, licence: str, release: str = "16.04") -> Photo:
    return Photo(file.split("_by_")[0], os.path.join(LOMIRI, file), f"lomiri-wallpapers-{release} (Debian)", licence)


def _mate(file: str) -> Photo:
    return Photo(file.rsplit(".", 1)[0], os.path.join(MATE, file), "mate-backgrounds (Debian)", "GPL-2+")


WHEEL_PHOTOS = (
    Photo("astronaut", "skimage:astronaut", "scikit-image (pip)", "public domain (NASA)"),
    Photo("coffee", "skimage:coffee", "scikit-image (pip)", "CC0"),
    Photo("rocket", "skimage:rocket", "scikit-image (pip)", "public domain (SpaceX)"),
    Photo("hubble_deep_field", "skimage:hubble_deep_field", "scikit-image (pip)", "public domain (NASA)"),
    Photo("china", "sklearn:china.jpg", "scikit-learn (pip)", "CC-BY-2.0"),
    Photo("chelsea", "skimage:chelsea", "scikit-image (pip)", "CC0"),
    Photo("flower", "sklearn:flower.jpg", "scikit-learn (pip)", "CC-BY-2.0"),
)
DEBIAN_PHOTOS = (
    _lomiri("Bridge_by_Sander_Klootwijk.jpg", "CC-BY-SA-4.0"),
    _lomiri("Dragonfly_by_Bolly.jpg", "CC-BY-SA-4.0"),
    _lomiri("Kleiber_by_Lukas_Baubkus.jpg", "CC-BY-SA-3.0", "20.04"),
    _lomiri("Picture_1A_by_freespace.jpg", "CC-BY-4.0"),
    _lomiri("aitzgorri_by_Aitzol_Berasategi.jpg", "CC-BY-4.0"),
    _lomiri("free_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0"),
    _lomiri("greentock_by_Peter_Nerlich.jpg", "CC-BY-SA-4.0"),
    _lomiri("life_by_Aitzol_Berasategi.jpg", "CC-BY-4.0"),
    _lomiri("seeding_by_Clements_Engelhardt.jpg", "CC0-1.0"),
    _lomiri("sunset_by_Aitzol_Berasategi.jpg", "CC-BY-4.0"),
    _mate("Aqua.jpg"),
    _mate("Blinds.jpg"),
    _mate("Dune.jpg"),
    _mate("FreshFlower.jpg"),
    _mate("Garden.jpg"),
    _mate("GreenMeadow.jpg"),
    _mate("RainDrops.jpg"),
    _mate("TwoWings.jpg"),
    _mate("Wood.jpg"),
    # test photos
    _lomiri("friends_by_Aitzol_Berasategi.jpg", "CC-BY-4.0"),
    _lomiri("picosdeeuropa_by_Aitzol_Berasategi.jpg", "CC-BY-4.0"),
    _lomiri("Picture_0B_by_freespace.jpg", "CC-BY-4.0"),
    _lomiri("Wine_by_Jakkub_Mede.jpg", "CC-BY-4.0"),
    _mate("LadyBird.jpg"),
    _mate("Storm.jpg"),
    _mate("YellowFlower.jpg"),
)
#: Photos whose crops are only ever used for testing.
TEST = frozenset({"chelsea", "flower", "friends", "picosdeeuropa", "Picture_0B", "Wine", "LadyBird", "Storm",
                  "YellowFlower"})
PHOTO_SETS = ("wheels", "all")


def photo_catalogue(photo_set: str) -> tuple[Photo, ...]:
    """The photos of ``photo_set`` (``"wheels"`` or ``"all"``); ``"all"`` needs the Debian packages."""
    if photo_set not in PHOTO_SETS:
        raise ValueError(f"`photo_set` must be one of {PHOTO_SETS}, got {photo_set!r}")
    if photo_set == "wheels":
        return WHEEL_PHOTOS
    missing = [p.source for p in DEBIAN_PHOTOS if not os.path.isfile(p.source)]
    if missing:
        raise FileNotFoundError(
            f"photo set 'all' needs the Debian packages {', '.join(DEBIAN_PACKAGES)} (apt-get install "
            f"{' '.join(DEBIAN_PACKAGES)}); missing {len(missing)} files, e.g. {missing[0]}"
        )
    return WHEEL_PHOTOS + DEBIAN_PHOTOS


def split(photos: tuple[Photo, ...]) -> tuple[tuple[Photo, ...], tuple[Photo, ...]]:
    """(training photos, test photos): disjoint, by the photo's name."""
    return tuple(p for p in photos if p.name not in TEST), tuple(p for p in photos if p.name in TEST)


def _open(photo: Photo, short_side: int) -> Any:
    import numpy as np
    import PIL.Image

    if photo.source.startswith("skimage:"):
        import skimage.data

        return PIL.Image.fromarray(np.asarray(getattr(skimage.data, photo.source.split(":", 1)[1])())[..., :3])
    if photo.source.startswith("sklearn:"):
        from sklearn.datasets import load_sample_image

        return PIL.Image.fromarray(load_sample_image(photo.source.split(":", 1)[1]))
    image = PIL.Image.open(photo.source)
    image.draft("RGB", (short_side * 2, short_side * 2))  # JPEG: decode at a reduced size (fast)
    return image.convert("RGB")


def load_photos(photos: tuple[Photo, ...], short_side: int) -> list[Any]:
    """The photos as uint8 tensors (3, H, W) with min(H, W) == ``short_side`` (Lanczos)."""
    import numpy as np
    import PIL.Image
    import torch

    out = []
    for photo in photos:
        image = _open(photo, short_side)
        scale = short_side / min(image.size)
        size = (max(short_side, round(image.width * scale)), max(short_side, round(image.height * scale)))
        image = image.resize(size, PIL.Image.Resampling.LANCZOS)
        out.append(torch.from_numpy(np.array(image)).permute(2, 0, 1).contiguous())
    return out


def random_crops(photos: list[Any], count: int, size: int, generator: Any, flip: bool) -> Any:
    """``count`` random ``size`` x ``size`` crops (float, [-1, 1]) of photos drawn uniformly."""
    import torch

    crops = []
    for index in torch.randint(0, len(photos), (count,), generator=generator).tolist():
        photo = photos[index]
        top = int(torch.randint(0, photo.shape[1] - size + 1, (1,), generator=generator))
        left = int(torch.randint(0, photo.shape[2] - size + 1, (1,), generator=generator))
        crop = photo[:, top : top + size, left : left + size]
        if flip and bool(torch.rand((), generator=generator) < 0.5):
            crop = crop.flip(-1)
        crops.append(crop)
    return torch.stack(crops).float().div_(127.5).sub_(1.0)


def licence_table(photos: tuple[Photo, ...]) -> str:
    """A markdown table: photo, split, package, licence."""
    lines = ["| photo | split | package | licence |", "|---|---|---|---|"]
    lines += [f"| {p.name} | {'test' if p.name in TEST else 'train'} | {p.package} | {p.licence} |" for p in photos]
    return "\n".join(lines) + "\n"
