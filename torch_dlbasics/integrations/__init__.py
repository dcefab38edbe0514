"""Glue for training frameworks, each in its own module, imported only when asked for.

- :mod:`torch_dlbasics.integrations.lightning`: ``SyncBatchNormPlugin``, synchronized
  BatchNorm with our :class:`~torch_dlbasics.nn.SyncBatchNorm` in Lightning (CPU/gloo too).

Nothing here imports a framework at ``import torch_dlbasics``.
"""
