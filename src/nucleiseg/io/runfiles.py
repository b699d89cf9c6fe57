"""The run's own files: written atomically (a temporary file renamed into place), files and CSV
tables streamed bit by bit to a partial file, JSON, and the lock that keeps two runs out of one
output folder."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import tempfile
from pathlib import Path

DISK_FULL = tuple(getattr(errno, name) for name in ("ENOSPC", "EDQUOT") if hasattr(errno, name))


@contextlib.contextmanager
def naming_full_disk(path: Path):
    """A full disk (or quota) while writing `path` is reported as an OSError naming `path`:
    the libraries that write images raise it with no file name, or the temporary one's."""
    try:
        yield
    except OSError as error:
        if error.errno in DISK_FULL and error.filename != str(path):
            raise OSError(error.errno, os.strerror(error.errno), str(path)) from error
        raise


def atomic_write(path: Path, write) -> None:
    """Call `write(tmp_path)` then rename into place, so a crash leaves no half-written file.
    Missing parent folders are created. A full disk is an OSError naming `path`."""
    path = Path(path)
    with naming_full_disk(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.stem}.", suffix=path.suffix, dir=path.parent)
        os.close(fd)
        try:
            write(Path(tmp))
            publish(Path(tmp), path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def publish(partial: Path, path: Path) -> None:
    """Give a finished temporary file the usual permissions (mkstemp's 0600 would hide outputs
    from others) and rename it into place, in one step."""
    os.chmod(partial, 0o666 & ~current_umask())
    os.replace(partial, path)


def current_umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def partial_path(path: Path) -> Path:
    """Where `path` is written until it is complete: `.<name>.partial` beside it (hidden)."""
    path = Path(path)
    return path.with_name(f".{path.name}.partial")


class PartialFile:
    """`path` written bit by bit (memory stays flat however long it grows) to its partial_path,
    renamed into place by `commit`; `discard` (or a failed `with` block) removes it, so a failed
    run leaves no half-written file. `binary`: bytes, else UTF-8 text. A full disk is an
    OSError naming `path`."""

    def __init__(self, path: Path, binary: bool = False, errors: str = "strict"):
        self.path = Path(path)
        self.partial = partial_path(self.path)
        with naming_full_disk(self.path):
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self.handle = (open(self.partial, "wb") if binary else
                           open(self.partial, "w", encoding="utf-8", newline="",
                                errors=errors))

    def write(self, data) -> None:
        with naming_full_disk(self.path):
            self.handle.write(data)

    def commit(self) -> None:
        with naming_full_disk(self.path):
            self.handle.close()
            publish(self.partial, self.path)

    def discard(self) -> None:
        with contextlib.suppress(OSError):  # a full disk cannot flush the buffer: drop it
            self.handle.close()
        self.partial.unlink(missing_ok=True)

    def __enter__(self) -> PartialFile:
        return self

    def __exit__(self, kind, *exc) -> None:
        if kind is None:
            self.commit()
        else:
            self.discard()


class CsvStream(PartialFile):
    """A CSV written row by row to a hidden partial file and renamed into place by `commit`:
    memory stays flat over any number of rows, and an interrupted run leaves no half table.
    Names that are not valid UTF-8 are written with backslash escapes."""

    def __init__(self, path: Path, columns, grow: bool = False):
        import csv

        super().__init__(path, errors="backslashreplace")
        self.columns = list(columns)
        self.grow = grow  # rows may bring columns of their own: added at the end
        self.writer = csv.DictWriter(self.handle, fieldnames=self.columns, restval="")
        self.writer.writeheader()

    def write(self, rows) -> None:
        with naming_full_disk(self.path):
            if not self.grow:
                self.writer.writerows(rows)
                return
            known = set(self.columns)
            for row in rows:
                new = [key for key in row if key not in known]
                if new:
                    self.add_columns(new)
                    known.update(new)
                self.writer.writerow(row)

    def add_columns(self, new) -> None:
        """Rewrite the rows so far under a header with `new` columns at the end (once per new
        set of columns, e.g. an image whose channels have other names)."""
        import csv

        self.handle.close()
        with open(self.partial, newline="", encoding="utf-8") as handle:
            rows = list(csv.DictReader(handle))
        self.columns += new
        self.handle = open(self.partial, "w", newline="", encoding="utf-8",
                           errors="backslashreplace")
        self.writer = csv.DictWriter(self.handle, fieldnames=self.columns, restval="")
        self.writer.writeheader()
        self.writer.writerows(rows)


class OutputLock:
    """`--out` in use: an exclusive lock on `<folder>/.nucleiseg.lock` (fcntl.flock), held
    while a run writes there. The kernel drops it when the process ends, however it ends, so a
    killed run never leaves it stuck; a second run into the same folder is refused, naming the
    process that holds it. The file is removed when the run ends (a killed run's stays, unlocked,
    and the next run takes it over)."""

    NAME = ".nucleiseg.lock"

    def __init__(self, folder: Path):
        self.path = Path(folder) / self.NAME
        self.fd = None

    def acquire(self) -> OutputLock:
        from nucleiseg.errors import OutputBusy

        try:
            import fcntl
        except ImportError:  # no flock (Windows): no lock
            return self
        while True:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o666)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError as error:
                holder = os.read(fd, 200).decode("utf-8", "replace").strip()
                os.close(fd)
                if error.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                    raise
                by = f" ({holder})" if holder else ""
                raise OutputBusy(f"{self.path.parent}: another nucleiseg run is writing "
                                 f"there{by}; wait for it to end, or choose another --out"
                                 ) from None
            try:  # the file we locked may have been removed by the run that just ended
                same = os.fstat(fd).st_ino == os.stat(self.path).st_ino
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        import socket

        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self.fd = fd
        return self

    def release(self) -> None:
        if self.fd is not None:
            with contextlib.suppress(OSError):
                self.path.unlink()  # while still locked: no one else holds this file
            os.close(self.fd)
            self.fd = None

    def __enter__(self) -> OutputLock:
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


def write_json(path: Path, data) -> None:
    """Write JSON atomically: a temporary file renamed into place."""
    text = json.dumps(data, indent=2, sort_keys=False) + "\n"
    atomic_write(Path(path), lambda tmp: tmp.write_text(text))
