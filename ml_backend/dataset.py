"""Labeled images in memory: the one dataset type every source fills.

Symbols: N images, K classes, H x W x C working shape (C is 1 or 3).

Sources: :func:`load_folder` (the paper's storage format) and :func:`build_dataset`
(records from a Label Studio project, filled by the service). Unreadable images are
skipped and listed in ``ImageDataset.skipped``; they never abort a load.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import logging
import os
import tempfile
import unicodedata
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence

import numpy as np
from PIL import Image, ImageOps

from .errors import DatasetError, UnreadableImage
from .vocabulary import SPLITS

log = logging.getLogger(__name__)

PROGRESS_EVERY = 500  # images decoded between progress reports
MIN_SIDE = 8  # smaller images carry no usable content (1x1 tracking pixels, icons)
MAX_WORKING_SIDE = 160  # cap for the working copy; photos are resized, small images kept
THUMB_SIDE = 64
DEEP_MODES = ("I;16", "I;16B", "I;16L", "I;16N", "I", "F")  # 16-bit and float: rescaled to 8-bit grey
GREY_MODES = ("1", "L", "LA", "La", *DEEP_MODES)  # decoded to one channel, like palettes of greys; the rest to RGB
PALETTE_MODES = ("P", "PA")
ALPHA_MODES = ("LA", "PA", "RGBA", "P")  # composited on white (a palette may hold a transparent entry)
ROTATED = (5, 6, 7, 8)  # EXIF orientations that swap width and height
MEMMAP_ABOVE_BYTES = 1 << 30  # working copies larger than this live in a file, not in RAM
COPY_CHUNK_BYTES = 1 << 26  # pixels copied per step into a subset's working copy


@dataclass
class SkippedItem:
    item: str
    reason: str


@dataclass
class Record:
    """One labeled image before decoding. ``source`` is a file path or raw bytes; ``annotations``
    (Label Studio tasks) holds (annotation id, annotator id or None, class name) of every
    labeling annotation, oldest first."""

    item: str
    source: str | os.PathLike | bytes
    label: str
    split: str = "train"
    task_id: int = -1
    annotations: tuple[tuple[int, int | None, str], ...] = ()


@dataclass
class ImageDataset:
    """N labeled, decoded images.

    items : list of str, (N,) stable ids: path relative to ROOT, or ``task-<id>``.
    images : ndarray (N, H, W, C) uint8, every image resized to one working shape.
    labels : ndarray (N,) int64, index into ``class_names``.
    class_names : list of str, (K,) sorted, so class indices are stable.
    splits : ndarray (N,) str, ``"train"`` or ``"val"``.
    pixel_hashes : list of str, (N,) SHA-1 of the decoded original pixels (exact-duplicate key).
    task_ids : ndarray (N,) int64, Label Studio task id, -1 for folder datasets.
    weights : ndarray (N,) float32, training weight per image (1.0 unless a reviewer confirmed it).
    skipped : list of SkippedItem, images that could not be used, with the reason.
    scratch_dir : folder for working copies over MEMMAP_ABOVE_BYTES (None: always in RAM).
    aspects : ndarray (N,) float32, each original image's width / height (the working copy
        squeezes every image to one shape; views show it as it was). None: the working shape's.
    """

    items: list[str]
    images: np.ndarray
    labels: np.ndarray
    class_names: list[str]
    splits: np.ndarray
    pixel_hashes: list[str]
    task_ids: np.ndarray
    weights: np.ndarray
    skipped: list[SkippedItem] = field(default_factory=list)
    scratch_dir: str | os.PathLike | None = None
    aspects: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.items)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def thumbnails(self, side: int = THUMB_SIDE) -> np.ndarray:
        """(N, h, w, C) uint8 copies no larger than ``side`` pixels, for views."""
        h, w = self.images.shape[1:3]
        if max(h, w) <= side:
            return self.images
        return np.stack([_resize(img, (side, side)) for img in self.images])

    def subset(self, keep: np.ndarray) -> ImageDataset:
        """The images where ``keep`` (N,) bool is True. Their pixels are copied a chunk at a time
        into a working copy made like the loader's (a file when large): ``images[keep]`` on a
        memory-mapped copy would read every kept image into RAM at once."""
        rows = np.flatnonzero(keep)
        images = _copied_rows(self.images, rows, self.scratch_dir)
        return dataclasses.replace(
            self, items=[self.items[i] for i in rows], images=images, labels=self.labels[rows],
            splits=self.splits[rows], pixel_hashes=[self.pixel_hashes[i] for i in rows],
            task_ids=self.task_ids[rows], weights=self.weights[rows],
            aspects=None if self.aspects is None else self.aspects[rows])


def decode_image(data: bytes, *, name: str = "image") -> tuple[np.ndarray, str]:
    """Decode bytes to (H, W, C) uint8 with C in {1, 3}, plus the SHA-1 of those pixels.

    Handles grayscale, palette, alpha, CMYK, 16-bit and float images and EXIF rotation.
    Raises UnreadableImage naming ``name`` for empty, corrupt, tiny or oversized images.
    """
    if not data:
        raise UnreadableImage(f"{name}: empty file")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            img.load()
            img = ImageOps.exif_transpose(img)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning):
        raise UnreadableImage(f"{name}: image too large to decode safely (over {Image.MAX_IMAGE_PIXELS} pixels)")
    except Image.UnidentifiedImageError:
        raise UnreadableImage(f"{name}: not a readable image (not a file type Pillow knows, such as PNG or JPEG); "
                              "convert it or remove it from the project") from None
    except Exception as exc:  # Pillow raises many types for corrupt files
        raise UnreadableImage(f"{name}: not a readable image ({type(exc).__name__}: {exc}); "
                              "the file may be truncated: upload it again") from None
    if min(img.size) < MIN_SIDE:
        raise UnreadableImage(f"{name}: {img.size[0]}x{img.size[1]} pixels is too small (minimum side {MIN_SIDE})")
    pixels = _to_uint8(img)
    return pixels, hashlib.sha1(pixels.tobytes() + str(pixels.shape).encode()).hexdigest()


def _to_uint8(img: Image.Image) -> np.ndarray:
    if img.mode in DEEP_MODES:
        return _deep_to_uint8(np.asarray(img))[:, :, None]
    grey = _channels(img) == 1
    if img.mode == "La":  # premultiplied alpha (TIFF): Pillow converts it to LA only
        img = img.convert("LA")
    if img.mode in ALPHA_MODES:
        rgba = img.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        img = Image.alpha_composite(background, rgba)
    if grey:  # r == g == b here, so L keeps the grey values exactly
        return np.asarray(img.convert("L"), dtype=np.uint8)[:, :, None]
    rgb = np.asarray(img.convert("RGB"), dtype=np.uint8)
    # a grey picture saved as RGB is grey: one such file must not make a grey data set colour,
    # and it is the exact copy of the same picture saved grey
    return rgb[:, :, :1].copy() if _all_grey(rgb) else rgb


def _all_grey(rgb: np.ndarray) -> bool:
    """Whether r == g == b everywhere; a strided sample first, so a colour photo costs little."""
    sample = rgb[::7, ::7]
    if not ((sample[..., 0] == sample[..., 1]).all() and (sample[..., 1] == sample[..., 2]).all()):
        return False
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _deep_to_uint8(arr: np.ndarray) -> np.ndarray:
    """16-bit and float grey to 8 bits on one scale for every image, so exposure differences
    stay and an 8-bit copy (x 257 is the standard widening) decodes to the same pixels: 16-bit
    values / 257; an image whose values stay under 4,096 is taken for 12-bit data (a scanner's
    or camera's, stored in 16 bits) and scaled / 16.06; floats in [0, 1] x 255. Other floats
    (no scale to go by) are stretched to their own range."""
    if np.issubdtype(arr.dtype, np.integer):
        top = 65535.0 if arr.max() >= 4096 else 4095.0
        return np.round(np.clip(arr, 0, top).astype(np.float32) * np.float32(255.0 / top)).astype(np.uint8)
    arr = np.nan_to_num(arr.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = float(arr.min()), float(arr.max())
    if lo >= 0.0 and hi <= 1.0:
        return np.round(arr * 255.0).astype(np.uint8)
    return np.round((arr - lo) * (255.0 / (hi - lo))).astype(np.uint8) if hi > lo else np.zeros(arr.shape, np.uint8)


def _channels(img: Image.Image) -> int:
    """1 for a grey image (a grey mode, or a palette of greys), else 3; reads no pixels, so the
    header and the decoded image agree and one grey palette PNG does not make a data set colour."""
    if img.mode in GREY_MODES:
        return 1
    return 1 if img.mode in PALETTE_MODES and _palette_is_grey(img) else 3


def _palette_is_grey(img: Image.Image) -> bool:
    """Whether every colour of the palette the file stores is a grey (r == g == b). The header
    holds the palette in the file's own layout (RGB, BGRX, planar); Pillow's unpacker reads any."""
    if img.palette is None:
        return False
    rawmode, data = img.palette.getdata()
    probe = Image.new("P", (1, 1))
    probe.putpalette(data, rawmode)
    rgb = np.array(probe.getpalette("RGB"), dtype=np.uint8).reshape(-1, 3)
    return bool((rgb == rgb[:, :1]).all())


def _resize(pixels: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    h, w = size
    if pixels.shape[:2] == (h, w):
        return pixels
    mode = "L" if pixels.shape[2] == 1 else "RGB"
    img = Image.fromarray(pixels[:, :, 0] if mode == "L" else pixels, mode)
    out = np.asarray(img.resize((w, h), Image.BILINEAR), dtype=np.uint8)
    return out[:, :, None] if mode == "L" else out


def fit_to_shape(pixels: np.ndarray, shape: tuple[int, int, int]) -> np.ndarray:
    """(h, w, c) uint8 -> ``shape`` (H, W, C): resized, grey repeated to RGB or RGB averaged to grey."""
    if pixels.shape[2] != shape[2]:
        pixels = np.repeat(pixels, 3, axis=2) if shape[2] == 3 else pixels.mean(axis=2, keepdims=True).astype(np.uint8)
    return _resize(pixels, shape[:2])


def working_shape(shapes: Sequence[tuple[int, int, int]]) -> tuple[int, int, int]:
    """One (H, W, C) for all images: the median size capped at MAX_WORKING_SIDE; C=3 if any is colour."""
    sides = np.array([s[:2] for s in shapes])
    h, w = (int(v) for v in np.median(sides, axis=0))
    scale = min(1.0, MAX_WORKING_SIDE / max(h, w))
    channels = 3 if any(s[2] == 3 for s in shapes) else 1
    return max(MIN_SIDE, round(h * scale)), max(MIN_SIDE, round(w * scale)), channels


def _read_source(source: str | os.PathLike | bytes) -> bytes:
    if isinstance(source, bytes):
        return source
    with open(source, "rb") as fh:
        return fh.read()


def _header_shape(source: str | os.PathLike | bytes) -> tuple[int, int, int] | None:
    """(H, W, C) :func:`decode_image` will return, read from the file header without decoding the
    pixels (EXIF rotation included); None when the header cannot be read (decoding says why)."""
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as img:
            w, h = img.size
            if "exif" in img.info and _orientation(img.info["exif"]) in ROTATED:
                w, h = h, w
            return h, w, _channels(img)
    except Exception:  # Pillow raises many types for corrupt files
        return None


def _orientation(exif: bytes) -> int | None:
    """The EXIF orientation in ``exif`` bytes as found in the header (Image.getexif() would decode
    a whole PNG to look for a late eXIf chunk)."""
    tags = Image.Exif()
    try:
        tags.load(exif)
    except Exception:  # an unreadable EXIF block: no rotation, as ImageOps.exif_transpose decides too
        return None
    return tags.get(0x0112)


def _working_array(n: int, shape: tuple[int, int, int], scratch_dir: str | os.PathLike | None) -> np.ndarray:
    """(n, *shape) uint8 to fill: in RAM, or above MEMMAP_ABOVE_BYTES in an unlinked temporary file
    under ``scratch_dir`` (the OS pages it in and out; it disappears with the array)."""
    size = n * int(np.prod(shape))
    if scratch_dir is None or size <= MEMMAP_ABOVE_BYTES:
        return np.empty((n, *shape), dtype=np.uint8)
    Path(scratch_dir).mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryFile(dir=scratch_dir, prefix="pixels-") as fh:
        fh.truncate(max(size, 1))
        return np.memmap(fh, dtype=np.uint8, mode="r+", shape=(n, *shape))


def build_dataset(
    records: Iterable[Record],
    *,
    class_names: Sequence[str] | None = None,
    progress: Callable[[int, int], None] | None = None,
    scratch_dir: str | os.PathLike | None = None,
) -> ImageDataset:
    """Decode records into an ImageDataset; unreadable ones go to ``skipped``.

    The working shape comes from the file headers first, then each image is decoded and
    resized straight into its row, so memory holds one full-size image at a time, never the
    whole project at full size. With ``scratch_dir``, a working copy over MEMMAP_ABOVE_BYTES
    (100,000 photos at 160 px: 7.7 GB) is a memory-mapped temporary file there.
    Sources are local (files, the download cache, bytes), so decoding is CPU work under the
    GIL and runs in this thread: threads made it slower (70,000 MNIST PNGs: 7.7 s in one
    thread, 11.1 s in four).

    class_names : the classes to index labels by (e.g. from a labeling config); default
        the sorted set of labels of the images that could be read. A label outside it is
        skipped with a reason.
    Every image weighs 1.0 in training (``reviews.apply_reviews`` changes that).
    """
    records = list(records)
    known = sorted(set(class_names) if class_names is not None else {r.label for r in records})
    index = {name: k for k, name in enumerate(known)}
    skipped: list[SkippedItem] = []
    usable: list[tuple[Record, tuple[int, int, int]]] = []
    for rec in records:
        if rec.label not in index:
            skipped.append(SkippedItem(rec.item, f"label {rec.label!r} is not one of the classes {known}"))
        elif rec.split not in SPLITS:
            skipped.append(SkippedItem(rec.item, f"split {rec.split!r} is not 'train' or 'val'"))
        else:
            usable.append((rec, _header_shape(rec.source) or (0, 0, 1)))
    readable = [shape for _, shape in usable if min(shape[:2]) >= MIN_SIDE]
    shape = working_shape(readable) if readable else (MIN_SIDE, MIN_SIDE, 1)
    images = _working_array(len(usable), shape, scratch_dir)
    kept: list[tuple[Record, str]] = []
    aspects: list[float] = []
    colour = False
    for done, (rec, _) in enumerate(usable, 1):
        try:
            pixels, digest = decode_image(_read_source(rec.source), name=rec.item)
        except (UnreadableImage, OSError) as exc:
            skipped.append(SkippedItem(rec.item, str(exc)))
        else:
            images[len(kept)] = pixels if pixels.shape == shape else fit_to_shape(pixels, shape)
            kept.append((rec, digest))
            colour = colour or pixels.shape[2] == 3
            aspects.append(pixels.shape[1] / pixels.shape[0])
        if progress and (done % PROGRESS_EVERY == 0 or done == len(usable)):
            progress(done, len(usable))
    for item in skipped:
        log.warning("skipped %s: %s", item.item, item.reason)
    _check_usable([rec for rec, _ in kept])
    images = images[:len(kept)]
    if shape[2] == 3 and not colour:  # the colour headers were grey pictures saved as RGB, or files skipped
        images = _copied_rows(images, np.arange(len(images)), scratch_dir, channels=1)
    if class_names is None:  # a folder none of whose files could be read is not a class
        known = sorted({rec.label for rec, _ in kept})
        index = {name: k for k, name in enumerate(known)}
    return ImageDataset(
        items=[rec.item for rec, _ in kept],
        images=images,
        labels=np.array([index[rec.label] for rec, _ in kept], dtype=np.int64),
        class_names=list(known),
        splits=np.array([rec.split for rec, _ in kept], dtype="<U5"),
        pixel_hashes=[digest for _, digest in kept],
        task_ids=np.array([rec.task_id for rec, _ in kept], dtype=np.int64),
        weights=np.ones(len(kept), dtype=np.float32),
        skipped=skipped,
        scratch_dir=scratch_dir,
        aspects=np.array(aspects, dtype=np.float32),
    )


def _copied_rows(images: np.ndarray, rows: np.ndarray, scratch_dir: str | os.PathLike | None, *,
                 channels: int | None = None) -> np.ndarray:
    """``images[rows]`` (its first ``channels`` only, if given) copied a chunk at a time into a
    working array made like the loader's (a file when large): ``images[rows]`` on a
    memory-mapped copy would read every row into RAM at once."""
    channels = images.shape[3] if channels is None else channels
    out = _working_array(len(rows), (*images.shape[1:3], channels), scratch_dir)
    step = max(1, COPY_CHUNK_BYTES // max(1, int(np.prod(images.shape[1:]))))
    for start in range(0, len(rows), step):
        out[start:start + step] = images[rows[start:start + step]][..., :channels]
    return out


def _printable(name: str) -> str:
    """A file or folder name as UTF-8 text: bytes that are not UTF-8 (an old Windows or zip name)
    are written as ``\\xe9``, so the name can go into scores.csv and JSON; the file is still read.
    Composed (NFC), as typed: macOS stores "ü" as "u" + a combining mark, which looks the same
    and would never match a class or item name typed into a verdicts file."""
    return unicodedata.normalize("NFC", name.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace"))


def _check_usable(decoded: list[Record]) -> None:
    if not decoded:
        raise DatasetError("no readable labeled images: label some images (or check the skipped list) and retry")
    present = sorted({rec.label for rec in decoded})
    if len(present) < 2:
        raise DatasetError(
            f"only one class ({present[0]!r}) has labeled images; label images of at least two classes "
            "so the model can disagree with a label")


def folder_records(root: str | os.PathLike) -> list[Record]:
    """Records for ``ROOT/{train,val}/<label>/<file>`` or ``ROOT/<label>/<file>``."""
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(f"{root}: not a folder; expected ROOT/<label>/<image> or ROOT/train/<label>/<image>")
    subdirs = {p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith(".")}
    splits = [split for split in SPLITS if split in subdirs]
    others = sorted(subdirs - set(SPLITS))
    if splits and others:  # read as ROOT/<label>/, the split names would become classes
        raise DatasetError(
            f"{root}: has split folders ({', '.join(splits)}) and other folders too "
            f"({', '.join(_printable(name) for name in others)}): put every image under ROOT/train/<label>/ or "
            "ROOT/val/<label>/ and move the others (a test split, __MACOSX) out of ROOT")
    layout = [(split, root / split) for split in splits] if splits else [("train", root)]
    records = []
    for split, base in layout:
        for label_dir in sorted(p for p in base.iterdir() if p.is_dir() and not p.name.startswith(".")):
            for path in sorted(label_dir.rglob("*")):
                if path.is_file() and not path.name.startswith("."):
                    rel = _printable(path.relative_to(root).as_posix())
                    records.append(Record(item=rel, source=path, label=_printable(label_dir.name), split=split))
    if not records:
        raise DatasetError(
            f"{root}: no images found; expected ROOT/<label>/<image> or ROOT/train/<label>/<image> "
            "(and optionally ROOT/val/<label>/<image>)")
    return records


def load_folder(root: str | os.PathLike, progress: Callable[[int, int], None] | None = None,
                scratch_dir: str | os.PathLike | None = None) -> ImageDataset:
    """Load the paper's storage format; see :func:`folder_records` and :func:`build_dataset`."""
    return build_dataset(folder_records(root), progress=progress, scratch_dir=scratch_dir)
