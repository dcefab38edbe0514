"""The numbers the docs quote, taken from the experiments' JSON, and the results page made of them.

:func:`numbers` reads ``<figures>/<experiment>.json`` and returns every quotable number as the
string the docs print, under a key such as ``optimizer_compare_mnist/Adam/loss_at_1900/median``.
A page quotes one as ``<!-- result:KEY -->VALUE``: the comment is invisible when rendered, and
``tests/test_results.py`` checks that VALUE is what :func:`numbers` gives for KEY from the
committed JSON, so text and figures cannot drift apart. :func:`render` writes docs/results.md
(every number in it is such a marker). Summaries over seeds are median and min-max, never one draw.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any, Callable

Numbers = dict[str, str]


def acc(x: float) -> str:
    return f"{x:.3f}"


def loss(x: float) -> str:
    return f"{x:.3g}"


def sci(x: float) -> str:
    return f"{x:.2g}"


def _load(figures: Path, name: str) -> dict[str, Any] | None:
    path = figures / f"{name}.json"
    return json.loads(path.read_text()) if path.is_file() else None


def _spread(out: Numbers, key: str, stat: dict[str, float], fmt: Callable[[float], str]) -> None:
    for k in ("median", "min", "max"):
        out[f"{key}/{k}"] = fmt(stat[k])
    out[f"{key}/seeds"] = str(stat["seeds"])


def numbers(figures: Path) -> Numbers:
    """Every quotable number of the experiments whose JSON is in ``figures``."""
    out: Numbers = {}
    if r := _load(figures, "optimizer_paths"):
        for name, o in r["optimizers"].items():
            out[f"optimizer_paths/{name}/final_f"] = loss(o["final_f"])
    if r := _load(figures, "weight_init_activation_histogram"):
        for key, c in r["configs"].items():
            last = c["layers"][-1]
            _spread(out, f"weight_init_activation_histogram/{key}/layer5_std", last["std"], loss)
            _spread(
                out,
                f"weight_init_activation_histogram/{key}/layer5_saturated",
                last["saturated"],
                acc,
            )
    if r := _load(figures, "optimizer_compare_mnist"):
        for name, s in r["summary"].items():
            at = next(k for k in s if k.startswith("loss_at_"))
            _spread(out, f"optimizer_compare_mnist/{name}/{at}", s[at], loss)
            _spread(
                out,
                f"optimizer_compare_mnist/{name}/loss_mean_last_100",
                s["loss_mean_last_100"],
                loss,
            )
            _spread(out, f"optimizer_compare_mnist/{name}/test_accuracy", s["test_accuracy"], acc)
            if s["book_loss_at_1900"] is not None:
                out[f"optimizer_compare_mnist/{name}/book_loss_at_1900"] = loss(
                    s["book_loss_at_1900"]
                )
    if r := _load(figures, "weight_init_compare"):
        for label, s in r["summary"].items():
            _spread(
                out,
                f"weight_init_compare/{label}/loss_mean_last_100",
                s["loss_mean_last_100"],
                loss,
            )
            _spread(out, f"weight_init_compare/{label}/test_accuracy", s["test_accuracy"], acc)
    if r := _load(figures, "batch_norm_compare"):
        for i, s in enumerate(r["summary"]):
            out[f"batch_norm_compare/{i}/weight_scale"] = sci(s["weight_scale"])
            for net in ("batch_norm", "plain"):
                _spread(out, f"batch_norm_compare/{i}/{net}", s[f"final_train_accuracy_{net}"], acc)
    for name in ("overfit_weight_decay", "overfit_dropout"):
        if r := _load(figures, name):
            for i, s in enumerate(r["summary"].values()):
                for k in ("train", "test", "gap"):
                    _spread(out, f"{name}/{i}/{k}", s[k], acc)
    if r := _load(figures, "hyperparameter_optimization"):
        out["hyperparameter_optimization/trials"] = str(r["protocol"]["trials"])
        for kind, s in r["summary"].items():
            _spread(
                out,
                f"hyperparameter_optimization/{kind}/best_val_accuracy",
                s["best_val_accuracy"],
                acc,
            )
            _spread(out, f"hyperparameter_optimization/{kind}/best_lr", s["best_lr"], sci)
            _spread(
                out,
                f"hyperparameter_optimization/{kind}/best_weight_decay",
                s["best_weight_decay"],
                sci,
            )
        for k, v in r["book"].items():
            out[f"hyperparameter_optimization/book/{k}"] = (
                acc(v) if k == "best_val_accuracy" else sci(v)
            )
    if r := _load(figures, "train_mnist"):
        out["train_mnist/test_accuracy"] = acc(r["test_accuracy"])
        runs = [r] + [x for s in (1, 2) if (x := _load(figures, f"train_mnist_seed{s}"))]
        if len(runs) > 1:
            import _results

            _spread(
                out,
                "train_mnist/seeds/test_accuracy",
                _results.spread([x["test_accuracy"] for x in runs]),
                acc,
            )
    return out


def m(n: Numbers, key: str) -> str:
    """A quoted number: ``<!-- result:KEY -->VALUE``."""
    return f"<!-- result:{key} -->{n[key]}"


def rng(n: Numbers, key: str) -> str:
    """Median and range: ``0.258 (0.201–0.301)``."""
    return f"{m(n, key + '/median')} ({m(n, key + '/min')}–{m(n, key + '/max')})"


MARKER = re.compile(r"<!-- result:([^ >]+) -->([^\s|<()–]+)")
"""A quoted result, ``<!-- result:KEY -->VALUE``: groups KEY and VALUE (VALUE ends at a space,
``|``, ``<``, a parenthesis or an en dash). ``tests/test_results.py`` reads pages with it."""


def refresh_markers(page: Path, n: Numbers) -> bool:
    """Rewrite every ``<!-- result:KEY -->VALUE`` on ``page`` with ``n[KEY]``; True if it changed.

    A key the JSON no longer has is an error: the page would quote a number nothing produces.
    """
    text = page.read_text()

    def value(match: re.Match[str]) -> str:
        if match[1] not in n:
            raise KeyError(f"{page.name} quotes result {match[1]!r}, which docs/figures/*.json lacks")
        return f"<!-- result:{match[1]} -->{n[match[1]]}"

    new = MARKER.sub(value, text)
    if new != text:
        page.write_text(new)
    return new != text


def render(figures: Path, n: Numbers) -> str:
    """docs/results.md from the numbers (and the machine recorded in the experiments' JSON)."""
    meta = next(
        (r for name in ("optimizer_compare_mnist", "train_mnist") if (r := _load(figures, name))),
        {},
    )
    mach = meta.get("machine", {})
    lines = [
        "<!-- Generated by `python examples/run_all.py` from docs/figures/*.json: do not edit by hand.",
        "     Each number follows a result:KEY comment that tests/test_results.py checks against the JSON. -->",
        "",
        "# Results: the book's chapter 6 with our parts",
        "",
        f"Machine: {mach.get('cpu', '?')}, {mach.get('cpu_count', '?')} cores, torch {mach.get('torch', '?')}, "
        f"Python {mach.get('python', '?')}; every experiment on the CPU with one thread "
        "(`python examples/run_all.py` reruns them all and rewrites this page). Over seeds: the median, "
        "and in brackets the range (min–max); the figures show the median as a line and the range as a band.",
        "",
    ]
    if "optimizer_compare_mnist/SGD/loss_at_1900/median" in n:
        seeds = n["optimizer_compare_mnist/SGD/loss_at_1900/seeds"]
        lines += [
            "## Optimizers on MNIST (§6.1.8, fig. 6-9)",
            "",
            "![optimizer comparison](figures/optimizer_compare_mnist.png)",
            "",
            f"4 x 100 ReLU MLP, He init, batch 128, 2,000 iterations; {seeds} seeds. One batch's loss varies "
            "several-fold between seeds, so the book's single numbers are one draw from such a range.",
            "",
            "| optimizer | loss at iteration 1900 | book's notebook | mean loss, iterations 1900–1999 | test accuracy |",
            "|---|---|---|---|---|",
        ]
        for name in ("SGD", "Momentum", "Nesterov", "AdaGrad", "Adam"):
            book = n.get(f"optimizer_compare_mnist/{name}/book_loss_at_1900")
            lines.append(
                f"| {name} | {rng(n, f'optimizer_compare_mnist/{name}/loss_at_1900')} | "
                f"{m(n, f'optimizer_compare_mnist/{name}/book_loss_at_1900') if book else '—'} | "
                f"{rng(n, f'optimizer_compare_mnist/{name}/loss_mean_last_100')} | "
                f"{rng(n, f'optimizer_compare_mnist/{name}/test_accuracy')} |"
            )
        lines.append("")
    if "optimizer_paths/SGD/final_f" in n:
        lines += ["## Optimizer paths on f(x, y) = x²/20 + y² (§6.1, figs. 6-3 to 6-8)", "",
                  "![optimizer paths](figures/optimizer_paths.png)", "",
                  "No randomness (one run). f after 30 steps from (-7, 2), where f = 6.45:", "",
                  "| SGD | Momentum | Nesterov | AdaGrad | Adam |", "|---|---|---|---|---|",
                  "| " + " | ".join(m(n, f"optimizer_paths/{k}/final_f") for k in ("SGD", "Momentum", "Nesterov", "AdaGrad", "Adam")) + " |",
                  ""]  # fmt: skip
    if "weight_init_activation_histogram/ReLU/He/layer5_std/median" in n:
        lines += ["## Activation distributions (§6.2.2–6.2.3, figs. 6-10 to 6-14)", "",
                  "![activation histograms](figures/weight_init_activation_histogram.png)", "",
                  "Sigmoid and tanh rows use the book's linear ranges; ReLU rows show log10 of the positive "
                  "activations over one range for all of them (half of ReLU's outputs are exactly 0, and the "
                  "rest spans many decades across the schemes), so vanishing and exploding both show.", "",
                  "| activation / init | std of layer 5 | share saturated in layer 5 |", "|---|---|---|"]  # fmt: skip
        for act in ("sigmoid", "tanh", "ReLU"):
            for scheme in ("std=1", "std=0.01", "Xavier", "He"):
                k = f"weight_init_activation_histogram/{act}/{scheme}"
                lines.append(
                    f"| {act} / {scheme} | {rng(n, k + '/layer5_std')} | {rng(n, k + '/layer5_saturated')} |"
                )
        lines += ["", "(saturated: sigmoid and tanh in the two end bins; ReLU exactly 0.)", ""]
    if "weight_init_compare/He/loss_mean_last_100/median" in n:
        lines += ["## Weight initialisation on MNIST (§6.2.4, fig. 6-15)", "",
                  "![weight initialisation](figures/weight_init_compare.png)", "",
                  "| init | mean loss, iterations 1900–1999 | test accuracy |", "|---|---|---|"]  # fmt: skip
        for label in ("std=0.01", "Xavier", "He"):
            k = f"weight_init_compare/{label}"
            lines.append(
                f"| {label} | {rng(n, k + '/loss_mean_last_100')} | {rng(n, k + '/test_accuracy')} |"
            )
        lines.append("")
    if "batch_norm_compare/0/batch_norm/median" in n:
        lines += ["## Batch Normalization (§6.3.2, fig. 6-19)", "",
                  "![batch norm comparison](figures/batch_norm_compare.png)", "",
                  "Training accuracy after 20 epochs on 1,000 images, per weight scale W:", "",
                  "| W | with our BatchNorm | without |", "|---|---|---|"]  # fmt: skip
        i = 0
        while f"batch_norm_compare/{i}/weight_scale" in n:
            lines.append(f"| {m(n, f'batch_norm_compare/{i}/weight_scale')} | {rng(n, f'batch_norm_compare/{i}/batch_norm')} | "
                         f"{rng(n, f'batch_norm_compare/{i}/plain')} |")  # fmt: skip
            i += 1
        lines.append("")
    for name, title, labels in (
        ("overfit_weight_decay", "Weight decay (§6.4.2, figs. 6-20 and 6-21)", ("without weight decay", "weight decay 0.1")),
        ("overfit_dropout", "Dropout (§6.4.3, fig. 6-23)", ("without dropout", "dropout 0.2")),
    ):  # fmt: skip
        if f"{name}/0/gap/median" in n:
            lines += [f"## {title}", "", f"![{name}](figures/{name}.png)", "",
                      "300 training images; final accuracies:", "",
                      "| | train | test | gap |", "|---|---|---|---|"]  # fmt: skip
            for i, label in enumerate(labels):
                lines.append(
                    f"| {label} | {rng(n, f'{name}/{i}/train')} | {rng(n, f'{name}/{i}/test')} | {rng(n, f'{name}/{i}/gap')} |"
                )
            lines.append("")
    if "hyperparameter_optimization/random/best_val_accuracy/median" in n:
        h = "hyperparameter_optimization"
        lines += ["## Hyperparameter search (§6.5)", "",
                  f"![best 20 trials]({'figures/' + h}.png)", "",
                  f"The book's protocol: {m(n, h + '/trials')} trials of lr = 10^U(-6, -2), weight decay = "
                  "10^U(-8, -4), 6 x 100 MLP, 50 epochs on 400 images, 100 held out. Best validation accuracy "
                  "per search, over seeds:", "",
                  "| search | best validation accuracy | its lr | its weight decay |", "|---|---|---|---|",
                  f"| book (one search) | {m(n, h + '/book/best_val_accuracy')} | {m(n, h + '/book/lr')} | "
                  f"{m(n, h + '/book/weight_decay')} |"]  # fmt: skip
        for kind in ("random", "tpe"):
            if f"{h}/{kind}/best_val_accuracy/median" in n:
                shown = (
                    "random (the book's method)" if kind == "random" else "TPE (beyond the book)"
                )
                lines.append(f"| {shown} | {rng(n, f'{h}/{kind}/best_val_accuracy')} | {rng(n, f'{h}/{kind}/best_lr')} | "
                             f"{rng(n, f'{h}/{kind}/best_weight_decay')} |")  # fmt: skip
        if (figures / f"{h}_samplers.png").is_file():
            lines += ["", f"![random vs TPE]({'figures/' + h}_samplers.png)"]
        lines.append("")
    if "train_mnist/test_accuracy" in n:
        lines += ["## The main job: `examples/train_mnist.py`", "", "![train_mnist](figures/train_mnist.png)", "",
                  f"One epoch of the CNN with our Adam, BatchNorm2d and Dropout: test accuracy "
                  f"{m(n, 'train_mnist/test_accuracy')} (seed 0)"
                  + (f"; over {m(n, 'train_mnist/seeds/test_accuracy/seeds')} seeds {rng(n, 'train_mnist/seeds/test_accuracy')}"
                     if "train_mnist/seeds/test_accuracy/median" in n else "") + ".", ""]  # fmt: skip
    return "\n".join(lines).rstrip() + "\n"
