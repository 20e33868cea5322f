"""Images as model inputs: a folder of class subfolders or a CSV list, decoded with Pillow
and preprocessed by a `Recipe`, a batch at a time.

- **Folder** (torchvision's ``ImageFolder`` layout): ``DIR/<class>/<image>``, classes
  sorted by name (class i is the i-th name), images found in each class folder and its
  subfolders, sorted by path. Every file there must be an image (by its suffix,
  `IMAGE_SUFFIXES`); names starting with ``.`` are skipped; a file beside the class
  folders is refused, and so is a class count other than the model's (a subset of the
  classes needs a CSV, which says each label).
- **CSV**: one ``path,label`` line per image (an optional ``path,label`` header first),
  paths relative to the CSV's folder, labels integer class indices.

The `Recipe` (torchvision's evaluation transform): resize the shorter side to `resize`
(bilinear; None: keep the size), crop the centre to the model input's height and width,
scale to [0, 1], subtract `mean` and divide by `std` per channel, and lay the result out
as ``NCHW`` or ``NHWC``. The model must have one float input ``[batch, C, H, W]`` (or
``[batch, H, W, C]``) of 1 (grey) or 3 (RGB) channels. `PRESETS` holds ``imagenet``.
An unreadable or non-image file, a missing file, an image smaller than the crop, a bad
label are errors naming the file (and the CSV line or sample).
"""

from __future__ import annotations

import csv
import io
import os
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np

from edgeadapt.data.batches import Inputs, check_range, check_size
from edgeadapt.errors import InputError, MissingExtraError
from edgeadapt.formats.bundle import InputSpec
from edgeadapt.formats.jsonio import Fields, check_regular, loads, read_text

__all__ = [
    "IMAGE_SUFFIXES",
    "LAYOUTS",
    "PRESETS",
    "ImageInputs",
    "Recipe",
    "load_recipe",
    "make_recipe",
    "open_images",
]

#: The file suffixes read as images in a folder (case-insensitive).
IMAGE_SUFFIXES = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".ppm", ".tif", ".tiff", ".webp")
LAYOUTS = ("NCHW", "NHWC")
#: The largest side `Recipe.resize` and `Recipe.crop` take.
MAX_SIDE = 65_536
_LABEL = re.compile(r"-?[0-9]{1,19}")


@dataclass(frozen=True)
class Recipe:
    """How an image becomes a model input (see the module docstring). `crop` (None: the
    model input's size) must equal the input's height and width when given; `mean` and
    `std` hold one value or one per channel."""

    resize: int | None = None
    crop: int | None = None
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    layout: str = "NCHW"

    def __post_init__(self) -> None:
        for name in ("resize", "crop"):
            v = getattr(self, name)
            if v is not None and (isinstance(v, bool) or not isinstance(v, int)):
                raise InputError(f"must be an integer, got {v!r}", source=name)
            if v is not None and not 1 <= v <= MAX_SIDE:
                raise InputError(f"must be in 1..{MAX_SIDE}, got {v}", source=name)
        for name in ("mean", "std"):
            values = getattr(self, name)
            if len(values) not in (1, 3) or not all(np.isfinite(values)):
                raise InputError(f"expected 1 or 3 finite numbers, got {values}", source=name)
        if not all(v > 0 for v in self.std):
            raise InputError(f"must be > 0, got {self.std}", source="std")
        if self.layout not in LAYOUTS:
            raise InputError(f"must be NCHW or NHWC, got {self.layout!r}", source="layout")

    def to_json(self) -> dict[str, Any]:
        return {
            "resize": self.resize,
            "crop": self.crop,
            "mean": list(self.mean),
            "std": list(self.std),
            "layout": self.layout,
        }


#: Named recipes: ``imagenet`` is torchvision's evaluation transform for ImageNet models.
PRESETS = {
    "imagenet": Recipe(resize=256, crop=224, mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225)),
}


