"""Reading dataset files: images, label PNGs and list files, each problem a DataError naming the file."""

from __future__ import annotations

import math
import os
import struct
import zipfile
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image

from harness.data.base import ClassificationSplit
from harness.errors import DataError

DECODE_ERRORS = (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError)
_NPY_HEADER_READERS = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}


def read_rgb(path: Path) -> np.ndarray:
    """Decode an image file to uint8 RGB (H, W, 3)."""
    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except DECODE_ERRORS as err:
        raise DataError(f"cannot decode image ({err})", where=path) from None


def image_size(path: Path) -> tuple[int, int]:
    """(width, height) from the image header only."""
    try:
        with Image.open(path) as img:
            return img.size
    except DECODE_ERRORS as err:
        raise DataError(f"cannot read image header ({err})", where=path) from None


def read_label_png(
    path: Path, modes: tuple[str, ...], num_labels: int, also_allowed: tuple[int, ...] = (), what: str = "mask"
) -> np.ndarray:
    """Label indices of a PNG in one of `modes` ('P': palette indices, 'L': grey values), uint8 (H, W);
    every value must be below `num_labels` or in `also_allowed` (e.g. an ignore index)."""
    try:
        with Image.open(path) as img:
            if img.mode not in modes:
                raise DataError(
                    f"{what} has mode {img.mode}; expected a PNG of label indices in mode "
                    f"{' or '.join(repr(m) for m in modes)}",
                    where=path,
                )
            labels = np.array(img)
    except DECODE_ERRORS as err:
        raise DataError(f"cannot decode {what} ({err})", where=path) from None
    bad = (labels >= num_labels) & ~np.isin(labels, also_allowed)
    if bad.any():
        allowed = f"0..{num_labels - 1}" + "".join(f" and {v}" for v in also_allowed)
        raise DataError(f"{what} holds value {int(labels[bad][0])}; labels are {allowed}", where=path)
    return labels


def check_same_size(labels: np.ndarray, labels_path: Path, image_path: Path, what: str = "mask") -> np.ndarray:
    """`labels` unchanged when it has its image's size, else a DataError naming both files."""
    width, height = image_size(image_path)
    if labels.shape != (height, width):
        raise DataError(
            f"{what} is {labels.shape[1]}x{labels.shape[0]} but its image {Path(image_path).name} is {width}x{height}",
            where=labels_path,
        )
    return labels


class ImageFileSplit(ClassificationSplit):
    """Images at root/<files[i]> with 0-based labels; ids are the dataset's own names for them (default: files)."""

    def __init__(
        self,
        name: str,
        root: Path,
        files: list[str],
        labels: np.ndarray,
        num_classes: int,
        ids: list[str] | None = None,
    ):
        self.name, self.root, self.files = name, Path(root), files
        self.ids = files if ids is None else ids
        self.labels, self.num_classes = np.asarray(labels, np.int64), num_classes

    def image_path(self, i: int) -> Path:
        return self.root / self.files[i]

    def image(self, i: int) -> np.ndarray:
        return read_rgb(self.image_path(i))


def read_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, stripped text) of each non-blank line of a UTF-8 text file."""
    try:
        text = Path(path).read_text(encoding="utf-8")
    except FileNotFoundError:
        raise DataError("file missing", where=path) from None
    except (OSError, UnicodeDecodeError) as err:
        raise DataError(f"cannot read text file ({err})", where=path) from None
    return [(n, line.strip()) for n, line in enumerate(text.splitlines(), start=1) if line.strip()]


def check_files_exist(root: Path, files: list[str], listed_in: Path) -> None:
    """DataError naming the first of `files` (paths relative to root) that is not on disk.

    Lists each folder once instead of checking each file, so 100k files cost a few hundred directory reads.
    """
    by_folder: dict[str, list[str]] = defaultdict(list)
    for file in files:
        folder, _, name = file.rpartition("/")
        by_folder[folder].append(name)
    missing = []
    for folder, names in by_folder.items():
        try:
            with os.scandir(root / folder) as entries:
                present = {entry.name for entry in entries if entry.is_file()}
        except (FileNotFoundError, NotADirectoryError):
            present = set()
        missing += [f"{folder}/{name}" if folder else name for name in names if name not in present]
    if missing:
        raise DataError(
            f"{len(missing)} image(s) listed in {Path(listed_in).name} are missing, first {missing[0]}",
            where=root / missing[0],
        )


@dataclass(frozen=True)
class NpyMember:
    """One array of an .npz, described by its npy header; data_offset is where its data starts in the .npz
    file when stored uncompressed (None when compressed)."""

    key: str
    dtype: np.dtype
    shape: tuple[int, ...]
    fortran_order: bool
    data_offset: int | None


def npz_members(path: Path) -> dict[str, NpyMember]:
    """The arrays of an .npz by key, from its zip directory and npy headers alone (no array data is read)."""
    try:
        with zipfile.ZipFile(path) as archive, open(path, "rb") as raw:
            return {
                info.filename.removesuffix(".npy"): _member(archive, raw, info, path)
                for info in archive.infolist()
                if info.filename.endswith(".npy")
            }
    except (OSError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"not a readable .npz file ({type(err).__name__}: {err})", where=path) from None


def _member(archive: zipfile.ZipFile, raw: BinaryIO, info: zipfile.ZipInfo, path: Path) -> NpyMember:
    key = info.filename.removesuffix(".npy")
    try:
        with archive.open(info) as stream:
            version = np.lib.format.read_magic(stream)
            if version not in _NPY_HEADER_READERS:
                raise ValueError(f"unsupported .npy format version {version}")
            shape, fortran_order, dtype = _NPY_HEADER_READERS[version](stream)
            header_bytes = stream.tell()
    except ValueError as err:
        raise DataError(f"key '{key}' is not a readable .npy array ({err})", where=path) from None
    if info.file_size < header_bytes + math.prod(shape) * dtype.itemsize:  # Python ints: no overflow
        raise DataError(f"key '{key}' is truncated: fewer bytes than its shape {shape} needs", where=path)
    offset = None
    if info.compress_type == zipfile.ZIP_STORED:
        raw.seek(info.header_offset)
        local_header = raw.read(zipfile.sizeFileHeader)
        name_bytes, extra_bytes = struct.unpack("<HH", local_header[26:30])
        offset = info.header_offset + zipfile.sizeFileHeader + name_bytes + extra_bytes + header_bytes
    return NpyMember(key, dtype, tuple(shape), fortran_order, offset)


def load_member(path: Path, member: NpyMember) -> np.ndarray:
    """The member's array: memory-mapped when stored uncompressed, else decompressed whole into memory."""
    if member.data_offset is not None:
        order = "F" if member.fortran_order else "C"
        return np.memmap(path, member.dtype, "r", member.data_offset, member.shape, order)
    with np.load(path) as npz:
        return npz[member.key]
