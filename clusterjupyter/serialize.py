"""Object serialization for job payloads and results.

A *blob* is one pickled value in a small framed format that keeps large buffers (numpy arrays,
bytes-like objects) out of band, so pickling a 1 GiB array neither copies it in memory nor holds a
second 1 GiB ``bytes`` object::

    b"CJB1" | u32 nbuf | u64 len(pickle) | u64 len(buffer_i) * nbuf | pickle | buffer_0 | ...

Values are pickled with the C pickler when possible and with dill when the value involves
something the C pickler would get wrong: functions and classes defined in the notebook
(``__main__``) travel by value. Classes that already exist on the receiving side under the same
name in ``__main__`` are sent as references (persistent ids), so an instance of a notebook class
comes back as an instance of the kernel's own class and ``isinstance`` keeps working.

This module is imported by the runner: it depends on the standard library only, and imports dill
lazily, the first time a value needs it.
"""

from __future__ import annotations

import hashlib
import io
import os
import pickle
import struct
import sys
import threading
import types
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any, BinaryIO, Callable, Iterator

MAGIC = b"CJB1"
_HEAD = struct.Struct("<4sIQ")
PROTOCOL = 5
_MAIN_CLASS = "main-class"

ClassRef = Callable[[type], "str | None"]


class BlobMismatch(pickle.UnpicklingError):
    """A blob's bytes do not match the digest it was signed under."""


class _NeedDill(Exception):
    """Raised inside the C pickler when a value must be pickled by dill."""


def _is_main(obj: Any) -> bool:
    return getattr(obj, "__module__", None) == "__main__"


def main_class_ref(namespace: dict) -> ClassRef:
    """Return a function naming a ``__main__`` class that also lives in ``namespace``."""

    def ref(cls: type) -> str | None:
        name = getattr(cls, "__qualname__", "")
        if _is_main(cls) and "." not in name and namespace.get(name) is cls:
            return name
        return None

    return ref


class _FastPickler(pickle.Pickler):
    def __init__(self, file: BinaryIO, class_ref: ClassRef | None, root: Any, **kw: Any):
        super().__init__(file, protocol=PROTOCOL, **kw)
        self._class_ref = class_ref
        self._root = root

    def persistent_id(self, obj: Any) -> Any:
        if self._class_ref is not None and isinstance(obj, type) and obj is not self._root:
            name = self._class_ref(obj)
            if name is not None:
                return (_MAIN_CLASS, name)
        return None

    def reducer_override(self, obj: Any) -> Any:
        if isinstance(obj, (types.FunctionType, type)) and _is_main(obj):
            raise _NeedDill
        if isinstance(obj, types.CodeType):
            raise _NeedDill
        return NotImplemented


def _dill_pickler(file: BinaryIO, main: types.ModuleType, class_ref: ClassRef | None, root: Any,
                  **kw: Any) -> pickle.Pickler:
    import dill

    class DillPickler(dill.Pickler):  # type: ignore[misc]
        def persistent_id(self, obj: Any) -> Any:
            if class_ref is not None and isinstance(obj, type) and obj is not root:
                name = class_ref(obj)
                if name is not None:
                    return (_MAIN_CLASS, name)
            return None

    p = DillPickler(file, protocol=PROTOCOL, recurse=False, byref=False, **kw)
    # Globals of notebook functions are the namespace of ``__main__``; dill writes them as a
    # reference to whatever ``_main`` is, so point it at the namespace the value comes from.
    p._main = main
    return p


#: blobs up to this size are hashed when their address is asked for; larger ones whose digest is
#: unknown are hashed while they are sent (sha256 runs at ~1.7 GB/s: 0.6 s for 1 GiB)
PIPELINE_MIN = 32 << 20
#: fast fingerprint -> sha256 of large blobs seen by this process (most recent last). Re-sending
#: an unchanged 1 GiB input costs a 30 ms xxh3 pass instead of a 0.6 s sha256 one.
_KNOWN: OrderedDict[str, str] = OrderedDict()
_KNOWN_MAX = 256
FINGERPRINT_MIN = 1 << 20
FINGERPRINT_PIECE = 64 << 20


class FingerprintStore:
    """Where fingerprints outlive the process (the kernel side passes the journal's)."""

    def get(self, fingerprint: str) -> str | None:
        raise NotImplementedError

    def put(self, fingerprint: str, sha256: str) -> None:
        raise NotImplementedError


