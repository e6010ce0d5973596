#!/usr/bin/env bash
# Every measurement and test in this project that needs a CUDA GPU, written into one folder, so
# that the GPU rows of benchmarks/README.md can be filled in from one run.
#
#   benchmarks/run_gpu_suite.sh RESULTS_DIR [STAGE ...]
#
# Stages (default: all, in this order; each stays under ten minutes on an H100, so a machine
# lent for short jobs can run them one or two at a time):
#   tests     the CUDA tests (Testing/test_inference_cuda.py, Testing/test_model_blocks.py)
#   kernels   decoder stage timings (eager and compiled), the depthwise-convolution pick and
#             the network's throughput by window batch and decoder chunk (also with the
#             `shifted` depthwise convolution, the eager-CUDA alternative)
#   predict   section (a): vit_b on 300 x 512 x 512, eager, beside nnU-Net v2's predictor
#   compiled  section (a) again with MASKSAM_COMPILE=1 (about two minutes of compiling first),
#             beside nnU-Net as well
#   memory    the 600 x 512 x 512 memory run with resampling
#   training  section (c): training steps per second
#
# Needs: a CUDA GPU; MaskSAM importable (`pip install .`, or PYTHONPATH set to the repository);
# for `predict` and `compiled`, nnU-Net v2 (`pip install nnunetv2==2.8.1`, not a MaskSAM dependency; without
# it, or with one of its own dependencies missing, the MaskSAM row is still written). Run from
# anywhere; results are JSON and text files.
set -euo pipefail

if [ $# -lt 1 ]; then
    awk 'NR > 1 && /^#/ { sub(/^# ?/, ""); print; next } NR > 1 { exit }' "$0"
    exit 2
fi
RESULTS=$1
shift
STAGES=${*:-tests kernels predict compiled memory training}
REPO=$(cd "$(dirname "$0")/.." && pwd)
PYTHON=${PYTHON:-python3}
mkdir -p "$RESULTS"
RESULTS=$(cd "$RESULTS" && pwd)
cd "$REPO"
export PYTHONPATH="$REPO${PYTHONPATH:+:$PYTHONPATH}" PYTHONUNBUFFERED=1

for stage in $STAGES; do
    case $stage in
        tests | kernels | predict | compiled | memory | training) ;;
        *) echo "run_gpu_suite: unknown stage '$stage' (tests, kernels, predict, compiled, memory, training)" >&2
           exit 2 ;;
    esac
done
"$PYTHON" - <<'EOF' || { echo "run_gpu_suite: no CUDA GPU visible to PyTorch; nothing measured" >&2; exit 1; }
import sys, torch
if not torch.cuda.is_available():
    sys.exit(1)
print(f"run_gpu_suite: {torch.cuda.get_device_name(0)}, torch {torch.__version__}, CUDA {torch.version.cuda}")
EOF

masksam() { "$PYTHON" -m MaskSAMCore "$@"; }
# nnU-Net usable for the comparison, or the reason it is not (a missing dependency of its own).
nnunet_problem() {
    "$PYTHON" -c "from MaskSAMCore.inference.nnunet_compare import nnunet_problem; print(nnunet_problem() or '')"
}

run_stage() {
    case $1 in
        tests)
            "$PYTHON" -m pytest -q -p no:cacheprovider Testing/test_inference_cuda.py Testing/test_model_blocks.py \
                2>&1 | tee "$RESULTS/cuda_tests.txt"
            ;;
        kernels)
            "$PYTHON" benchmarks/decoder_stages.py --device cuda --patches 8 --bf16 \
                | tee "$RESULTS/decoder_stages_eager.jsonl"
            "$PYTHON" benchmarks/decoder_stages.py --device cuda --patches 8 --bf16 --compile \
                | tee "$RESULTS/decoder_stages_compiled.jsonl"
            "$PYTHON" benchmarks/depthwise_conv.py --device cuda --patches 8 --bf16 \
                | tee "$RESULTS/depthwise_conv.jsonl"
            "$PYTHON" benchmarks/model_throughput.py --preset vit_b --batches 8 16 --decoder-chunks 2 8 \
                | tee "$RESULTS/network_throughput.jsonl"
            # The whole eager network with the previous eager-CUDA depthwise pick, to settle (e).
            "$PYTHON" benchmarks/model_throughput.py --preset vit_b --batches 8 --decoder-chunks 2 8 \
                --depthwise shifted \
                | tee "$RESULTS/network_throughput_shifted.jsonl"
            ;;
        predict | compiled)
            # Both beside nnU-Net in the same process: the issue's target compares one run.
            compare=()
            problem=$(nnunet_problem)
            if [ -z "$problem" ]; then
                compare=(--compare-nnunet)
            else
                echo "run_gpu_suite: no nnU-Net comparison ($problem); MaskSAM row only"
            fi
            if [ "$1" = compiled ]; then
                MASKSAM_COMPILE=1 masksam benchmark --preset vit_b --shape 300 512 512 --classes 16 "${compare[@]}" \
                    --output "$RESULTS/vit_b_300x512x512_compiled.json"
            else
                masksam benchmark --preset vit_b --shape 300 512 512 --classes 16 "${compare[@]}" \
                    --output "$RESULTS/vit_b_300x512x512_eager.json"
            fi
            ;;
        memory)
            masksam benchmark --preset vit_b --shape 600 512 512 --classes 16 --resample \
                --output "$RESULTS/vit_b_600x512x512_resample.json"
            ;;
        training)
            "$PYTHON" benchmarks/bench_training.py --preset vit_b --batch-size 2 --classes 16 \
                | tee "$RESULTS/vit_b_training.json"
            ;;
    esac
}

# A failing stage does not stop the others: a short GPU lease should measure all it can.
failed=()
for stage in $STAGES; do
    echo "run_gpu_suite: stage $stage"
    ( set -euo pipefail; run_stage "$stage" ) || failed+=("$stage")
done
echo "run_gpu_suite: results in $RESULTS"
if [ ${#failed[@]} -gt 0 ]; then
    echo "run_gpu_suite: failed stages: ${failed[*]}" >&2
    exit 1
fi
