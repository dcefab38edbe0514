"""Drop-in by torch's yardsticks (issue 11 and 13): torch's signatures, torch.func, TorchScript's
refusal, and our layers seen as torch's wherever the ecosystem checks ``isinstance``."""

from __future__ import annotations

import copy
import inspect
import warnings
from typing import Any

import pytest
import torch
from torch import nn

from torch_dlbasics.nn import (
    BatchNorm1d,
    BatchNorm2d,
    BatchNorm3d,
    Dropout,
    SyncBatchNorm,
    convert_model,
)
from torch_dlbasics.nn import functional as F

F64 = {"rtol": 1e-10, "atol": 1e-12}
PAIRS = [
    (BatchNorm1d, nn.BatchNorm1d),
    (BatchNorm2d, nn.BatchNorm2d),
    (BatchNorm3d, nn.BatchNorm3d),
]


# --- signatures -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("ours", "theirs", "extra"),
    [*((o, t, ["book"]) for o, t in PAIRS), (SyncBatchNorm, nn.SyncBatchNorm, []),
     (Dropout, nn.Dropout, ["inverted"])],
)  # fmt: skip
def test_signature_is_torchs_in_torchs_order_plus_ours_keyword_only(
    ours: Any, theirs: Any, extra: list[str]
) -> None:
    mine = inspect.signature(ours.__init__).parameters
    torchs = inspect.signature(theirs.__init__).parameters
    assert list(mine)[: len(torchs)] == list(torchs)  # torch's names, in torch's order
    for name, p in torchs.items():
        assert mine[name].kind == p.kind and mine[name].default == p.default, name
    if "bias" not in torchs and ours is not Dropout:  # torch 2.4: ours has torch 2.5's bias
        extra = ["bias", *extra]
    assert [n for n in mine if n not in torchs] == extra
    assert all(mine[n].kind is inspect.Parameter.KEYWORD_ONLY for n in extra)


@pytest.mark.parametrize(("ours", "theirs"), PAIRS)
def test_bias_false_as_torch(ours: Any, theirs: Any) -> None:
    """``bias=False`` (keyword-only, torch >= 2.5): a weight and no bias, on every torch we
    support; on torch 2.4, whose BatchNorm lacks the flag, ours still has it."""
    m = ours(3, bias=False)
    assert m.bias is None and m.weight is not None
    assert [n for n, _ in m.named_parameters()] == ["weight"]
    assert "bias=False" in repr(m)
    shape = {BatchNorm1d: (4, 3), BatchNorm2d: (2, 3, 2, 2), BatchNorm3d: (2, 3, 2, 2, 1)}[ours]
    x = torch.randn(shape, dtype=torch.float64, requires_grad=True)
    m = m.double()
    (g,) = torch.autograd.grad(m(x).square().sum(), x)
    if "bias" in inspect.signature(theirs.__init__).parameters:
        t = theirs(3, bias=False).double()
        t.load_state_dict(m.state_dict())
        xt = x.detach().clone().requires_grad_()
        (gt,) = torch.autograd.grad(t(xt).square().sum(), xt)
        torch.testing.assert_close(g, gt, **F64)
        assert list(t.state_dict()) == list(m.state_dict())
    m.reset_parameters()  # torch 2.4's own reset would touch the missing bias


def test_eps_is_checked_at_forward_not_construction_as_torch() -> None:
    for eps in (0.0, -1.0):
        ours, theirs = BatchNorm1d(3, eps=eps), nn.BatchNorm1d(3, eps=eps)  # both construct
        with pytest.raises(ValueError, match="eps must be positive"):
            ours(torch.randn(4, 3))
        assert ours.eps == theirs.eps


# --- torch.func -----------------------------------------------------------------------------


def _eval_and_untracked() -> list[Any]:
    def build(ours: bool, kind: str) -> nn.Module:
        cls = BatchNorm1d if ours else nn.BatchNorm1d
        m = cls(3, track_running_stats=(kind == "eval"), dtype=torch.float64)
        if kind == "eval":
            with torch.no_grad():
                m.running_mean.uniform_(-1, 1)
                m.running_var.uniform_(0.5, 2)
            m.eval()
        with torch.no_grad():
            m.weight.uniform_(0.5, 1.5)
            m.bias.uniform_(-1, 1)
        return m

    return [pytest.param(build, kind, id=kind) for kind in ("eval", "untracked")]


