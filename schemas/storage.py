"""fsspec URL helpers shared by manifests, stages and the run folder.

Every path in dubline is a URL (a plain local path counts as one). Writes go to a temporary
sibling and are moved into place, so a reader never sees half a file.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import tempfile
import uuid
from collections.abc import Iterator
from typing import IO

import fsspec
from fsspec.implementations.local import LocalFileSystem

_HASH_CHUNK = 1 << 20
_UMASK = os.umask(0)
os.umask(_UMASK)  # read once at import: os.umask is process-wide and not thread-safe


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The filesystem that serves ``url`` and the path inside it."""
    fs, path = fsspec.core.url_to_fs(url)
    return fs, path


def join(base: str, *parts: str) -> str:
    """Join URL path components with '/', keeping the protocol of ``base``."""
    out = base if base.endswith("://") else base.rstrip("/")
    for part in parts:
        part = part.strip("/")
        out = f"{out}{part}" if out.endswith("://") else f"{out}/{part}"
    return out


def is_local(url: str) -> bool:
    return isinstance(filesystem(url)[0], LocalFileSystem)


def local_path(url: str) -> str | None:
    """The local filesystem path of ``url``, or None when it lives elsewhere."""
    fs, path = filesystem(url)
    return path if isinstance(fs, LocalFileSystem) else None


def exists(url: str) -> bool:
    fs, path = filesystem(url)
    return fs.exists(path)


def size(url: str) -> int:
    fs, path = filesystem(url)
    return int(fs.size(path))


def open_url(url: str, mode: str = "rb") -> IO:
    """Open ``url`` for reading (use the atomic writers below to write)."""
    fs, path = filesystem(url)
    return fs.open(path, mode)


def read_bytes(url: str) -> bytes:
    fs, path = filesystem(url)
    return fs.cat_file(path)


def read_text(url: str) -> str:
    return read_bytes(url).decode("utf-8")


def _partial_path(path: str) -> str:
    head, _, tail = path.rpartition("/")
    return f"{head}/.{tail}.{uuid.uuid4().hex[:8]}.partial"


def write_bytes(url: str, data: bytes | memoryview) -> None:
    """Write ``data`` to ``url`` atomically (temporary sibling, then move): a reader sees the old
    content or the new one, never a part. Local files are flushed to disk before the rename, so a
    crash or power loss cannot leave an empty file in place of the old one either."""
    with open_atomic(url) as f:
        f.write(data)


@contextlib.contextmanager
def open_atomic(url: str) -> Iterator[IO[bytes]]:
    """A binary file to write ``url`` through, piece by piece, atomically as ``write_bytes`` does:
    it appears at ``url`` (flushed to disk, if local) only when the ``with`` block ends without an
    error; on an error the temporary sibling is removed and ``url`` is left as it was."""
    fs, path = filesystem(url)
    fs.makedirs(path.rpartition("/")[0], exist_ok=True)
    tmp = _partial_path(path)
    try:
        if isinstance(fs, LocalFileSystem):
            with _synced_file(tmp) as f:
                yield f
            os.replace(tmp, path)
            return
        with fs.open(tmp, "wb") as f:
            yield f
        fs.mv(tmp, path)
    except BaseException:
        if fs.exists(tmp):  # never leave a half-written temporary behind (e.g. a full disk)
            fs.rm(tmp)
        raise


@contextlib.contextmanager
def _synced_file(path: str) -> Iterator[IO[bytes]]:
    """A new local file to write; flushed to disk and given the usual permissions when the block ends."""
    with open(path, "wb") as f:
        yield f
        f.flush()
        os.fsync(f.fileno())
    os.chmod(path, 0o666 & ~_UMASK)


def _write_synced(path: str, data: bytes | memoryview) -> None:
    with _synced_file(path) as f:
        f.write(data)


