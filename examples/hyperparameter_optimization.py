"""The book's hyperparameter search (§6.5) with our SGD, L2 and He init, on Optuna.

    python examples/hyperparameter_optimization.py                  # the book: random search, 100 trials
    python examples/hyperparameter_optimization.py --sampler random tpe --seeds 0 1 2 3 4
    python examples/hyperparameter_optimization.py --jobs 2         # 2 worker processes, one study
    python examples/hyperparameter_optimization.py --storage postgresql://host/db   # shared by machines

Book ch. 6 ``hyperparameter_optimization.py``: the first 500 training images, shuffled, the
first ``int(500 * 0.2)`` = 100 held out for validation and 400 trained on; each trial draws
``lr = 10 ** U(-6, -2)`` and ``weight_decay = 10 ** U(-8, -4)`` (Optuna's log-uniform
``suggest_float(..., log=True)``: the same distribution) and trains the book's 784 -> 6 x 100
(ReLU) -> 10 network (He initialisation) with our ``SGD(lr)`` and the loss plus our
``l2_penalty(model, weight_decay)``, batch 100 drawn as ``np.random.choice(400, 100)``, 50 epochs
of 4 iterations, recording training and validation accuracy every epoch (the book's
``Trainer``). The score is the last validation accuracy. The figure is the book's: the best 20
trials in a 4 x 5 grid, validation solid, training dashed. The book's best trial reached
validation accuracy 0.84 (lr 9.4e-3, weight decay 2.8e-6).

Optuna is the engine (``pip install -e ".[search]"``): ``--sampler random`` is the book's method
(``RandomSampler``), ``tpe`` Optuna's default TPE. Each (sampler, seed) is one study in
``--storage`` (any SQLAlchemy URL; default an SQLite file under ``--out``), so a killed search
resumes where it stopped: finished trials are kept, and only the missing ones run. ``--jobs N``
runs N worker processes on the same study (each with its own sampler seed). With several
samplers or seeds, a second figure (``..._samplers.png``) compares the best validation accuracy
found after k trials at equal budget: median and min-max over the seeds, the book's 0.84
marked. Per seed, the data split is the same for every sampler; a trial's initial weights and
batches come from (seed, trial number). ``--quick``: 8 trials of 10 epochs.
"""

from __future__ import annotations

import argparse
import math
import multiprocessing
import sys
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _book
import _cli
import _loaders
import _plots
import _results

NAME = "hyperparameter_optimization"
N_IMAGES, VALIDATION_RATE, BATCH_SIZE = 500, 0.20, 100
LR_RANGE, WD_RANGE = (1e-6, 1e-2), (1e-8, 1e-4)
BOOK = {"best_val_accuracy": 0.84, "lr": 9.4e-3, "weight_decay": 2.8e-6}
SHOWN = 20  # the book plots the best 20 trials, 4 x 5


def optuna_or_exit() -> Any:
    try:
        import optuna
    except ImportError:
        raise _cli.ExampleError(
            'this example needs Optuna: pip install -e ".[search]" (or pip install optuna)'
        ) from None
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    warnings.filterwarnings("ignore", category=optuna.exceptions.ExperimentalWarning)  # heartbeats
    return optuna


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = _cli.parser(__doc__, NAME, seeds=True)
    p.add_argument(
        "--sampler",
        nargs="+",
        choices=("random", "tpe"),
        default=["random"],
        help="random: the book's search; tpe: Optuna's TPE; both: compared (default: random)",
    )
    p.add_argument(
        "--trials",
        type=_cli.positive_int,
        default=None,
        help="trials per study (default: 100; --quick: 8)",
    )
    p.add_argument(
        "--epochs",
        type=_cli.positive_int,
        default=None,
        help="epochs per trial (default: 50; --quick: 10)",
    )
    p.add_argument(
        "--storage",
        default=None,
        metavar="URL",
        help="SQLAlchemy URL of the studies (default: sqlite:///<out>/studies.db)",
    )
    p.add_argument(
        "--jobs",
        type=_cli.positive_int,
        default=1,
        help="worker processes per study (default: %(default)s)",
    )
    p.add_argument("--no-progress", action="store_true", help="no progress bar")
    return p.parse_args(argv)  # fmt: skip


