#!/usr/bin/env bash
# One prepared check of the CUDA side, for a GPU lent for a few minutes: the `cuda` tests and the
# GPU throughput benchmark, each under its own time budget (8 minutes at most in all), then one
# Markdown report with the machine line, every figure and each part's duration.
#
#   bash benchmarks/device_check.sh [OUT_DIR]      # OUT_DIR: default $OUT, else logs/device_check/<UTC time>
#   bash benchmarks/device_check.sh --budgets      # the declared budgets, one "part seconds" line each
#
# Parts (budgets in seconds; DEVICE_CHECK_BUDGET_<PART> overrides one, within the 8 minutes):
#   preflight   machine line (GPU, driver, torch, CUDA, cuDNN, CPU) and the Python packages the tests need
#   tests       python -m pytest -m cuda (tests/test_cuda.py and the other cuda-marked tests)
#   throughput  benchmarks/model_throughput.py --device cuda --compile: bf16 training and fused inference
#               of convnext_tiny, convnext_dcls_tiny, convnext_dcls_gauss_tiny, channels_last, eager and
#               compiled side by side
# Without a CUDA device (torch.cuda.is_available() is False) the GPU parts record "skipped: no CUDA
# device" and the report is still written: tests/test_device_check.py runs it so on the CPU.
# Files in OUT_DIR: device_check.md (the report), machine.txt, tests.log, throughput.md, throughput.log.
set -uo pipefail

cd "$(dirname "$0")/.." || exit 2
PYTHON=${PYTHON:-python3}
TOTAL_LIMIT=480  # seconds: the check must fit 8 minutes of a lease
KILL_GRACE=5     # seconds a part may take after its budget to stop (SIGTERM, then SIGKILL)
PARTS=(preflight tests throughput)
declare -A BUDGET=(
    [preflight]=${DEVICE_CHECK_BUDGET_PREFLIGHT:-30}    # one Python start with torch and CUDA initialisation
    [tests]=${DEVICE_CHECK_BUDGET_TESTS:-180}           # ~55 tests, one torch.compile of convnext_dcls_tiny, one fit
    [throughput]=${DEVICE_CHECK_BUDGET_THROUGHPUT:-245} # six cold compilations (3 models x training, inference), timing
)
declare -A DESCRIPTION=(
    [preflight]="preflight: machine line, packages"
    [tests]="tests: python -m pytest -m cuda"
    [throughput]="throughput: model_throughput.py --device cuda --compile"
)

check_budgets() {
    local total=0 part
    for part in "${PARTS[@]}"; do
        if ! [[ ${BUDGET[$part]} =~ ^[0-9]+([.][0-9]+)?$ ]]; then
            echo "device_check: the budget of $part must be a number of seconds, got '${BUDGET[$part]}'" >&2
            return 2
        fi
        total=$(awk -v a="$total" -v b="${BUDGET[$part]}" -v g="$KILL_GRACE" 'BEGIN { print a + b + g }')
    done
    if awk -v t="$total" -v l="$TOTAL_LIMIT" 'BEGIN { exit !(t > l) }'; then
        echo "device_check: the budgets plus ${KILL_GRACE} s of grace each come to ${total} s, over the ${TOTAL_LIMIT} s limit" >&2
        return 2
    fi
}

check_budgets || exit 2
if [ "${1:-}" = "--budgets" ]; then
    for part in "${PARTS[@]}"; do echo "$part ${BUDGET[$part]}"; done
    echo "grace $KILL_GRACE"
    echo "limit $TOTAL_LIMIT"
    exit 0
