"""Activations of 5 layers of 100 units under four weight scales (book figs. 6-10 to 6-14).

Book ch. 6 ``weight_init_activation_histogram.py``: input ``randn(1000, 100)``, five
``100 x 100`` layers without bias, weights from our ``torch_dlbasics.init.init_weights_`` with
std 1, std 0.01, Xavier (sqrt(1/n)) and He (sqrt(2/n)), each with sigmoid, tanh and ReLU; one
histogram (30 bins) per layer of its activations: range (0, 1) for sigmoid as in the book,
(-1, 1) for tanh.

ReLU differs: about half its outputs are exactly 0, and the rest spans many orders of
magnitude across the schemes (each layer scales them by about std * sqrt(n / 2)),
so no linear range shows them all: the book's (0, 1) piles every larger value into the last
bin. The ReLU rows therefore show ``log10`` of the positive activations over one range for all
ReLU panels (from the lowest 0.5th to the highest 99.5th percentile of any panel, rounded out
to whole decades; 0.2 decades a bin): shrinking and exploding both show as a shift, the spread as the width, and
nothing piles at an edge. The share of exact zeros is in the JSON.

Per seed (input and weights), the bars are the median count per bin over the seeds and the
whiskers its min-max. The JSON has each layer's mean, std and saturated share (sigmoid/tanh: in
the two end bins; ReLU: exactly 0), median and range over the seeds. No data needed;
``--quick`` uses 200 input rows instead of 1000.
"""

from __future__ import annotations

import math
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli
import _plots
import _results

NAME = "weight_init_activation_histogram"
SCHEMES: dict[str, float | str] = {"std=1": 1.0, "std=0.01": 0.01, "Xavier": "xavier", "He": "he"}
ACTIVATIONS: dict[str, tuple[type[nn.Module], tuple[float, float] | None]] = {
    "sigmoid": (nn.Sigmoid, (0.0, 1.0)),
    "tanh": (nn.Tanh, (-1.0, 1.0)),
    "ReLU": (nn.ReLU, None),  # log10 of the positive values, one range for all ReLU panels
}
LAYERS, NODES, BINS = 5, 100, 30
RELU_BIN = 0.2  # decades per bin of the ReLU rows' log10 histograms


def saturated(name: str, a: torch.Tensor) -> float:
    """Share of activations in the histogram's two end bins (sigmoid, tanh) or exactly 0 (ReLU)."""
    if name == "sigmoid":
        return float(((a < 1 / BINS) | (a > 1 - 1 / BINS)).float().mean())
    if name == "tanh":
        return float((a.abs() > 1 - 2 / BINS).float().mean())
    return float((a == 0).float().mean())


def shown(name: str, a: torch.Tensor) -> np.ndarray:
    """What a histogram counts: every activation; for ReLU log10 of the positive ones."""
    a = a.flatten().double()
    return (a[a > 0].log10() if name == "ReLU" else a).numpy()


@torch.no_grad()
def activations(
    x: torch.Tensor, act: type[nn.Module], scheme: float | str, seed: int
) -> list[torch.Tensor]:
    from torch_dlbasics.init import init_weights_

    torch.manual_seed(seed)
    net = nn.Sequential(
        *[m for _ in range(LAYERS) for m in (nn.Linear(NODES, NODES, bias=False), act())]
    )
    init_weights_(net, scheme)
    net.to(x.device)
    out, a = [], x
    for layer in net:
        a = layer(a)
        if not isinstance(layer, nn.Linear):
            out.append(a.cpu())
    return out


def relu_range(acts: dict[tuple[str, str, int], list[torch.Tensor]]) -> tuple[float, float]:
    lows, highs = [], []
    for (act_name, _, _), layers in acts.items():
        if act_name == "ReLU":
            for a in layers:
                v = shown("ReLU", a)
                if len(v):
                    lows.append(np.percentile(v, 0.5))
                    highs.append(np.percentile(v, 99.5))
    return float(math.floor(min(lows))), float(math.ceil(max(highs)))


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _cli.parser(__doc__, NAME, seeds=True).parse_args(argv)
    started = time.perf_counter()
    device = _cli.setup(args)
    import matplotlib.pyplot as plt

    rows = [(a, s) for a in ACTIVATIONS for s in SCHEMES]
    acts: dict[tuple[str, str, int], list[torch.Tensor]] = {}
    for seed in args.seeds:
        g = torch.Generator().manual_seed(seed)
        x = torch.randn(200 if args.quick else 1000, NODES, generator=g).to(device)
        for act_name, scheme_name in rows:
            acts[act_name, scheme_name, seed] = activations(
                x, ACTIVATIONS[act_name][0], SCHEMES[scheme_name], seed
            )
    log_range = relu_range(acts)

    fig, axes = plt.subplots(len(rows), LAYERS, figsize=(11, 1.45 * len(rows)), sharey="row")
    configs: dict[str, Any] = {}
    for r, (act_name, scheme_name) in enumerate(rows):
        hist_range = ACTIVATIONS[act_name][1] or log_range
        bins = BINS if act_name != "ReLU" else round((log_range[1] - log_range[0]) / RELU_BIN)
        label = f"{act_name}\n{scheme_name}" + ("\nlog10(a), a>0" if act_name == "ReLU" else "")
        layer_stats = []
        for i in range(LAYERS):
            per_seed = [acts[act_name, scheme_name, s][i] for s in args.seeds]
            counts = np.stack(
                [np.histogram(shown(act_name, a), bins, range=hist_range)[0] for a in per_seed]
            )
            edges = np.linspace(*hist_range, bins + 1)
            ax = axes[r, i]
            centers, width = (edges[:-1] + edges[1:]) / 2, edges[1] - edges[0]
            med = np.median(counts, 0)
            ax.bar(centers, med, width=width, color="tab:blue")
            if len(per_seed) > 1:
                ax.errorbar(centers, med, yerr=[med - counts.min(0), counts.max(0) - med],
                            fmt="none", ecolor="k", elinewidth=0.5, capsize=0)  # fmt: skip
            ax.set_xlim(*hist_range)
            ax.tick_params(labelsize=6)
            if r == 0:
                ax.set_title(f"{i + 1}-layer", fontsize=9)
            if i == 0:
                ax.set_ylabel(label, fontsize=7)
            layer_stats.append(
                {
                    "mean": _results.spread([float(a.mean()) for a in per_seed]),
                    "std": _results.spread([float(a.std()) for a in per_seed]),
                    "saturated": _results.spread([saturated(act_name, a) for a in per_seed]),
                }
            )
        configs[f"{act_name}/{scheme_name}"] = {
            "scheme": SCHEMES[scheme_name],
            "layers": layer_stats,
        }
    fig.suptitle(
        f"activation histograms: 5 layers x 100 units, input randn(N, 100); {_plots.seeds_note(args.seeds)}",
        fontsize=10,
    )
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    results = {
        "input_rows": 200 if args.quick else 1000,
        "layers": LAYERS,
        "nodes": NODES,
        "bins": BINS,
        "relu_log10_range": list(log_range),
        "seeds": args.seeds,
        "configs": configs,
    }
    _results.write_results(args.out, NAME, results, fig, started, argv)
    for key, c in configs.items():
        last = c["layers"][-1]
        print(
            f"{key:18s} layer-5 std {last['std']['median']:.3g}  saturated {last['saturated']['median']:.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(_cli.run(main))
