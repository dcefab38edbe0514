"""Synchronized BatchNorm: batch statistics over the global batch of all processes.

Works with any ``torch.distributed`` backend that has ``all_gather`` and ``all_reduce``: gloo
(CPU tensors, and CUDA tensors) and NCCL (CUDA). ``torch.nn.SyncBatchNorm`` refuses CPU tensors;
this one does not, so synchronized BatchNorm can be trained and tested on CPU clusters and laptops.
"""

from __future__ import annotations

from typing import Any, Optional

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.autograd.function import once_differentiable

from torch_dlbasics.nn import functional as F
from torch_dlbasics.nn.batchnorm import _BatchNorm

__all__ = ["SyncBatchNorm", "SyncBatchNormFunction"]


def _stat_dtype(x: Tensor) -> torch.dtype:
    """Statistics of float16/bfloat16 inputs are kept in float32, as the built-in does."""
    return torch.float32 if x.dtype in (torch.float16, torch.bfloat16) else x.dtype


def _reduce_dims(x: Tensor) -> list[int]:
    """Every dimension but the channel dimension 1: N and the spatial dimensions."""
    return [0, *range(2, x.dim())]


def _channel_shape(x: Tensor) -> tuple[int, ...]:
    """Shape that broadcasts a per-channel vector against ``x``: (1, C, 1, ..., 1)."""
    return (1, x.shape[1]) + (1,) * (x.dim() - 2)


class SyncBatchNormFunction(torch.autograd.Function):
    """Batch norm over the global batch: forward all-gathers per-rank (count, mean, M2),
    backward all-reduces the per-channel sums of ``dout`` and ``dout * xn``.

    Returns ``(out, mean, var, count)``: ``mean`` and biased ``var`` of the global batch and the
    global number of values per channel, for the Module to update its running statistics under
    ``no_grad`` (they are not differentiable). The weight and bias gradients are this rank's own
    sums, as ``torch.nn.SyncBatchNorm`` leaves them for DDP to all-reduce.
    """

    @staticmethod
    def forward(
        x: Tensor,
        weight: Optional[Tensor],
        bias: Optional[Tensor],
        eps: float,
        process_group: Any,
        world_size: int,
    ) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        C = x.shape[1]
        dims, shape = _reduce_dims(x), _channel_shape(x)
        xs = x.to(_stat_dtype(x))  # no copy unless x is float16/bfloat16
        # This rank: count n_r, mean mu_r and sum of squared deviations M2_r (two-pass, exact).
        n_r = x.numel() // C
        if n_r > 0:
            var_r, mu_r = torch.var_mean(xs, dim=dims, correction=0)
        else:  # an empty batch contributes nothing (its n_r = 0 weighs it out below)
            var_r = mu_r = xs.new_zeros(C)
        local = torch.cat([mu_r.new_full((1,), n_r), mu_r, var_r * n_r])
        gathered = [torch.empty_like(local) for _ in range(world_size)]
        dist.all_gather(gathered, local, group=process_group)
        n_all, mu_all, m2_all = torch.stack(gathered).split([1, C, C], dim=1)
        # Chan et al.'s parallel combination, all ranks at once (same order on every rank).
        n = n_all.sum()
        if n_r < 2 and int(n.item()) == 1:  # only ranks with < 2 values can see a global 1
            raise ValueError(
                "Expected more than 1 value per channel when training, got input size "
                f"{x.size()} on this rank and 1 value per channel over all {world_size} ranks"
            )
        n_safe = n.clamp(min=1)  # every rank empty: mean 0, var 0, empty output
        mu = (n_all * mu_all).sum(0) / n_safe
        var = (m2_all.sum(0) + (n_all * (mu_all - mu).square()).sum(0)) / n_safe
        # The book's forward: xc = x - mu, std = sqrt(var + eps), xn = xc / std, out = gamma*xn + beta
        std = torch.sqrt(var + eps)
        scale = 1.0 / std if weight is None else weight / std
        out = (xs - mu.view(shape)).mul_(scale.view(shape))
        if bias is not None:
            out.add_(bias.view(shape))
        # No no-op ``.to``: it makes torch 2.11's dynamo pass a zero ``dout`` (see batchnorm.py).
        return (out if out.dtype == x.dtype else out.to(x.dtype)), mu, var, n

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, dout: Tensor, _dmean: Tensor, _dvar: Tensor, _dcount: Tensor
    ) -> tuple[Optional[Tensor], ...]:
        x, gamma, mu, var, n = ctx.saved_tensors
        dims, shape = _reduce_dims(x), _channel_shape(x)
        stat_dtype = _stat_dtype(x)
        dout = dout.to(stat_dtype)
        std = torch.sqrt(var + ctx.eps)
        xc = x.to(stat_dtype) - mu.view(shape)
        # This rank's sums: the weight/bias gradients, and the terms every rank's dx needs.
        dbeta = dout.sum(dims)
        dgamma = (dout * xc).sum(dims) / std  # sum of dout * xn
        dx = None
        if ctx.needs_input_grad[0]:
            sums = torch.stack([dbeta, dgamma])
            dist.all_reduce(sums, group=ctx.process_group)
            dbeta_all, dgamma_all = sums
            g = torch.ones_like(std) if gamma is None else gamma.to(stat_dtype)
            N = n.clamp(min=1)
            # dxn = g * dout; the sums over all ranks written with dbeta_all, dgamma_all:
            dstd = -g * dgamma_all / std  # -sum(dxn * xc) / std**2
            dvar = 0.5 * dstd / std
            dmu = g * dbeta_all / std  # sum(dxc) = sum(dxn) / std, since sum(xc) = 0
            # dxc = dxn / std + (2/N) * xc * dvar;  dx = dxc - dmu / N   (xc's buffer reused)
            dx = xc.mul_((2.0 * dvar / N).view(shape))
            dx.sub_((dmu / N).view(shape)).addcmul_(dout, (g / std).view(shape))
            dx = dx.to(x.dtype)
        dgamma_out = dbeta_out = None
        if gamma is not None:
            dgamma_out = dgamma.to(gamma.dtype) if ctx.needs_input_grad[1] else None
            dbeta_out = dbeta.to(gamma.dtype) if ctx.needs_input_grad[2] else None
        return dx, dgamma_out, dbeta_out, None, None, None

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        x, weight, _bias, eps, process_group, _world_size = inputs
        _out, mean, var, count = output
        ctx.mark_non_differentiable(mean, var, count)
        ctx.save_for_backward(x, weight, mean, var, count)
        ctx.eps = eps
        ctx.process_group = process_group