def load_recipe(value: str | os.PathLike[str]) -> Recipe:
    """A preset's name (`PRESETS`) or a JSON file: an object of the `Recipe` fields, each
    optional, plus ``preset`` (the recipe the others change); errors name the field."""
    text = os.fspath(value)
    if text in PRESETS:
        return PRESETS[text]
    if not text.endswith(".json"):
        raise InputError(
            f"expected a preset ({', '.join(PRESETS)}) or a .json file, got {text!r}",
            source="recipe",
        )
    path = check_regular(value)
    doc = Fields(loads(read_text(path), path), source=path)
    unknown = sorted(set(doc.obj) - {"preset", *Recipe.__dataclass_fields__})
    if unknown:
        doc.fail(
            f"unknown field (fields: preset, {', '.join(Recipe.__dataclass_fields__)})", unknown[0]
        )
    base = Recipe()
    if "preset" in doc.obj:
        name = doc.get("preset", str)
        if name not in PRESETS:
            doc.fail(f"unknown preset {name!r} (presets: {', '.join(PRESETS)})", "preset")
        base = PRESETS[name]
    changes: dict[str, Any] = {}
    for key in ("resize", "crop"):
        if key in doc.obj:
            changes[key] = doc.get(key, (int, type(None)))
    for key in ("mean", "std"):
        if key in doc.obj:
            values = doc.get(key, (list, int, float))
            values = values if isinstance(values, list) else [values]
            for i, v in enumerate(values):
                if isinstance(v, bool) or not isinstance(v, int | float):
                    doc.fail("expected a number", f"{key}[{i}]")
            changes[key] = tuple(float(v) for v in values)
    if "layout" in doc.obj:
        changes["layout"] = doc.get("layout", str)
    try:
        return replace(base, **changes)
    except InputError as e:
        raise InputError(e.message, source=path, field=f"$.{e.source}") from None


def make_recipe(
    recipe: Recipe | str | os.PathLike[str] | None = None,
    *,
    resize: int | None = None,
    crop: int | None = None,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
    layout: str | None = None,
) -> Recipe | None:
    """`recipe` (or the one it names, `load_recipe`; None: `Recipe()`) with the fields
    given changed; None when nothing is given at all."""
    changes: dict[str, Any] = {
        "resize": resize,
        "crop": crop,
        "mean": None if mean is None else tuple(mean),
        "std": None if std is None else tuple(std),
        "layout": layout,
    }
    changes = {k: v for k, v in changes.items() if v is not None}
    if recipe is None and not changes:
        return None
    if not isinstance(recipe, Recipe):
        recipe = Recipe() if recipe is None else load_recipe(recipe)
    return replace(recipe, **changes)


def _pil() -> Any:
    """Pillow's Image module; a clear error when it is not installed."""
    try:
        from PIL import Image
    except ImportError:
        raise MissingExtraError("Pillow", "images", "reading images") from None
    return Image


@dataclass(frozen=True)
class _Geometry:
    """Where the model's one image input puts channels, height and width."""

    name: str
    channels: int
    height: int
    width: int
    layout: str


def _geometry(specs: Sequence[InputSpec], recipe: Recipe, source: Path) -> _Geometry:
    if len(specs) != 1:
        names = ", ".join(s.name for s in specs)
        raise InputError(
            f"images feed a model of one input; the bundle has {len(specs)} ({names})",
            source=source,
        )
    (spec,) = specs
    dims = [int(d) for d in spec.shape[1:]]
    shape = ", ".join(str(d) for d in spec.shape)
    if np.dtype(spec.dtype).kind != "f" or len(dims) != 3:
        raise InputError(
            f"images feed one float input [batch, C, H, W] (or [batch, H, W, C]); the "
            f"model's is {spec.name} {spec.dtype} [{shape}]",
            source=source,
        )
    c, h, w = dims if recipe.layout == "NCHW" else (dims[2], dims[0], dims[1])
    if c not in (1, 3):
        other = "NHWC" if recipe.layout == "NCHW" else "NCHW"
        raise InputError(
            f"input {spec.name} [{shape}] read as {recipe.layout} has {c} channels, not 1 "
            f"or 3 (is its layout {other}?)",
            source="layout",
        )
    if recipe.crop is not None and (h, w) != (recipe.crop, recipe.crop):
        raise InputError(
            f"crop {recipe.crop} differs from the model input's {h}x{w}", source="crop"
        )
    for name in ("mean", "std"):
        if len(getattr(recipe, name)) not in (1, c):
            raise InputError(
                f"{len(getattr(recipe, name))} values for a {c}-channel input", source=name
            )
    return _Geometry(spec.name, c, h, w, recipe.layout)


