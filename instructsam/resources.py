"""Where the package's own files are found when a caller gives a relative path (`config/model_tiny.yaml`, the
default checkpoint `checkpoints/instructsam-tiny`, the message definitions in `msg/`): the ROS share directory
that colcon installs (share/instructsam_ros under each AMENT_PREFIX_PATH entry, or $INSTRUCTSAM_SHARE), then the
source tree when the library runs from one. Absolute paths are always used as given.
"""
from __future__ import annotations

import os
from pathlib import Path

PACKAGE = "instructsam_ros"


def share_dirs() -> list[Path]:
    """The directories that may hold the package's share files, in search order (existing ones only)."""
    out = []
    if os.environ.get("INSTRUCTSAM_SHARE"):
        out.append(Path(os.environ["INSTRUCTSAM_SHARE"]))
    for prefix in filter(None, os.environ.get("AMENT_PREFIX_PATH", "").split(os.pathsep)):
        out.append(Path(prefix) / "share" / PACKAGE)
    source_tree = Path(__file__).resolve().parents[1]  # instructsam/ sits at the top of a source tree
    if (source_tree / "package.xml").is_file():
        out.append(source_tree)
    return [d for d in dict.fromkeys(out) if d.is_dir()]


def candidates(path: str | os.PathLike) -> list[Path]:
    """Where a given path is looked for: as given (absolute, or from the working directory), then under each share
    directory when it is relative."""
    path = Path(os.path.expanduser(str(path)))
    if path.is_absolute():
        return [path]
    return [Path.cwd() / path, *(d / path for d in share_dirs())]


def find(path: str | os.PathLike, what: str = "file") -> Path:
    """The first existing candidate of `path`; FileNotFoundError naming every place looked at."""
    looked = candidates(path)
    for candidate in looked:
        if candidate.exists():
            return candidate
    raise FileNotFoundError(f"{what} {str(path)!r} not found (looked in: {', '.join(map(str, looked))})")
