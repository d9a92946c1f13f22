"""Entry-point glue (elis.cli): strict keys, one-line user errors, FAILED.txt, offline defaults."""

from __future__ import annotations

import logging
import os

import pytest

from elis import cli
from elis.cli import UserError, check_overrides, precheck, run_entry


@pytest.mark.parametrize("override,key,valid", [
    ("+sched.aging_factr=0.5", "sched.aging_factr", "aging_tokens_per_s"),
    ("+predictor.repredict_evry=25", "predictor.repredict_evry", "encoder"),
    ("+num_request=5", "num_request", "num_requests"),
    ("+predictor.encoder.poolng=cls", "predictor.encoder.poolng", "pooling"),
])
def test_unknown_added_key_is_rejected_with_valid_keys(override, key, valid):
    with pytest.raises(UserError) as e:
        check_overrides([override], "run_experiment")
    msg = str(e.value)
    assert repr(key) in msg and valid in msg and override in msg and "\n" not in msg


@pytest.mark.parametrize("override", [
    "+wandb.project=elis",          # below a null leaf of the primary config
    "+workload.start_row=3",        # a key of a sibling option (azure_conv) the code reads
    "++sched.aging_factr=0.5",      # forced addition
    "num_requests=5",               # not an addition
])
def test_known_or_forced_additions_pass(override):
    check_overrides([override], "run_experiment")


def test_precheck_gives_one_line_and_exit_2(capsys):
    with pytest.raises(SystemExit) as e:
        precheck("run_experiment", ["sched.aging_factr=0.5"])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and err.startswith("error: unknown config key 'sched.aging_factr'")
    assert "aging_tokens_per_s" in err
    with pytest.raises(SystemExit):
        precheck("run_experiment", ["sched=isrft"])
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "sched/isrft" in err and "isrtf_continuous" in err
    precheck("run_experiment", ["num_requests=5", "sched=fcfs"])  # valid: returns
    precheck("run_experiment", ["-m", "sched.aging_factr=0.5"])  # flags: left to Hydra


class _Cfg:
    def __init__(self, out):
        self.paths = type("P", (), {"output_dir": str(out)})()


def test_run_entry_user_error_writes_failed_and_exits_2(tmp_path, capsys, monkeypatch):
    monkeypatch.delenv("HYDRA_FULL_ERROR", raising=False)

    def task(cfg):
        raise UserError("num_requests=0 is not allowed")

    with pytest.raises(SystemExit) as e:
        run_entry(task, _Cfg(tmp_path))
    assert e.value.code == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: num_requests=0 is not allowed")
    failed = (tmp_path / "FAILED.txt").read_text()
    assert failed.startswith("FAILED: num_requests=0 is not allowed") and "Traceback" in failed


def test_run_entry_full_error_and_bugs_propagate(tmp_path, monkeypatch):
    monkeypatch.setenv("HYDRA_FULL_ERROR", "1")
    with pytest.raises(UserError):
        run_entry(lambda cfg: (_ for _ in ()).throw(UserError("bad")), _Cfg(tmp_path))
    monkeypatch.delenv("HYDRA_FULL_ERROR")
    with pytest.raises(ZeroDivisionError):
        run_entry(lambda cfg: 1 / 0, _Cfg(tmp_path))
    assert "ZeroDivisionError" in (tmp_path / "FAILED.txt").read_text()
    assert run_entry(lambda cfg: 7, _Cfg(tmp_path)) == 7


def test_one_line_unwraps_key_and_file_errors():
    assert cli.one_line(KeyError("split='x' not in d")) == "split='x' not in d"
    assert cli.one_line(FileNotFoundError("no dataset at d;\n build it")) == "no dataset at d; build it"
    assert cli.one_line(TypeError("x")) == "TypeError: x"


def test_prepare_environment_offline_when_hub_unreachable(monkeypatch):
    for k in ("HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE", "WANDB_MODE"):
        monkeypatch.delenv(k, raising=False)
    set_now = cli.prepare_environment(probe=lambda: False)
    assert os.environ["HF_HUB_OFFLINE"] == "1" and os.environ["TRANSFORMERS_OFFLINE"] == "1"
    assert set_now["WANDB_MODE"] == "offline"
    monkeypatch.setenv("HF_HUB_OFFLINE", "0")  # the user's choice is kept, the probe not run
    monkeypatch.delenv("TRANSFORMERS_OFFLINE")
    cli.prepare_environment(probe=lambda: pytest.fail("probed"))
    assert os.environ["HF_HUB_OFFLINE"] == "0" and os.environ["TRANSFORMERS_OFFLINE"] == "0"


def test_missing_model_offline_fails_at_once_naming_the_field(monkeypatch, tmp_path):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(UserError) as e:
        cli.ensure_model_available("predictor.encoder.model_name", "BAAI/bge-base-en-v1.5")
    msg = str(e.value)
    assert "predictor.encoder.model_name='BAAI/bge-base-en-v1.5'" in msg and "local" in msg
    cli.ensure_model_available("predictor.encoder.model_name", str(tmp_path))  # a folder: fine


def test_line_progress_logs_plain_periodic_lines(caplog):
    from elis.progress import LineProgress

    t = [0.0]
    p = LineProgress(range(4), desc="embed", unit="batch", interval_s=10.0, clock=lambda: t[0])
    with caplog.at_level(logging.INFO, logger="elis.progress"):
        for _ in p:
            t[0] += 6.0  # 6, 12 (log), 18, 24 (log), then close (log)
    lines = [r.getMessage() for r in caplog.records]
    # the last update logged 4/4 already: close() does not repeat it
    assert lines == ["embed: 2/4 batch (50%), 0.2 batch/s, 12 s", "embed: 4/4 batch (100%), 0.2 batch/s, 24 s"]
    caplog.clear()
    t[0] = 0.0
    with caplog.at_level(logging.INFO, logger="elis.progress"):
        for _ in LineProgress(range(3), desc="read", unit="pairs", interval_s=10.0, clock=lambda: t[0]):
            t[0] += 4.0  # 4, 8, 12 (log at 3/3), no repeat at close
    assert [r.getMessage() for r in caplog.records] == ["read: 3/3 pairs (100%), 0.2 pairs/s, 12 s"]


def test_group_additions_are_not_keys():
    check_overrides(["+preset=compare", "+cluster=ray"], "run_experiment")


def test_data_overrides_hint_repeats_the_data_group_and_its_overrides(tmp_path):
    """A hint to build/train a dataset must name the config that builds it, not its folder name."""
    from elis.config import data_overrides
    from elis.experiments.run import load_samples

    task = ["sched=isrtf", "data=jsonl", "data.source.paths=/in put.jsonl", "+data.extra=1",
            "data.name=mine", "num_requests=5"]
    assert data_overrides("mine", task, "jsonl") == (
        "data=jsonl 'data.source.paths=/in put.jsonl' +data.extra=1 data.name=mine")
    assert data_overrides("embedded", [], "embedded") == "data=embedded"
    # Outside a Hydra app there is no HydraConfig: fall back to the folder name.
    assert data_overrides("embedded") == "data=embedded"
    with pytest.raises(FileNotFoundError, match=r"build_dataset.py data=nx`"):
        load_samples(tmp_path / "nx", "test")