@pytest.mark.parametrize(("build", "kind"), _eval_and_untracked())
def test_vmap_jacrev_jacfwd_as_torch(build: Any, kind: str) -> None:
    """``torch.vmap`` over inputs, ``jacrev`` and ``jacfwd``: where torch's BatchNorm supports
    them (eval, or no running statistics), ours gives torch's numbers."""
    torch.manual_seed(0)
    ours, theirs = build(True, kind), build(False, kind)
    theirs.load_state_dict(ours.state_dict())
    x = torch.randn(5, 4, 3, dtype=torch.float64)  # vmap over 5 batches of (4, 3)
    torch.testing.assert_close(torch.vmap(ours)(x), torch.vmap(theirs)(x), **F64)
    for jac in (torch.func.jacrev, torch.func.jacfwd):
        torch.testing.assert_close(jac(ours)(x[0]), jac(theirs)(x[0]), **F64)
    # per-sample gradients of the parameters (vmap of grad of functional_call)
    params = {k: v.detach() for k, v in ours.named_parameters()}

    def loss(p: dict[str, torch.Tensor], xi: torch.Tensor, m: nn.Module) -> torch.Tensor:
        return torch.func.functional_call(m, p, (xi,)).square().sum()

    g_ours = torch.vmap(torch.func.grad(loss), in_dims=(None, 0, None))(params, x, ours)
    g_theirs = torch.vmap(torch.func.grad(loss), in_dims=(None, 0, None))(params, x, theirs)
    for k in params:
        torch.testing.assert_close(g_ours[k], g_theirs[k], **F64)


def test_vmap_training_with_running_stats_refused_as_torch() -> None:
    for m in (BatchNorm1d(3), nn.BatchNorm1d(3)):
        with pytest.raises(RuntimeError, match="Batch norm got a batched tensor as input"):
            torch.vmap(m)(torch.randn(2, 4, 3))


