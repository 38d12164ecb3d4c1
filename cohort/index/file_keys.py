"""How an index names the files it indexed: relative to its store, so the store can move.

A store is one folder (``STORE/index.duckdb`` beside the objects). From schema 3 on, a file inside that
folder is named by its path relative to it, so a store copied elsewhere, renamed, or mounted at another
point (the site image reads it at ``/site/store``, docs/deployment.md) still finds its files. A file
outside the store (``DuckIndex.add_files`` of files elsewhere) keeps its absolute path. Older indexes
held absolute paths of wherever the store was when it was indexed; ``moved_root`` finds that old folder
so the upgrade can rename them.
"""

from __future__ import annotations

import os
from pathlib import Path


def store_root(index_path: str) -> Path | None:
    """The folder an index file names its files relative to; None for an in-memory index."""
    if index_path == ":memory:":
        return None
    return Path(os.path.abspath(Path(index_path).parent))


def root_prefixes(root: Path) -> tuple[str, ...]:
    """The spellings of ``root`` a file path may start with (as given, and with links resolved)."""
    return tuple(dict.fromkeys(f"{p.rstrip('/')}/" for p in (str(root), str(root.resolve()))))


def file_key(prefixes: tuple[str, ...], path: str | Path) -> str:
    """The index's name for ``path``: relative to the store when inside it, else absolute."""
    text = os.path.abspath(path)
    for prefix in prefixes:
        if text.startswith(prefix):
            return text[len(prefix):]
    return text


def file_path(root: Path | None, key: str) -> Path:
    """The file an index key names (the inverse of ``file_key``)."""
    if root is None or os.path.isabs(key):
        return Path(key)
    return root / key


def moved_root(recorded: str, root: Path) -> str | None:
    """The folder an absolute ``recorded`` path had as its store, when that store is now ``root``.

    The longest tail of ``recorded`` that exists below ``root`` tells it: ``/old/store/P1/S1/1.dcm``
    with ``root/P1/S1/1.dcm`` present gives ``/old/store``. None when the file is still where it was
    recorded (a file outside the store) or no tail of it is below ``root``.
    """
    path = Path(recorded)
    if not path.is_absolute() or path.exists():
        return None
    parts = path.parts
    for cut in range(1, len(parts) - 1):
        if root.joinpath(*parts[cut:]).is_file():
            return str(Path(*parts[:cut]))
    return None
