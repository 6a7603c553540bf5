"""Write result files so that a killed run never leaves a half-written file under its name.

Every file goes to a hidden temporary name in the target folder and is renamed onto its
final name only once it is complete (``os.replace`` is atomic within one filesystem). A
run killed with SIGKILL can therefore leave only ``.{name}.tmp-{pid}-{random}{suffix}``
files behind, which :func:`clean_temporaries` removes at the start of the next run.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import secrets
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from ..errors import OutputError

#: what a temporary name looks like; group 1 is the pid of the process that wrote it.
_TEMP_NAME = re.compile(r"^\..+\.tmp-(\d+)-[0-9a-f]+(\.[^.]*)?$")


def ensure_out_dir(path: str | os.PathLike[str]) -> Path:
    """Create the output folder and prove it is writable.

    Permission bits alone do not say whether a write will succeed (root ignores them on
    local disks but not on NFS with root squashing, read-only mounts ignore root), so a
    small probe file is really written and removed.

    Parameters
    ----------
    path : str or PathLike
        The folder; missing parents are created.

    Returns
    -------
    Path
        The folder.

    Raises
    ------
    OutputError
        If the path is a file, or the folder cannot be created or written.
    """
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise OutputError(f"output folder {folder} exists and is not a folder")
    make_folder(folder)
    probe = folder / f".write-probe.tmp-{os.getpid()}-{secrets.token_hex(4)}"
    try:
        with open(probe, "xb") as fh:
            fh.write(b"ok")
    except OSError as exc:
        raise OutputError(f"output folder {folder} is not writable: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            probe.unlink()
    return folder


def make_folder(path: str | os.PathLike[str]) -> Path:
    """``mkdir -p``, a failure (a file in the way, no permission) an ``OutputError``."""
    folder = Path(path)
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create output folder {folder}: {exc.strerror or exc}") from exc
    return folder


def temporary_name(final_path: Path) -> Path:
    """The hidden temporary sibling of ``final_path``; it keeps the suffix for format sniffing."""
    return final_path.with_name(
        f".{final_path.name}.tmp-{os.getpid()}-{secrets.token_hex(4)}{final_path.suffix}"
    )


@contextlib.contextmanager
def atomic_path(final_path: str | os.PathLike[str]) -> Iterator[Path]:
    """Yield a temporary path to write to; rename it onto ``final_path`` on success.

    The temporary file lives in the same folder (so the rename is atomic) and ends with
    the same suffix as ``final_path`` (so Pillow or numpy pick the format from it). On any
    exception inside the block the temporary file is deleted and the exception re-raised;
    the final path is then left exactly as it was.

    Parameters
    ----------
    final_path : str or PathLike
        Where the finished file must appear.

    Yields
    ------
    Path
        The temporary path; the block must create a file there.

    Raises
    ------
    OutputError
        If the block wrote nothing, or the rename fails.
    """
    final = Path(final_path)
    tmp = temporary_name(final)
    try:
        yield tmp
        if not tmp.is_file():
            raise OutputError(f"nothing was written for {final}")
        _fsync(tmp)
        try:
            os.replace(tmp, final)
        except OSError as exc:
            raise OutputError(f"cannot write {final}: {exc.strerror or exc}") from exc
    finally:
        with contextlib.suppress(OSError):
            tmp.unlink()  # only still there if something failed


def _fsync(path: Path) -> None:
    """Flush the file's data to disk before the rename, so a crash cannot expose an empty file."""
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def to_plain(obj: Any) -> Any:
    """Turn numpy values and containers into plain JSON-able Python; NaN and inf become None.

    JSON has no NaN or infinity; writing them (Python's default) produces files other
    tools refuse, so non-finite numbers are written as ``null`` instead.
    """
    if isinstance(obj, np.ndarray):
        return to_plain(obj.tolist())
    if isinstance(obj, np.generic):
        return to_plain(obj.item())
    if isinstance(obj, bool) or obj is None or isinstance(obj, (str, int)):
        return obj
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, Mapping):
        return {_plain_key(k): to_plain(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple, set, frozenset)):
        return [to_plain(v) for v in obj]
    if isinstance(obj, os.PathLike):
        return os.fspath(obj)
    raise OutputError(f"cannot write a {type(obj).__name__} value as JSON")


def _plain_key(key: Any) -> str:
    """JSON object keys are strings; numpy scalars and numbers are written as their text."""
    key = key.item() if isinstance(key, np.generic) else key
    return key if isinstance(key, str) else str(key)


def write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented, strictly valid JSON (numpy converted, NaN/inf as null)."""
    text = json.dumps(to_plain(obj), indent=2, allow_nan=False) + "\n"
    return write_text(path, text)


def write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write UTF-8 text atomically."""
    final = Path(path)
    try:
        with atomic_path(final) as tmp:
            with open(tmp, "w", encoding="utf-8", newline="\n") as fh:
                fh.write(text)
    except OSError as exc:
        raise OutputError(f"cannot write {final}: {exc.strerror or exc}") from exc
    return final


#: zlib level of the PNGs written: level 3 encodes the neuron graph's picture in half
#: the time of Pillow's default 6, at the same size (1.52 MB; heatmap grids 3 % smaller)
PNG_COMPRESS_LEVEL = 3


def write_png(path: str | os.PathLike[str], image) -> Path:
    """Write a Pillow image as PNG atomically."""
    final = Path(path)
    try:
        with atomic_path(final) as tmp:
            image.save(tmp, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    except OSError as exc:
        raise OutputError(f"cannot write {final}: {exc.strerror or exc}") from exc
    return final


def write_npy(path: str | os.PathLike[str], arr: np.ndarray) -> Path:
    """Write one array in ``.npy`` format atomically, never with pickled objects.

    The array is saved through an open file so numpy cannot append ``.npy`` to the name.
    """
    final = Path(path)
    array = np.asarray(arr)
    if array.dtype.hasobject:
        raise OutputError(f"cannot write {final}: object arrays are not saved (no pickles)")
    try:
        with atomic_path(final) as tmp:
            with open(tmp, "wb") as fh:
                np.save(fh, array, allow_pickle=False)
    except OSError as exc:
        raise OutputError(f"cannot write {final}: {exc.strerror or exc}") from exc
    return final


def clean_temporaries(folder: str | os.PathLike[str], depth: int = 1) -> list[Path]:
    """Remove temporary files left by killed runs; return what was removed.

    Files written by a process that is still alive (another run into the same folder,
    or this one) are left alone, so two runs sharing a folder do not break each other.

    Parameters
    ----------
    folder : str or PathLike
        The output folder; a missing folder has nothing to clean.
    depth : int
        How many levels of sub-folders to visit too (a run writes one sub-folder per
        input); bounded so that ``--out ~`` does not walk a whole home directory.

    Returns
    -------
    list of Path
        The removed files.
    """
    root = Path(folder)
    if not root.is_dir():
        return []
    removed = []
    for entry in sorted(root.iterdir()):
        if entry.is_dir() and not entry.is_symlink():
            if depth > 0:
                removed.extend(clean_temporaries(entry, depth - 1))
            continue
        match = _TEMP_NAME.match(entry.name)
        if match is None or not entry.is_file() or _alive(int(match.group(1))):
            continue
        try:
            entry.unlink()
        except OSError:
            continue
        removed.append(entry)
    return removed


def _alive(pid: int) -> bool:
    """Whether process ``pid`` still runs (POSIX only; elsewhere assume it does not)."""
    if os.name != "posix" or pid <= 0:
        return False  # os.kill(pid, 0) would terminate the process on Windows
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:
        return False
    return True
