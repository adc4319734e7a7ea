"""Where streaming shards live: a local folder or an object-store prefix (``s3://``, ``gs://``, ``r2://``, the
schemes LitData streams from), and the few whole-file operations that packing and reading need beside LitData's
own chunk transfers. Credentials and endpoints come from the environment, as LitData and the cloud SDKs read
them (``AWS_ENDPOINT_URL``, ``AWS_ACCESS_KEY_ID``, ``GOOGLE_APPLICATION_CREDENTIALS``, ...)."""

from __future__ import annotations

import hashlib
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

from medfusion.data.cache_dir import cache_root
from medfusion.data.errors import ConfigError

REMOTE_SCHEMES = ("s3", "gs", "r2")


def is_remote(location: str) -> bool:
    """Whether ``location`` is an object-store prefix; a :class:`ConfigError` for a URL LitData cannot stream."""
    scheme = urlparse(location).scheme if "://" in location else ""
    if scheme and scheme not in REMOTE_SCHEMES:
        schemes = ", ".join(f"{s}://" for s in REMOTE_SCHEMES)
        raise ConfigError(f"shards at {location}: LitData streams local folders and {schemes} prefixes only.")
    return bool(scheme)


def normalize(location: str | Path) -> str:
    """``location`` as one spelling: a prefix without its trailing slash, or a local path with ``~`` expanded."""
    text = str(location)
    return text.rstrip("/") if is_remote(text) else str(Path(text).expanduser())


def join(location: str, *parts: str) -> str:
    """``location/part/...``, for prefixes and folders alike."""
    return "/".join([location.rstrip("/"), *parts]) if is_remote(location) else str(Path(location, *parts))


def _provider(url: str) -> Any:
    """LitData's file operations for the object store of ``url`` (imported only for object stores)."""
    from litdata.streaming.fs_provider import _get_fs_provider

    return _get_fs_provider(url)


def read_text(location: str) -> str | None:
    """The text of the file at ``location``, ``None`` when there is none."""
    if not is_remote(location):
        path = Path(location)
        return path.read_text(encoding="utf-8") if path.is_file() else None
    provider = _provider(location)
    if not provider.exists(location):
        return None
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "file"
        provider.download_file(location, str(local))
        return local.read_text(encoding="utf-8")


def write_text(location: str, text: str) -> None:
    """Write ``text`` to the file at ``location`` (uploaded for an object store)."""
    if not is_remote(location):
        Path(location).write_text(text, encoding="utf-8")
        return
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / "file"
        local.write_text(text, encoding="utf-8")
        _provider(location).upload_file(str(local), location)


def is_empty(location: str) -> bool:
    """Whether nothing is stored at or under ``location``."""
    if not is_remote(location):
        path = Path(location)
        return not path.exists() or (path.is_dir() and not any(path.iterdir()))
    return _provider(location).is_empty(location)


def stream_cache(location: str, directory: str | Path | None = None) -> str | None:
    """The local folder LitData keeps the downloaded chunks of the prefix ``location`` in: one per prefix under
    ``<cache_dir>/shards`` (:func:`~medfusion.data.cache_dir.cache_root`); ``None`` for a local folder, read in
    place."""
    if not is_remote(location):
        return None
    key = hashlib.sha256(location.encode()).hexdigest()[:16]
    folder = cache_root(directory) / "shards" / key
    folder.mkdir(parents=True, exist_ok=True)
    return str(folder)