def study_name(sampler: str, seed: int, epochs: int) -> str:
    """One study per sampler, seed and trial length: a rerun with the same ones resumes it."""
    return f"dlfs-6.5-{sampler}-seed{seed}-{epochs}epochs"


def split(x: torch.Tensor, t: torch.Tensor, seed: int) -> tuple[torch.Tensor, ...]:
    """The book's ``shuffle_dataset`` then its split: 100 validation, 400 training images."""
    perm = torch.randperm(N_IMAGES, generator=torch.Generator().manual_seed(seed))
    x, t = x[perm.to(x.device)], t[perm.to(x.device)]
    n_val = int(N_IMAGES * VALIDATION_RATE)
    return x[n_val:], t[n_val:], x[:n_val], t[:n_val]


def train_trial(
    lr: float, weight_decay: float, data: tuple, epochs: int, seed: int
) -> dict[str, list[float]]:
    """One trial: the book's network and Trainer at (lr, weight_decay); accuracy per epoch."""
    from torch_dlbasics.init import init_weights_
    from torch_dlbasics.regularization import l2_penalty

    iter_per_epoch = max(len(data[0]) // BATCH_SIZE, 1)
    torch.manual_seed(seed)
    model = init_weights_(_book.mlp([100] * 6), "he").to(data[0].device)
    optimizer = _book.make_optimizer("SGD", model.parameters(), lr=lr)
    batches = _book.book_batches(len(data[0]), BATCH_SIZE, epochs * iter_per_epoch, seed)
    acc = _book.train_with_evaluation(
        model,
        optimizer,
        data,
        batches,
        iter_per_epoch,
        lambda m: l2_penalty(m, weight_decay),
        progress=False,
    )
    return {"train": acc["train"], "val": acc["test"]}


def make_sampler(optuna: Any, kind: str, seed: int) -> Any:
    if kind == "random":
        return optuna.samplers.RandomSampler(seed=seed)
    return optuna.samplers.TPESampler(seed=seed)


def storage(optuna: Any, url: str) -> Any:
    """RDB storage with heartbeats: a trial whose process was killed is marked failed (after a
    minute without heartbeat) instead of staying RUNNING; SQLite waits for its lock."""
    engine = {"connect_args": {"timeout": 60}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(
            url, engine_kwargs=engine, heartbeat_interval=10, grace_period=60
        )
    except Exception as e:  # a bad URL, an unreachable server, a missing driver
        first = (str(e).strip().splitlines() or [type(e).__name__])[0]
        raise _cli.ExampleError(f"--storage {url}: {first}") from None


def worker(url: str, name: str, kind: str, sampler_seed: int, n_trials: int, settings: dict[str, Any],
           threads: int | None = None, bar: Any = None) -> None:  # fmt: skip
    """Run ``n_trials`` trials of study ``name``, in this process (with a progress ``bar``) or
    in a spawned worker process."""
    optuna = optuna_or_exit()
    if threads:
        torch.set_num_threads(threads)
    device = torch.device(settings["device"])
    x, t = _loaders.mnist_tensors(Path(settings["data_root"]), True, device, N_IMAGES)
    data = split(x, t, settings["seed"])

    def objective(trial: Any) -> float:
        wd = trial.suggest_float("weight_decay", *WD_RANGE, log=True)
        lr = trial.suggest_float("lr", *LR_RANGE, log=True)
        acc = train_trial(
            lr, wd, data, settings["epochs"], settings["seed"] * 100_003 + trial.number
        )
        trial.set_user_attr("train_accuracy", acc["train"])
        trial.set_user_attr("val_accuracy", acc["val"])
        return acc["val"][-1]

    def tick(study: Any, trial: Any) -> None:
        if bar is not None and trial.value is not None:
            bar.update(1)
            bar.set_postfix(best=f"{study.best_value:.3f}", last=f"{trial.value:.3f}")

    sampler = make_sampler(optuna, kind, sampler_seed)
    study = optuna.load_study(study_name=name, storage=storage(optuna, url), sampler=sampler)
    study.optimize(objective, n_trials=n_trials, callbacks=[tick])


def run_study(
    optuna: Any, args: argparse.Namespace, kind: str, seed: int, trials: int, epochs: int
) -> list[Any]:
    """Create or resume one study; run the trials it lacks; return its finished trials."""
    url = args.storage
    name = study_name(kind, seed, epochs)
    study = optuna.create_study(
        study_name=name, storage=storage(optuna, url), direction="maximize", load_if_exists=True
    )
    done = [
        tr
        for tr in study.get_trials(deepcopy=False)
        if tr.state == optuna.trial.TrialState.COMPLETE
    ]
    missing = trials - len(done)
    if done:
        print(f"{name}: {len(done)} finished trials in the storage, {max(missing, 0)} to run")
    if missing > 0:
        settings = {
            "seed": seed,
            "epochs": epochs,
            "device": args.device,
            "data_root": str(args.data_root),
        }
        # Each worker's sampler seed also counts the trials already made, so a resumed search
        # draws new points rather than the first ones again.
        seeds = [int(np.random.SeedSequence([seed, len(study.trials), j]).generate_state(1)[0])
                 for j in range(args.jobs)]  # fmt: skip
        shares = [missing // args.jobs + (j < missing % args.jobs) for j in range(args.jobs)]
        bar = _progress(args, name, trials, len(done))
        if args.jobs == 1:
            worker(url, name, kind, seeds[0], missing, settings, bar=bar)
        else:
            ctx = multiprocessing.get_context("spawn")
            procs = [ctx.Process(target=worker, args=(url, name, kind, s, n, settings, args.threads or 1))
                     for s, n in zip(seeds, shares) if n]  # fmt: skip
            for p in procs:
                p.start()
            while any(p.is_alive() for p in procs):
                time.sleep(1.0)
                bar.n = len(
                    study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
                )
                bar.refresh()
            if any(p.exitcode for p in procs):
                raise _cli.ExampleError(
                    f"{name}: a worker process failed (exit status {[p.exitcode for p in procs]})"
                )
        bar.close()
    done = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.COMPLETE,))
    return sorted(done, key=lambda tr: tr.number)[:trials]


def _progress(args: argparse.Namespace, name: str, total: int, done: int) -> Any:
    from tqdm import tqdm

    return tqdm(
        total=total,
        initial=done,
        desc=name,
        unit="trial",
        disable=args.no_progress,
        mininterval=1.0,
    )


def record(trial: Any) -> dict[str, Any]:
    return {
        "number": trial.number,
        "lr": trial.params["lr"],
        "weight_decay": trial.params["weight_decay"],
        "val_accuracy": trial.value,
        "val_curve": trial.user_attrs["val_accuracy"],
        "train_curve": trial.user_attrs["train_accuracy"],
    }


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse(argv)
    optuna = optuna_or_exit()
    started = time.perf_counter()
    _cli.setup(args)
    trials = args.trials or (8 if args.quick else 100)
    epochs = args.epochs or (10 if args.quick else 50)
    default_storage = f"sqlite:///{(args.out / 'studies.db').resolve()}"
    args.storage = args.storage or default_storage
    samplers = list(dict.fromkeys(args.sampler))
    _loaders.mnist_tensors(
        args.data_root, True, torch.device("cpu"), 1
    )  # data problems: now, in one line

    studies: dict[str, dict[str, Any]] = {}
    for kind in samplers:
        for seed in args.seeds:
            done = run_study(optuna, args, kind, seed, trials, epochs)
            studies[f"{kind}/seed{seed}"] = {
                "sampler": kind,
                "seed": seed,
                "study": study_name(kind, seed, epochs),
                "trials": [record(tr) for tr in done],
            }

    summary = {}
    for kind in samplers:
        runs = [studies[f"{kind}/seed{s}"]["trials"] for s in args.seeds]
        best = [max(r, key=lambda tr: tr["val_accuracy"]) for r in runs]
        summary[kind] = {
            "best_val_accuracy": _results.spread([b["val_accuracy"] for b in best]),
            "best_lr": _results.spread([b["lr"] for b in best]),
            "best_weight_decay": _results.spread([b["weight_decay"] for b in best]),
            "best_so_far": _results.curve_spread([np.maximum.accumulate([tr["val_accuracy"] for tr in r]) for r in runs]),
            "trials_above_0.8": _results.spread([sum(tr["val_accuracy"] > 0.8 for tr in r) for r in runs]),
        }  # fmt: skip
    first = studies[f"{samplers[0]}/seed{args.seeds[0]}"]
    figures = {"": book_figure(first, epochs)}
    if len(samplers) > 1 or len(args.seeds) > 1:
        figures["_samplers"] = sampler_figure(summary, trials, args.seeds)
    shown = (
        "<out>/studies.db" if args.storage == default_storage else args.storage.split("@")[-1]
    )  # no password
    results = {
        "protocol": {"images": N_IMAGES, "validation": int(N_IMAGES * VALIDATION_RATE), "batch_size": BATCH_SIZE,
                     "epochs": epochs, "hidden": [100] * 6, "lr": ["log-uniform", *LR_RANGE],
                     "weight_decay": ["log-uniform", *WD_RANGE], "trials": trials},
        "book": BOOK,
        "seeds": args.seeds,
        "samplers": samplers,
        "jobs": args.jobs,
        "storage": shown,
        "summary": summary,
        "studies": studies,
    }  # fmt: skip
    _results.write_results(args.out, NAME, results, figures, started, argv)
    for kind, s in summary.items():
        b = s["best_val_accuracy"]
        print(f"{kind:6s} best validation accuracy {b['median']:.3f} [{b['min']:.3f}, {b['max']:.3f}] over seeds "
              f"{' '.join(map(str, args.seeds))} (book: {BOOK['best_val_accuracy']})")  # fmt: skip
    ranked = sorted(first["trials"], key=lambda tr: -tr["val_accuracy"])
    for i, tr in enumerate(ranked[:5]):
        print(
            f"Best-{i + 1} (val acc: {tr['val_accuracy']:.2f}) | lr: {tr['lr']:.3g}, weight decay: {tr['weight_decay']:.3g}"
        )
    return 0


def book_figure(study: dict[str, Any], epochs: int) -> Any:
    """The book's plot: the best 20 trials, 4 x 5, validation solid, training dashed."""
    import matplotlib.pyplot as plt

    ranked = sorted(study["trials"], key=lambda tr: -tr["val_accuracy"])[:SHOWN]
    cols = 5
    rows = max(math.ceil(len(ranked) / cols), 1)
    fig, axes = plt.subplots(
        rows, cols, figsize=(12, 2.3 * rows), sharex=True, sharey=True, squeeze=False
    )
    for i, ax in enumerate(axes.flat):
        if i >= len(ranked):
            ax.axis("off")
            continue
        tr = ranked[i]
        ax.plot(tr["val_curve"], lw=1.2, label="validation")
        ax.plot(tr["train_curve"], "--", lw=1.2, label="training")
        if i == 0:
            _plots.book_mark(ax, BOOK["best_val_accuracy"], label="book's Best-1")
            ax.legend(fontsize=6, loc="lower right")
        ax.set_title(
            f"Best-{i + 1}: {tr['val_accuracy']:.2f}\nlr {tr['lr']:.2g}, wd {tr['weight_decay']:.2g}",
            fontsize=8,
        )
        ax.set_ylim(0, 1.0)
        ax.tick_params(labelsize=6)
    fig.suptitle(f"§6.5 {study['sampler']} search, seed {study['seed']}: the best {len(ranked)} of "
                 f"{len(study['trials'])} trials ({epochs} epochs each)", fontsize=10)  # fmt: skip
    fig.tight_layout()
    return fig


def sampler_figure(summary: dict[str, Any], trials: int, seeds: list[int]) -> Any:
    """Best validation accuracy after k trials, per sampler: median and min-max over seeds."""
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(7, 4.5))
    x = np.arange(1, trials + 1)
    for kind, s in summary.items():
        b = s["best_so_far"]
        (line,) = ax.plot(x, b["median"], label=kind)
        ax.fill_between(x, b["min"], b["max"], color=line.get_color(), alpha=0.2, lw=0)
    _plots.book_mark(ax, BOOK["best_val_accuracy"], label="book's best (0.84)")
    ax.set(xlabel="trials", ylabel="best validation accuracy so far", ylim=(0, 1),
           title=f"random vs TPE at equal budget; {_plots.seeds_note(seeds)}")  # fmt: skip
    ax.title.set_fontsize(9)
    ax.legend(loc="lower right")
    fig.tight_layout()
    return fig


if __name__ == "__main__":
    raise SystemExit(_cli.run(main))
