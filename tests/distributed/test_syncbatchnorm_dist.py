"""SyncBatchNorm in 2 and 3 processes (gloo on CPU; gloo on one GPU and NCCL where GPUs exist)
against one process holding the concatenated batch: our BatchNorm, torch's BatchNorm and the
book's formulas written out below in float64."""

from __future__ import annotations

from typing import Any

import torch
from _workers import rank_slice

from torch_dlbasics.nn.batchnorm import BatchNorm1d, BatchNorm2d, BatchNorm3d

F64 = {"rtol": 1e-10, "atol": 1e-12}
# float32 inputs of magnitude 1e3 carry an absolute rounding of ulp(1e3)/2 = 3.1e-5, and the
# mean subtracted from them the same again: normalised outputs (std 2, gamma <= 1.5) and the
# gradients can be trusted to about 1e-4 absolute, the variance to about 1e-4 relative.
F32_MEAN_1E3 = {"rtol": 1e-4, "atol": 1e-4}


def tol(case: dict[str, Any]) -> dict[str, float]:
    return F64 if case["dtype"] == torch.float64 else F32_MEAN_1E3


def book_batchnorm(x: torch.Tensor, dout: torch.Tensor, gamma: Any, beta: Any, eps: float) -> Any:
    """The book's BatchNormalization forward and backward over (N, C, *) in float64."""
    C = x.shape[1]

    def rows(t: torch.Tensor) -> torch.Tensor:  # (N, C, *) -> (N * prod(*), C)
        return t.double().transpose(0, 1).reshape(C, -1).T

    def back(t: torch.Tensor) -> torch.Tensor:
        return t.T.reshape(C, x.shape[0], *x.shape[2:]).transpose(0, 1)

    x2, dout2 = rows(x), rows(dout)
    M = x2.shape[0]
    mu = x2.mean(0)
    xc = x2 - mu
    var = (xc**2).mean(0)
    std = torch.sqrt(var + eps)
    xn = xc / std
    out = gamma * xn + beta
    dxn = gamma * dout2
    dxc = dxn / std
    dstd = -((dxn * xc) / (std * std)).sum(0)
    dvar = 0.5 * dstd / std
    dxc = dxc + (2.0 / M) * xc * dvar
    dmu = dxc.sum(0)
    dx = dxc - dmu / M
    return {"out": back(out), "dx": back(dx), "xn": back(xn), "mu": mu, "var": var, "M": M}


def book_run(case: dict[str, Any]) -> dict[str, Any]:
    """All steps of a case on the full batch, running statistics as torch defines them."""
    C, eps = case["C"], 1e-5
    gamma = case["weight"].double() if case["affine"] else 1.0
    beta = case["bias"].double() if case["affine"] else 0.0
    rm, rv, nbt = torch.zeros(C, dtype=torch.float64), torch.ones(C, dtype=torch.float64), 0
    steps = []
    for x, dy in case["steps"]:
        r = book_batchnorm(x, dy, gamma, beta, eps)
        nbt += 1
        m = 1.0 / nbt if case["momentum"] is None else case["momentum"]
        rm = (1 - m) * rm + m * r["mu"]
        rv = (1 - m) * rv + m * r["var"] * r["M"] / (r["M"] - 1)
        steps.append(r)
    x_last = case["steps"][-1][0].double()
    shape = (1, C) + (1,) * (x_last.dim() - 2)
    eval_out = (x_last - rm.view(shape)) / torch.sqrt(rv.view(shape) + eps)
    if case["affine"]:
        eval_out = eval_out * case["weight"].double().view(shape) + case["bias"].double().view(
            shape
        )
    return {"steps": steps, "running_mean": rm, "running_var": rv, "nbt": nbt, "eval": eval_out}


def module_run(cls: Any, case: dict[str, Any]) -> dict[str, Any]:
    """All steps of a case on the full batch with a single-process BatchNorm module."""
    bn = cls(case["C"], momentum=case["momentum"], affine=case["affine"],
             track_running_stats=case["track"], dtype=case["dtype"])  # fmt: skip
    if case["affine"]:
        with torch.no_grad():
            bn.weight.copy_(case["weight"])
            bn.bias.copy_(case["bias"])
    res: dict[str, Any] = {"out": [], "dx": [], "dw": [], "db": []}
    for x_full, dy in case["steps"]:
        x = x_full.clone().requires_grad_()
        out = bn(x)
        out.backward(dy)
        res["out"].append(out.detach())
        res["dx"].append(x.grad)
        if case["affine"]:
            res["dw"].append(bn.weight.grad.clone())
            res["db"].append(bn.bias.grad.clone())
            bn.weight.grad = bn.bias.grad = None
    res["buffers"] = dict(bn.named_buffers())
    res["eval"] = bn.eval()(case["steps"][-1][0])
    return res