def _decode(path: Path, g: _Geometry, recipe: Recipe, image: Any) -> np.ndarray:
    """One image file as the model input's sample (`recipe` applied)."""
    try:
        with image.open(path) as im:
            im = im.convert("RGB" if g.channels == 3 else "L")
            if recipe.resize is not None:
                im = im.resize(_resized(im.size, recipe.resize), image.Resampling.BILINEAR)
            w, h = im.size
            if w < g.width or h < g.height:
                raise InputError(
                    f"image is {w}x{h} after the recipe, smaller than the model input's "
                    f"{g.width}x{g.height} (give a resize)",
                    source=path,
                )
            top, left = round((h - g.height) / 2), round((w - g.width) / 2)
            im = im.crop((left, top, left + g.width, top + g.height))
            a = np.asarray(im, dtype=np.float32)
    except InputError:
        raise
    except (OSError, ValueError, image.DecompressionBombError) as e:
        raise InputError(f"not a readable image ({e})", source=path) from None
    a = a.reshape(g.height, g.width, g.channels) / np.float32(255)
    mean, std = np.asarray(recipe.mean, np.float32), np.asarray(recipe.std, np.float32)
    x: np.ndarray = (a - mean) / std
    return x.transpose(2, 0, 1) if g.layout == "NCHW" else x


def _resized(size: tuple[int, int], shorter: int) -> tuple[int, int]:
    """(width, height) with the shorter side `shorter` (torchvision's Resize(int))."""
    w, h = size
    if w <= h:
        return shorter, int(shorter * h / w)
    return int(shorter * w / h), shorter


@dataclass(frozen=True)
class _Sample:
    path: Path
    label: int
    line: int | None  # the CSV line, None in a folder


