#!/usr/bin/env bash
# Issue 21's GPU measurements in one run on a lent GPU machine (an H100 with 16 cores, no network),
# sized to fit one command's 10 minutes. From the repository root there:
#
#   bash bench/gpu_session.sh [STEP ...]        # steps: env tests score train lite2 cache (all)
#
# The machine has PyTorch, torchvision, timm, pyarrow and Pillow but not bincount's pydantic
# packages, and reaches no index: carry them as wheels in .whl/, and real ABID photos in
# .abid_carry/ (both ignored by git; see bench/README.md, "Measuring on a GPU machine"):
#
#   echo /.whl/ >> .git/info/exclude; echo /.abid_carry/ >> .git/info/exclude
#   python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_17_x86_64 -d .whl \
#       pydantic==2.14.3 pydantic_core==2.50.4 pydantic-settings==2.16.3 annotated-types==0.8.0 \
#       typing-inspection==0.4.5 python-dotenv==1.2.4
#   .venv/bin/python bench/carry_abid.py .abid_carry --max-mb 45   # ~660 photos, room for the rest
#
# Each step's output goes to $OUT/<step>.log (the device tool brings $OUT back) and each has
# its own time limit, so one slow step cannot cost the others theirs: 570 s at most in all, so
# one call with the tool's 600 s fits; a step cut short can run again alone.
set -u -o pipefail
cd "$(dirname "$0")/.."
OUT=${OUT:-/tmp/bincount-gpu}
mkdir -p "$OUT"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH="$PWD:/tmp/site" PYTHONUNBUFFERED=1
PHOTOS=.abid_carry
[ -d "$PHOTOS/bin-images" ] || PHOTOS=""  # synthetic bins then

photos() {  # the carried photos, each under $1 keys, or synthetic bins where none were carried
    if [ -n "$PHOTOS" ]; then echo "--photos $PHOTOS --copies $1"; fi
}

step() {  # step NAME LIMIT_SECONDS COMMAND...
    local name=$1 limit=$2 started=$SECONDS
    shift 2
    echo "== $name (at most ${limit} s): $*"
    timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
    echo "== $name: exit ${PIPESTATUS[0]} after $((SECONDS - started)) s" | tee -a "$OUT/$name.log"
}

run() {
    case $1 in
    env)
        step env 30 bash -c 'nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv;
            nproc; python3 -c "import torch, torchvision
from bincount.images.vision import has_image_codecs
print(torch.__version__, torchvision.__version__, torch.cuda.get_device_name(),
      \"image codecs:\", has_image_codecs())"' ;;
    tests)  # the device decoder on nvJPEG, its stream and event (skipped on CPU-only machines)
        step tests 60 python3 -m pytest -q -p no:cacheprovider --noconftest -o addopts= \
            tests/test_devicedecode.py ;;
    score)  # the bar: >= 0.85 of the bare ResNet-34 at 224 px, beside nvJPEG-only and Pillow-only
        # shellcheck disable=SC2046
        step score 150 python3 bench/score.py --device cuda --archs resnet34 --image-size 224 \
            --batch-size 256 --images 4096 --rounds 3 --host-shares auto,0,1 $(photos 6) ;;
    lite2)  # the gpu recipe's network at its size
        # shellcheck disable=SC2046
        step lite2 70 python3 bench/score.py --device cuda --archs tf_efficientnet_lite2 \
            --image-size 260 --batch-size 256 --images 2048 --rounds 2 --host-shares auto \
            $(photos 3) ;;
    train)  # ResNet-50 at 224 px eager against torch.compile; compile time apart
        step train 200 python3 bench/train.py --device cuda --only-gpu --gpu-archs resnet50 \
            --compile-modes off,default,reduce-overhead --steps 20 --rounds 2 ;;
    cache)  # the 224 px cache from a local folder on 16 cores: images/s, and the bucket on paper
        # shellcheck disable=SC2046
        step cache 60 python3 bench/cache.py --image-size 224 --workers 1,8,16 --rounds 2 \
            --manifest direct $(photos 4) ;;
    *)
        echo "unknown step $1 (env tests score lite2 train cache)" >&2
        return 2 ;;
    esac
}

steps=("$@")
[ ${#steps[@]} -gt 0 ] || steps=(env tests score train lite2 cache)  # the bars first
for name in "${steps[@]}"; do run "$name"; done
