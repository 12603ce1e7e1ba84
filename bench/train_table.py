"""The tables bench/train.py prints: peak memory per cache size, training images/s per device,
network and compile mode, and ResNet-50 against NVIDIA's figure scaled to the card."""

from __future__ import annotations

import torch

GOAL_MEMORY = 1.5
ABID_TRAIN_IMAGES = 324_735  # the challenge's counting training split
NVIDIA_RESNET50_A100 = 2470  # images/s, AMP + DALI, NVIDIA's published training figure
# reduce-overhead records its CUDA graphs over the first calls, and backward compiles at the
# first backward: the compile seconds are these steps' time less as many steady steps.
WARMUP_STEPS = 3


def print_memory(memory: list[dict], args, sizes: list[int]) -> float:
    """The memory table; the ratio of the largest case's peak to the smallest's."""
    memory_ratio = memory[-1]["peak_rss_mb"] / memory[0]["peak_rss_mb"]
    print()
    print(
        f"Peak memory of one training epoch + one validation pass ({args.memory_arch}, "
        f"{args.memory_image_size} px, batch {args.memory_batch_size}, CPU, fresh process each)"
    )
    print(
        f"{'cached images':>14}{'cache MB':>10}{'RSS after load MB':>19}{'peak RSS MB':>13}"
        f"{'images/s':>10}{'data wait':>11}{'stacked, load only MB':>23}"
    )
    for case in memory:
        print(
            f"{case['images']:>14,}{case['cache_mb']:>10.0f}{case['setup_rss_mb']:>19.0f}"
            f"{case['peak_rss_mb']:>13.0f}{case['images_per_second']:>10.1f}"
            f"{100 * case['data_wait_share']:>10.1f}%{case['stacked_rss_mb']:>23.0f}"
        )
    stacked_ratio = memory[-1]["stacked_rss_mb"] / memory[0]["stacked_rss_mb"]
    print(
        f"peak RSS {sizes[-1]:,} / {sizes[0]:,}: {memory_ratio:.3f}   goal <= {GOAL_MEMORY}"
        f"   ({sizes[-1] / sizes[0]:.0f}x the images; the stacked load before: "
        f"{stacked_ratio:.3f})"
    )
    return memory_ratio


def print_training(lines: list[tuple], args) -> None:
    """The throughput table: a row per device, network and compile mode."""
    print()
    print(
        f"Training images/s: real data path against tensors already on the device "
        f"({args.steps} steps x {args.rounds} rounds alternating sides and compile modes, "
        f"median, {torch.get_num_threads()} CPU threads). compile s: the first {WARMUP_STEPS} "
        f"steps' time less {WARMUP_STEPS} steady steps; vs off: real path against mode off's"
    )
    print(
        f"{'device':<8}{'arch':<20}{'mode':<28}{'px':>5}{'batch':>7}{'compile s':>11}"
        f"{'on device':>11}{'real path':>11}{'ratio':>8}{'vs off':>8}{'data wait':>11}"
        f"{'ABID epoch':>12}"
    )
    if any(device == "cuda" for device, *_ in lines):
        print(f"cuda: {torch.cuda.get_device_name()}, bf16 autocast, channels_last")
    for device, line, px, batch in lines:
        off = next(
            (
                o
                for d, o, *_ in lines
                if d == device and o["arch"] == line["arch"] and o["mode"] == "off"
            ),
            None,
        )
        versus = f"{line['real'] / off['real']:.3f}" if off else "-"
        epoch_minutes = ABID_TRAIN_IMAGES / line["real"] / 60
        print(
            f"{device:<8}{line['arch']:<20}{line['mode']:<28}{px:>5}{batch:>7}"
            f"{line['compile_seconds']:>11.1f}{line['memory']:>11.1f}{line['real']:>11.1f}"
            f"{line['real'] / line['memory']:>8.3f}{versus:>8}"
            f"{100 * line['wait_share']:>10.1f}%{_duration(epoch_minutes):>12}"
        )


def print_gpu_gap(gpu: list[dict], factors: list[float]) -> None:
    """ResNet-50's real-path rate per mode against NVIDIA's A100 figure scaled to the card."""
    low, high = min(factors), max(factors)
    for line in gpu:
        if line["arch"] != "resnet50":
            continue
        print(
            f"resnet50 {line['mode']}: {line['real']:.0f} images/s through the real path, "
            f"{line['real'] / (NVIDIA_RESNET50_A100 * high):.2f}-"
            f"{line['real'] / (NVIDIA_RESNET50_A100 * low):.2f} of the hardware-scaled figure"
        )
    if any(line["arch"] == "resnet50" for line in gpu):
        print(
            f"  hardware-scaled figure: NVIDIA's {NVIDIA_RESNET50_A100} images/s (ResNet-50, "
            f"A100, AMP + DALI) x {low:g}-{high:g} (--h100-over-a100, an H100's rate over an "
            f"A100's: assumed, not measured) = {NVIDIA_RESNET50_A100 * low:,.0f}-"
            f"{NVIDIA_RESNET50_A100 * high:,.0f} images/s on {torch.cuda.get_device_name()}"
        )
        fastest = max((g for g in gpu if g["arch"] == "resnet50"), key=lambda g: g["real"])
        print(f"  fastest resnet50 mode: {fastest['mode']}")


def _duration(minutes: float) -> str:
    return f"{minutes / 60:.1f} h" if minutes >= 120 else f"{minutes:.1f} min"
