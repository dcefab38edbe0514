"""The command line every example shares: its options, their checks, and how a script ends.

Not part of the package: the scripts import it as a sibling module (each script puts
``examples/`` on ``sys.path``). A refused input ends the script with one line on stderr and
exit status 2, never a traceback: argparse errors (a bad flag value) print one line through
:class:`Parser`, and everything found later (an unusable ``--out``, data, ``--resume`` file)
raises :class:`ExampleError`, which :func:`run` turns into that line. Ctrl-C outside the
training loops (which save a checkpoint first) ends with one line and status 130.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Callable, NoReturn

import torch

EXIT_REFUSED = 2  # a flag, file or folder the script cannot use (argparse's status too)
EXIT_INTERRUPTED = 130  # Ctrl-C, as a shell reports SIGINT


class ExampleError(Exception):
    """An input the example refuses; its message is the one line the user sees."""


class Parser(argparse.ArgumentParser):
    """argparse that reports a bad command line in one line (no usage block), exit status 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_REFUSED, f"{self.prog}: error: {message} (see --help)\n")


def run(main: Callable[[list[str] | None], int], argv: list[str] | None = None) -> int:
    """Call ``main(argv)``; a refused input or Ctrl-C becomes one line on stderr and a status."""
    try:
        return main(argv)
    except ExampleError as e:
        print(f"error: {e}", file=sys.stderr)
        return EXIT_REFUSED
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


# --- argparse types: a bad value is refused at parse time, in one line -------------------------


def positive_int(text: str) -> int:
    value = _number(int, text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def nonnegative_int(text: str) -> int:
    value = _number(int, text)
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be 0 or more, got {text}")
    return value


def nonnegative_float(text: str) -> float:
    value = _number(float, text)
    if not 0.0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be a finite number >= 0, got {text}")
    return value


def _number(kind: type, text: str):
    try:
        return kind(text)
    except ValueError:
        raise argparse.ArgumentTypeError(
            f"not a{'n' if kind is int else ''} {kind.__name__}: {text!r}"
        ) from None


def device(text: str) -> str:
    """A device this machine has: ``cpu``, ``cuda``, ``cuda:N`` (or ``mps`` where available)."""
    try:
        d = torch.device(text)
    except (RuntimeError, ValueError):
        raise argparse.ArgumentTypeError(
            f"not a torch device: {text!r} (try cpu or cuda)"
        ) from None
    if d.type == "cuda":
        if not torch.cuda.is_available():
            raise argparse.ArgumentTypeError(f"{text}: torch.cuda.is_available() is False")
        if d.index is not None and d.index >= torch.cuda.device_count():
            raise argparse.ArgumentTypeError(
                f"{text}: this machine has {torch.cuda.device_count()} CUDA device(s)"
            )
    elif d.type == "mps":
        if not torch.backends.mps.is_available():
            raise argparse.ArgumentTypeError(f"{text}: torch.backends.mps.is_available() is False")
    elif d.type != "cpu":
        raise argparse.ArgumentTypeError(f"unsupported device {text!r} (cpu, cuda, cuda:N)")
    return text


def default_device() -> str:
    return "cuda" if torch.cuda.is_available() else "cpu"


# --- the options every example has ---------------------------------------------------------------


SEEDS, QUICK_SEEDS = (0, 1, 2), (0, 1)  # --seeds defaults of the chapter's experiments


def parser(doc: str | None, name: str, *, seeds: bool | None = False) -> Parser:
    """--device, --out, --data-root, --quick, --threads, and --seed (``seeds=False``), --seeds
    (``seeds=True``: one run per seed, default :data:`SEEDS`, ``--quick``: :data:`QUICK_SEEDS`)
    or neither (``seeds=None``: nothing random).

    ``doc`` is the script's docstring: its first line is the description, the rest the epilog.
    """
    from torch_dlbasics.data import default_root

    first, _, rest = (doc or "").partition("\n")
    p = Parser(
        description=first,
        epilog=rest.strip() or None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--device",
        type=device,
        default=default_device(),
        help="cpu, cuda or cuda:N (default: %(default)s)",
    )
    p.add_argument(
        "--out", type=Path, default=Path("runs") / name, help="output folder (default: %(default)s)"
    )
    p.add_argument(
        "--data-root",
        type=Path,
        default=default_root(),
        help="where MNIST/raw/ lives or is prepared (default: $TORCH_DLBASICS_DATA or %(default)s)",
    )
    p.add_argument("--quick", action="store_true", help="tiny budget, same code path (for CI)")
    if seeds is False:
        p.add_argument(
            "--seed", type=nonnegative_int, default=0, help="random seed (default: %(default)s)"
        )
    elif seeds:
        p.add_argument(
            "--seeds",
            type=nonnegative_int,
            nargs="+",
            default=None,
            metavar="SEED",
            help="one run per seed; results give the median and range over them (default: "
            f"{' '.join(map(str, SEEDS))}; --quick: {' '.join(map(str, QUICK_SEEDS))})",
        )
    p.add_argument(
        "--threads", type=positive_int, default=None, help="torch.set_num_threads on the CPU"
    )
    return p


def setup(args: argparse.Namespace) -> torch.device:
    """Threads, headless plotting, the output folder (refused in one line if it cannot be
    made), the seed where there is one; return the device."""
    import matplotlib

    matplotlib.use("Agg")  # the scripts only write files
    if args.threads:
        torch.set_num_threads(args.threads)
    make_folder(args.out, "--out")
    if hasattr(args, "seed"):
        seed_everything(args.seed)
    if hasattr(args, "seeds"):
        if args.seeds is None:
            args.seeds = list(QUICK_SEEDS if args.quick else SEEDS)
        if len(set(args.seeds)) != len(args.seeds):
            raise ExampleError(f"--seeds {' '.join(map(str, args.seeds))}: a seed is given twice")
    return torch.device(args.device)


def make_folder(path: Path, flag: str) -> None:
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, a read-only place, ...
        raise ExampleError(f"{flag} {path}: cannot create the folder ({e.strerror or e})") from None


def seed_everything(seed: int) -> None:
    import random

    import numpy as np

    torch.manual_seed(seed)
    np.random.seed(seed)
    random.seed(seed)
