#!/usr/bin/env bash
# Prepares what `make gpu-check` needs on a GPU machine that reaches no package registry and has no
# ../shared: everything goes into the ignored folder .gpu-check/ of this checkout (at most ~60 MiB, the
# device tool's carry limit is 64 MiB), to travel with it.
#
#   scripts/gpu_check_prepare.sh [SHARED] [PYTHON_VERSION]     (defaults: ../shared, 3.12)
#
#   .gpu-check/wheels/   hydra-core, omegaconf, antlr4, pycocotools, tflite (the schema), torchao, executorch (the XNNPACK
#                        quantizer for QAT), ruamel.yaml: the packages the GPU image lacks, for its Python
#   .gpu-check/shared/   a ../shared look-alike: Google's Keras 0.75_224 weights, the 1000 sample images
#                        re-encoded smaller (for the CUDA-vs-CPU eval: both sides read the same files),
#                        and 80 of them untouched (decode checks and the input-pipeline benchmark)
#
# Then, on the GPU machine:  make gpu-check   (or: python3 scripts/gpu_check.py)
set -euo pipefail
cd "$(dirname "$0")/.."
SHARED=${1:-../shared}
PYVER=${2:-3.12}
PY=${PYTHON:-$( [[ -x .venv/bin/python ]] && echo .venv/bin/python || echo python3 )}
OUT=.gpu-check
[[ -d $SHARED/data/imagenet-samples ]] || { echo "gpu_check_prepare: $SHARED/data/imagenet-samples is missing: pass the shared folder as the first argument" >&2; exit 2; }

rm -rf "$OUT/wheels" "$OUT/shared"
mkdir -p "$OUT/wheels"
# The versions this project is tested with (pyproject.toml); --no-deps: each dependency is named.
"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version "$PYVER" --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_24_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
    -d "$OUT/wheels" \
    hydra-core==1.3.2 omegaconf==2.3.0 "pycocotools>=2.0.8,<3" \
    torchao==0.18.0 executorch==1.5.1 ruamel.yaml "tflite>=2.18,<3" 2>&1 | grep -v "^WARNING: Location" || true
# antlr4 4.9.3 (what omegaconf 2.3 needs) is an sdist only: build its pure-Python wheel here.
if ! ls "$OUT"/wheels/antlr4_python3_runtime-* >/dev/null 2>&1; then
    "$PY" -m pip wheel -q --no-deps -w "$OUT/wheels" antlr4-python3-runtime==4.9.3 2>&1 | grep -v "^WARNING: Location" || true
fi

"$PY" - "$SHARED" "$OUT/shared" <<'EOF'
import shutil, sys
from pathlib import Path
from PIL import Image

shared, out = Path(sys.argv[1]), Path(sys.argv[2])
keras = "weights/keras-tfjs-mobilenet_v1_0.75_224"
shutil.copytree(shared / keras, out / keras)
src = shared / "data/imagenet-samples/val"
small, full = out / "data/imagenet-samples/val", out / "data/imagenet-samples-full/val"
files = sorted(src.glob("*/*"))
for i, f in enumerate(files):
    rel = f.relative_to(src)
    (small / rel).parent.mkdir(parents=True, exist_ok=True)
    with Image.open(f) as img:
        img = img.convert("RGB")
        scale = 224 / min(img.size)  # the shorter side to 224: the eval presets resize from there
        img = img.resize((max(1, round(img.width * scale)), max(1, round(img.height * scale))), Image.BILINEAR)
        img.save(small / rel, format="JPEG", quality=70)
    if i % 12 == 0 and len(list(full.glob("*/*"))) < 80:  # 80 originals, spread over the classes
        (full / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(f, full / rel)
print(f"gpu_check_prepare: {len(files)} re-encoded and {len(list(full.glob('*/*')))} original sample images")
EOF
du -sh "$OUT/wheels" "$OUT/shared"
du -sh "$OUT"
