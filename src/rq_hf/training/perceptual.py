"""LPIPS perceptual distance (Zhang et al., CVPR 2018) with a VGG16 trunk, in plain torch.

No torchvision or ``lpips`` package is used (torchvision does not work beside the torch installed
here), and nothing is downloaded: the network needs pretrained weights that the user provides as one or
more local files (``.pth``/``.pt``/``.bin`` loaded with ``torch.load(weights_only=True)``, or
``.safetensors``).

Expected key layout (extra keys such as ``classifier.*`` are ignored)::

    features.{0,2,5,7,10,12,14,17,19,21,24,26,28}.{weight,bias}   # torchvision vgg16().features
    lin{0..4}.model.1.weight                                       # lpips v0.1 "vgg" linear layers

The ``net.slice{1..5}.{i}.*`` keys of an ``lpips.LPIPS`` / taming ``LPIPS`` state dict are accepted too
(they hold the same VGG modules under their original indices). One way to build a single file, on a
machine that has torchvision and lpips::

    import torch, torchvision, lpips
    vgg = torchvision.models.vgg16(weights="IMAGENET1K_V1")
    sd = {"features." + k: v for k, v in vgg.features.state_dict().items()}
    sd.update(lpips.LPIPS(net="vgg").state_dict())       # adds lin*.model.1.weight (and net.* duplicates)
    torch.save(sd, "lpips_vgg.pth")

or pass the two files together:
``LPIPS.from_pretrained(["vgg16-397923af.pth", "lpips/weights/v0.1/vgg.pth"])``.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["LPIPS"]

PathLike = str | os.PathLike

# VGG16 "D" configuration: channels of each 3x3 conv, "M" for a 2x2 max pool (torchvision's indices).
_VGG16_CFG: tuple[int | str, ...] = (
    64, 64, "M", 128, 128, "M", 256, 256, 256, "M", 512, 512, 512, "M", 512, 512, 512
)
# LPIPS taps relu1_2, relu2_2, relu3_3, relu4_3, relu5_3:
# the outputs of features[:4], [4:9], [9:16], [16:23], [23:30].
_TAP_ENDS = (4, 9, 16, 23, 30)
_TAP_CHANNELS = (64, 128, 256, 512, 512)
_SLICE_KEY = re.compile(r"^(?:.*\.)?net\.slice[1-5]\.(\d+)\.(weight|bias)$")

_MISSING_WEIGHTS_HELP = (
    "LPIPS needs pretrained VGG16 + LPIPS linear-layer weights, which cannot be downloaded here. Pass a "
    "local file (or a list of files) holding torchvision vgg16 `features.*` keys and lpips "
    "`lin0..lin4.model.1.weight` keys, as .pth or .safetensors (the docstring of rq_hf.training.perceptual "
    "shows how to build that file), or switch the perceptual loss off."
)


class _LinearHead(nn.Module):
    """1x1 conv from C channels to 1, under ``model.1`` as in lpips (``model.0`` is lpips' Dropout)."""

    def __init__(self, channels: int):
        super().__init__()
        # lpips has nn.Dropout() at index 0; LPIPS is only used in eval mode, where dropout is the identity.
        self.model = nn.Sequential(nn.Identity(), nn.Conv2d(channels, 1, kernel_size=1, bias=False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class LPIPS(nn.Module):
    """LPIPS distance with the VGG16 trunk ("vgg" variant, v0.1), frozen and always in eval mode.

    Inputs are images in [-1, 1], shape (B, 3, H, W); grayscale (B, 1, H, W) inputs are repeated to three
    channels. The output is the per-sample distance, shape (B,); it is 0 for identical images and the
    gradient flows to the inputs (use it as the perceptual term of the RQ-VAE loss).

    Build it with :meth:`from_pretrained`; ``LPIPS()`` alone has random weights (for tests only).
    """

    def __init__(self) -> None:
        super().__init__()
        layers: list[nn.Module] = []
        in_channels = 3
        for item in _VGG16_CFG:
            if item == "M":
                layers.append(nn.MaxPool2d(kernel_size=2, stride=2))
            else:
                layers += [nn.Conv2d(in_channels, int(item), kernel_size=3, padding=1), nn.ReLU()]
                in_channels = int(item)
        self.features = nn.Sequential(*layers)  # indices 0..29, as torchvision's vgg16().features[:30]
        for i, channels in enumerate(_TAP_CHANNELS):
            self.add_module(f"lin{i}", _LinearHead(channels))
        # lpips' ScalingLayer: inputs in [-1, 1] are mapped to ImageNet-normalised VGG inputs.
        shift = torch.tensor([-0.030, -0.088, -0.188]).view(1, 3, 1, 1)
        scale = torch.tensor([0.458, 0.448, 0.450]).view(1, 3, 1, 1)
        self.register_buffer("shift", shift, persistent=False)
        self.register_buffer("scale", scale, persistent=False)
        with torch.no_grad():  # lpips' learned linear weights are non-negative; keep random ones so too
            for i in range(len(_TAP_CHANNELS)):
                getattr(self, f"lin{i}").model[1].weight.abs_()
        self.requires_grad_(False)
        self.eval()

    def train(self, mode: bool = True) -> LPIPS:
        """LPIPS stays in eval mode whatever ``mode`` says (a frozen metric network)."""
        return super().train(False)

    @classmethod
    def from_pretrained(cls, path: PathLike | Sequence[PathLike] | None) -> LPIPS:
        """Load LPIPS weights from one local file or several (merged in order).

        Args:
            path: a ``.pth``/``.pt``/``.bin`` or ``.safetensors`` file, or a list of them, with the key
                layout described in the module docstring. ``None`` raises a ``ValueError`` explaining how
                to get one.

        Raises:
            ValueError: no path given, or keys missing / of the wrong shape (the message lists them).
            FileNotFoundError: a given file does not exist.
        """
        if path is None or (not isinstance(path, (str, os.PathLike)) and len(path) == 0):
            raise ValueError(
                f"LPIPS.from_pretrained: `path` is required, got {path!r}. {_MISSING_WEIGHTS_HELP}"
            )
        paths = [path] if isinstance(path, (str, os.PathLike)) else list(path)
        state: dict[str, torch.Tensor] = {}
        for p in paths:
            state.update(_load_file(p))
        model = cls()
        own = model.state_dict()
        state = {_canonical_key(k): v for k, v in state.items()}
        missing = sorted(k for k in own if k not in state)
        if missing:
            raise ValueError(
                f"LPIPS.from_pretrained: the weights in {[os.fspath(p) for p in paths]} lack {len(missing)} "
                f"expected keys, e.g. {missing[:6]}. {_MISSING_WEIGHTS_HELP}"
            )
        bad = [f"{k}: expected {tuple(own[k].shape)}, got {tuple(state[k].shape)}"
               for k in own if state[k].shape != own[k].shape]
        if bad:
            raise ValueError(f"LPIPS.from_pretrained: wrong tensor shapes: {bad[:6]}")
        model.load_state_dict({k: state[k] for k in own})
        return model

    def save_pretrained(self, path: PathLike) -> None:
        """Save the weights to one ``.safetensors`` (or ``.pth``) file that :meth:`from_pretrained` reads."""
        from ..models.atomic_save import atomic_save_file

        path = os.fspath(path)
        state = {k: v.detach().contiguous() for k, v in self.state_dict().items()}
        with atomic_save_file(path) as tmp:
            if path.endswith(".safetensors"):
                from safetensors.torch import save_file

                save_file(state, tmp)
            else:
                torch.save(state, tmp)

    def forward(self, input: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Return the LPIPS distance of ``input`` and ``target`` ((B, C, H, W) in [-1, 1]), shape (B,)."""
        if input.shape != target.shape:
            raise ValueError(
                f"LPIPS: `input` and `target` must have the same shape, got {tuple(input.shape)} "
                f"and {tuple(target.shape)}"
            )
        if input.ndim != 4 or input.shape[1] not in (1, 3):
            raise ValueError(f"LPIPS: `input` must have shape (B, 1 or 3, H, W), got {tuple(input.shape)}")
        if min(input.shape[-2:]) < 16:
            raise ValueError(
                f"LPIPS: images must be at least 16x16 (four 2x max pools), got {tuple(input.shape[-2:])}"
            )
        x = torch.cat([input, target]).to(self.shift.dtype)
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        x = (x - self.shift) / self.scale
        distance = x.new_zeros(input.shape[0])
        start = 0
        for i, end in enumerate(_TAP_ENDS):
            x = self.features[start:end](x)
            start = end
            f0, f1 = _unit_normalize(x).chunk(2)
            head: _LinearHead = getattr(self, f"lin{i}")
            distance = distance + head((f0 - f1) ** 2).mean(dim=(1, 2, 3))
        return distance


def _unit_normalize(x: torch.Tensor, eps: float = 1e-10) -> torch.Tensor:
    return x / (torch.sqrt(torch.sum(x**2, dim=1, keepdim=True)) + eps)


def _canonical_key(key: str) -> str:
    match = _SLICE_KEY.match(key)
    if match:
        return f"features.{match.group(1)}.{match.group(2)}"
    for prefix in ("module.", "perceptual_loss.", "vgg."):
        if key.startswith(prefix) and (key[len(prefix):].startswith(("features.", "lin"))):
            return key[len(prefix):]
    return key


def _load_file(path: PathLike) -> dict[str, torch.Tensor]:
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"LPIPS.from_pretrained: weights file {path!r} does not exist. {_MISSING_WEIGHTS_HELP}"
        )
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file

        return load_file(path)
    state = torch.load(path, map_location="cpu", weights_only=True)
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict):
        raise ValueError(
            f"LPIPS.from_pretrained: {path!r} must hold a state dict, got {type(state).__name__}"
        )
    return state
