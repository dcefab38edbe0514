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
from torch.overrides import handle_torch_function, has_torch_function_unary

from torch_dlbasics.nn import _batch_stats as bs
from torch_dlbasics.nn._autograd import signature_once
from torch_dlbasics.nn.batchnorm import _BatchNorm, _dx, _normalize, _weight_grads

__all__ = ["SyncBatchNorm", "SyncBatchNormFunction"]


@signature_once
class SyncBatchNormFunction(torch.autograd.Function):
    """Batch norm over the global batch: forward all-gathers per-rank (count, mean, M2),
    backward all-reduces the per-channel sums of ``dout`` and ``dout * xn``.

    Returns ``(out, mean, var, count)``: ``mean`` and biased ``var`` of the global batch and the
    global number of values per channel, for the Module to update its running statistics under
    ``no_grad`` (they are not differentiable). The weight and bias gradients are this rank's own
    sums, as ``torch.nn.SyncBatchNorm`` leaves them for DDP to all-reduce. The normalisation and
    the backward's ``dx`` are the book's lines of ``batchnorm.py`` (``_normalize``, ``_dx``) fed
    with the global statistics and sums.
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
        xa = x.to(bs.stat_dtype(x.dtype))  # no copy unless x is float16/bfloat16
        # This rank: count n_r, mean mu_r and sum of squared deviations M2_r (two-pass, exact).
        n_r = bs.values_per_channel(x)
        if n_r > 0:
            mu_r, var_r = bs.mean_var(bs.channel_view(xa, bs.channel_innermost(x)))
        else:  # an empty batch contributes nothing (its n_r = 0 weighs it out below)
            mu_r = var_r = xa.new_zeros(C)
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
        return _normalize(x, xa, mu, torch.rsqrt(var + eps), weight, bias), mu, var, n

    @staticmethod
    def setup_context(ctx: Any, inputs: tuple[Any, ...], output: tuple[Tensor, ...]) -> None:
        x, weight, _bias, eps, process_group, _world_size = inputs
        _out, mean, var, count = output
        ctx.mark_non_differentiable(mean, var, count)
        ctx.save_for_backward(x, weight, mean, torch.rsqrt(var + eps), count)
        ctx.process_group = process_group

    @staticmethod
    @once_differentiable
    def backward(
        ctx: Any, dout: Tensor, _dmean: Tensor, _dvar: Tensor, _dcount: Tensor
    ) -> tuple[Optional[Tensor], ...]:
        x, gamma, mean, invstd, n = ctx.saved_tensors
        acc = bs.stat_dtype(x.dtype)
        xa, dy = x.to(acc), dout.to(acc)
        # This rank's sums: the weight/bias gradients, and the terms every rank's dx needs.
        dbeta, dgamma = _weight_grads(dy, xa, mean, invstd, bs.channel_innermost(x))
        dx = None
        if ctx.needs_input_grad[0]:
            sums = torch.stack([dbeta, dgamma])
            dist.all_reduce(sums, group=ctx.process_group)
            dbeta_all, dgamma_all = sums
            dx = _dx(dy, xa, mean, invstd, gamma, dbeta_all, dgamma_all, int(n), True)
            dx = dx.to(x.dtype)
        dweight = dgamma.to(gamma.dtype) if ctx.needs_input_grad[1] else None
        dbias = dbeta.to(gamma.dtype) if ctx.needs_input_grad[2] else None
        return dx, dweight, dbias, None, None, None


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

    (the book's backward of ``batchnorm.py`` with the global sums) while the weight and bias
    gradients stay this rank's sums :math:`\sum_{\text{rank}} dy\,\hat x` and
    :math:`\sum_{\text{rank}} dy` (DDP all-reduces them, as with ``torch.nn.SyncBatchNorm``).

    **Why all-gather (count, mean, M2) and not all-reduce (count, sum, sum of squares).** The
    latter needs :math:`\sigma^2 = \overline{x^2} - \mu^2`, which cancels catastrophically when
    :math:`|\mu| \gg \sigma` (float32 activations with mean 1e3 and std 1 lose every digit of the
    variance). Per-rank two-pass moments combined by Chan's formula only add non-negative terms.
    The price is one ``all_gather`` of ``2C + 1`` numbers per rank instead of one ``all_reduce``
    of ``2C + 1``: the same message size per rank, negligible next to the activations. Every
    rank combines the gathered rows in the same order, so all ranks get bit-identical statistics.

    **When it behaves as our BatchNorm.** In eval mode, when ``torch.distributed`` is not
    initialised, or when ``process_group`` (default: the world) has one rank, the forward is
    exactly our ``BatchNorm*d``'s.

    **Torch equivalent:** ``torch.nn.SyncBatchNorm(num_features, eps, momentum, affine,
    track_running_stats, process_group, device, dtype, *, bias)``, with the same arguments,
    parameters, buffers and ``state_dict`` keys. Ours subclasses torch's ``_BatchNorm`` (so
    every ``isinstance(m, nn.modules.batchnorm._BatchNorm)`` check sees a BatchNorm) but not
    ``nn.SyncBatchNorm``: DDP refuses any ``nn.SyncBatchNorm`` in a CPU model ("SyncBatchNorm
    layers only work with GPU modules"), which would rule out the CPU training this class is
    for. They agree (to floating-point rounding of a different summation order) whenever
    torch's accepts the input: CUDA tensors, training mode, the same process group; both raise
    for a global count of one value per channel (ours says so on every rank, so no rank hangs).
    Differences:

    - ``torch.nn.SyncBatchNorm`` raises "SyncBatchNorm expected input tensor to be on GPU or XPU
      or privateuseone" for CPU tensors in a distributed training forward; ours runs on CPU
      (gloo) as on CUDA (gloo or NCCL).
    - Double backward is not supported (``once_differentiable``), as in torch's.
    - Float16/bfloat16 inputs: statistics and gradients in float32, output in the input's dtype.
    - ``convert_sync_batchnorm`` converts torch's and our BatchNorm layers exactly, not
      subclasses of them (it warns and leaves those alone), carries hooks over, and refuses
      ``book=True``. torch's own ``nn.SyncBatchNorm.convert_sync_batchnorm`` (which Lightning's
      ``sync_batchnorm=True`` calls) sees our layers as BatchNorm and turns them into *torch's*
      SyncBatchNorm: CUDA only, torch's forward, ``book`` dropped.

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
        device, dtype: where and how the parameters and buffers are created.
        bias: with ``affine``, learn the additive ``bias`` too. Default: ``True``.

    Example (without a process group it is plain batch norm over this process's batch)::

        >>> import torch
        >>> from torch_dlbasics.nn import BatchNorm2d, SyncBatchNorm
        >>> model = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4))
        >>> model = SyncBatchNorm.convert_sync_batchnorm(model)
        >>> type(model[1]).__name__, isinstance(model[1], torch.nn.modules.batchnorm._BatchNorm)
        ('SyncBatchNorm', True)
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
        *,
        bias: bool = True,
    ) -> None:
        super().__init__(
            num_features, eps, momentum, affine, track_running_stats, device, dtype, bias=bias
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
        if has_torch_function_unary(input):  # torch.fx tracing: the layer as one call
            return handle_torch_function(type(self).forward, (input,), self, input)
        self._check_input_dim(input)
        self._check_non_zero_input_channels(input)
        group, world_size = self._sync_group()
        if group is None:  # exactly our BatchNorm
            return self._forward_checked(input)
        # Every check before anything moves (a refused input changes nothing).
        bs.check_eps(self.eps, training=True)
        bs.check_floating(input, "batch_norm")
        bs.check_channels(
            input.shape[1], running_mean=self.running_mean, running_var=self.running_var,
            weight=self.weight, bias=self.bias,
        )  # fmt: skip
        track = self.track_running_stats and self.num_batches_tracked is not None
        factor = bs.momentum_factor(self.momentum, self.num_batches_tracked) if track else 0.0
        out, mean, var, count = SyncBatchNormFunction.apply(
            input, self.weight, self.bias, self.eps, group, world_size
        )
        if track:
            bs.update_running_stats(
                self.running_mean, self.running_var, mean, var, factor, int(count), unbiased=True
            )  # type: ignore[arg-type]
            with torch.no_grad():
                self.num_batches_tracked.add_(1)  # type: ignore[union-attr]
        return out

    @classmethod
    def convert_sync_batchnorm(cls, module: nn.Module, process_group: Any = None) -> nn.Module:
        """Replace every BatchNorm1d/2d/3d and SyncBatchNorm (torch's or ours) in ``module`` by
        ours, ``torch.nn.SyncBatchNorm.convert_sync_batchnorm``'s counterpart.

        The new layers share the old layers' parameter and buffer tensors (so dtype, device and
        optimizer references carry over), train/eval mode, forward/backward/state-dict hooks
        and ``qconfig``. Exactly those classes are converted: a subclass of them (a custom
        ``forward``, a parametrization) is left as it is, with a warning naming it, because
        replacing it would silently drop what it changes. Our ``book=True`` BatchNorm
        (per-activation statistics) has no synchronized form: a ValueError, raised before any
        layer is replaced. Returns ``module`` (a new layer if ``module`` itself is converted).

        >>> import torch
        >>> from torch_dlbasics.nn import SyncBatchNorm
        >>> net = torch.nn.Sequential(torch.nn.Linear(2, 3), torch.nn.BatchNorm1d(3)).eval()
        >>> gamma = net[1].weight
        >>> net = SyncBatchNorm.convert_sync_batchnorm(net)
        >>> type(net[1]).__name__, net[1].num_features, net[1].weight is gamma, net[1].training
        ('SyncBatchNorm', 3, True, False)
        """
        from torch_dlbasics.nn.convert import convert_modules, sync_batchnorm_rule

        return convert_modules(module, sync_batchnorm_rule(cls, process_group))