@pytest.mark.parametrize("training", [True, False])
@pytest.mark.parametrize("layout", ["3d", "channels_last"])
def test_batched_gradients_through_the_backward(training: bool, layout: str) -> None:
    """``is_grads_batched=True`` and ``gradcheck(check_batched_grad=True)`` (vmap over the
    backward), forward-mode AD, and gradgradcheck with batched gradients."""
    g = torch.Generator().manual_seed(0)
    shape = (5, 3, 4) if layout == "3d" else (3, 3, 2, 3)
    x = torch.randn(shape, generator=g, dtype=torch.float64)
    if layout == "channels_last":
        x = x.contiguous(memory_format=torch.channels_last)
    x.requires_grad_()
    w = (torch.rand(3, generator=g, dtype=torch.float64) + 0.5).requires_grad_()
    b = torch.randn(3, generator=g, dtype=torch.float64).requires_grad_()
    rm = torch.randn(3, generator=g, dtype=torch.float64)
    rv = torch.rand(3, generator=g, dtype=torch.float64) + 0.5

    def fn(x: torch.Tensor, w: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return F.batch_norm(
            x, None if training else rm, None if training else rv, w, b, training=training
        )

    assert torch.autograd.gradcheck(
        fn, (x, w, b), check_batched_grad=True, check_forward_ad=True,
        check_batched_forward_grad=True,
    )  # fmt: skip
    assert torch.autograd.gradgradcheck(fn, (x, w, b), check_batched_grad=True)
    vs = torch.randn(4, *shape, generator=g, dtype=torch.float64)
    batched = torch.autograd.grad(fn(x, w, b), (x, w, b), vs, is_grads_batched=True)
    ref_fn = (
        (lambda x, w, b: nn.functional.batch_norm(x, None, None, w, b, training=True))
        if training
        else (lambda x, w, b: nn.functional.batch_norm(x, rm, rv, w, b, training=False))
    )
    ref = torch.autograd.grad(ref_fn(x, w, b), (x, w, b), vs, is_grads_batched=True)
    for a, r in zip(batched, ref):
        torch.testing.assert_close(a, r, **F64)


@pytest.mark.parametrize("randomness", ["error", "different", "same"])
def test_dropout_under_vmap_follows_randomness_as_torch(randomness: str) -> None:
    x = torch.ones(4, 4096)
    outcomes = {}
    for name, m in (("ours", Dropout(0.5)), ("torch", nn.Dropout(0.5))):
        try:
            y = torch.vmap(m, randomness=randomness)(x)
            rows_equal = all(torch.equal(y[0], y[i]) for i in range(1, 4))
            assert set(y.unique().tolist()) <= {0.0, 2.0}
            outcomes[name] = ("ok", rows_equal)
        except RuntimeError as e:
            outcomes[name] = ("error", "randomness error mode" in str(e))
    assert outcomes["ours"] == outcomes["torch"]
    expected = {"error": ("error", True), "different": ("ok", False), "same": ("ok", True)}
    assert outcomes["ours"] == expected[randomness]


def test_dropout_forward_mode_and_jacfwd() -> None:
    x = torch.randn(3, 5, dtype=torch.float64)
    drop = Dropout(0.4)
    torch.manual_seed(1)
    jr = torch.func.jacrev(drop)(x)
    torch.manual_seed(1)
    jf = torch.func.jacfwd(drop, randomness="same")(x)
    torch.testing.assert_close(jr, jf, rtol=0, atol=0)
    mask = jr.reshape(15, 15).diagonal()  # d y_i / d x_i: 0 or the scale, nothing elsewhere
    assert len(mask.unique()) == 2 and mask.min() == 0.0
    torch.testing.assert_close(mask.max(), torch.tensor(1 / 0.6, dtype=torch.float64))
    assert torch.equal(jr.reshape(15, 15), torch.diag(mask))


# --- TorchScript ----------------------------------------------------------------------------


@pytest.mark.parametrize("layer", [BatchNorm2d(3), Dropout(0.3), SyncBatchNorm(3)], ids=repr)
def test_torchscript_refused_with_one_clear_error(layer: nn.Module) -> None:
    model = nn.Sequential(nn.Conv2d(3, 3, 1), layer)
    children = list(model.children())
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # torch.jit.script's own deprecation
        with pytest.raises(RuntimeError) as e:
            torch.jit.script(model)
    msg = str(e.value)
    assert msg.startswith(f"torch.jit.script cannot compile {type(layer).__name__}")
    assert "torch.compile" in msg and "torch.export" in msg
    assert list(model.children()) == children  # the model is as it was


# --- the ecosystem's isinstance checks --------------------------------------------------------


def test_seen_as_torchs_classes() -> None:
    bn_base = nn.modules.batchnorm._BatchNorm
    for ours, theirs in PAIRS:
        assert isinstance(ours(3), theirs) and isinstance(ours(3), bn_base)
    assert isinstance(SyncBatchNorm(3), bn_base) and not isinstance(
        SyncBatchNorm(3), nn.SyncBatchNorm
    )
    assert isinstance(Dropout(0.1), nn.Dropout)


def test_finetuning_and_no_decay_filters_treat_ours_as_batchnorm() -> None:
    """Lightning's ``BaseFinetuning.freeze(train_bn=True)`` and timm's no-decay filters decide by
    ``isinstance(m, torch.nn.modules.batchnorm._BatchNorm)``: written out here."""
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), SyncBatchNorm(4)
    )
    bns = [m for m in net.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    assert bns == [net[1], net[4]]
    for m in net.modules():  # BaseFinetuning.freeze(..., train_bn=True)
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            continue
        for p in m.parameters(recurse=False):
            p.requires_grad = False
    assert [n for n, p in net.named_parameters() if p.requires_grad] == [
        "1.weight", "1.bias", "4.weight", "4.bias"
    ]  # fmt: skip
    no_decay = {
        f"{mn}.{pn}" if mn else pn
        for mn, m in net.named_modules()
        for pn, _ in m.named_parameters(recurse=False)
        if isinstance(m, (nn.modules.batchnorm._BatchNorm, nn.LayerNorm))
    }
    assert no_decay == {"1.weight", "1.bias", "4.weight", "4.bias"}


@pytest.mark.parametrize("book", [False, True])
def test_swa_update_bn_recomputes_our_running_statistics(book: bool) -> None:
    """``update_bn`` resets the statistics (``reset_running_stats``) and sets momentum=None for
    a cumulative average over the loader: ours honours both, and restores the momentum."""
    from torch.optim.swa_utils import update_bn

    torch.manual_seed(0)
    lin = nn.Linear(3, 4).double()
    net = nn.Sequential(lin, BatchNorm1d(4, momentum=0.3, book=book, dtype=torch.float64)).eval()
    net.train()(torch.randn(8, 3, dtype=torch.float64) * 9 + 4)  # stale statistics
    net.eval()
    loader = [torch.randn(8, 3, dtype=torch.float64) * 2 + 1 for _ in range(3)]
    update_bn(loader, net)
    h = [lin(x).detach() for x in loader]
    correction = 1.0 if book else 8 / 7  # the book keeps the biased variance
    mean = torch.stack([t.mean(0) for t in h]).mean(0)
    var = torch.stack([t.var(0, correction=0) * correction for t in h]).mean(0)
    bn = net[1]
    torch.testing.assert_close(bn.running_mean, mean, **F64)
    torch.testing.assert_close(bn.running_var, var, **F64)
    assert bn.momentum == 0.3 and int(bn.num_batches_tracked) == 3 and not net.training


def test_fx_tracing_records_our_layers_as_single_calls() -> None:
    """``torch.fx.symbolic_trace`` records each of our layers as one call (they are not torch's
    leaf modules: it would trace into them); the call reads the train/eval mode when it runs."""
    net = nn.Sequential(nn.Linear(3, 4), BatchNorm1d(4), Dropout(0.5), nn.Linear(4, 2)).eval()
    gm = torch.fx.symbolic_trace(net)
    targets = [n.target for n in gm.graph.nodes if n.op == "call_function"]
    assert [t.__qualname__ for t in targets] == ["_BatchNorm.forward", "Dropout.forward"]
    x = torch.randn(6, 3)
    torch.testing.assert_close(gm(x), net(x), rtol=0, atol=0)
    gm.train()
    torch.manual_seed(0)
    y = gm(x)
    torch.manual_seed(0)
    assert torch.equal(y, net.train()(x))  # dropout on, batch statistics: the mode followed


def test_fx_conv_bn_fusion_leaves_ours_unfused_and_correct() -> None:
    """``torch.fx.experimental.optimization.fuse`` fuses torch's exact Conv2d -> BatchNorm2d
    pairs; ours it leaves as they are (the outputs stay ours)."""
    from torch.fx.experimental.optimization import fuse

    torch.manual_seed(0)
    net = nn.Sequential(
        nn.Conv2d(3, 4, 3), BatchNorm2d(4), nn.ReLU(), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)
    )
    net(torch.randn(4, 3, 6, 6))  # non-trivial running statistics
    net.eval()
    fused = fuse(net)
    kinds = [type(m) for m in fused.modules()]
    assert BatchNorm2d in kinds and nn.BatchNorm2d not in kinds  # theirs fused, ours kept
    x = torch.randn(2, 3, 6, 6)
    torch.testing.assert_close(fused(x), net(x), rtol=1e-5, atol=1e-6)


