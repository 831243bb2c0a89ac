"""One fingerprint and one resume mechanism for every saved result and every long run.

* :func:`fingerprint` hashes the *content* of a job's inputs (items, labels, templates, pairs, token
  ids, arrays, files), all its parameters, the model identity and the medinterp version. Objects
  that know their content give it through a ``content_hash()`` (or ``fingerprint_payload()``) method;
  files are hashed by their bytes, never by their path.
* :class:`Checkpoint` is a directory of finished work units (safetensors, no pickle), tied to one
  fingerprint. Opening it with another fingerprint clears it (stale work is recomputed, and the log says
  why); a torn or corrupt unit reads as missing (recomputed, not trusted).

Example:
    >>> import tempfile, numpy as np
    >>> d = tempfile.mkdtemp()
    >>> ck = Checkpoint(d, fingerprint({"n": 1}))
    >>> ck.save("u0", vals=np.arange(3.0))
    >>> ck.load("u0")["vals"].tolist()
    [0.0, 1.0, 2.0]
    >>> Checkpoint(d, fingerprint({"n": 2})).load("u0") is None    # other inputs: stale unit cleared
    True
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Any

import numpy as np

log = logging.getLogger("medinterp")

_UNIT_GLOB = "unit_*.safetensors"


def _version() -> str:
    from medinterp import __version__

    return __version__


def _canonical(x: Any) -> Any:
    """A JSON-able, content-based stand-in for ``x`` (used only for hashing)."""
    for meth in ("content_hash", "fingerprint_payload"):
        fn = getattr(x, meth, None)
        if callable(fn) and not isinstance(x, type):
            return {"__content__": _canonical(fn())}
    if x is None or isinstance(x, (bool, int, str)):
        return x
    if isinstance(x, float):
        return repr(x)
    if isinstance(x, Path) or isinstance(x, os.PathLike):
        p = Path(x)
        if p.is_file():
            return {"__file__": _file_sha256(p)}
        return {"__path__": str(p)}
    if isinstance(x, dict):
        return {str(k): _canonical(v) for k, v in sorted(x.items(), key=lambda kv: str(kv[0]))}
    if isinstance(x, (list, tuple)):
        return [_canonical(v) for v in x]
    if isinstance(x, (set, frozenset)):
        return sorted((_canonical(v) for v in x), key=json.dumps)
    if isinstance(x, np.ndarray):
        a = np.ascontiguousarray(x)
        return {"__array__": [str(a.dtype), list(a.shape), hashlib.sha256(a.tobytes()).hexdigest()]}
    if isinstance(x, np.generic):
        return _canonical(x.item())
    try:
        import torch

        if isinstance(x, torch.Tensor):
            return _canonical(x.detach().cpu().numpy())
    except ImportError:  # torch is a dependency; this only keeps the function importable without it
        pass
    if dataclasses.is_dataclass(x) and not isinstance(x, type):
        return {"__dataclass__": type(x).__name__,
                **{f.name: _canonical(getattr(x, f.name)) for f in dataclasses.fields(x)}}
    raise TypeError(f"fingerprint: cannot hash a {type(x).__name__} by content; give it a content_hash() method")


def _file_sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(chunk), b""):
            h.update(block)
    return h.hexdigest()


def content_hash(x: Any) -> str:
    """sha256 (hex) of the canonical content of ``x`` (see :func:`fingerprint`)."""
    blob = json.dumps(_canonical(x), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(blob.encode()).hexdigest()


def model_identity(model: Any) -> dict[str, Any]:
    """What identifies a model's numbers: its ``medinterp_info`` minus timings and devices."""
    if model is None:
        return {}
    info = getattr(model, "medinterp_info", None)
    if isinstance(info, dict) and info:
        return {k: v for k, v in info.items() if k not in ("load_seconds", "seconds", "device", "verify_seconds")}
    cfg = getattr(model, "cfg", None)
    return {"model_name": str(getattr(cfg, "model_name", "")), "n_layers": getattr(cfg, "n_layers", None),
            "n_params": int(sum(p.numel() for p in model.parameters())) if hasattr(model, "parameters") else None}


def fingerprint(*parts: Any, model: Any = None, length: int = 16) -> str:
    """Hash of a job: the content of ``parts``, the model identity and the medinterp version.

    Args:
        *parts: inputs and parameters (dicts, lists, arrays, concept/pair sets, files).
        model: the model the job runs on (its :func:`model_identity` is included).
        length: hex digits kept.

    Example:
        >>> fingerprint({"a": 1}) == fingerprint({"a": 1}) != fingerprint({"a": 2})
        True
    """
    return content_hash({"medinterp": _version(), "model": model_identity(model), "parts": list(parts)})[:length]