fi
if [ $# -gt 1 ]; then
    echo "usage: bash benchmarks/device_check.sh [OUT_DIR | --budgets]" >&2
    exit 2
fi

OUT_DIR=${1:-${OUT:-logs/device_check/$(date -u +%Y%m%d-%H%M%S)}}
mkdir -p "$OUT_DIR" || exit 2
OUT_DIR=$(cd "$OUT_DIR" && pwd)
echo "device_check: writing into $OUT_DIR" >&2
# The tests compile too: from an empty cache every check, so that a rerun behaves as the first
# (the benchmark gives itself a new cache anyway, to time cold compilations).
TORCHINDUCTOR_CACHE_DIR=$(mktemp -d)
TRITON_CACHE_DIR="$TORCHINDUCTOR_CACHE_DIR/triton"
export TORCHINDUCTOR_CACHE_DIR TRITON_CACHE_DIR PYTHONUNBUFFERED=1
trap 'rm -rf "$TORCHINDUCTOR_CACHE_DIR"' EXIT

declare -A STATUS SECONDS_TAKEN

now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$2" 'BEGIN { printf "%.1f", b - a }'; }

# run_part PART COMMAND...: COMMAND under the part's budget; records its status and duration.
run_part() {
    local part=$1 start rc
    shift
    echo "device_check: $part (budget ${BUDGET[$part]} s) ..." >&2
    start=$(now)
    timeout --kill-after="$KILL_GRACE" "${BUDGET[$part]}" "$@"
    rc=$?
    SECONDS_TAKEN[$part]=$(elapsed "$start" "$(now)")
    case $rc in
        0) STATUS[$part]="ok" ;;
        124 | 137) STATUS[$part]="timed out after its ${BUDGET[$part]} s" ;;
        *) STATUS[$part]="failed (exit status $rc)" ;;
    esac
}

skip_part() {
    STATUS[$1]="skipped: $2"
    SECONDS_TAKEN[$1]=0.0
}

CHECK_START=$(now)

# ---------------------------------------------------------------- preflight
PREFLIGHT=$(cat <<'PY'
import importlib.util
import subprocess

import torch

from dcls_zoo.machine import machine_description

cuda = torch.cuda.is_available()
print(f"cuda: {'yes' if cuda else 'no'}")
if cuda:
    try:
        driver = subprocess.run(["nvidia-smi", "--query-gpu=driver_version", "--format=csv,noheader"],
                                capture_output=True, text=True, timeout=20).stdout.split("\n")[0].strip()
    except (OSError, subprocess.SubprocessError):
        driver = ""
    properties = torch.cuda.get_device_properties(0)
    print(f"machine: GPU {torch.cuda.get_device_name(0)} ({properties.total_memory / 2**30:.0f} GiB, "
          f"compute capability {properties.major}.{properties.minor}, {torch.cuda.device_count()} visible); "
          f"driver {driver or 'unknown (no nvidia-smi)'}; torch {torch.__version__}; CUDA {torch.version.cuda}; "
          f"cuDNN {torch.backends.cudnn.version()}; {machine_description('cpu')}")
else:
    print(f"machine: no CUDA device (torch.cuda.is_available() is False); {machine_description('cpu')}")
needed = ["lightning", "timm", "torchmetrics", "jsonargparse", "docstring_parser", "typeshed_client", "safetensors",
          "huggingface_hub", "matplotlib", "tensorboard", "pytest", "yaml"]
missing = [name for name in needed if importlib.util.find_spec(name) is None]
print(f"missing packages: {', '.join(missing) if missing else 'none'}")
PY
)
run_part preflight "$PYTHON" -c "$PREFLIGHT" >"$OUT_DIR/machine.txt" 2>&1
MACHINE=$(sed -n 's/^machine: //p' "$OUT_DIR/machine.txt")
MISSING=$(sed -n 's/^missing packages: //p' "$OUT_DIR/machine.txt")
if grep -q '^cuda: yes' "$OUT_DIR/machine.txt"; then
    HAS_CUDA=1
else
    HAS_CUDA=0
    [ "${STATUS[preflight]}" = ok ] && NO_GPU_REASON="no CUDA device" || NO_GPU_REASON="the preflight did not finish"
fi