def _remember(fingerprint: str, sha: str, store: FingerprintStore | None) -> None:
    _KNOWN[fingerprint] = sha
    _KNOWN.move_to_end(fingerprint)
    while len(_KNOWN) > _KNOWN_MAX:
        _KNOWN.popitem(last=False)
    if store is not None:
        try:
            store.put(fingerprint, sha)
        except Exception:
            pass


class Blob:
    """A pickled value ready to be written: header, pickle stream and out-of-band buffers.

    Its content address :attr:`sha256` is computed when first asked for. A sender that holds a
    large blob whose digest is not known yet (:meth:`known_sha256` is None) can hash it in a
    thread while the bytes travel (:meth:`hash_in_background`) instead of before.
    """

    def __init__(self, parts: list[memoryview], size: int, used_dill: bool = False,
                 sha256: str | None = None):
        self.parts = parts
        self.size = size
        self.used_dill = used_dill
        self._sha256 = sha256
        self._fingerprint: str | None = None

    def __repr__(self) -> str:
        return f"<Blob {self.size} bytes sha256={self._sha256 or '?'}>"

    @property
    def sha256(self) -> str:
        """The sha256 of the blob's bytes (hashed now unless already known)."""
        if self._sha256 is None:
            self._sha256 = self.known_sha256(hash_up_to=self.size)
        assert self._sha256 is not None
        return self._sha256

    def known_sha256(self, hash_up_to: int = PIPELINE_MIN,
                     store: FingerprintStore | None = None) -> str | None:
        """The sha256 if it is cheap to have: known already (this blob's bytes were hashed
        before, by this process or one sharing the fingerprint ``store``) or, for blobs of at
        most ``hash_up_to`` bytes, hashed now (and remembered in ``store``). None otherwise."""
        if self._sha256 is not None:
            return self._sha256
        fingerprint = self.fingerprint()
        if fingerprint is not None:
            known = _KNOWN.get(fingerprint)
            if known is None and store is not None:
                try:
                    known = store.get(fingerprint)
                except Exception:
                    known = None
            if known is not None:
                _remember(fingerprint, known, None)
                self._sha256 = known
                return known
        if self.size <= hash_up_to:
            self._sha256 = self._hash(store)
        return self._sha256

    def fingerprint(self) -> str | None:
        """A fast 128-bit xxh3 fingerprint of the bytes (None for small blobs or without
        xxhash): a key to look the sha256 up by, never a content address itself.

        Large blobs are cut into fixed pieces hashed on every core (xxhash releases the GIL);
        the fingerprint is the xxh3 of the pieces' digests, so it does not depend on how many
        threads did the work."""
        if self._fingerprint is None and self.size >= FINGERPRINT_MIN:
            try:
                import xxhash
            except ImportError:
                return None
            pieces = [part[i:i + FINGERPRINT_PIECE] for part in self.parts
                      for i in range(0, len(part), FINGERPRINT_PIECE)]
            workers = min(len(pieces), os.cpu_count() or 1, 4)
            if workers > 1:
                from concurrent.futures import ThreadPoolExecutor

                with ThreadPoolExecutor(workers, thread_name_prefix="cj-xxh3") as pool:
                    digests = list(pool.map(lambda v: xxhash.xxh3_128_digest(v), pieces))
            else:
                digests = [xxhash.xxh3_128_digest(v) for v in pieces]
            self._fingerprint = f"{self.size}:{xxhash.xxh3_128_hexdigest(b''.join(digests))}"
        return self._fingerprint

    def _hash(self, store: FingerprintStore | None = None) -> str:
        digest = hashlib.sha256()
        for part in self.parts:
            digest.update(part)     # releases the GIL: other threads go on meanwhile
        sha = digest.hexdigest()
        fingerprint = self.fingerprint()
        if fingerprint is not None:
            _remember(fingerprint, sha, store)
        return sha

    def hash_in_background(self, store: FingerprintStore | None = None) -> Callable[[], str]:
        """Start hashing in a thread; returns a function that waits for the sha256."""
        if self._sha256 is not None:
            return lambda: self.sha256
        box: dict[str, Any] = {}

        def work() -> None:
            try:
                box["sha"] = self._hash(store)
            except BaseException as e:  # handed to the caller of wait()
                box["error"] = e

        thread = threading.Thread(target=work, daemon=True, name="clusterjupyter-sha256")
        thread.start()

        def wait() -> str:
            thread.join()
            if "error" in box:
                raise box["error"]
            self._sha256 = box["sha"]
            return self._sha256

        return wait

    def chunks(self, chunk_size: int = 4 << 20) -> Iterator[memoryview]:
        """Yield the bytes of the blob in slices of at most ``chunk_size`` (no copies)."""
        for part in self.parts:
            for start in range(0, len(part), chunk_size):
                yield part[start:start + chunk_size]

    def write_to(self, f: BinaryIO) -> None:
        for chunk in self.chunks():
            f.write(chunk)