class Checkpoint:
    """Finished work units of one job in a directory, tied to the job's fingerprint.

    Args:
        directory: where units are written (created); None gives a no-op checkpoint.
        fingerprint: the job's :func:`fingerprint`; units of another fingerprint are removed.
        name: shown in log lines.
    """

    def __init__(self, directory: str | os.PathLike | None, fingerprint: str, name: str = "job"):
        self.dir = Path(directory) if directory is not None else None
        self.fingerprint = fingerprint
        self.name = name
        if self.dir is None:
            return
        self.dir.mkdir(parents=True, exist_ok=True)
        fp_file = self.dir / "fingerprint.json"
        old = None
        if fp_file.is_file():
            try:
                old = json.loads(fp_file.read_text()).get("fingerprint")
            except (OSError, json.JSONDecodeError):
                old = "unreadable"
        if old is not None and old != fingerprint:
            n = self.clear()
            log.warning("%s: %s holds %d unit(s) of other inputs or parameters (fingerprint %s, now %s); "
                        "recomputing", name, self.dir, n, old, fingerprint)
        tmp = self.dir / "fingerprint.json.tmp"
        tmp.write_text(json.dumps({"fingerprint": fingerprint}))
        os.replace(tmp, fp_file)

    def _path(self, key: str) -> Path:
        return self.dir / f"unit_{key}.safetensors"

    def load(self, key: str) -> dict[str, np.ndarray] | None:
        """The arrays of a finished unit, or None (absent, torn, corrupt or of another fingerprint)."""
        if self.dir is None or not self._path(key).is_file():
            return None
        from safetensors import safe_open

        try:
            with safe_open(str(self._path(key)), framework="numpy") as f:
                if (f.metadata() or {}).get("fingerprint") != self.fingerprint:
                    return None
                return {k: f.get_tensor(k) for k in f.keys()}
        except Exception as e:  # noqa: BLE001 - any unreadable unit is recomputed, and said so
            log.warning("%s: unit %s is unreadable (%s: %s); recomputing it", self.name, key, type(e).__name__, e)
            return None

    def save(self, key: str, **arrays: np.ndarray) -> None:
        """Write one finished unit atomically (a unit on disk is always complete)."""
        if self.dir is None:
            return
        from safetensors.numpy import save_file

        tmp = self.dir / f"tmp_{key}.safetensors"
        save_file({k: np.ascontiguousarray(v) for k, v in arrays.items()}, str(tmp),
                  metadata={"fingerprint": self.fingerprint})
        os.chmod(tmp, 0o644)
        os.replace(tmp, self._path(key))

    def done(self) -> list[str]:
        """Keys of the units on disk."""
        if self.dir is None:
            return []
        return sorted(p.name[len("unit_"):-len(".safetensors")] for p in self.dir.glob(_UNIT_GLOB))

    def n_done(self) -> int:
        return len(self.done())

    def clear(self) -> int:
        """Remove every unit; returns how many there were."""
        if self.dir is None:
            return 0
        n = 0
        for p in list(self.dir.glob(_UNIT_GLOB)) + list(self.dir.glob("tmp_*")):
            p.unlink()
            n += 1
        return n


# ---------------------------------------------------------------- saved files and work-dir claims
def file_checksums(directory: str | os.PathLike, skip: tuple[str, ...] = ()) -> dict[str, str]:
    """``{relative path: sha256}`` of every file under ``directory`` (names in ``skip`` and dot-files left out).

    Example:
        >>> import tempfile
        >>> d = Path(tempfile.mkdtemp()); _ = (d / "a.txt").write_text("x")
        >>> file_checksums(d)
        {'a.txt': '2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881'}
    """
    root = Path(directory)
    return {p.relative_to(root).as_posix(): _file_sha256(p) for p in sorted(root.rglob("*"))
            if p.is_file() and p.name not in skip and not p.name.startswith(".")}


def changed_files(directory: str | os.PathLike, expected: dict[str, str]) -> list[str]:
    """The files of ``expected`` that are missing under ``directory`` or whose bytes differ (empty: all intact)."""
    root = Path(directory)
    return [name for name, sha in sorted(expected.items())
            if not (root / name).is_file() or _file_sha256(root / name) != sha]


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) would send CTRL_C_EVENT there: never take a lock over on Windows
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    except OSError:
        return False
    return True