class ImageInputs(Inputs):
    """Images decoded a batch at a time (see the module docstring); `classes` are the
    folder's class names (None for a CSV)."""

    kind = "images"

    def __init__(
        self,
        specs: Sequence[InputSpec],
        path: Path,
        samples: Sequence[_Sample],
        classes: Sequence[str] | None,
        recipe: Recipe,
    ) -> None:
        super().__init__(specs, len(samples), path, ())
        self.path = path
        self.samples = tuple(samples)
        self.classes = None if classes is None else tuple(classes)
        self.recipe = recipe
        self._geometry = _geometry(specs, recipe, path)

    def batches(
        self, size: int, *, start: int = 0, stop: int | None = None
    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        size = check_size(size)
        start, stop = check_range(start, stop, len(self.samples))
        image = _pil()
        g = self._geometry
        shape = (
            (g.channels, g.height, g.width)
            if g.layout == "NCHW"
            else (g.height, g.width, g.channels)
        )
        for lo in range(start, stop, size):
            chunk = self.samples[lo : min(lo + size, stop)]
            out = np.empty((len(chunk), *shape), dtype=np.dtype(self.specs[0].dtype))
            for i, s in enumerate(chunk):
                out[i] = _decode(s.path, g, self.recipe, image)
            yield lo, {g.name: out}

    def labels(self, num_classes: int, of: str = "") -> np.ndarray:
        if self.classes is not None and len(self.classes) != num_classes:
            whose = f" of {of}" if of else ""
            raise InputError(
                f"has {len(self.classes)} class folders, the model{whose} has {num_classes} "
                "classes: a folder needs one subfolder per class (sorted by name, as "
                "torchvision's ImageFolder); for a subset of the classes give a CSV of "
                "path,label lines",
                source=self.path,
            )
        y = np.array([s.label for s in self.samples], dtype=np.int64)
        bad = np.flatnonzero((y < 0) | (y >= num_classes))
        if bad.size:
            i = int(bad[0])
            s = self.samples[i]
            whose = f" of {of}" if of else ""
            raise InputError(
                f"sample {i} ({s.path.name}): label {s.label} outside the {num_classes} "
                f"classes{whose} (0..{num_classes - 1})",
                source=self.path,
                field=None if s.line is None else f"line {s.line}",
            )
        return y

    def record(self) -> dict[str, Any]:
        return {
            **super().record(),
            "list": "csv" if self.classes is None else "folder",
            "classes": None if self.classes is None else len(self.classes),
            "recipe": self.recipe.to_json(),
        }


def _visible(names: Sequence[str]) -> list[str]:
    return sorted(n for n in names if not n.startswith("."))


def _folder(root: Path) -> tuple[list[_Sample], list[str]]:
    """The images of `root`'s class folders and the class names (see the module docstring)."""
    try:
        names = _visible(os.listdir(root))
    except OSError as e:
        raise InputError(f"cannot read: {e.strerror or e}", source=root) from None
    stray = [n for n in names if not (root / n).is_dir()]
    if stray:
        raise InputError(
            "a file beside the class folders: images go in one subfolder per class",
            source=root / stray[0],
        )
    samples: list[_Sample] = []
    for label, name in enumerate(names):
        for top, dirs, files in os.walk(root / name, followlinks=True):
            dirs[:] = _visible(dirs)
            for f in _visible(files):
                path = Path(top) / f
                if path.suffix.lower() not in IMAGE_SUFFIXES:
                    raise InputError(
                        f"not an image file (images end in {', '.join(IMAGE_SUFFIXES)})",
                        source=path,
                    )
                samples.append(_Sample(path, label, None))
    if not names:
        raise InputError("no class folders (DIR/<class>/<image>)", source=root)
    return samples, names


def _csv_list(path: Path) -> list[_Sample]:
    """The ``path,label`` lines of the CSV at `path` (see the module docstring)."""
    samples: list[_Sample] = []
    reader = csv.reader(io.StringIO(read_text(path), newline=""))
    try:
        for row in reader:
            line = reader.line_num
            if not row or (len(row) == 1 and not row[0].strip()):
                continue
            if not samples and [c.strip() for c in row] == ["path", "label"]:
                continue
            if len(row) != 2 or not row[0]:
                raise InputError(
                    f"expected path,label, got {row!r}", source=path, field=f"line {line}"
                )
            label = row[1].strip()
            if not _LABEL.fullmatch(label):
                raise InputError(
                    f"label must be an integer class index, got {label!r}",
                    source=path,
                    field=f"line {line}",
                )
            image = path.parent / row[0]
            if not image.is_file():
                raise InputError(
                    f"no such image file {row[0]!r} (paths are relative to the CSV's folder)",
                    source=path,
                    field=f"line {line}",
                )
            samples.append(_Sample(image, int(label), line))
    except csv.Error as e:
        raise InputError(
            f"not a readable CSV ({e})", source=path, field=f"line {reader.line_num}"
        ) from None
    return samples


def open_images(path: Path, specs: Sequence[InputSpec], recipe: Recipe | None) -> ImageInputs:
    """The images of the folder or CSV list at `path` as `Inputs` of the model's one
    image input, preprocessed by `recipe` (None: `Recipe()`); listed now, decoded a
    batch at a time."""
    recipe = recipe or Recipe()
    _pil()  # a missing Pillow is said before anything else
    if path.is_dir():
        samples, classes = _folder(path)
    else:
        samples, classes = _csv_list(path), None
    if not samples:
        raise InputError("holds no images", source=path)
    return ImageInputs(specs, path, samples, classes, recipe)
