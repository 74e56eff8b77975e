"""`bench data fetch`: download a dataset's official archives (sources.yaml), verify, extract, install atomically.

Downloads go to <data root>/_downloads/<filename>.part and resume with HTTP Range requests. A checksum mismatch
deletes the .part; anything that stops extraction or conversion removes the staging folder and keeps the
verified .part, so the next run starts from it. The dataset folder appears under the data root only complete,
by rename; the .part files are deleted once it is there.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import re
import shutil
import sys
import tarfile
import tempfile
import zipfile
from collections.abc import Callable
from pathlib import Path
from urllib.error import HTTPError
from urllib.parse import urlparse
from urllib.request import Request, urlopen

import numpy as np
import yaml
from PIL import Image
from pydantic import BaseModel, ConfigDict, Field, RootModel, ValidationError, field_validator
from scipy.io import loadmat
from tqdm import tqdm

from harness.data import DATASETS
from harness.errors import DataError, SpecError
from harness.lifetime import owned_prefix, remove_orphaned
from harness.yamlfile import validation_error_line

SOURCES_FILE = Path(__file__).with_name("sources.yaml")
BASE_URL_ENV = "BENCH_FETCH_BASE_URL"
SOURCES_ENV = "BENCH_SOURCES"
DOWNLOADS = "_downloads"
CHUNK = 1 << 20
TIMEOUT_S = 60
USER_AGENT = "vrbench-fetch/1"


class Archive(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    url: str = Field(pattern=r"^https?://")
    filename: str | None = Field(default=None, pattern=r"^[\w.-]+$")
    size: int | None = Field(default=None, gt=0)
    checksum: str = Field(pattern=r"^(sha256:[0-9a-f]{64}|md5:[0-9a-f]{32})$")
    published_by: str

    @property
    def name(self) -> str:
        return self.filename or Path(urlparse(self.url).path).name


class Source(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    homepage: str | None = None
    files: list[Archive] = Field(min_length=1)
    root: str = "."
    convert: str | None = None
    note: str | None = None

    @field_validator("convert")
    @classmethod
    def _known_converter(cls, v: str | None) -> str | None:
        if v is not None and v not in CONVERTERS:
            raise ValueError(f"unknown conversion {v!r}; known: {', '.join(sorted(CONVERTERS))}")
        return v


class Sources(RootModel[dict[str, Source]]):
    pass


def sources_path(path: Path | None = None) -> Path:
    return Path(path or os.environ.get(SOURCES_ENV) or SOURCES_FILE)


def load_sources(path: Path | None = None) -> dict[str, Source]:
    """The registry of official archives; a malformed one raises SpecError naming file, line and field."""
    path = sources_path(path)
    try:
        text = path.read_text()
        data = yaml.safe_load(text)
    except OSError as err:
        raise SpecError(f"cannot read ({err.strerror})", where=path) from None
    except yaml.YAMLError as err:
        raise SpecError(f"not valid YAML: {getattr(err, 'problem', err)}", where=path) from None
    try:
        return Sources.model_validate(data or {}).root
    except ValidationError as err:
        raise SpecError(validation_error_line(path, err, yaml.compose(text))) from None


def _log(message: str) -> None:
    print(f"bench: {message}", file=sys.stderr, flush=True)


def fetch(
    name: str,
    data_root: Path,
    sources_file: Path | None = None,
    progress: bool = True,
    retries: int = 3,
    log: Callable[[str], None] = _log,
) -> Path:
    """Download, verify, extract and install dataset `name` under data_root (nothing to do when it is already
    there); returns its folder."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; known: {', '.join(sorted(DATASETS))}")
    reader = DATASETS[name]
    sources = load_sources(sources_file)
    if name not in sources:
        raise DataError(
            f"no official archive with a published checksum is registered for '{name}' "
            f"in {sources_path(sources_file)}; {reader.how_to_get}"
        )
    source, target = sources[name], Path(data_root) / reader.subdir
    if _opens(reader, target):
        log(f"{name}: already installed at {target}")
        return target
    downloads = Path(data_root) / DOWNLOADS
    downloads.mkdir(parents=True, exist_ok=True)
    parts = []
    for archive in source.files:
        part = downloads / f"{archive.name}.part"
        log(f"{name}: {archive.name} <- {_url(archive)}")
        download(_url(archive), part, archive.size, progress, retries)
        verify(part, archive, progress)
        parts.append(part)
    remove_orphaned(downloads, ".staging-")  # left by killed runs; never a live one's
    staging = Path(tempfile.mkdtemp(prefix=owned_prefix(f".staging-{name}-"), dir=downloads))
    try:
        _unpack_and_install(source, parts, staging, target, progress)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    log(f"{name}: installed at {target}")
    for part in parts:
        part.unlink(missing_ok=True)
    return target


