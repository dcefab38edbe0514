"""Lightning: synchronized BatchNorm with our ``SyncBatchNorm``, on CPU (gloo) as on CUDA.

``Trainer(sync_batchnorm=True)`` applies Lightning's ``TorchSyncBatchNorm`` plugin, which calls
``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: every BatchNorm, ours included, becomes
torch's ``SyncBatchNorm``, whose training forward refuses CPU tensors. Pass this plugin
instead (and leave ``sync_batchnorm`` at its default ``False``)::

    trainer = lightning.pytorch.Trainer(
        accelerator="cpu", devices=2, strategy="ddp", plugins=[SyncBatchNormPlugin()]
    )

At the start of ``fit`` every BatchNorm of the model (torch's or ours) is replaced by our
:class:`~torch_dlbasics.nn.SyncBatchNorm`, which shares its parameters and buffers; at the end
of ``fit`` the original layer objects are put back, holding the trained values. Works with the
``lightning`` and the ``pytorch_lightning`` packages (the plugin registers itself as their
``LayerSync``); importing this module imports neither.

Example (outside a process group the synchronized layer is plain batch norm)::

    >>> import torch
    >>> from torch_dlbasics.integrations.lightning import SyncBatchNormPlugin
    >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3))
    >>> bn, plugin = net[1], SyncBatchNormPlugin()
    >>> net = plugin.apply(net)
    >>> type(net[1]).__name__, net[1].weight is bn.weight
    ('SyncBatchNorm', True)
    >>> net = plugin.revert(net)
    >>> net[1] is bn
    True
"""

from __future__ import annotations

import importlib
from typing import Any, Optional

from torch import nn

from torch_dlbasics.nn.syncbatchnorm import SyncBatchNorm

__all__ = ["SyncBatchNormPlugin"]

_LAYER_SYNC_MODULES = (
    "lightning.pytorch.plugins.layer_sync",
    "pytorch_lightning.plugins.layer_sync",
)


class SyncBatchNormPlugin:
    """A Lightning ``LayerSync`` plugin converting BatchNorm layers to our ``SyncBatchNorm``.

    Args:
        process_group: the group to synchronize over; ``None`` (default) means the world.
    """

    def __init__(self, process_group: Optional[Any] = None) -> None:
        self.process_group = process_group
        self._originals: dict[str, nn.Module] = {}
        _register_as_layer_sync()

    def apply(self, model: nn.Module) -> nn.Module:
        """Replace every BatchNorm in ``model`` by our ``SyncBatchNorm`` (sharing its tensors)."""
        before = dict(model.named_modules())
        model = SyncBatchNorm.convert_sync_batchnorm(model, self.process_group)
        self._originals = {
            name: before[name]
            for name, module in model.named_modules()
            if isinstance(module, SyncBatchNorm) and before.get(name) is not module
        }
        return model

    def revert(self, model: nn.Module) -> nn.Module:
        """Put the layers :meth:`apply` replaced back, each given the tensors it holds now."""
        # Deepest first, so a restored layer takes its already restored children.
        for name in sorted(self._originals, key=lambda n: -n.count(".") if n else 1):
            original, current = self._originals[name], model.get_submodule(name)
            if not isinstance(current, SyncBatchNorm):
                continue  # replaced by someone else since apply: leave it
            for key, tensor in [*current.named_parameters(recurse=False),
                                *current.named_buffers(recurse=False)]:  # fmt: skip
                setattr(original, key, tensor)  # the same (trained, moved) tensor objects
            for attr in ("eps", "momentum", "track_running_stats", "training"):
                setattr(original, attr, getattr(current, attr))
            for child_name, child in current.named_children():
                original.add_module(child_name, child)
            parent_name, _, attr = name.rpartition(".")
            if name:
                setattr(model.get_submodule(parent_name), attr, original)
            else:
                model = original
        self._originals = {}
        return model


def _register_as_layer_sync() -> None:
    """Make ``isinstance(plugin, LayerSync)`` true for each installed Lightning package."""
    for module_name in _LAYER_SYNC_MODULES:
        try:
            layer_sync = importlib.import_module(module_name).LayerSync
        except ImportError:
            continue
        layer_sync.register(SyncBatchNormPlugin)
