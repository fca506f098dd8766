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