def _unpack_and_install(source: Source, parts: list[Path], staging: Path, target: Path, progress: bool) -> None:
    for archive, part in zip(source.files, parts, strict=True):
        unpack(part, archive.name, staging, progress)
    if source.convert:
        CONVERTERS[source.convert](staging, progress)
    root = (staging / source.root).resolve()
    if not root.is_dir() or not root.is_relative_to(staging.resolve()):
        raise DataError(
            f"the archives hold no folder '{source.root}' (the registry's 'root')",
            where=", ".join(a.name for a in source.files),
        )
    root.chmod(0o755)  # mkdtemp makes it private
    install(root, target)


def _opens(reader, root: Path) -> bool:
    try:
        reader(root)
        return True
    except DataError:
        return False


def _url(archive: Archive) -> str:
    return mirrored(archive.url, archive.name)


def mirrored(url: str, filename: str) -> str:
    """`url`, or `<BENCH_FETCH_BASE_URL>/<filename>` when a mirror is set (datasets' archives and weights alike)."""
    base = os.environ.get(BASE_URL_ENV)
    return f"{base.rstrip('/')}/{filename}" if base else url


def download(url: str, part: Path, size: int | None, progress: bool = True, retries: int = 3) -> None:
    """Complete `part` from `url`, resuming from its current length; retries cut connections `retries` times."""
    missing = (size or 0) - (part.stat().st_size if part.exists() else 0)
    if missing > shutil.disk_usage(part.parent).free:
        raise DataError(
            f"{missing / 2**30:.1f} GiB to download but only "
            f"{shutil.disk_usage(part.parent).free / 2**30:.1f} GiB free",
            where=part.parent,
        )
    error: Exception | None = None
    for _ in range(retries + 1):
        try:
            _download_once(url, part, size, progress)
            return
        except HTTPError as err:
            if err.code < 500:
                raise DataError(f"HTTP {err.code} {err.reason}", where=url) from None
            error = err
        except (OSError, http.client.HTTPException) as err:
            error = err
    have = part.stat().st_size if part.exists() else 0
    raise DataError(
        f"download of {url} interrupted after {have:,} bytes ({type(error).__name__}: {error}); "
        "run the same command again to resume",
        where=part,
    )


def _download_once(url: str, part: Path, size: int | None, progress: bool) -> None:
    have = part.stat().st_size if part.exists() else 0
    if size is not None and have >= size:
        return  # complete (or too long: the checksum decides)
    headers = {"User-Agent": USER_AGENT, **({"Range": f"bytes={have}-"} if have else {})}
    try:
        response = urlopen(Request(url, headers=headers), timeout=TIMEOUT_S)
    except HTTPError as err:
        if err.code == 416 and have:  # nothing left past what we have
            return
        raise
    with response:
        length = response.headers.get("Content-Length")
        if response.status == 206:
            total = _range_total(response.headers.get("Content-Range")) or (have + int(length) if length else None)
        else:  # the server ignored the range: start over
            have, total = 0, int(length) if length else None
        if size is not None and total is not None and total != size:
            raise DataError(f"server sends {total:,} bytes but the registry says {size:,}", where=url)
        with (
            open(part, "ab" if have else "wb") as out,
            tqdm(
                total=total,
                initial=have,
                unit="B",
                unit_scale=True,
                unit_divisor=1024,
                desc=part.stem,
                disable=not progress,
                leave=False,
            ) as bar,
        ):
            while chunk := response.read(CHUNK):
                out.write(chunk)
                bar.update(len(chunk))
    got = part.stat().st_size
    if total is not None and got < total:
        raise ConnectionError(f"connection closed after {got:,} of {total:,} bytes")


def _range_total(content_range: str | None) -> int | None:
    match = re.fullmatch(r"bytes \d+-\d+/(\d+)", (content_range or "").strip())
    return int(match.group(1)) if match else None


