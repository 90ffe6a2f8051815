"""The worked examples under examples/, run end to end through their scripts on the shared data."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest

from tests.conftest import shared_data

ROUTING = Path(__file__).resolve().parents[1] / "examples" / "zh_ticket_routing"
CATEGORIES = {"书籍", "平板", "手机", "水果", "洗发水", "热水器", "蒙牛", "衣服", "计算机", "酒店"}


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_ticket_routing(out: Path, budgets: dict[str, str], timeout: float, mode: str = "--quick") -> tuple[str, float]:
    data = shared_data("zh_cls/online_shopping_10_cats/online_shopping_10_cats.csv")
    if shutil.which("electra") is None:
        pytest.skip("the electra command is not installed")
    env = {**os.environ, **budgets, "OUT": str(out), "PORT": str(free_port()), "SHARED_DATA": str(data.parents[2])}
    started = time.perf_counter()
    command = ["bash", str(ROUTING / "run.sh"), *([mode] if mode else [])]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    seconds = time.perf_counter() - started
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    return done.stdout, seconds


def check_outputs(out: Path, stdout: str, train_per_class: int) -> float:
    """The printed summary, the recorded split, the predictions and the exported model; returns dev accuracy."""
    summary = re.search(r"dev: accuracy ([\d.]+), macro_f1 ([\d.]+)", stdout)
    latency = re.search(r"served p50 latency: ([\d.]+) ms", stdout)
    assert summary and latency, stdout[-2000:]
    assert 0 < float(latency.group(1)) < 1000
    record = json.loads((out / "finetuning_data" / "tickets" / "split.json").read_text())
    assert record["seed"] == 0 and record["train_per_class"] == train_per_class
    assert set(record["counts"]["train"]) == CATEGORIES
    predictions = [json.loads(line) for line in (out / "new_tickets.predictions.jsonl").read_text().splitlines()]
    assert len(predictions) == 5 and all(row["label"] in CATEGORIES for row in predictions)
    assert (out / "router-onnx" / "model.onnx").is_file()
    return float(summary.group(1))


def test_ticket_routing_script_small_budgets(tmp_path: Path) -> None:
    """CI's variant of `run.sh --quick`: every step, tiny budgets."""
    budgets = {"PRETRAIN_STEPS": "30", "TRAIN_PER_CLASS": "20", "EPOCHS": "2"}
    stdout, _ = run_ticket_routing(tmp_path / "out", budgets, timeout=600)
    check_outputs(tmp_path / "out", stdout, train_per_class=20)
    for step in range(1, 9):
        assert f"] {step}/8 " in stdout


def test_ticket_routing_full_mode_runs_the_study_small_budgets(tmp_path: Path) -> None:
    """CI's variant of the full `run.sh`: every step, then the study, all four methods at one size and seed."""
    budgets = {
        "PRETRAIN_STEPS": "30",
        "TRAIN_PER_CLASS": "20",
        "EPOCHS": "1",
        "STUDY_SIZES": "10",
        "STUDY_SEEDS": "0",
        "STUDY_MIN_STEPS": "10",
    }
    out = tmp_path / "out"
    stdout, _ = run_ticket_routing(out, budgets, timeout=900, mode="")
    check_outputs(out, stdout, train_per_class=20)
    assert "] 9/9 the few-labels study" in stdout
    rows = [json.loads(line) for line in (out / "study" / "results.jsonl").read_text().splitlines()]
    assert sorted(row["method"] for row in rows) == ["electra", "mlm", "random", "tfidf"]
    assert all(row["size"] == "10" and row["train_examples"] == 100 and 0 <= row["macro_f1"] <= 100 for row in rows)
    assert all(row["epochs"] == 4 for row in rows if row["method"] != "tfidf")  # 10 updates of 32 from 100
    mlm_config = json.loads((out / "models" / "zh-compact-mlm" / "pretrain_config.json").read_text())
    assert mlm_config["electra_objective"] is False and mlm_config["num_train_steps"] == 30
    report = (out / "study" / "RESULTS.md").read_text()
    assert "| TF-IDF + LR |" in report and "10 / class" in report
    assert (out / "study" / "few_labels.png").stat().st_size > 10_000


@pytest.mark.example
def test_ticket_routing_quick(tmp_path: Path) -> None:
    """`run.sh --quick` as the README gives it: under 10 minutes on a 2-core CPU, and the router learns."""
    stdout, seconds = run_ticket_routing(tmp_path / "out", {}, timeout=900)
    accuracy = check_outputs(tmp_path / "out", stdout, train_per_class=500)
    assert seconds < 600, f"run.sh --quick took {seconds:.0f} s"
    assert accuracy > 25.0  # 10 balanced classes: chance is 10%