class WorkDirLock:
    """An atomic claim on a work directory: ``<dir>/.lock`` holds the owner's process id and host.

    A second process that claims the same directory gets a :class:`~medinterp.errors.MedinterpError`
    naming the process that holds it; the lock of a process that no longer runs (on this host) is taken
    over, with a log line. Claims are re-entrant within one process (the CLI claims before the model
    loads, :func:`~medinterp.maps.knowledge_map` again). ``None`` as the directory gives a no-op lock.

    Example:
        >>> import tempfile
        >>> d = tempfile.mkdtemp()
        >>> with WorkDirLock(d):
        ...     (Path(d) / ".lock").is_file()
        True
        >>> (Path(d) / ".lock").exists()
        False
    """

    _held: dict[str, int] = {}  # resolved path -> claims by this process

    def __init__(self, directory: str | os.PathLike | None, lease_s: float | None = None):
        self.dir = Path(directory) if directory is not None else None
        self.path = self.dir / ".lock" if self.dir is not None else None
        # lease_s: the holder renews the lock file's mtime every lease_s / 4; a lock not renewed for lease_s is
        # stale on any host (a process on another host cannot be asked whether it still runs)
        self.lease_s = lease_s
        self._renew: Any = None

    def _key(self) -> str:
        return str(self.dir.resolve())

    def _owner(self) -> dict[str, Any] | None:
        try:
            d = json.loads(self.path.read_text())
            return d if isinstance(d, dict) else {}
        except FileNotFoundError:
            return None
        except (OSError, ValueError):
            return {}  # torn or foreign: treated as stale

    def acquire(self) -> "WorkDirLock":
        """Claim the directory (see the class docstring)."""
        if self.dir is None:
            return self
        from medinterp.errors import MedinterpError

        key = self._key() if self.dir.exists() else None
        if key is not None and self._held.get(key):
            self._held[key] += 1
            return self
        self.dir.mkdir(parents=True, exist_ok=True)
        key = self._key()
        import socket
        import time

        me = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%dT%H:%M:%S")}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                owner = self._owner()
                if owner is None:
                    continue  # released in between: try again
                pid, host = owner.get("pid"), owner.get("host")
                if isinstance(pid, int) and (host != me["host"] or _pid_alive(pid)) and not self._expired():
                    raise MedinterpError(
                        f"{self.dir}: in use by process {pid} on {host} (since {owner.get('started', '?')}); "
                        f"wait for it to finish, or stop it; two runs on one work dir would interleave") from None
                log.warning("%s: taking over the lock of process %s, which no longer runs", self.dir, pid)
                try:
                    self.path.unlink()
                except FileNotFoundError:
                    pass
                continue
            with os.fdopen(fd, "w") as f:
                json.dump(me, f)
            self._held[key] = 1
            if self.lease_s:
                self._start_renewing()
            return self
        raise MedinterpError(f"{self.dir}: could not claim {self.path} (another process keeps taking it)")

    def release(self) -> None:
        """Drop this claim; the lock file goes with the process's last claim."""
        if self.dir is None:
            return
        key = self._key()
        n = self._held.get(key, 0) - 1
        if n > 0:
            self._held[key] = n
            return
        self._held.pop(key, None)
        if self._renew is not None:
            self._renew.set()
            self._renew = None
        owner = self._owner()
        if owner and owner.get("pid") == os.getpid():
            self.path.unlink(missing_ok=True)

    def _expired(self) -> bool:
        """Whether the lock file was last renewed more than ``lease_s`` ago (never, without a lease)."""
        if not self.lease_s:
            return False
        import time

        try:
            return time.time() - self.path.stat().st_mtime > self.lease_s
        except FileNotFoundError:
            return True

    def _start_renewing(self) -> None:
        import threading

        stop = threading.Event()
        path, every = self.path, self.lease_s / 4

        def renew() -> None:
            while not stop.wait(every):
                try:
                    os.utime(path)
                except OSError:
                    return

        threading.Thread(target=renew, daemon=True, name=f"medinterp-lease:{path}").start()
        self._renew = stop

    def __enter__(self) -> "WorkDirLock":
        return self.acquire()

    def __exit__(self, *exc: Any) -> None:
        self.release()