def verify(part: Path, archive: Archive, progress: bool = True) -> None:
    """Check the published checksum; on a mismatch delete the download and raise DataError."""
    algorithm, expected = archive.checksum.split(":", 1)
    digest = hashlib.new(algorithm)
    with (
        open(part, "rb") as f,
        tqdm(
            total=part.stat().st_size,
            unit="B",
            unit_scale=True,
            unit_divisor=1024,
            desc=f"verify {archive.name}",
            disable=not progress,
            leave=False,
        ) as bar,
    ):
        while block := f.read(CHUNK):
            digest.update(block)
            bar.update(len(block))
    if digest.hexdigest() != expected:
        part.unlink()
        raise DataError(
            f"{algorithm} mismatch: expected {expected}, got {digest.hexdigest()} "
            f"(published by {archive.published_by}); the download was deleted",
            where=archive.name,
        )


def unpack(part: Path, filename: str, staging: Path, progress: bool = True) -> None:
    """Extract a tar/tgz/zip archive into staging (safely: no paths outside it), or place a plain file there."""
    try:
        if filename.endswith((".tar", ".tgz", ".tar.gz")):
            with tarfile.open(part) as tar:
                for member in tqdm(tar, desc=f"extract {filename}", unit="file", disable=not progress, leave=False):
                    tar.extract(member, staging, filter="data")
        elif filename.endswith(".zip"):
            with zipfile.ZipFile(part) as archive:
                for member in tqdm(
                    archive.infolist(), desc=f"extract {filename}", unit="file", disable=not progress, leave=False
                ):
                    archive.extract(member, staging)
        else:
            try:
                os.link(part, staging / filename)
            except OSError:
                shutil.copyfile(part, staging / filename)
    except (tarfile.TarError, zipfile.BadZipFile, EOFError) as err:
        raise DataError(f"cannot extract ({type(err).__name__}: {err})", where=filename) from None


def install(root: Path, target: Path) -> None:
    """Move `root` to `target` by rename; into an existing `target` (a folder datasets share) entry by entry,
    refusing to overwrite anything."""
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        os.rename(root, target)
        return
    entries = sorted(root.iterdir())
    clash = next((target / e.name for e in entries if (target / e.name).exists()), None)
    if clash is not None:
        raise DataError("already exists; move it away to fetch again", where=clash)
    for entry in entries:
        os.rename(entry, target / entry.name)


def sbd_trainaug(staging: Path, progress: bool = True) -> None:
    """VOC 2012 + SBD -> SegmentationClassAug/*.png and ImageSets/Segmentation/trainaug.txt.

    trainaug = (VOC train ∪ SBD train ∪ SBD val) − VOC val (10,582 ids), as mmsegmentation's voc_aug converter;
    each mask is SBD's GTcls.Segmentation where SBD annotates the image, else VOC's SegmentationClass indices;
    written as 8-bit grayscale PNGs of class ids (255 = VOC's 'void' border)."""
    voc, sbd = staging / "VOCdevkit" / "VOC2012", staging / "benchmark_RELEASE" / "dataset"
    sets = voc / "ImageSets" / "Segmentation"
    voc_train, voc_val = _ids(sets / "train.txt"), _ids(sets / "val.txt")
    trainaug = sorted((voc_train | _ids(sbd / "train.txt") | _ids(sbd / "val.txt")) - voc_val)
    out = voc / "SegmentationClassAug"
    out.mkdir(exist_ok=True)
    for image_id in tqdm(trainaug, desc="SBD -> SegmentationClassAug", unit="mask", disable=not progress, leave=False):
        mat = sbd / "cls" / f"{image_id}.mat"
        mask = _sbd_mask(mat) if mat.is_file() else _voc_mask(voc / "SegmentationClass" / f"{image_id}.png")
        Image.fromarray(mask, mode="L").save(out / f"{image_id}.png")
    (sets / "trainaug.txt").write_text("".join(f"{x}\n" for x in trainaug))


def _ids(path: Path) -> set[str]:
    try:
        return set(path.read_text().split())
    except OSError:
        raise DataError("split list missing from the archive", where=path.name) from None


def _sbd_mask(path: Path) -> np.ndarray:
    try:
        return np.asarray(loadmat(path, squeeze_me=True)["GTcls"]["Segmentation"].item(), np.uint8)
    except (OSError, ValueError, KeyError, IndexError) as err:
        raise DataError(f"not an SBD class annotation ({type(err).__name__}: {err})", where=path) from None


def _voc_mask(path: Path) -> np.ndarray:
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "L"):
                raise DataError(f"mask has mode {img.mode}, expected palette or grayscale", where=path)
            return np.asarray(img, np.uint8)  # palette indices are the class ids
    except OSError as err:
        raise DataError(f"VOC mask missing or unreadable ({err})", where=path) from None


CONVERTERS: dict[str, Callable[[Path, bool], None]] = {"sbd_trainaug": sbd_trainaug}