def create_exclusive(url: str, data: bytes) -> bool:
    """Create ``url`` with ``data`` unless it exists; True when this call created it.

    Atomic on local filesystems, NFS included: the complete file is hard-linked into place, which
    fails when the name exists, so a reader never sees it half-written. On other stores it is the
    backend's ``pipe_file(mode="create")``: atomic where the backend sends the store's
    create-if-absent request (a conditional write), else an existence check followed by a write,
    where two callers within milliseconds of each other may both succeed (fsspec's own default,
    and memory://).
    """
    fs, path = filesystem(url)
    fs.makedirs(path.rpartition("/")[0], exist_ok=True)
    if not isinstance(fs, LocalFileSystem):
        try:
            fs.pipe_file(path, data, mode="create")
        except FileExistsError:
            return False
        return True
    tmp = _partial_path(path)
    try:
        _write_synced(tmp, data)
        try:
            os.link(tmp, path)
        except FileExistsError:
            return False
        except OSError:  # a filesystem without hard links (FAT, some SMB shares): O_EXCL instead
            try:
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            except FileExistsError:
                return False
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        return True
    finally:
        os.remove(tmp)


def write_text(url: str, text: str) -> None:
    write_bytes(url, text.encode("utf-8"))


def append_text(url: str, text: str) -> None:
    """Append ``text`` to ``url`` (created when missing), keeping what it holds.

    Local files are opened in append mode and flushed to disk, so a crash keeps every line
    appended before it. Other stores append where fsspec can (memory://, s3fs); a store that
    cannot append (e.g. GCS) gets the old content and the new text written back whole, atomically.
    """
    data = text.encode("utf-8")
    fs, path = filesystem(url)
    fs.makedirs(path.rpartition("/")[0], exist_ok=True)
    if isinstance(fs, LocalFileSystem):
        with open(path, "ab") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        return
    try:
        with fs.open(path, "ab") as f:
            f.write(data)
    except (NotImplementedError, ValueError):  # no append mode on this store
        write_bytes(url, (fs.cat_file(path) if fs.exists(path) else b"") + data)


def upload_file(local_file: str, url: str) -> None:
    """Move or copy a finished local file to ``url`` atomically."""
    fs, path = filesystem(url)
    fs.makedirs(path.rpartition("/")[0], exist_ok=True)
    if isinstance(fs, LocalFileSystem):
        os.replace(local_file, path)
        return
    tmp = _partial_path(path)
    fs.put_file(local_file, tmp)
    fs.mv(tmp, path)


class OutputLocationError(OSError):
    """The output location itself cannot be written (not the data being produced)."""


@contextlib.contextmanager
def local_output(url: str, suffix: str) -> Iterator[str]:
    """A local file path to write into; on success it is moved to ``url`` atomically.

    Local targets get a temporary sibling (same filesystem, so the final move is a rename).
    Failing to create the folder or the temporary file, or to move the result into place, raises
    ``OutputLocationError`` naming ``url``.
    """
    target_dir = local_path(url)
    directory = os.path.dirname(target_dir) if target_dir else None
    try:
        if directory:
            os.makedirs(directory, exist_ok=True)
        fd, tmp = tempfile.mkstemp(suffix=suffix + ".partial", dir=directory)
    except OSError as exc:
        raise OutputLocationError(f"cannot write {url} ({exc.strerror or exc}: {exc.filename or directory})") from exc
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; outputs get the usual permissions
    try:
        yield tmp
        try:
            upload_file(tmp, url)
        except OSError as exc:
            raise OutputLocationError(f"cannot write {url} ({exc.strerror or exc})") from exc
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def fingerprint(url: str) -> str:
    """Content hash (BLAKE2b-128, hex) of the bytes at ``url``, streamed."""
    digest = hashlib.blake2b(digest_size=16)
    with open_url(url, "rb") as f:
        while chunk := f.read(_HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def remove(url: str) -> None:
    fs, path = filesystem(url)
    if fs.exists(path):
        fs.rm(path, recursive=True)


def stat_token(url: str) -> str:
    """A cheap change token for ``url``: size plus whatever version fields its filesystem reports
    (mtime, ETag, generation). Equal tokens mean "unchanged" without reading the content."""
    fs, path = filesystem(url)
    info = fs.info(path)
    fields = ("size", "mtime", "LastModified", "ETag", "etag", "md5Hash", "generation", "created")
    return json.dumps({k: str(info[k]) for k in fields if k in info}, sort_keys=True)
