"""Named training presets (``--recipe``) and the demo's: what each was measured to reach.

Pure data: ``bincount.model.config.TrainConfig`` resolves a recipe's values under the fields
given explicitly.
"""

from __future__ import annotations

from typing import Literal

RecipeName = Literal["abid-baseline", "cpu", "gpu", "probe", "real"]

# Named presets (``--recipe``): a config is its recipe's values, then the fields given
# explicitly. With no recipe, training picks "cpu" or "gpu" for the device it runs on
# (:meth:`TrainConfig.for_device`) and saves the choice in the model's config.
RECIPES: dict[str, dict] = {
    # The ABID challenge baseline, exactly: ResNet-34 from scratch at 224 px, SGD lr 0.1,
    # momentum 0.9, weight decay 1e-4, batch 128, 40 epochs, lr x 0.1 every 10, horizontal
    # flips only (no early stop, no test-time flips).
    "abid-baseline": {
        "arch": "resnet34",
        "pretrained": False,
        "loss": "ce",
        "image_size": 224,
        "epochs": 40,
        "batch_size": 128,
        "optimizer": "sgd",
        "lr": 0.1,
        "momentum": 0.9,
        "weight_decay": 1e-4,
        "schedule": "step",
        "step_epochs": 10,
        "step_gamma": 0.1,
        "warmup_epochs": 0,
        "patience": 40,
        "augment": "hflip",
        "test_time_flips": False,
    },
    # What 2 CPU cores train in minutes: 20,000 synthetic bins in a 20-minute `bincount train`
    # (image cache and calibration included; README "The CPU recipe"). ImageNet
    # EfficientNet-Lite0 (bundled weights) at 112 px: 5x slower per image than
    # mobilenet_v3_small from scratch here (60 against 290 images/s), but on 5,000 bins two
    # epochs of it reached 65 % validation accuracy where five of mobilenet reached 43 %.
    # Softmax rather than CORAL: its probabilities came out calibrated (ECE 0.07 against 0.19)
    # and found wrong records better (bench/review.py: average precision 0.57-0.72 against
    # 0.48-0.49).
    "cpu": {
        "arch": "tf_efficientnet_lite0",
        "pretrained": True,
        "loss": "ce",
        "image_size": 112,
        "epochs": 30,
        "batch_size": 64,
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 0.01,
        "schedule": "cosine",
        "warmup_epochs": 0.2,
        "patience": 8,
        "max_minutes": 14.0,
        "augment": "count_preserving",
        "test_time_flips": True,
    },
    # ImageNet EfficientNet-Lite2 (bundled weights) fine-tuned at its native 260 px, softmax
    # head (calibrated probabilities for the review queue), AdamW with a one-epoch warmup and
    # cosine decay over 30 epochs. On an H100: 2,600 images/s, 99.8 % test accuracy on 20,000
    # synthetic bins after 22 epochs (bench/README.md "Recipes end to end on the GPU").
    "gpu": {
        "arch": "tf_efficientnet_lite2",
        "pretrained": True,
        "loss": "ce",
        "image_size": 260,
        "epochs": 30,
        "batch_size": 128,
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 0.05,
        "schedule": "cosine",
        "warmup_epochs": 1,
        "patience": 6,
        "augment": "count_preserving",
        "test_time_flips": True,
    },
    # What a few hundred real labelled bins can teach: the ImageNet EfficientNet-Lite0 features
    # frozen (a linear probe) under an ordinal head, at 224 px. On the 1,015 real 0-5 bins of
    # ../shared/abid (660 to train) it beat the majority class on 3 of 3 re-splits where full
    # fine-tuning at any lr tried stayed at or below it, and softmax probes on the same
    # features lost to it too (bench/README.md "finetune_real.py").
    "probe": {
        "arch": "tf_efficientnet_lite0",
        "pretrained": True,
        "backbone_lr_scale": 0.0,
        "loss": "ordinal",
        "image_size": 224,
        "epochs": 30,
        "batch_size": 32,
        "optimizer": "adamw",
        "lr": 3e-3,
        "weight_decay": 0.05,
        "schedule": "cosine",
        "warmup_epochs": 0.5,
        "patience": 30,
        "augment": "count_preserving",
        "test_time_flips": True,
    },
    # Every real label of ../shared/abid (two sources, 6,704 bins of 0-5 items) on 2 CPU
    # cores: two models averaged (``ensemble``, seeds 0 and 1), each the ImageNet
    # EfficientNet-Lite0 at 160 px, first one epoch on 8,000 synthetic bins (exact labels:
    # counting before looks), then fine-tuned on the real bins with a quarter of every batch
    # still synthetic bins (``synthetic_mix``: 16 of 64, a fresh draw each epoch), all but its
    # stem and first two blocks (frozen, run on every batch without gradients: the backward
    # pass, the costly part at full resolution, stops above them; cache_trunk false:
    # brightness and contrast too). Softmax with label smoothing: some records are wrong. 5
    # real epochs: every longer run had its lowest validation loss at the third, then
    # over-fitted. 16 minutes' budget per model, synthetic and real epochs together (about 15
    # used on a quiet machine), so that a slower one stops within 40 minutes. Measured
    # 2026-12-07 on 2 CPU cores, all 5,310 train bins: 46.8 % accuracy (RMSE 1.043) on the 725
    # held-out test bins and 43.2 % (RMSE 1.027) on validation, one run; the recipe before the
    # mix (two synthetic epochs, then real bins only) 43.4-46.1 % on test and
    # 41.3-41.6 % on validation in three runs (majority class 26.6 %, 1.340). 37.2 min wall and
    # 3.91 GB peak RSS before the mix on a quiet host (675 steps a model now, 660 then; 3.65 GB
    # measured with the mix).
    # bench/README.md "Real bins": the variants, the learning curve.
    "real": {
        "arch": "tf_efficientnet_lite0",
        "pretrained": True,
        "frozen_blocks": 2,
        "cache_trunk": False,
        "loss": "ce",
        "label_smoothing": 0.1,
        "image_size": 160,
        "epochs": 5,
        "batch_size": 64,
        "optimizer": "adamw",
        "lr": 1e-3,
        "weight_decay": 0.05,
        "schedule": "cosine",
        "warmup_epochs": 0.3,
        "patience": 5,
        "max_minutes": 16.0,
        "augment": "count_preserving",
        "test_time_flips": True,
        "ensemble": 2,
        "synthetic_bins": 8000,
        "synthetic_epochs": 1,
        "synthetic_mix": 0.25,
    },
}

# The demo (flows/demo.py, bench/review.py): the CPU recipe's schedule on the small network from
# scratch, 5x faster per image, so every bin scores quickly. Bounded by epochs, not minutes, so
# it learns the same on a busy machine as on a quiet one: 19 epochs is what its earlier 6.5-minute
# budget came to on 2 quiet cores (docs/operators/drift.md), about 6.5 minutes for 6,000 bins.
DEMO_RECIPE = {
    "recipe": "cpu",
    "arch": "mobilenet_v3_small",
    "pretrained": False,
    "lr": 3e-3,
    "weight_decay": 1e-4,
    "warmup_epochs": 0.5,
    "epochs": 19,
    "max_minutes": None,
}
