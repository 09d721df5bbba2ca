"""benchmarks/gpu_check.py: the CPU smoke run writes its table between the markers of a RESULTS-like file and leaves
the rest alone; without CUDA the full check refuses in one line; the budget's cut-offs and exit statuses."""

from __future__ import annotations

import datetime
import math
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import REPO, benchmark_module

SCRIPT = REPO / "benchmarks" / "gpu_check.py"
BEGIN, END = "<!-- gpu_check:begin -->", "<!-- gpu_check:end -->"
BEFORE = "# Benchmark results\n\nIntro line.\n\n## Data loader\n\n| a | b |\n| --- | --- |\n| 1 | 2 |\n\n"
AFTER = "\n\n## Later section\n\nText after the markers, | with a pipe |.\n"
RESULTS_LIKE = BEFORE + f"{BEGIN}\nan old table\n{END}" + AFTER
NUMBER = r"[-+]?(?:\d+\.?\d*|\.\d+)(?:e[-+]?\d+)?"


@pytest.fixture(scope="module")
def gpu_check():
    with benchmark_module("gpu_check") as module:
        yield module


@pytest.fixture(scope="module")
def smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess, str]:
    """One smoke run (a subprocess: it sets TRITON_INTERPRET itself) into a RESULTS-like file."""
    results = tmp_path_factory.mktemp("gpu_check") / "RESULTS.md"
    results.write_text(RESULTS_LIKE)
    env = {key: value for key, value in os.environ.items() if key != "TRITON_INTERPRET"}  # as from a shell
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--smoke", "--results", str(results)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    return run, results.read_text()