def ours_cls(case: dict[str, Any]) -> Any:
    return {2: BatchNorm1d, 3: BatchNorm1d, 4: BatchNorm2d, 5: BatchNorm3d}[
        case["steps"][0][0].dim()
    ]


def torch_cls(case: dict[str, Any]) -> Any:
    nn = torch.nn
    return {2: nn.BatchNorm1d, 3: nn.BatchNorm1d, 4: nn.BatchNorm2d, 5: nn.BatchNorm3d}[
        case["steps"][0][0].dim()
    ]


_REFS: dict[int, Any] = {}


def each_case(world: dict[str, Any]) -> Any:
    """(case, per-rank results, book's float64 result, single-process modules' results).

    The modules are our BatchNorm and torch's. The float32 case with mean 1e3 is compared with
    torch's only: our single-process BatchNorm takes ``E[x^2] - mu^2`` in one pass (documented
    there), which is what that case shows SyncBatchNorm avoiding."""
    for case in world["payload"]["cases"]:
        ranks = [r["syncbn"]["cases"][case["name"]] for r in world["ranks"]]
        if id(case) not in _REFS:  # cases live as long as the session's spawned worlds
            modules = [module_run(torch_cls(case), case)]
            if case["dtype"] == torch.float64:
                modules.insert(0, module_run(ours_cls(case), case))
            _REFS[id(case)] = (book_run(case), modules)
        yield (case, ranks, *_REFS[id(case)])


def test_outputs_and_input_grads_equal_full_batch(world: dict[str, Any]) -> None:
    for case, ranks, book, modules in each_case(world):
        for rank, res in enumerate(ranks):
            part = rank_slice(case["sizes"], rank)
            for s in range(len(case["steps"])):
                where = f"{case['name']} rank {rank} step {s}"

                def msg(m: str, where: str = where) -> str:
                    return f"{where}: {m}"

                for ref in (book["steps"][s], *modules):
                    want_out = ref["out"][s] if isinstance(ref["out"], list) else ref["out"]
                    want_dx = ref["dx"][s] if isinstance(ref["dx"], list) else ref["dx"]
                    torch.testing.assert_close(
                        res["out"][s].double(), want_out[part].double(), **tol(case), msg=msg
                    )
                    torch.testing.assert_close(
                        res["dx"][s].double(), want_dx[part].double(), **tol(case), msg=msg
                    )
                assert (
                    res["out"][s].dtype == case["dtype"]
                    and res["out"][s].shape[0] == case["sizes"][rank]
                )


def test_weight_bias_grads_local_and_sum_to_full_batch(world: dict[str, Any]) -> None:
    for case, ranks, book, modules in each_case(world):
        if not case["affine"]:
            continue
        for s, (_, dy) in enumerate(case["steps"]):
            ref = book["steps"][s]
            dims = [0, *range(2, dy.dim())]
            for rank, res in enumerate(ranks):  # this rank's own sums over its slice
                part = rank_slice(case["sizes"], rank)
                dgamma_r = (ref["xn"][part] * dy[part].double()).sum(dims)
                dbeta_r = dy[part].double().sum(dims)
                torch.testing.assert_close(res["dw"][s].double(), dgamma_r, **tol(case))
                torch.testing.assert_close(res["db"][s].double(), dbeta_r, **tol(case))
            dw_sum = sum(r["dw"][s].double() for r in ranks)
            db_sum = sum(r["db"][s].double() for r in ranks)
            for full in modules:
                torch.testing.assert_close(dw_sum, full["dw"][s].double(), **tol(case))
                torch.testing.assert_close(db_sum, full["db"][s].double(), **tol(case))