class SyncBatchNorm(_BatchNorm):
    r"""Batch normalization whose batch statistics cover the global batch of all processes.

    For an input of shape ``(N, C, *)`` on each of the ``R`` ranks of ``process_group``, rank
    ``r`` holding ``n_r = N_r * prod(*)`` values per channel (``n_r = 0`` is allowed), in training:

    .. math::
        n = \sum_r n_r, \qquad
        \mu = \frac{1}{n} \sum_r n_r \mu_r, \qquad
        \sigma^2 = \frac{1}{n} \sum_r \Bigl(M_{2,r} + n_r (\mu_r - \mu)^2\Bigr)

        y = \gamma \, \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}} + \beta

        \hat\mu \leftarrow (1 - m)\,\hat\mu + m\,\mu, \qquad
        \hat\sigma^2 \leftarrow (1 - m)\,\hat\sigma^2 + m\,\frac{n}{n - 1}\sigma^2

    where :math:`\mu_r` and :math:`M_{2,r} = \sum (x - \mu_r)^2` are rank ``r``'s own per-channel
    mean and sum of squared deviations (computed in two passes), all-gathered and combined with
    Chan et al.'s parallel formula. The backward all-reduces :math:`\sum dy` and
    :math:`\sum dy\,\hat x` over all ranks and gives

    .. math::
        \frac{\partial L}{\partial x} = \frac{\gamma}{\sqrt{\sigma^2 + \epsilon}}
        \Bigl(dy - \frac{1}{n}\sum_{\text{all}} dy - \frac{\hat x}{n} \sum_{\text{all}} dy\,\hat x\Bigr)

    while the weight and bias gradients stay this rank's sums :math:`\sum_{\text{rank}} dy\,\hat x`
    and :math:`\sum_{\text{rank}} dy` (DDP all-reduces them, as with ``torch.nn.SyncBatchNorm``).

    **Why all-gather (count, mean, M2) and not all-reduce (count, sum, sum of squares).** The
    latter needs :math:`\sigma^2 = \overline{x^2} - \mu^2`, which cancels catastrophically when
    :math:`|\mu| \gg \sigma` (float32 activations with mean 1e3 and std 1 lose every digit of the
    variance). Per-rank two-pass moments combined by Chan's formula only add non-negative terms.
    The price is one ``all_gather`` of ``2C + 1`` numbers per rank instead of one ``all_reduce``
    of ``2C + 1``: the same message size per rank, negligible next to the activations. Every
    rank combines the gathered rows in the same order, so all ranks get bit-identical statistics.

    **When it behaves as our BatchNorm.** In eval mode, when ``torch.distributed`` is not
    initialised, or when ``process_group`` (default: the world) has one rank, the forward is
    exactly ``torch_dlbasics.nn.functional.batch_norm``, as in our ``BatchNorm*d``.

    **Torch equivalent:** ``torch.nn.SyncBatchNorm(num_features, eps, momentum, affine,
    track_running_stats, process_group)``, same parameters, buffers and ``state_dict`` keys. They
    agree (to floating-point rounding of a different summation order) whenever torch's accepts
    the input: CUDA tensors, training mode, the same process group; both raise for a global count
    of one value per channel (ours says so on every rank, so no rank hangs). Differences:

    - ``torch.nn.SyncBatchNorm`` raises "SyncBatchNorm expected input tensor to be on GPU or XPU
      or privateuseone" for CPU tensors in a distributed training forward; ours runs on CPU
      (gloo) as on CUDA (gloo or NCCL).
    - Double backward is not supported (``once_differentiable``), as in torch's.
    - Float16/bfloat16 inputs: statistics and gradients in float32, output in the input's dtype.

    The input must live where the backend communicates: gloo handles CPU and CUDA tensors, NCCL
    CUDA tensors only. As with torch's, every rank must call forward and backward of the same
    SyncBatchNorm layers in the same order (a rank with an empty batch still calls them), or
    the collectives wait for the missing rank until the process group's timeout.

    Args:
        num_features: ``C`` from an expected input of size ``(N, C, *)``.
        eps: value added to the variance for numerical stability. Default: 1e-5.
        momentum: weight of the batch statistic in the running statistics, or ``None`` for a
            cumulative moving average. Default: 0.1.
        affine: learnable per-channel ``weight`` and ``bias``. Default: ``True``.
        track_running_stats: keep ``running_mean``/``running_var`` for eval. Default: ``True``.
        process_group: the group to synchronize over; ``None`` means the world.

    Example (without a process group it is plain batch norm over this process's batch)::

        >>> import torch
        >>> from torch_dlbasics.nn.batchnorm import BatchNorm2d
        >>> from torch_dlbasics.nn.syncbatchnorm import SyncBatchNorm
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
        >>> model = SyncBatchNorm.convert_sync_batchnorm(model)
        >>> type(model[1]).__name__
        'SyncBatchNorm'
        >>> x = torch.randn(8, 4, 5, 5)
        >>> torch.equal(SyncBatchNorm(4)(x), BatchNorm2d(4)(x))
        True
    """

    def __init__(
        self,
        num_features: int,
        eps: float = 1e-5,
        momentum: Optional[float] = 0.1,
        affine: bool = True,
        track_running_stats: bool = True,
        process_group: Optional[Any] = None,
        device: Any = None,
        dtype: Optional[torch.dtype] = None,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device=device, dtype=dtype
        )
        self.process_group = process_group

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def _check_non_zero_input_channels(self, input: Tensor) -> None:
        if input.size(1) == 0:
            raise ValueError("SyncBatchNorm number of input channels should be non-zero")

    def _sync_group(self) -> tuple[Any, int]:
        """The group to synchronize over and its size, or ``(None, 1)`` for no synchronization."""
        if not (self.training and dist.is_available() and dist.is_initialized()):
            return None, 1
        group = dist.group.WORLD if self.process_group is None else self.process_group
        world_size = dist.get_world_size(group)
        return (group, world_size) if world_size > 1 else (None, 1)

    def forward(self, input: Tensor) -> Tensor:
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        factor = 0.0 if self.momentum is None else self.momentum
        if self.training and self.track_running_stats:
            self.num_batches_tracked.add_(1)
            if self.momentum is None:  # cumulative moving average
                factor = 1.0 / float(self.num_batches_tracked)
        bn_training = self.training or (self.running_mean is None and self.running_var is None)
        track = not self.training or self.track_running_stats
        running_mean = self.running_mean if track else None
        running_var = self.running_var if track else None

        group, world_size = self._sync_group()
        if group is None:  # exactly our BatchNorm
            return F.batch_norm(
                input, running_mean, running_var, self.weight, self.bias,
                bn_training, factor, self.eps,
            )  # fmt: skip

        self._check_sync_input(input)
        out, mean, var, count = SyncBatchNormFunction.apply(
            input, self.weight, self.bias, self.eps, group, world_size
        )
        if running_mean is not None and running_var is not None:
            with torch.no_grad():
                # m is zeroed when every rank's batch is empty: the buffers stay as they are.
                m = (count > 0).to(mean.dtype) * factor
                unbiased_var = var * (count / (count - 1).clamp(min=1))
                running_mean.mul_(1 - m).add_(m * mean)
                running_var.mul_(1 - m).add_(m * unbiased_var)
        return out

    def _check_sync_input(self, input: Tensor) -> None:
        """The checks ``torch.nn.functional.batch_norm`` makes, in its words."""
        C = input.size(1)
        for name in ("running_mean", "running_var", "weight", "bias"):
            t = getattr(self, name)
            if t is not None and t.numel() != C:
                raise RuntimeError(f"{name} should contain {C} elements not {t.numel()}")
        if self.eps <= 0:
            raise ValueError(f"batch_norm eps must be positive during training, but got {self.eps}")

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group: Any = None) -> nn.Module:
        """Replace every BatchNorm*d (torch's or ours) in ``module`` by ``SyncBatchNorm``.

        Like ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``: the new layers share the old
        layers' parameter and buffer tensors (so dtype and device carry over) and train/eval mode.
        Our ``book=True`` BatchNorm (per-activation statistics) is refused with a ValueError.

        >>> import torch
        >>> from torch_dlbasics.nn.syncbatchnorm import SyncBatchNorm
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3)).eval()
        >>> gamma = net[1].weight
        >>> net = SyncBatchNorm.convert_sync_batchnorm(net)
        >>> type(net[1]).__name__, net[1].num_features, net[1].weight is gamma, net[1].training
        ('SyncBatchNorm', 3, True, False)
        """
        converted = module
        if isinstance(module, (nn.modules.batchnorm._BatchNorm, _BatchNorm)):
            if getattr(module, "book", False):
                raise ValueError(
                    "convert_sync_batchnorm: a BatchNorm with book=True (the book's statistics "
                    "per activation of the flattened input) has no synchronized form"
                )
            converted = cls(
                module.num_features, module.eps, module.momentum, module.affine,
                module.track_running_stats, process_group, device="meta",
            )  # fmt: skip
            if module.affine:
                converted.weight = module.weight
                converted.bias = module.bias
            converted.running_mean = module.running_mean
            converted.running_var = module.running_var
            converted.num_batches_tracked = module.num_batches_tracked
            converted.training = module.training
            if hasattr(module, "qconfig"):
                converted.qconfig = module.qconfig
        for name, child in module.named_children():
            converted.add_module(name, cls.convert_sync_batchnorm(child, process_group))
        return converted