def test_fuse_conv_bn_eval_per_channel_ours_and_refused_book_form() -> None:
    """``torch.nn.utils.fusion.fuse_conv_bn_eval`` reads the buffers: right for ours (the same
    per-channel eval formula); the book's per-activation form has C*H*W statistics, which it
    cannot fold into C output channels, and fails instead of fusing them as per-channel."""
    from torch.nn.utils.fusion import fuse_conv_bn_eval

    torch.manual_seed(0)
    conv, bn = nn.Conv2d(3, 4, 3).eval(), BatchNorm2d(4).eval()
    with torch.no_grad():
        bn.running_mean.uniform_(-1, 1)
        bn.running_var.uniform_(0.5, 2)
    x = torch.randn(2, 3, 5, 5)
    torch.testing.assert_close(fuse_conv_bn_eval(conv, bn)(x), bn(conv(x)), rtol=1e-5, atol=1e-6)
    with pytest.raises(RuntimeError, match="must match the size"):
        fuse_conv_bn_eval(conv, BatchNorm2d(4 * 3 * 3, book=True).eval())


# --- conversions ------------------------------------------------------------------------------


class TorchBNWithForward(nn.BatchNorm2d):
    """A user's subclass of torch's BatchNorm2d with its own forward."""

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return super().forward(input) * 2.0


class TorchDropoutSubclass(nn.Dropout):
    pass


def _net_with_subclasses() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), TorchBNWithForward(4), BatchNorm2d(4),
        TorchDropoutSubclass(0.5), nn.Dropout(0.5),
    ).eval()  # fmt: skip


