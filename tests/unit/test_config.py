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
