#!/usr/bin/env bash
# Runs rotor under the real torchrun and checks what a cluster user relies on:
#   1. `torchrun --standalone`, `--rdzv-backend static` and `--rdzv-backend c10d`, 2 workers each,
#      and two torchrun agents ("nodes" on loopback, c10d and static), one worker each, train as
#      one process accumulating the same two halves (optim.accumulate = 2);
#   2. a worker killed mid-run: torchrun restarts the group (--max-restarts 1), the workers resume
#      from the latest checkpoint (TORCHELASTIC_RESTART_COUNT), and the run ends as the
#      uninterrupted one did;
#   3. a worker that fails: torchrun's summary shows rotor's message (TORCHELASTIC_ERROR_FILE).
#
#   python3 -m pip install torch        # any recent torch; REFERENCE.md 7.5 pins the protocol to 2.15
#   scripts/fetch-data.sh && cargo build --release -p launch
#   scripts/torchrun-check.sh           # TORCHRUN=/path/to/torchrun to choose one; STEPS=60
set -euo pipefail
cd "$(dirname "$0")/.."

TORCHRUN=${TORCHRUN:-torchrun}
LAUNCH=$PWD/target/release/launch
STEPS=${STEPS:-60}
command -v "$TORCHRUN" >/dev/null || { echo "no torchrun: python3 -m pip install torch (or set TORCHRUN)"; exit 2; }
[ -x "$LAUNCH" ] || { echo "build first: cargo build --release -p launch"; exit 2; }
OUT=$(mktemp -d /tmp/rotor-torchrun.XXXXXX)
echo "torch $("$(dirname "$(command -v "$TORCHRUN")")/python" -c 'import torch; print(torch.__version__)' 2>/dev/null || echo '?'), runs in $OUT"
COMMON=(--set "run.output_dir=$OUT" --set run.steps="$STEPS" --set run.log_every=1 --set run.checkpoint_every=20
        --set run.val_every="$STEPS" --timeout 60)
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

compare() { # compare RUN_A RUN_B: every training field of every step equal (relative 1e-6)
  python3 - "$OUT/$1/metrics.jsonl" "$OUT/$2/metrics.jsonl" <<'EOF'
import json, sys
def steps(p):
    out = {}
    for line in open(p):
        m = json.loads(line)
        if "loss" in m:
            out[m["step"]] = m  # a resumed run logs its steps again: the last wins
    return out
a, b = steps(sys.argv[1]), steps(sys.argv[2])
assert a.keys() == b.keys() and a, f"steps differ: {sorted(a)[:3]}... vs {sorted(b)[:3]}..."
worst = 0.0
for s in a:
    for k, x in a[s].items():
        if isinstance(x, (int, float)) and k in b[s] and not k.endswith(("_per_s", "_s")) and k != "lr":
            y = b[s][k]
            d = abs(x - y) / max(abs(x), abs(y), 1e-12)
            worst = max(worst, d)
            assert d <= 1e-6, f"step {s} {k}: {x} vs {y}"
print(f"  equal: {len(a)} steps, largest relative difference {worst:.2e}")
EOF
}

echo "== one process, accumulating two halves"
"$LAUNCH" --resume never "${COMMON[@]}" --set run.name=one --set optim.accumulate=2 configs/quickstart.toml > "$OUT/one.out" 2>&1 || { tail -30 "$OUT/one.out"; exit 1; }

echo "== torchrun --standalone --nproc-per-node 2"
"$TORCHRUN" --standalone --nproc-per-node 2 --no-python "$LAUNCH" --resume never "${COMMON[@]}" \
  --set run.name=standalone configs/quickstart.toml > "$OUT/standalone.out" 2>&1 || { tail -30 "$OUT/standalone.out"; exit 1; }
compare standalone one

P=$(port)
echo "== torchrun --rdzv-backend static --master-port $P"
"$TORCHRUN" --nnodes 1 --node-rank 0 --nproc-per-node 2 --rdzv-backend static --master-addr 127.0.0.1 \
  --master-port "$P" --no-python "$LAUNCH" --resume never "${COMMON[@]}" --set run.name=static \
  configs/quickstart.toml > "$OUT/static.out" 2>&1 || { tail -30 "$OUT/static.out"; exit 1; }
compare static one

