"""Load pickles that may only contain plain data (dict, list, tuple, str, bytes, numbers, bool, None).

The official RefCOCO `refs(*).p` files are pickles, and unpickling can run arbitrary code: a
pickle names globals (e.g. `os.system`) and calls them while loading. Plain containers and
scalars have their own opcodes and never need a global, so refusing every global in find_class
keeps all legitimate refs files loadable while nothing in the file can be called.
"""
from __future__ import annotations

import io
import pickle
from pathlib import Path


class UnsafePickleError(ValueError):
    """The pickle asked for a Python global (a class or function) and was refused."""


class RestrictedUnpickler(pickle.Unpickler):
    """pickle.Unpickler that refuses every global, so only plain data can come out."""

    def __init__(self, file, source: str = "<bytes>", **kwargs):
        super().__init__(file, **kwargs)
        self.source = source

    def find_class(self, module: str, name: str):
        raise UnsafePickleError(
            f"{self.source}: refusing to load global '{module}.{name}': only plain data "
            "(dict/list/tuple/str/bytes/numbers/bool/None) is allowed in this pickle")


def loads_plain(data: bytes, source: str = "<bytes>", encoding: str = "ASCII"):
    """Unpickle bytes that must hold plain data only. `encoding` decodes Python 2 str objects."""
    return RestrictedUnpickler(io.BytesIO(data), source=source, encoding=encoding).load()


def load_plain_pickle(path, encoding: str = "ASCII"):
    """Unpickle a file that must hold plain data only (raises UnsafePickleError otherwise)."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"pickle file not found: {path}")
    try:
        return loads_plain(path.read_bytes(), source=str(path), encoding=encoding)
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: Python 2 strings are not {encoding}; "
                         f"retry with encoding='latin1' or 'bytes' ({e})") from e