def test_convert_model_converts_exact_classes_and_names_the_subclasses_it_leaves() -> None:
    net = _net_with_subclasses()
    x = torch.randn(2, 3, 4, 4)
    before = net(x)
    ours_bn = net[3]
    with pytest.warns(
        UserWarning, match=r"2 \(.*TorchBNWithForward\).*4 \(.*TorchDropoutSubclass\)"
    ):
        out = convert_model(net)
    assert out is net
    assert [type(m) for m in net] == [
        nn.Conv2d, BatchNorm2d, TorchBNWithForward, BatchNorm2d, TorchDropoutSubclass, Dropout
    ]  # fmt: skip
    assert net[3] is ours_bn  # already ours: untouched
    torch.testing.assert_close(net(x), before)  # the custom forward still doubles


def test_conversions_keep_hooks_and_the_same_tensors() -> None:
    bn = nn.BatchNorm2d(4)
    calls: list[str] = []
    handle = bn.register_forward_hook(lambda m, i, o: calls.append(type(m).__name__))
    bn.register_forward_pre_hook(lambda m, i: calls.append("pre"))
    weight = bn.weight
    net = convert_model(nn.Sequential(bn))
    net(torch.randn(2, 4, 2, 2))
    assert calls == ["pre", "BatchNorm2d"] and type(net[0]) is BatchNorm2d
    assert net[0].weight is weight
    handle.remove()  # the user's handle still removes it from the new layer
    net(torch.randn(2, 4, 2, 2))
    assert calls == ["pre", "BatchNorm2d", "pre"]
    sync = SyncBatchNorm.convert_sync_batchnorm(net)
    sync(torch.randn(2, 4, 2, 2))
    assert type(sync[0]) is SyncBatchNorm and calls[-1] == "pre" and sync[0].weight is weight


def test_convert_sync_batchnorm_exact_classes_ours_included_subclasses_left_and_named() -> None:
    net = nn.Sequential(
        nn.BatchNorm1d(3), BatchNorm1d(3), nn.SyncBatchNorm(3), SyncBatchNorm(3),
        nn.Sequential(TorchBNWithForward(3)),
    )  # fmt: skip
    with pytest.warns(UserWarning, match=r"4\.0 \(.*TorchBNWithForward\)"):
        out = SyncBatchNorm.convert_sync_batchnorm(net, process_group="group")
    assert [type(m) for m in out[:4]] == [SyncBatchNorm] * 4
    assert all(m.process_group == "group" for m in out[:4])
    assert type(out[4][0]) is TorchBNWithForward


def test_convert_sync_batchnorm_refuses_book_form_before_changing_anything() -> None:
    net = nn.Sequential(nn.BatchNorm1d(4), nn.Sequential(BatchNorm1d(4, book=True)))
    first = net[0]
    with pytest.raises(ValueError, match="book=True"):
        SyncBatchNorm.convert_sync_batchnorm(net)
    assert net[0] is first  # not half converted


def test_torchs_convert_sync_batchnorm_turns_ours_into_torchs() -> None:
    """Documented consequence of subclassing: torch's (and so Lightning's
    ``sync_batchnorm=True``) conversion sees ours as BatchNorm and gives torch's SyncBatchNorm,
    with our tensors, torch's forward, and no ``book``. Ours converts to ours."""
    ours = BatchNorm2d(4)
    converted = nn.SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(ours))[0]
    assert type(converted) is nn.SyncBatchNorm and converted.weight is ours.weight
    assert not hasattr(converted, "book")
    assert type(SyncBatchNorm.convert_sync_batchnorm(nn.Sequential(ours))[0]) is SyncBatchNorm


def test_pickle_deepcopy_state_dict_across_classes() -> None:
    import pickle

    bn = BatchNorm2d(3, momentum=None, book=False)
    bn(torch.randn(4, 3, 2, 2))
    for clone in (copy.deepcopy(bn), pickle.loads(pickle.dumps(bn))):
        assert type(clone) is BatchNorm2d and clone.momentum is None
        for (k, v), (k2, v2) in zip(bn.state_dict().items(), clone.state_dict().items()):
            assert k == k2 and torch.equal(v, v2)
    theirs = nn.BatchNorm2d(3)
    theirs.load_state_dict(bn.state_dict())
    bn.load_state_dict(theirs.state_dict())
    drop = pickle.loads(pickle.dumps(Dropout(0.2, inverted=False)))
    assert (drop.p, drop.inverted) == (0.2, False)
