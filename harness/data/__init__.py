"""Dataset registry: open a dataset from the data root, or a procedural stand-in generated on first use.

A reader registers itself: define a DatasetReader subclass with a `name` in a module of this package."""

from __future__ import annotations

import errno
import hashlib
import importlib
import os
import pkgutil
import re
import shutil
import tempfile
from pathlib import Path

from harness.data.base import DatasetReader
from harness.data.synthetic import GENERATOR_VERSION, MARKER_FILE
from harness.errors import DataError
from harness.lifetime import owned_prefix, remove_orphaned

# name -> reader: every DatasetReader subclass with a `name` of its own defined in a module of this package,
# filled once all of them are imported (at the end of this file), sorted by name
DATASETS: dict[str, type[DatasetReader]] = {}
SAMPLED_FILES = 256
EDGE_BYTES = 64 * 1024


def open_dataset(name: str, data_root: Path, synthetic: bool, seed: int = 0, scale: str = "tiny") -> DatasetReader:
    """The real dataset under data_root/<subdir>, or (synthetic) its procedural stand-in, made if absent."""
    if name not in DATASETS:
        raise DataError(f"unknown dataset '{name}'; known: {', '.join(sorted(DATASETS))}")
    reader = DATASETS[name]
    data_root = Path(data_root)
    if synthetic:
        return reader(synthetic_root(reader, data_root, scale, seed))
    root = data_root / reader.subdir
    if not root.is_dir():
        raise DataError(
            f"dataset '{name}' not found at {root} (data root from --data-root / env BENCH_DATA, default ./data); "
            f"{reader.how_to_get}; or run on procedural stand-in data with --data synthetic "
            "(make bench ... DATA=synthetic)"
        )
    return reader(root)


def synthetic_root(reader: type[DatasetReader], data_root: Path, scale: str, seed: int) -> Path:
    """data_root/_synthetic/<name>-<scale>-s<seed>/<subdir>, generated atomically when absent."""
    home = data_root / "_synthetic" / f"{reader.name}-{scale}-s{seed}"
    remove_orphaned(home.parent, ".")  # the staging folders of generations killed midway
    if not home.exists():
        home.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=owned_prefix(f".{home.name}-"), dir=home.parent))
        try:
            reader.synthesize(staging / reader.subdir, scale=scale, seed=seed)
            staging.chmod(0o755)  # mkdtemp makes it private
            os.rename(staging, home)
        except OSError:
            if not home.exists():  # not a lost race with a concurrent generator
                raise
        finally:
            shutil.rmtree(staging, ignore_errors=True)
    root = home / reader.subdir
    version = re.search(r"generator v(\d+)", _read_marker(root))
    if not version or int(version.group(1)) != GENERATOR_VERSION:
        raise DataError(
            f"procedural stand-in was written by another generator version (this one is v{GENERATOR_VERSION}); "
            f"delete {home} to regenerate it",
            where=root / MARKER_FILE,
        )
    return root


def _read_marker(root: Path) -> str:
    try:
        return (root / MARKER_FILE).read_text()
    except OSError:
        raise DataError(
            "incomplete procedural stand-in (no marker file); delete its folder to regenerate it",
            where=root / MARKER_FILE,
        ) from None


def is_procedural(root: Path) -> bool:
    """True for a dataset folder written by a `synthesize` (it carries the marker file)."""
    return (Path(root) / MARKER_FILE).is_file()


def fingerprint(root: Path, full: bool = False) -> str:
    """Content fingerprint of a dataset folder.

    Fast ("fp1:"): sorted relative paths and sizes of all files, plus the first and last 64 KiB of up to
    256 evenly spaced files. Full ("fp1full:"): paths, sizes and every file's whole content.
    """
    root = Path(root)
    if not root.is_dir():
        raise DataError("cannot fingerprint: folder missing", where=root)
    sizes = dataset_files(root)
    files = list(sizes)
    digest = hashlib.sha256()
    for rel in files:
        digest.update(f"{rel}\0{sizes[rel]}\n".encode())
    k = len(files) if full else min(SAMPLED_FILES, len(files))
    for rel in (files[i * len(files) // k] for i in range(k)):
        digest.update(rel.encode() + b"\0")
        with open(root / rel, "rb") as f:
            if full:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            else:
                digest.update(f.read(EDGE_BYTES))
                f.seek(max(0, sizes[rel] - EDGE_BYTES))
                digest.update(f.read(EDGE_BYTES))
    return f"{'fp1full' if full else 'fp1'}:{digest.hexdigest()[:16]}"


def dataset_files(root: Path) -> dict[str, int]:
    """Every file under a dataset folder, symlinked folders followed, by sorted relative path: its size. A dangling
    symlink, a symlink loop or an unreadable folder is a DataError naming it."""

    def unreadable(err: OSError):
        raise DataError(f"cannot read folder ({err.strerror})", where=err.filename)

    sizes, above = {}, {str(root): {os.path.realpath(root)}}  # each folder walked: the real folders it is in
    for folder, dirs, names in os.walk(root, followlinks=True, onerror=unreadable):
        chain = above.pop(folder)
        for name in dirs:
            path = os.path.join(folder, name)
            real = os.path.realpath(path)
            if real in chain:
                raise DataError(f"symlink loop: it leads back to {real}, a folder it is in", where=path)
            above[path] = chain | {real}
        for name in names:
            path = Path(folder) / name
            try:
                sizes[path.relative_to(root).as_posix()] = path.stat().st_size
            except OSError as err:
                raise DataError(_stat_problem(path, err), where=path) from None
    return dict(sorted(sizes.items()))


def _stat_problem(path: Path, err: OSError) -> str:
    if not path.is_symlink():
        return f"cannot read ({err.strerror})"
    if err.errno == errno.ELOOP:
        return "symlink loop: it never resolves to a file"
    return f"dangling symlink to {os.readlink(path)}"


def _readers(cls: type[DatasetReader]) -> list[type[DatasetReader]]:
    """cls's subclasses at any depth that name a dataset of their own (not abstract middle classes, not
    InMemoryDataset, which has no on-disk form)."""
    found = []
    for sub in cls.__subclasses__():
        if "name" in vars(sub) and sub.on_disk:
            found.append(sub)
        found.extend(_readers(sub))
    return found


for _module in pkgutil.iter_modules(__path__):
    importlib.import_module(f"{__name__}.{_module.name}")
for _reader in sorted(_readers(DatasetReader), key=lambda r: r.name):
    if _reader.name in DATASETS:
        raise RuntimeError(
            f"two dataset readers are named {_reader.name!r}: {DATASETS[_reader.name].__module__}."
            f"{DATASETS[_reader.name].__qualname__} and {_reader.__module__}.{_reader.__qualname__}"
        )
    DATASETS[_reader.name] = _reader