def test_running_stats_and_eval_equal_full_batch_on_every_rank(world: dict[str, Any]) -> None:
    for case, ranks, book, modules in each_case(world):
        for rank, res in enumerate(ranks):
            part = rank_slice(case["sizes"], rank)
            if not case["track"]:
                assert res["buffers"] == {}  # no buffers, eval uses batch statistics
                continue
            for name in ("running_mean", "running_var"):
                got = res["buffers"][name].double()
                torch.testing.assert_close(got, book[name], **tol(case))
                for full in modules:
                    torch.testing.assert_close(got, full["buffers"][name].double(), **tol(case))
            assert int(res["buffers"]["num_batches_tracked"]) == book["nbt"]
            torch.testing.assert_close(res["eval_out"].double(), book["eval"][part], **tol(case))
            torch.testing.assert_close(
                res["eval_out"], modules[0]["eval"][part].to(res["eval_out"]), **tol(case)
            )
        if case["track"]:  # every rank holds the same statistics, bit for bit
            for res in ranks[1:]:
                for name, buf in res["buffers"].items():
                    assert torch.equal(buf, ranks[0]["buffers"][name]), (case["name"], name)


def test_float32_large_mean_case_defeats_sum_of_squares(world2: dict[str, Any]) -> None:
    """The float32 case above passes only with stable statistics: the textbook
    sum / sum-of-squares formula misses the float64 variance by far more than the tolerance."""
    case = next(c for c in world2["payload"]["cases"] if c["name"] == "float32-mean-1e3")
    x = case["steps"][0][0]
    s, ss, n = x.sum((0, 2, 3)), x.square().sum((0, 2, 3)), x.numel() // x.shape[1]
    naive_var = ss / n - (s / n) ** 2
    exact_var = x.double().var((0, 2, 3), correction=0)
    assert ((naive_var.double() - exact_var).abs() / exact_var).max() > 100 * F32_MEAN_1E3["rtol"]


def test_one_value_per_channel_overall_raises_on_every_rank(world: dict[str, Any]) -> None:
    for res in world["ranks"]:
        msg = res["syncbn"]["one_value_error"]
        assert msg is not None and msg.startswith(
            "Expected more than 1 value per channel when training"
        )


def test_refused_global_batch_changes_no_buffer_on_any_rank(world: dict[str, Any]) -> None:
    """The global one-value refusal comes after the all_gather, yet before anything moved."""
    for res in world["ranks"]:
        bufs = res["syncbn"]["one_value_buffers"]
        assert int(bufs["num_batches_tracked"]) == 0
        assert torch.equal(bufs["running_mean"], torch.zeros(3, dtype=torch.float64))
        assert torch.equal(bufs["running_var"], torch.ones(3, dtype=torch.float64))


def test_cpu_tensors_work_where_torch_syncbatchnorm_refuses(world2: dict[str, Any]) -> None:
    full = torch.cat([r["syncbn"]["ours_vs_torch_input"] for r in world2["ranks"]])
    ref = BatchNorm1d(3, dtype=torch.float64)(full)
    for rank, res in enumerate(world2["ranks"]):
        r = res["syncbn"]
        torch.testing.assert_close(r["ours_out"], ref[4 * rank : 4 * rank + 4].detach(), **F64)
        if world2["backend"] == "gloo":
            assert r["torch_out"] is None
            assert "SyncBatchNorm expected input tensor to be on GPU" in r["torch_error"]
        elif r["torch_out"] is not None:  # on CUDA torch's runs: both agree
            torch.testing.assert_close(r["ours_out"], r["torch_out"], **F64)


def test_process_group_of_one_is_our_batchnorm_and_subgroups_sync_only_members(
    world: dict[str, Any],
) -> None:
    for res in world["ranks"]:
        r = res["syncbn"]
        bn = BatchNorm1d(3, dtype=torch.float64)
        for got, want in [(r["single_out"], bn(r["single_in"]).detach())] + [
            (r["single_buffers"][name], buf) for name, buf in bn.named_buffers()
        ]:
            if world["backend"] == "gloo":  # bit for bit where the ranks ran on the CPU, as here
                assert torch.equal(got, want)
            else:  # on a GPU: to float64 rounding
                torch.testing.assert_close(got, want, **F64)
    if world["world"] == 3:  # group [0, 2]: rank 1's batch takes no part
        r0, r2 = world["ranks"][0]["syncbn"], world["ranks"][2]["syncbn"]
        full = torch.cat([r0["single_in"], r2["single_in"]])
        ref = book_batchnorm(full, torch.zeros_like(full), 1.0, 0.0, 1e-5)["out"]
        torch.testing.assert_close(torch.cat([r0["pair_out"], r2["pair_out"]]), ref, **F64)
        assert "pair_out" not in world["ranks"][1]["syncbn"]