P=$(port)
echo "== torchrun --rdzv-backend c10d --rdzv-endpoint 127.0.0.1:$P"
"$TORCHRUN" --nnodes 1 --nproc-per-node 2 --rdzv-backend c10d --rdzv-endpoint "127.0.0.1:$P" \
  --rdzv-id rotor-check --no-python "$LAUNCH" --resume never "${COMMON[@]}" --set run.name=c10d \
  configs/quickstart.toml > "$OUT/c10d.out" 2>&1 || { tail -30 "$OUT/c10d.out"; exit 1; }
compare c10d one

P=$(port)
echo "== two torchrun agents (\"nodes\"), one worker each: --nnodes 2 --rdzv-backend c10d"
PIDS=()
for n in 0 1; do
  "$TORCHRUN" --nnodes 2 --nproc-per-node 1 --rdzv-backend c10d --rdzv-endpoint "127.0.0.1:$P" \
    --rdzv-id rotor-two-nodes --no-python "$LAUNCH" --resume never "${COMMON[@]}" --set run.name=c10d-nodes \
    configs/quickstart.toml > "$OUT/c10d-node$n.out" 2>&1 &
  PIDS+=($!)
done
wait "${PIDS[0]}" && wait "${PIDS[1]}" || { tail -30 "$OUT"/c10d-node*.out; exit 1; }
compare c10d-nodes one

P=$(port)
echo "== two torchrun agents, static rendezvous: --nnodes 2 --node-rank 0|1 --master-port $P"
PIDS=()
for n in 0 1; do
  "$TORCHRUN" --nnodes 2 --node-rank $n --nproc-per-node 1 --rdzv-backend static --master-addr 127.0.0.1 \
    --master-port "$P" --no-python "$LAUNCH" --resume never "${COMMON[@]}" --set run.name=static-nodes \
    configs/quickstart.toml > "$OUT/static-node$n.out" 2>&1 &
  PIDS+=($!)
done
wait "${PIDS[0]}" && wait "${PIDS[1]}" || { tail -30 "$OUT"/static-node*.out; exit 1; }
compare static-nodes one

echo "== a worker killed after the step-20 checkpoint; torchrun --max-restarts 1"
"$TORCHRUN" --standalone --nproc-per-node 2 --max-restarts 1 --no-python "$LAUNCH" --resume never \
  "${COMMON[@]}" --set run.name=restarted configs/quickstart.toml > "$OUT/restarted.out" 2>&1 &
TR=$!
until [ -f "$OUT/restarted/checkpoints/step-00000020/manifest.json" ] \
  && [ "$(grep -c '"loss"' "$OUT/restarted/metrics.jsonl" 2>/dev/null || echo 0)" -ge 25 ]; do
  kill -0 $TR 2>/dev/null || { tail -30 "$OUT/restarted.out"; echo "torchrun ended early"; exit 1; }
  sleep 0.2
done
VICTIM=$(pgrep -f -- "run.name=restarted" | while read -r p; do
  [ "$(cat /proc/"$p"/comm)" = launch ] && echo "$p"; done | tail -1)
[ -n "$VICTIM" ] || { echo "found no worker process to kill"; kill $TR; exit 1; }
echo "  killing worker pid $VICTIM (SIGKILL) at step $(grep -c '"loss"' "$OUT/restarted/metrics.jsonl")"
kill -9 "$VICTIM"
wait $TR || { tail -30 "$OUT/restarted.out"; echo "torchrun failed after the restart"; exit 1; }
grep -q "restart 1 of the group" "$OUT"/restarted/logs/rank-0.log \
  || { echo "no restart in $OUT/restarted/logs/rank-0.log"; exit 1; }
grep -h "restart 1 of the group\|resumed from" "$OUT"/restarted/logs/rank-0.log | sed 's/^/  /' || true
compare restarted standalone

echo "== a failing worker: torchrun's summary names rotor's error"
if "$TORCHRUN" --standalone --nproc-per-node 2 --no-python "$LAUNCH" --resume never "${COMMON[@]}" \
  --set run.name=failing --set data.source.train=/nonexistent/train.gz configs/quickstart.toml > "$OUT/failing.out" 2>&1; then
  echo "the failing run succeeded"; exit 1
fi
grep -A8 "Root Cause" "$OUT/failing.out" | grep -E "rank|traceback" | sed 's/^/  /' || true
grep -A8 "Root Cause" "$OUT/failing.out" | grep -q "traceback : rotor.*/nonexistent/train.gz" \
  || { echo "torchrun's root cause does not show rotor's error ($OUT/failing.out)"; exit 1; }
echo "all torchrun checks passed ($OUT)"
