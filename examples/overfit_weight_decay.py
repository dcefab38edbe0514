"""Overfitting 300 MNIST images, without and with weight decay 0.1 (book figs. 6-20 and 6-21).

Book ch. 6 ``overfit_weight_decay.py`` (§6.4.2), 201 epochs: the setting is ``_overfit.py``'s.
Weight decay as the book: the loss gets our ``torch_dlbasics.regularization.l2_penalty(model,
0.1)`` = ``0.5 * 0.1 * sum(W**2)`` over the weight matrices (not the biases).
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli
import _overfit
from _overfit import Variant

NAME = "overfit_weight_decay"
WEIGHT_DECAY = 0.1
VARIANTS = (
    Variant("without weight decay"),
    Variant(f"weight decay {WEIGHT_DECAY}", weight_decay=WEIGHT_DECAY),
)


def main(argv: list[str] | None = None) -> int:
    return _overfit.main(NAME, __doc__ + "\n" + _overfit.__doc__, VARIANTS, 201, argv)


if __name__ == "__main__":
    raise SystemExit(_cli.run(main))