@dataclass
class DumpOptions:
    main: types.ModuleType = field(default_factory=lambda: sys.modules["__main__"])
    class_ref: ClassRef | None = None


def dump(obj: Any, options: DumpOptions | None = None) -> Blob:
    """Pickle ``obj`` into a :class:`Blob`; raise the pickling error if it cannot be pickled."""
    opts = options or DumpOptions()
    buffers: list[pickle.PickleBuffer] = []
    stream = io.BytesIO()
    used_dill = False
    try:
        _FastPickler(stream, opts.class_ref, obj, buffer_callback=buffers.append).dump(obj)
    except _NeedDill:
        used_dill = True
        buffers.clear()
        stream = io.BytesIO()
        # dill keeps a function's globals by reference only when they are the namespace of
        # sys.modules["__main__"]; make that the namespace the value comes from while pickling
        saved = sys.modules.get("__main__")
        sys.modules["__main__"] = opts.main
        try:
            _dill_pickler(stream, opts.main, opts.class_ref, obj,
                          buffer_callback=buffers.append).dump(obj)
        finally:
            if saved is not None:
                sys.modules["__main__"] = saved
    views = [b.raw() for b in buffers]
    data = stream.getbuffer()
    head = _HEAD.pack(MAGIC, len(views), len(data)) + b"".join(
        struct.pack("<Q", v.nbytes) for v in views)
    parts = [memoryview(head), data, *views]
    size = sum(p.nbytes for p in parts)
    return Blob(parts=parts, size=size, used_dill=used_dill)


def dumps(obj: Any, options: DumpOptions | None = None) -> bytes:
    blob = dump(obj, options)
    return b"".join(bytes(p) for p in blob.parts)


Resolver = Callable[[str], Any]


class _Unpickler(pickle.Unpickler):
    """Unpickler for blobs: ``__main__`` is ``main``; notebook class references are resolved by
    ``resolve(name)`` (default: look the name up in ``main``)."""

    def __init__(self, file: BinaryIO, main: types.ModuleType, resolve: Resolver | None,
                 buffers: list) -> None:
        super().__init__(file, buffers=buffers)
        self._main = main
        self._resolve = resolve

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) in (("__builtin__", "__main__"), ("__main__", "__dict__")):
            return self._main.__dict__
        if module.startswith("dill"):
            import dill  # noqa: F401  (registers dill's reconstructors)
            if module == "dill.dill":
                module = "dill._dill"
        return super().find_class(module, name)

    def persistent_load(self, pid: Any) -> Any:
        kind, name = pid
        if kind != _MAIN_CLASS:
            raise pickle.UnpicklingError(f"unknown reference {pid!r}")
        if self._resolve is not None:
            return self._resolve(name)
        try:
            return self._main.__dict__[name]
        except KeyError:
            raise pickle.UnpicklingError(
                f"class {name!r} is not defined in the receiving namespace") from None


#: largest piece read at once when a blob's size is not known in advance
_READ_PIECE = 64 << 20