# ---------------------------------------------------------------- the GPU parts
if [ "$HAS_CUDA" = 1 ]; then
    run_part tests "$PYTHON" -m pytest -m cuda -q -rfEs -p no:cacheprovider tests >"$OUT_DIR/tests.log" 2>&1
    run_part throughput "$PYTHON" benchmarks/model_throughput.py --device cuda --compile --repeats 10 \
        >"$OUT_DIR/throughput.md" 2>"$OUT_DIR/throughput.log"
else
    for part in tests throughput; do skip_part "$part" "$NO_GPU_REASON"; done
fi

# ---------------------------------------------------------------- the report
TOTAL_SECONDS=$(elapsed "$CHECK_START" "$(now)")
BUDGETED=0
for part in "${PARTS[@]}"; do BUDGETED=$(awk -v a="$BUDGETED" -v b="${BUDGET[$part]}" 'BEGIN { print a + b }'); done
COMMIT=$(git rev-parse --short HEAD 2>/dev/null || echo unknown)
if [ "$COMMIT" != unknown ] && [ -n "$(git status --porcelain --untracked-files=no 2>/dev/null)" ]; then
    COMMIT="$COMMIT (with uncommitted changes)"
fi

tests_summary() {  # pytest's short summary and its last line, else the end of its log
    if [ ! -s "$OUT_DIR/tests.log" ]; then
        echo "No test log: ${STATUS[tests]}."
        return
    fi
    local summary
    summary=$(grep -E '^(FAILED|ERROR|SKIPPED|XFAIL|XPASS) |^=+ .*(passed|failed|skipped|error).* =+$' "$OUT_DIR/tests.log")
    if [ -n "$summary" ]; then
        printf '```\n%s\n```\n' "$summary"
    else
        printf 'The end of tests.log:\n\n```\n%s\n```\n' "$(tail -n 25 "$OUT_DIR/tests.log")"
    fi
}

{
    echo "# Device check"
    echo
    echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $COMMIT: \`bash benchmarks/device_check.sh\`."
    echo
    echo "Machine: ${MACHINE:-unknown (the preflight did not finish; see machine.txt)}."
    echo
    echo "Python packages missing: ${MISSING:-unknown}."
    echo
    echo "Took ${TOTAL_SECONDS} s; the parts' budgets: ${BUDGETED} s (+ ${KILL_GRACE} s each to stop), limit ${TOTAL_LIMIT} s."
    echo
    echo "| part | budget s | took s | status |"
    echo "|---|---:|---:|---|"
    for part in "${PARTS[@]}"; do
        echo "| ${DESCRIPTION[$part]} | ${BUDGET[$part]} | ${SECONDS_TAKEN[$part]} | ${STATUS[$part]} |"
    done
    echo
    echo "## Tests (python -m pytest -m cuda)"
    echo
    if [ "$HAS_CUDA" = 1 ]; then tests_summary; else echo "${STATUS[tests]}."; fi
    echo
    echo "## Throughput (benchmarks/model_throughput.py --device cuda --compile --repeats 10)"
    echo
    if [ "$HAS_CUDA" != 1 ]; then
        echo "${STATUS[throughput]}."
    elif [ -s "$OUT_DIR/throughput.md" ]; then
        cat "$OUT_DIR/throughput.md"
        [ "${STATUS[throughput]}" = ok ] || printf '\n(%s: the tables above are what it printed before; see throughput.log.)\n' \
            "${STATUS[throughput]}"
    else
        printf '%s; the end of throughput.log:\n\n```\n%s\n```\n' "${STATUS[throughput]}" \
            "$(tail -n 25 "$OUT_DIR/throughput.log" 2>/dev/null)"
    fi
} >"$OUT_DIR/device_check.md"

echo "device_check: report $OUT_DIR/device_check.md (${TOTAL_SECONDS} s)" >&2
for part in "${PARTS[@]}"; do
    case ${STATUS[$part]} in ok | skipped:*) ;; *) exit 1 ;; esac
done
exit 0
