"""Activations of 5 layers of 100 units under four weight scales (book figs. 6-10 to 6-14).

Book ch. 6 ``weight_init_activation_histogram.py``: input ``randn(1000, 100)``, five
``100 x 100`` layers without bias, weights from our ``torch_dlbasics.init.init_weights_`` with
std 1, std 0.01, Xavier (sqrt(1/n)) and He (sqrt(2/n)), each with sigmoid, tanh and ReLU; one
histogram (30 bins) per layer of its activations, range (0, 1) for sigmoid as in the book,
(-1, 1) for tanh. For ReLU the range is set per row from the first layer (0 to its 99th
percentile: He's activations do not fit the book's (0, 1)), the exact zeros are left out
(about half of all activations; they would flatten every other bar) and values above the range
are counted in the last bin, so that shrinking and exploding activations both show.
The same input feeds every configuration. The JSON has each layer's mean, std and saturated
share (sigmoid/tanh: in the two end bins of the histogram; ReLU: exactly 0).
No data needed; ``--quick`` uses 200 input rows instead of 1000.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common

NAME = "weight_init_activation_histogram"
SCHEMES: dict[str, float | str] = {"std=1": 1.0, "std=0.01": 0.01, "Xavier": "xavier", "He": "he"}
ACTIVATIONS: dict[str, tuple[type[nn.Module], tuple[float, float]]] = {
    "sigmoid": (nn.Sigmoid, (0.0, 1.0)),
    "tanh": (nn.Tanh, (-1.0, 1.0)),
    "ReLU": (nn.ReLU, (0.0, 1.0)),
}
LAYERS, NODES = 5, 100


def saturated(name: str, a: torch.Tensor) -> float:
    """Share of activations in the histogram's two end bins (sigmoid, tanh) or exactly 0 (ReLU)."""
    if name == "sigmoid":
        return float(((a < 1 / 30) | (a > 29 / 30)).float().mean())
    if name == "tanh":
        return float((a.abs() > 14 / 15).float().mean())
    return float((a == 0).float().mean())


def shown(name: str, a: torch.Tensor, hi: float) -> Any:
    """What a histogram shows: all activations; for ReLU only the positive ones (about half are
    exactly 0 and would flatten every bar), values above ``hi`` counted in the last bin."""
    a = a.flatten()
    if name == "ReLU":
        a = a[a > 0].clamp(max=hi)
    return a.numpy()


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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = _common.parser(__doc__.split("\n")[0], NAME).parse_args(argv)
    started = time.perf_counter()
    device = _common.setup(args)
    import matplotlib.pyplot as plt
    from tqdm import tqdm

    x = torch.randn(
        200 if args.quick else 1000, NODES, generator=torch.Generator().manual_seed(args.seed)
    )
    x = x.to(device)
    rows = [(a, s) for a in ACTIVATIONS for s in SCHEMES]
    fig, axes = plt.subplots(len(rows), LAYERS, figsize=(11, 1.45 * len(rows)), sharey="row")
    results: dict[str, Any] = {
        "input_rows": len(x),
        "layers": LAYERS,
        "nodes": NODES,
        "configs": {},
    }
    for r, (act_name, scheme_name) in enumerate(tqdm(rows, desc="configurations")):
        act, hist_range = ACTIVATIONS[act_name]
        acts = activations(x, act, SCHEMES[scheme_name], args.seed)
        label = f"{act_name}\n{scheme_name}"
        if act_name == "ReLU":  # the row's range: the first layer's 99th percentile
            hist_range = (0.0, float(acts[0][acts[0] > 0].quantile(0.99)))
            label += f"\n(0, {hist_range[1]:.3g})"
        stats = []
        for i, a in enumerate(acts):
            ax = axes[r, i]
            ax.hist(shown(act_name, a, hist_range[1]), 30, range=hist_range, color="tab:blue")
            ax.tick_params(labelsize=6)
            if r == 0:
                ax.set_title(f"{i + 1}-layer", fontsize=9)
            if i == 0:
                ax.set_ylabel(label, fontsize=8)
            stats.append(
                {
                    "mean": float(a.mean()),
                    "std": float(a.std()),
                    "saturated": saturated(act_name, a),
                }
            )
        results["configs"][f"{act_name}/{scheme_name}"] = {
            "scheme": SCHEMES[scheme_name],
            "layers": stats,
        }
    fig.suptitle("activation histograms: 5 layers x 100 units, input randn(N, 100)", fontsize=11)
    fig.tight_layout(rect=(0, 0, 1, 0.985))
    _common.write_results(args.out, NAME, results, fig, started, argv)
    for key, c in results["configs"].items():
        print(
            f"{key:18s} layer-5 std {c['layers'][-1]['std']:.3g}  saturated {c['layers'][-1]['saturated']:.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
