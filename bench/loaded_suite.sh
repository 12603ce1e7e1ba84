#!/usr/bin/env bash
# The test suite with every core kept busy beside it: no test may depend on how fast the
# machine is (issue 29). Starts one CPU hog per core (stress-ng where installed, else Python
# busy loops), runs the tests, stops the hogs however the run ends, and prints the pass count
# and the wall time.
#
#   bench/loaded_suite.sh                          # make test: lint, then the suite's own workers
#   bench/loaded_suite.sh -n 0                     # one process (pytest arguments after the script)
#   bench/loaded_suite.sh -n 0 tests/test_lease.py # a few files only
#   HOGS=4 bench/loaded_suite.sh                   # more hogs than the default, one per core
#
# With arguments it runs `.venv/bin/python -m pytest ARGS`; without, `make test`.
set -uo pipefail
cd "$(dirname "$0")/.."

hogs=${HOGS:-$(nproc)}
pids=()
stop_hogs() {
    for pid in "${pids[@]}"; do
        kill "$pid" 2>/dev/null
    done
    wait "${pids[@]}" 2>/dev/null
}
trap stop_hogs EXIT
trap 'exit 143' TERM
trap 'exit 130' INT

if command -v stress-ng >/dev/null; then
    stress-ng --cpu "$hogs" --quiet &
    pids+=($!)
    echo "loaded_suite: stress-ng --cpu $hogs beside the tests"
else
    for _ in $(seq "$hogs"); do
        python3 -c 'while True: pass' &
        pids+=($!)
    done
    echo "loaded_suite: $hogs Python busy loops beside the tests"
fi

if [ $# -eq 0 ]; then
    set -- make test
else
    set -- .venv/bin/python -m pytest "$@"
fi
log=$(mktemp -t loaded-suite.XXXXXX.log)
started=$(date +%s)
# tee is this script's child, not the tests': the suite checks that it leaves no child process
# behind, and would kill a tee it started.
exec 3> >(tee "$log")
teed=$!
# In the background and waited for, so that a TERM (a timeout) or Ctrl-C reaches the script at
# once: it stops the tests, then the EXIT trap stops the hogs. Job control gives the tests a
# process group of their own, so the signal reaches pytest's workers too.
set -m
"$@" >&3 2>&3 &
runner=$!
set +m
trap 'kill -TERM -- -"$runner" 2>/dev/null; wait "$runner"; exit 143' TERM
trap 'kill -TERM -- -"$runner" 2>/dev/null; wait "$runner"; exit 130' INT
wait "$runner"
status=$?
seconds=$(($(date +%s) - started))
exec 3>&-
wait "$teed" 2>/dev/null # tee's last lines

# pytest's last line: "== 561 passed, 1 failed, 3 skipped in 812.34s (0:13:32) ==" (no = with -q)
summary=$(grep -E '(passed|failed|errors?|skipped|deselected).* in [0-9.]+s' "$log" | tail -1 |
    tr -d '=' | sed 's/^ *//; s/ *$//')
echo "loaded_suite: ${summary:-no pytest summary} | wall ${seconds} s with $hogs hogs," \
    "exit $status | log $log"
exit "$status"
