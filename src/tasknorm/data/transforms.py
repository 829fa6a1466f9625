"""Joint augmentation of images and dense targets on ``torchvision.transforms.v2``.

A sample ``{"image": ..., "<task>": target}`` is wrapped in tv_tensors (:func:`wrap_sample`) so
that one v2 transform moves every entry the same way while treating each according to its kind:

======== ========================= ===============================================================
kind     tv_tensor                 geometry
======== ========================= ===============================================================
image    ``tv_tensors.Image``      bilinear
label    ``tv_tensors.Mask``       nearest (ignore value -1 stays -1)
depth    :class:`Depth` (a Mask)   nearest; :class:`RandomScaleCrop` rescales the values
normals  :class:`Normals` (Image)  bilinear; flips negate the flipped component; colour
                                   transforms leave it alone; rotations are refused, except
                                   :class:`RandomScaleRotate`, which rotates the vectors
mask     ``tv_tensors.Mask``       nearest (saliency, edges)
======== ========================= ===============================================================

:func:`unwrap_sample` turns the result back into plain tensors. :func:`train_transform` builds
the standard training pipeline of NYUv2 and Cityscapes, :func:`pascal_transform` that of
PASCAL-Context.

Example:
    >>> import torch
    >>> normals = torch.zeros(3, 4, 4)
    >>> normals[0], normals[2] = 0.6, 0.8
    >>> sample = wrap_sample({"image": torch.rand(3, 4, 4), "normals": normals},
    ...                      {"image": "image", "normals": "normals"})
    >>> out = unwrap_sample(v2.RandomHorizontalFlip(p=1.0)(sample))
    >>> type(out["normals"]).__name__, out["normals"][:, 0, 0].tolist()
    ('Tensor', [-0.6000000238418579, 0.0, 0.800000011920929])
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import torch
from torch import Tensor
from torchvision import tv_tensors
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as F

DepthScaling = Literal["divide", "multiply"]
Benchmark = Literal["nyuv2", "cityscapes", "cityscapes_3task"]
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Depth(tv_tensors.Mask):
    """Depth or disparity map ``(1, H, W)``, NaN where invalid: resampled with nearest neighbour
    (never blends a valid value with NaN or across depth edges), like the mtan recipe."""


class Normals(tv_tensors.Image):
    """Surface-normal map ``(3, H, W)`` (x along the columns, y along the rows, z), all-zero where
    invalid.

    Resampled bilinearly like an image (interpolated vectors are not re-normalised, as in the
    mtan/LibMTL reference); horizontal / vertical flips negate the x / y component; colour and
    normalisation transforms leave it unchanged; rotations, affine, perspective and elastic
    transforms raise, since they would have to rotate the vectors too (:class:`RandomScaleRotate`
    does rotate them).
    """


KINDS: dict[str, type[tv_tensors.TVTensor]] = {
    "image": tv_tensors.Image, "label": tv_tensors.Mask, "depth": Depth, "normals": Normals,
    "mask": tv_tensors.Mask}


def wrap_sample(sample: Mapping[str, Any], kinds: Mapping[str, str]) -> dict[str, Any]:
    """Wrap the entries of ``sample`` named in ``kinds`` in their tv_tensor type.

    Args:
        sample: ``{"image": Tensor, "<task>": Tensor, ...}``; entries not named in ``kinds``
            (e.g. scalar labels) pass through untouched.
        kinds: key -> one of ``"image"``, ``"label"``, ``"depth"``, ``"normals"``, ``"mask"``;
            keys missing from ``sample`` are skipped, so one mapping serves every task subset.
    """
    wrapped = dict(sample)
    for key, kind in kinds.items():
        if kind not in KINDS:
            raise ValueError(f"unknown kind {kind!r} for {key!r}; expected one of {sorted(KINDS)}")
        if key in wrapped:
            wrapped[key] = KINDS[kind](wrapped[key])
    return wrapped


def unwrap_sample(sample: Mapping[str, Any]) -> dict[str, Any]:
    """``sample`` with every tv_tensor turned back into a plain ``Tensor``."""
    return {key: value.as_subclass(Tensor) if isinstance(value, tv_tensors.TVTensor) else value
            for key, value in sample.items()}


def _flip_normals(normals: Normals, dim: int, component: int) -> Normals:
    flipped = normals.as_subclass(Tensor).flip(dim)
    flipped[..., component, :, :] = -flipped[..., component, :, :]
    return tv_tensors.wrap(flipped, like=normals)


@F.register_kernel(F.horizontal_flip, Normals)
def _horizontal_flip_normals(normals: Normals) -> Normals:
    return _flip_normals(normals, dim=-1, component=0)


@F.register_kernel(F.vertical_flip, Normals)
def _vertical_flip_normals(normals: Normals) -> Normals:
    return _flip_normals(normals, dim=-2, component=1)


def _keep_normals(normals: Normals, *args: Any, **kwargs: Any) -> Normals:
    return normals


def _refuse_normals(normals: Normals, *args: Any, **kwargs: Any) -> Normals:
    raise TypeError("rotating, shearing or warping a Normals map would also have to rotate its "
                    "vectors, which is not implemented; use flips and RandomScaleCrop")


# Photometric functionals change colours only; `getattr` skips those an older torchvision lacks.
for _name in ("adjust_brightness", "adjust_contrast", "adjust_saturation", "adjust_hue",
              "adjust_gamma", "adjust_sharpness", "autocontrast", "equalize", "invert",
              "posterize", "solarize", "permute_channels", "rgb_to_grayscale", "normalize",
              "gaussian_blur", "gaussian_noise", "jpeg", "erase"):
    if (_functional := getattr(F, _name, None)) is not None:
        F.register_kernel(_functional, Normals)(_keep_normals)
for _functional in (F.rotate, F.affine, F.perspective, F.elastic):
    F.register_kernel(_functional, Normals)(_refuse_normals)


class RandomScaleCrop(v2.Transform):
    """Zoom in by a random factor: the mtan / LibMTL / CAGrad scale-crop augmentation.

    Per call: pick ``s`` uniformly from ``scales``, crop a window of ``(int(H / s), int(W / s))``
    pixels at a uniformly random position, resize it back to ``(H, W)`` — bilinear for images
    and :class:`Normals`, nearest for labels, masks and :class:`Depth` — and rescale depth values
    by the zoom: ``"divide"`` (depth / s: zoomed-in objects look closer; the reference recipe for
    NYUv2 depth and, in CAGrad's code, also for Cityscapes disparity) or ``"multiply"``
    (disparity × s, physically right for inverse depth, as Auto-Lambda does). NaN (invalid)
    depth stays NaN. Normals are not re-normalised and not rotated (zooming does not rotate).

    Difference from the reference: torchvision resizes with ``align_corners=False`` (pixel
    centres aligned) where the reference calls ``F.interpolate(..., align_corners=True)`` (corner
    pixels aligned) for the bilinear entries: image and normals are sampled at positions that
    differ by up to ``(1 - 1/s) / 2`` crop pixels (zero at the centre and at ``s = 1``, largest
    near the borders). Nearest resampling is identical (``mode="nearest"`` in both).

    Args:
        scales: zoom factors, each at least 1.
        depth_scaling: ``"divide"`` or ``"multiply"``; how :class:`Depth` values follow the zoom.

    Example:
        >>> import torch
        >>> _ = torch.manual_seed(0)
        >>> sample = {"image": torch.rand(3, 12, 16), "depth": torch.full((1, 12, 16), 3.0)}
        >>> sample = wrap_sample(sample, {"image": "image", "depth": "depth"})
        >>> out = RandomScaleCrop(scales=(1.5,))(sample)
        >>> out["image"].shape, out["depth"].unique().tolist()
        (torch.Size([3, 12, 16]), [2.0])
    """

    def __init__(self, scales: Sequence[float] = (1.0, 1.2, 1.5),
                 depth_scaling: DepthScaling = "divide") -> None:
        super().__init__()
        if not scales or min(scales) < 1:
            raise ValueError(f"scales must be a non-empty sequence of factors >= 1, got {scales}")
        if depth_scaling not in ("divide", "multiply"):
            raise ValueError(f"depth_scaling must be 'divide' or 'multiply', got {depth_scaling!r}")
        self.scales = tuple(float(s) for s in scales)
        self.depth_scaling = depth_scaling

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        sizes = {tuple(F.get_size(inpt)) for inpt in flat_inputs
                 if isinstance(inpt, tv_tensors.Image | tv_tensors.Mask)}
        if len(sizes) != 1:
            raise ValueError(f"RandomScaleCrop needs tv_tensor images/masks of one size (see "
                             f"wrap_sample), got sizes {sorted(sizes)}")
        height, width = sizes.pop()
        scale = self.scales[int(torch.randint(len(self.scales), ()))]
        crop_height, crop_width = int(height / scale), int(width / scale)
        return {"scale": scale, "size": [height, width], "height": crop_height,
                "width": crop_width,
                "top": int(torch.randint(height - crop_height + 1, ())),
                "left": int(torch.randint(width - crop_width + 1, ()))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        output = self._call_kernel(
            F.resized_crop, inpt, top=params["top"], left=params["left"],
            height=params["height"], width=params["width"], size=params["size"],
            interpolation=v2.InterpolationMode.BILINEAR)
        if isinstance(inpt, Depth):
            values = output.as_subclass(Tensor)
            scale = params["scale"]
            values = values / scale if self.depth_scaling == "divide" else values * scale
            output = tv_tensors.wrap(values, like=inpt)
        return output

    # torchvision < 0.21 calls the hooks by their former private names.
    _get_params = make_params
    _transform = transform


class RandomScaleRotate(v2.Transform):
    """Rotate and zoom about the image centre by random amounts; the output keeps its size.

    The reference's ``ScaleNRotate``: angle uniform in ``degrees`` (counter-clockwise
    positive), zoom uniform in ``scales`` (> 1 zooms in). Images and normals are resampled
    bilinearly, labels and masks by nearest neighbour. Uncovered border pixels (zoom out, rotated
    corners) are black in the image and ignored by every task: -1 in integer label maps, NaN in
    float masks (saliency, edges), the all-zero vector in normals. Normal vectors are rotated
    with the image: for a counter-clockwise angle θ and y pointing down,
    ``(x, y) -> (x cos θ + y sin θ, -x sin θ + y cos θ)``.

    Args:
        degrees: ``d`` for angles in ``[-d, d]``, or a ``(low, high)`` range.
        scales: ``(low, high)`` range of zoom factors.
    """

    def __init__(self, degrees: float | tuple[float, float] = 20.0,
                 scales: tuple[float, float] = (0.75, 1.25)) -> None:
        super().__init__()
        low, high = (-degrees, degrees) if isinstance(degrees, int | float) else degrees
        if low > high or not 0 < scales[0] <= scales[1]:
            raise ValueError(f"need degrees low <= high and 0 < scale low <= high, got degrees "
                             f"{degrees} and scales {scales}")
        self.degrees = (float(low), float(high))
        self.scales = (float(scales[0]), float(scales[1]))

    def make_params(self, flat_inputs: list[Any]) -> dict[str, Any]:
        return {"angle": float(torch.empty(()).uniform_(*self.degrees)),
                "scale": float(torch.empty(()).uniform_(*self.scales))}

    def transform(self, inpt: Any, params: dict[str, Any]) -> Any:
        angle = params["angle"]
        # F.affine rotates clockwise for positive angles.
        geometry = {"angle": -angle, "translate": [0.0, 0.0], "scale": params["scale"],
                    "shear": [0.0, 0.0]}
        if isinstance(inpt, Normals):
            x, y, z = inpt.as_subclass(Tensor)
            cos, sin = math.cos(math.radians(angle)), math.sin(math.radians(angle))
            rotated = torch.stack([x * cos + y * sin, -x * sin + y * cos, z])
            warped = F.affine(rotated, **geometry, interpolation=v2.InterpolationMode.BILINEAR)
            return tv_tensors.wrap(warped, like=inpt)
        if isinstance(inpt, tv_tensors.Mask):
            return F.affine(inpt, **geometry, fill=math.nan if inpt.is_floating_point() else -1)
        if isinstance(inpt, tv_tensors.Image):
            return F.affine(inpt, **geometry, interpolation=v2.InterpolationMode.BILINEAR)
        return inpt

    # torchvision < 0.21 calls the hooks by their former private names.
    _get_params = make_params
    _transform = transform


def train_transform(benchmark: Benchmark, depth_scaling: DepthScaling = "divide",
                    crop_size: tuple[int, int] = (256, 256)) -> v2.Compose:
    """The standard training augmentation of ``benchmark``, on wrapped samples.

    * ``"nyuv2"``, ``"cityscapes"`` (mtan layouts): :class:`RandomScaleCrop` with scales
      (1, 1.2, 1.5) and ``depth_scaling``, then a horizontal flip with p = 0.5 (mtan / LibMTL /
      CAGrad). Keep ``"divide"`` to compare with published numbers (CAGrad divides Cityscapes
      disparity too); ``"multiply"`` is the physically right choice for disparity.
    * ``"cityscapes_3task"`` (Auto-Lambda): a random ``crop_size`` crop (scale fixed at 1, so
      disparity is unchanged), then a horizontal flip with p = 0.5.

    Example:
        >>> train_transform("nyuv2")
        Compose(
              RandomScaleCrop(scales=(1.0, 1.2, 1.5), depth_scaling=divide)
              RandomHorizontalFlip(p=0.5)
        )
    """
    if benchmark in ("nyuv2", "cityscapes"):
        zoom: v2.Transform = RandomScaleCrop((1.0, 1.2, 1.5), depth_scaling)
    elif benchmark == "cityscapes_3task":
        zoom = v2.RandomCrop(crop_size)
    else:
        raise ValueError(f"unknown benchmark {benchmark!r}; expected 'nyuv2', 'cityscapes' or "
                         f"'cityscapes_3task'")
    return v2.Compose([zoom, v2.RandomHorizontalFlip(p=0.5)])


def pascal_transform(image_size: int = 512, augment: bool = False, flip: float = 0.5,
                     degrees: float | tuple[float, float] = 20.0,
                     scales: tuple[float, float] = (0.75, 1.25),
                     normalize: bool = True) -> v2.Compose:
    """The reference's PASCAL-Context pipeline on wrapped samples.

    Training (``augment``): horizontal flip with probability ``flip``,
    :class:`RandomScaleRotate`, resize to ``image_size`` × ``image_size``; evaluation: the
    resize only. Both end with ImageNet mean/std normalisation of the image (``normalize``).

    Example:
        >>> [type(step).__name__ for step in pascal_transform(64, augment=True).transforms]
        ['RandomHorizontalFlip', 'RandomScaleRotate', 'Resize', 'Normalize']
    """
    steps: list[v2.Transform] = []
    if augment:
        steps += [v2.RandomHorizontalFlip(p=flip), RandomScaleRotate(degrees, scales)]
    steps.append(v2.Resize((image_size, image_size), antialias=True))
    if normalize:
        steps.append(v2.Normalize(IMAGENET_MEAN, IMAGENET_STD))
    return v2.Compose(steps)
