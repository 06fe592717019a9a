"""Where an export is written: never a user's file lost.

An export is staged in a hidden folder inside the destination and moved into place once complete, so a failed export
(a full disk, an interrupted run) leaves nothing half-written behind. `bluelm_export.json` records every file it put
there (`written_files`); `overwrite=True` removes exactly those, and refuses a folder holding anything else.
"""

from __future__ import annotations

import errno
import json
import os
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path

MANIFEST_FILE = "bluelm_export.json"
STAGING_PREFIX = ".bluelm-export-"


class ExportDestinationError(OSError):
    """The output folder cannot take the export: unwritable, read-only, full, or holding files that are not ours."""


def _describe(error: OSError) -> str:
    name = errno.errorcode.get(error.errno, "") if error.errno else ""
    reason = error.strerror or str(error)
    return f"{reason} ({name})" if name else reason


def destination_error(out_dir: Path, error: OSError) -> ExportDestinationError:
    """One line saying which folder could not be written and why (`ENOSPC`, `EROFS`, `EACCES`, ...)."""
    filename = getattr(error, "filename", None)
    where = f" ({filename})" if filename and Path(filename) != out_dir else ""
    wrapped = ExportDestinationError(f"cannot write the export to {out_dir}: {_describe(error)}{where}")
    wrapped.errno = error.errno
    return wrapped


def recorded_files(out_dir: Path) -> list[str] | None:
    """The files an earlier export recorded that it wrote into `out_dir` (relative paths), or None without a record."""
    path = out_dir / MANIFEST_FILE
    if not path.is_file():
        return None
    try:
        files = json.loads(path.read_text()).get("written_files")
    except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
        return None
    if not isinstance(files, list) or not all(isinstance(f, str) for f in files):
        return None
    return files


def _relative_files(out_dir: Path) -> set[str]:
    return {str(p.relative_to(out_dir)) for p in out_dir.rglob("*") if p.is_file() or p.is_symlink()}


def prepare_out_dir(out_dir: Path, model_dir: Path, overwrite: bool) -> None:
    """Check `out_dir` can take a new export; with `overwrite`, remove the files of the export already there."""
    out_dir, model_dir = out_dir.resolve(), model_dir.resolve()
    if out_dir == model_dir or model_dir.is_relative_to(out_dir):
        raise ValueError(f"The output directory {out_dir} would overwrite the model directory {model_dir}")
    if out_dir.exists() and not out_dir.is_dir():
        raise FileExistsError(f"{out_dir} exists and is not a directory")
    if out_dir.is_dir() and any(out_dir.iterdir()):
        if not overwrite:
            raise FileExistsError(
                f"Output directory {out_dir} exists and is not empty; pass overwrite=True (--overwrite) to replace "
                "the export in it"
            )
        recorded = recorded_files(out_dir)
        if recorded is None:
            raise FileExistsError(
                f"{out_dir} is not empty and holds no record of an earlier export ({MANIFEST_FILE} with "
                "`written_files`); --overwrite only removes the files an export wrote. Choose another directory or "
                "empty this one yourself"
            )
        present = _relative_files(out_dir)
        others = sorted(present - set(recorded) - {MANIFEST_FILE})
        if others:
            shown = ", ".join(others[:5]) + (f" and {len(others) - 5} more" if len(others) > 5 else "")
            raise FileExistsError(
                f"{out_dir} holds {len(others)} file(s) the earlier export did not write ({shown}); --overwrite "
                "never removes them. Move them out or choose another directory"
            )
        try:
            for name in recorded:
                path = out_dir / name
                if path.is_file() or path.is_symlink():
                    path.unlink()
            (out_dir / MANIFEST_FILE).unlink(missing_ok=True)
            for folder in sorted((p for p in out_dir.rglob("*") if p.is_dir()), key=lambda p: -len(p.parts)):
                if not any(folder.iterdir()):
                    folder.rmdir()
        except OSError as error:
            raise destination_error(out_dir, error) from error
    try:
        out_dir.mkdir(parents=True, exist_ok=True)
        # Fail before the (long) trace on a folder we cannot write to.
        tempfile.TemporaryFile(dir=out_dir).close()
    except OSError as error:
        raise destination_error(out_dir, error) from error


@contextmanager
def staging_dir(out_dir: Path):
    """A hidden folder inside `out_dir` to write the export to; removed (with whatever it holds) on any error."""
    try:
        staging = Path(tempfile.mkdtemp(prefix=STAGING_PREFIX, dir=out_dir))
    except OSError as error:
        raise destination_error(out_dir, error) from error
    try:
        yield staging
    except OSError as error:
        shutil.rmtree(staging, ignore_errors=True)
        raise destination_error(out_dir, error) from error
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


def move_into_place(staging: Path, out_dir: Path) -> list[str]:
    """Move every file of `staging` into `out_dir` (the manifest last), remove `staging`; returns the files moved."""
    files = sorted(_relative_files(staging), key=lambda name: name == MANIFEST_FILE)
    moved = []
    try:
        for name in files:
            target = out_dir / name
            target.parent.mkdir(parents=True, exist_ok=True)
            os.replace(staging / name, target)
            moved.append(name)
    except OSError as error:
        for name in moved:  # ours: back out, so no half export is left without its record
            (out_dir / name).unlink(missing_ok=True)
        raise destination_error(out_dir, error) from error
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return moved


def write_json(path: Path, data: dict) -> None:
    try:
        path.write_text(json.dumps(data, indent=2) + "\n")
    except OSError as error:
        raise destination_error(path.parent, error) from error