def table_rows(text: str) -> list[dict[str, str]]:
    section = text.split(BEGIN, 1)[1].split(END, 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|") and not line.startswith("|---")]
    header, *body = [[cell.strip() for cell in re.split(r"(?<!\\)\|", line)[1:-1]] for line in lines]
    return [dict(zip(header, cells, strict=True)) for cells in body]


def rate(figures: str) -> float:
    return float(re.search(rf"({NUMBER}) img/s", figures).group(1))


@pytest.mark.slow
@pytest.mark.subprocess
def test_smoke_run_writes_every_check_with_finite_figures(smoke) -> None:
    run, text = smoke
    assert run.returncode == 0, run.stdout[-3000:] + run.stderr[-3000:]
    assert "all checks passed" in run.stdout
    header = text.split(BEGIN, 1)[1].split(END, 1)[0].strip().splitlines()[0]
    assert "torch " in header and "Triton " in header and datetime.date.today().isoformat() in header
    rows = table_rows(text)
    assert all(row["result"] == "pass" for row in rows), [row for row in rows if row["result"] != "pass"]
    by_check: dict[str, list[dict[str, str]]] = {}
    for row in rows:
        by_check.setdefault(row["check"], []).append(row)
    assert set(by_check) == {"kernels", "train", "predict", "ddp"}

    kernels = by_check["kernels"]
    for op in ("deform attn", "neighborhood attn"):
        for dtype in ("fp32", "bf16"):
            assert any(row["case"].startswith(op) and row["case"].endswith(dtype) for row in kernels), (op, dtype)
    # the tiny DiNAT's 16x16 stage-1 map under kernel 3 x dilation 7: padded to 21x21 before attention
    assert any("21x21" in row["case"] and "dilation 7" in row["case"] for row in kernels)
    for row in kernels:
        pairs = re.findall(rf"(\w+) ({NUMBER}) \(({NUMBER})\)", row["figures"])
        assert len(pairs) in (4, 5), row  # output and the gradient of every input
        tolerance = 1e-4 if row["case"].endswith("fp32") else 2e-2
        for _, error, relative in pairs:
            assert math.isfinite(float(error)) and 0 <= float(relative) <= tolerance, row

    train = {row["case"]: row for row in by_check["train"]}
    assert set(train) == {"m2f_swin_l fp32", "m2f_dinat_l fp32", "semask_swin_l fp32", "eomt_dinov2_l_512 fp32"}
    for row in train.values():
        assert 0 < rate(row["figures"]) < math.inf and "losses finite" in row["figures"]
        assert float(re.search(rf"({NUMBER}) GiB", row["figures"]).group(1)) > 0

    predict = {row["case"]: row for row in by_check["predict"]}
    assert set(predict) == {"m2f_swin_l", "semask_swin_l", "eomt_dinov2_l_512", "m2f_dinat_l"}
    for row in predict.values():  # TEST.AUG: 2 sizes x flip
        assert 0 < rate(row["figures"]) < math.inf and "(4 views per image)" in row["figures"]

    (ddp,) = by_check["ddp"]
    assert "train_net.py" in ddp["case"] and 0 < rate(ddp["figures"]) < math.inf


@pytest.mark.slow
@pytest.mark.subprocess
def test_smoke_run_replaces_only_the_marked_section(smoke) -> None:
    _, text = smoke
    assert text.startswith(BEFORE + BEGIN) and text.endswith(END + AFTER)
    assert text.count(BEGIN) == 1 and text.count(END) == 1 and "an old table" not in text


def test_sections_are_appended_replaced_and_bad_markers_refused(gpu_check) -> None:
    section = f"{BEGIN}\nnew\n{END}\n"
    appended = gpu_check.replace_section("# Results\n\nsome text", section)
    assert appended == "# Results\n\nsome text\n\n" + section
    assert gpu_check.replace_section(appended, f"{BEGIN}\nnewer\n{END}\n") == (
        "# Results\n\nsome text\n\n" + f"{BEGIN}\nnewer\n{END}\n"
    )
    assert gpu_check.replace_section("", section) == section
    for bad in (f"{END}\n{BEGIN}\n", f"{BEGIN}\nno end\n", f"{BEGIN}\n{END}\n{BEGIN}\n{END}\n"):
        with pytest.raises(gpu_check.GpuCheckError, match="RESULTS.md: expected one"):
            gpu_check.replace_section(bad, section, "RESULTS.md")


@pytest.mark.slow
@pytest.mark.subprocess
def test_full_mode_without_cuda_exits_with_one_line(tmp_path: Path) -> None:
    results = tmp_path / "RESULTS.md"
    env = {**os.environ, "CUDA_VISIBLE_DEVICES": ""}
    env.pop("TRITON_INTERPRET", None)
    run = subprocess.run(
        [sys.executable, str(SCRIPT), "--results", str(results)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 2
    lines = run.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu_check.py: no CUDA device") and "--smoke" in lines[0]
    assert not results.exists()


def test_smoke_without_results_is_refused(gpu_check, capsys) -> None:
    with pytest.raises(SystemExit) as exit_info:
        gpu_check.main(["--smoke"])
    assert exit_info.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    # plain, or through the project's log handler when an earlier test in this process installed it
    assert len(lines) == 1 and "gpu_check.py" in lines[0]
    assert lines[0].endswith("--smoke writes its table only to --results PATH (not RESULTS.md): give one")


def test_a_spent_budget_skips_checks_and_exits_3(gpu_check, tmp_path: Path, monkeypatch) -> None:
    monkeypatch.setenv("TRITON_INTERPRET", "1")  # the smoke run sets it; restored after the test
    results = tmp_path / "out.md"
    assert gpu_check.main(["--smoke", "--results", str(results), "--budget", "1", "--checks", "train,ddp"]) == 3
    rows = table_rows(results.read_text())
    assert [(row["check"], row["result"]) for row in rows] == [("train", "over budget"), ("ddp", "over budget")]
    assert "not run" in rows[0]["figures"]


def test_alarm_stops_a_check_and_shares_follow_what_is_left(gpu_check) -> None:
    begin = time.monotonic()
    with pytest.raises(gpu_check.OverBudget), gpu_check.alarm(0.2):
        time.sleep(5)
    assert time.monotonic() - begin < 2
    budget = gpu_check.Budget(100)
    shares = gpu_check.SHARES
    assert budget.share("predict", ["ddp"]) == pytest.approx(
        100 * shares["predict"] / (shares["predict"] + shares["ddp"]), rel=0.01
    )
    assert budget.share("predict", []) == pytest.approx(100, rel=0.01)  # a skipped DDP check leaves its share


def test_a_crashing_run_is_a_fail_row_and_the_others_still_run(gpu_check, capsys, monkeypatch) -> None:
    def train_rate(cfg, settings, precision, seconds):
        if cfg.MODEL.BACKBONE.NAME == "D2DiNAT":
            raise RuntimeError("CUDA error: an illegal memory access was encountered\nmore detail")
        return gpu_check.Row("train", "", "pass", "1.00 img/s"), [1.0]

    monkeypatch.setattr(gpu_check, "train_rate", train_rate)
    report = gpu_check.Report("header")
    gpu_check.check_train(gpu_check.SMOKE, report, gpu_check.Budget(100), lambda: None, 60)
    assert [(row.case, row.status) for row in report.rows] == [
        ("m2f_swin_l fp32", "pass"),
        ("m2f_dinat_l fp32", "FAIL"),
        ("semask_swin_l fp32", "pass"),
        ("eomt_dinov2_l_512 fp32", "pass"),
    ]
    assert report.rows[1].figures == "RuntimeError: CUDA error: an illegal memory access was encountered"
    assert "Traceback" in capsys.readouterr().err


def test_training_runs_the_steps_its_time_allows(gpu_check) -> None:
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the smoke run: a tiny model, and no OpenMP stalls on a busy machine
    try:
        cfg = gpu_check.load_config(str(REPO / "configs" / "m2f_swin_l.yaml"), gpu_check.SMOKE_OPTS)
        row, losses = gpu_check.train_rate(cfg, gpu_check.SMOKE, "fp32", seconds=0.0)
    finally:
        torch.set_num_threads(threads)
    assert row.status == "pass" and "median of 1)" in row.figures
    assert row.criterion.endswith(f"1 of {gpu_check.SMOKE.steps} steps: budget")
    assert len(losses) > 2 and all(math.isfinite(value) for value in losses)  # warm-up + timed step, every loss


def test_deform_check_returns_the_numbers_it_prints(gpu_check) -> None:
    """gpu_check reads ms_deform_attn.check's numbers from its dict: they are the printed ones, per tensor."""
    import torch

    from mask2former.modeling.ops.ms_deform_attn import ms_deform_attn_reference

    bench = sys.modules["ms_deform_attn"]  # imported by gpu_check
    inputs = gpu_check.deform_inputs([(4, 4), (2, 2)], 1, 5, 2, 2, 4, torch.float32, "cpu")

    def off_by_1e3(*args):  # every output, so every gradient, 0.1% too large
        return ms_deform_attn_reference(*args) * 1.001

    ok, report, errors = bench.check(off_by_1e3, inputs, torch.float32)
    assert not ok and list(errors) == ["out", "grad_value", "grad_loc", "grad_weight"]
    for name, (diff, scale) in errors.items():
        assert diff == pytest.approx(1e-3 * scale, rel=1e-2)
        assert f"{name} {diff:.2e} (max {scale:.2e})" in report
    ok, _, errors = bench.check(ms_deform_attn_reference, inputs, torch.float32)
    assert ok and all(diff == 0 and scale > 0 for diff, scale in errors.values())


def test_smoke_opts_narrow_every_model_the_check_builds(gpu_check) -> None:
    """SMOKE_OPTS reach every trained and predicted config (EoMT's encoder included): each builds tiny on the CPU."""
    from mask2former.modeling.build import build_model

    for config in dict.fromkeys(gpu_check.TRAIN_CONFIGS + gpu_check.PREDICT_CONFIGS):
        cfg = gpu_check.load_config(str(REPO / config), gpu_check.SMOKE_OPTS)
        parameters = sum(p.numel() for p in build_model(cfg).parameters())
        assert parameters < 2_000_000, (config, parameters)
