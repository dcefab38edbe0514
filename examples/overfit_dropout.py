"""Overfitting 300 MNIST images, without and with our Dropout(0.2) (book fig. 6-23).

Book ch. 6 ``overfit_dropout.py`` (§6.4.3), 301 epochs: the setting is ``_overfit.py``'s,
with a Dropout after each hidden ReLU. The Dropout is ours in the book's form,
``Dropout(0.2, inverted=False)``: train ``x * mask``, test ``x * (1 - p)``.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _cli
import _overfit
from _overfit import Variant

NAME = "overfit_dropout"
P = 0.2
VARIANTS = (Variant("without dropout"), Variant(f"dropout {P}", dropout=P))


def main(argv: list[str] | None = None) -> int:
    return _overfit.main(NAME, __doc__ + "\n" + _overfit.__doc__, VARIANTS, 301, argv)


if __name__ == "__main__":
    raise SystemExit(_cli.run(main))