def read_blob(f: BinaryIO, digest: Any = None,
              size: int | None = None) -> tuple[bytes, list[bytearray]]:
    """Read the framed blob from ``f``: the pickle stream and writable buffers.

    If ``digest`` (a hashlib object) is given, every byte of the blob is fed to it, and the blob
    must end where its header says it ends. If ``size`` (the signed size of the blob) is given,
    the header must add up to it exactly, checked before anything is allocated; without it,
    memory is taken only as bytes actually arrive. Either way a header that claims more than
    the file holds costs nothing.
    """
    digest = digest if digest is not None else _NoDigest()
    head = f.read(_HEAD.size)
    digest.update(head)
    if len(head) != _HEAD.size:
        raise pickle.UnpicklingError("truncated blob")
    magic, nbuf, plen = _HEAD.unpack(head)
    if magic != MAGIC:
        raise pickle.UnpicklingError("not a clusterjupyter blob")
    if size is not None and _HEAD.size + 8 * nbuf > size:
        raise pickle.UnpicklingError("blob header does not match its size")
    table = _read_exactly(f, 8 * nbuf)
    digest.update(table)
    sizes = struct.unpack(f"<{nbuf}Q", table) if nbuf else ()
    if size is not None and _HEAD.size + len(table) + plen + sum(sizes) != size:
        raise pickle.UnpicklingError("blob header does not match its size")
    data = _read_exactly(f, plen)
    digest.update(data)
    buffers = []
    for n in sizes:
        if size is None:
            buf = bytearray(_read_exactly(f, n))
        else:
            buf = bytearray(n)
            view = memoryview(buf)
            got = 0
            while got < n:
                k = f.readinto(view[got:])  # type: ignore[attr-defined]
                if not k:
                    raise pickle.UnpicklingError("truncated blob")
                got += k
        digest.update(buf)
        buffers.append(buf)
    if not isinstance(digest, _NoDigest) and f.read(1):
        raise pickle.UnpicklingError("blob has trailing data")
    return data, buffers


def read_verified(f: BinaryIO, sha256: str,
                  size: int | None) -> tuple[bytes, list[bytearray]]:
    """:func:`read_blob`, checked against the blob's signed ``sha256`` and ``size``; a blob that
    is not exactly the one signed raises ``pickle.UnpicklingError`` saying why (an empty message
    when only its digest differs). Nothing is unpickled here."""
    digest = hashlib.sha256()
    data, buffers = read_blob(f, digest, size)
    if digest.hexdigest() != sha256:
        raise pickle.UnpicklingError("")
    return data, buffers


def _read_exactly(f: BinaryIO, n: int) -> bytes:
    """``n`` bytes from ``f``, taking memory piece by piece as they arrive."""
    if n <= _READ_PIECE:
        data = f.read(n)
    else:
        pieces = []
        left = n
        while left:
            piece = f.read(min(left, _READ_PIECE))
            if not piece:
                break
            pieces.append(piece)
            left -= len(piece)
        data = b"".join(pieces)
    if len(data) != n:
        raise pickle.UnpicklingError("truncated blob")
    return data


class _NoDigest:
    def update(self, b: Any) -> None:
        pass


def load(f: BinaryIO, main: types.ModuleType | None = None, resolve: Resolver | None = None,
         expect_sha256: str | None = None, expect_size: int | None = None) -> Any:
    """Unpickle a blob. Only call this on data whose signature has been verified: pass the
    signed ``expect_sha256`` (and ``expect_size``) and the bytes are checked against them
    *before* unpickling; anything that does not match is a :class:`BlobMismatch`."""
    digest = hashlib.sha256() if expect_sha256 is not None else None
    try:
        data, buffers = read_blob(f, digest, expect_size)
    except BlobMismatch:
        raise
    except pickle.UnpicklingError as e:
        if digest is None:
            raise
        raise BlobMismatch(f"blob does not match its signature ({e})") from None
    if digest is not None and digest.hexdigest() != expect_sha256:
        raise BlobMismatch("blob content does not match its signed digest")
    main = main if main is not None else sys.modules["__main__"]
    return _Unpickler(io.BytesIO(data), main, resolve, buffers).load()


def loads(data: bytes, main: types.ModuleType | None = None,
          resolve: Resolver | None = None) -> Any:
    return load(io.BytesIO(data), main, resolve)


class HashingWriter:
    """File-like sink that only hashes what is written (for fingerprints without storage)."""

    def __init__(self) -> None:
        self.digest = hashlib.sha256()

    def write(self, b: Any) -> int:
        self.digest.update(b)
        return len(b)


def state_digest(obj: Any, options: DumpOptions | None = None) -> str | None:
    """A digest of ``obj``'s pickled state, or None if it cannot be pickled.

    Used to notice in-place mutation: compare the digest before and after the cell, in the same
    process (pickles of sets and dicts are stable within one process).
    """
    try:
        return dump(obj, options).sha256
    except Exception:
        return None
