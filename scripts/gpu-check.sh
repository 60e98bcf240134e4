#!/usr/bin/env bash
# One command that proves rotor's GPU path on a machine with an NVIDIA GPU, in under 8 minutes,
# with every figure in one JSON file. The machine needs no Rust toolchain and no network: build
# the executables here first and carry them (scripts/gpu-check-build.sh writes gpu-check/).
#
#   scripts/gpu-check.sh [--bundle DIR] [--out FILE] [--device cuda|wgpu] [--only STEPS]
#                        [--steps N] [--tiny] [--python PY] [--dry-run]
#
# Steps (in this order; --only takes a comma-separated subset):
#   env         the GPU (nvidia-smi), NCCL found (libnccl.so linked from the Python environment's
#               nvidia-nccl wheel when only libnccl.so.2 exists)
#   golden      the quantizers' and models' golden tests, every case also on Autodiff<Cuda>
#               (or on wgpu with --device wgpu)
#   train       a small VQGAN (discriminator, no LPIPS weights offline) for N steps at world size 1
#               through NCCL, then the same run stopped at N/2 and resumed: figures compared
#   bf16        the train step's run again with run.precision = "bf16" (mixed precision): its
#               losses against the f32 run's, its loss falling, its speed as a ratio to f32
#   launcher    `launch --gpus 1` (the launcher spawning its NCCL worker), 4 steps
#   throughput  the taming f16 VQ autoencoder's training step (bench/vqgan_f16.toml) on the GPU
#               against PyTorch eager running taming's own modules on the same GPU
#               (bench/taming_vqvae.py --workload f16 --device cuda), as a ratio
#   estimators  the VQ layer's rotation/STE time ratio (fwd+bwd, N 65536, D 256, K 1024)
#
# --tiny shrinks the train/launcher model (16x16 images, ch 32, no attention) for a software
# renderer (lavapipe): the 64x64 model takes many minutes a step there.
# --device wgpu runs what applies on burn's wgpu backend (golden, train, estimators; the others
# are recorded as skipped with the reason): this is how the script is tested without a GPU.
# Exit status: 0 when every step that ran passed, 1 when one failed, 2 on a usage error.
set -uo pipefail

usage() { sed -n '2,25p' "$0" | sed 's/^# \{0,1\}//'; }
die_usage() { echo "gpu-check: $1 (see --help)" >&2; exit 2; }

root="$(cd "$(dirname "$0")/.." && pwd)"
bundle="$root/gpu-check"
out="gpu-check.json"
device="cuda"
only=""
steps=50
python="${PYTHON:-python3}"
dry=0
tiny=0
all_steps="env golden train bf16 launcher throughput estimators"

while [ $# -gt 0 ]; do
  case "$1" in
    -h|--help) usage; exit 0 ;;
    --bundle) [ $# -ge 2 ] || die_usage "--bundle needs a directory"; bundle="$2"; shift 2 ;;
    --out) [ $# -ge 2 ] || die_usage "--out needs a file"; out="$2"; shift 2 ;;
    --device) [ $# -ge 2 ] || die_usage "--device needs cuda or wgpu"; device="$2"; shift 2 ;;
    --only) [ $# -ge 2 ] || die_usage "--only needs a list of steps"; only="$2"; shift 2 ;;
    --steps) [ $# -ge 2 ] || die_usage "--steps needs a number"; steps="$2"; shift 2 ;;
    --python) [ $# -ge 2 ] || die_usage "--python needs an interpreter"; python="$2"; shift 2 ;;
    --dry-run) dry=1; shift ;;
    --tiny) tiny=1; shift ;;
    *) die_usage "unknown argument '$1'" ;;
  esac
done
case "$device" in cuda|wgpu) ;; *) die_usage "--device must be cuda or wgpu, not '$device'" ;; esac
case "$steps" in ''|*[!0-9]*) die_usage "--steps must be a whole number, not '$steps'" ;; esac
[ "$steps" -ge 4 ] || die_usage "--steps must be at least 4 (the run is stopped and resumed at half)"
selected="$all_steps"
if [ -n "$only" ]; then
  selected=""
  for s in ${only//,/ }; do
    case " $all_steps " in *" $s "*) selected="$selected $s" ;; *) die_usage "--only: unknown step '$s' (steps: $all_steps)" ;; esac
  done
fi
command -v "$python" >/dev/null || die_usage "no Python interpreter '$python' (it writes the JSON; set --python)"

work="$(mktemp -d "${TMPDIR:-/tmp}/gpu-check.XXXXXX")"
results="$work/results.jsonl"
: > "$results"
export NO_COLOR=1 RUST_BACKTRACE=0

# record NAME STATUS SECONDS DETAIL [FIGURES-JSON]: one line of the report.
record() {
  local fig="${5:-}"
  [ -n "$fig" ] || fig='{}'
  "$python" - "$1" "$2" "$3" "$4" "$fig" >> "$results" <<'PY'
import json, sys
name, status, secs, detail, figures = sys.argv[1:6]
print(json.dumps({"step": name, "status": status, "seconds": round(float(secs), 1),
                  "detail": detail[-4000:], "figures": json.loads(figures)}))
PY
  printf 'gpu-check: %-10s %-7s %6ss  %s\n' "$1" "$2" "$3" "$(printf '%s' "$4" | tail -n 1)" >&2
}

exe() { # the carried executable NAME (plain or .gz), unpacked to $work
  local name="$1"
  if [ -x "$bundle/$name" ]; then echo "$bundle/$name"; return 0; fi
  if [ -f "$bundle/$name.gz" ]; then
    gzip -dc "$bundle/$name.gz" > "$work/$name" && chmod +x "$work/$name" && echo "$work/$name"
    return 0
  fi
  return 1
}

launch_bin() {
  if [ -n "${ROTOR_LAUNCH:-}" ]; then echo "$ROTOR_LAUNCH"; else exe launch; fi
}

# metric FILE KEY [LINE]: KEY of the LINE-th (default last) training record of metrics.jsonl.
metric() {
  "$python" - "$1" "$2" "${3:--1}" <<'PY'
import json, sys
recs = [json.loads(l) for l in open(sys.argv[1]) if '"split"' not in l]
print(recs[int(sys.argv[3])][sys.argv[2]])
PY
}

gpu_args() { if [ "$device" = cuda ]; then echo "--device cuda"; else echo "--device wgpu"; fi; }

# NCCL for cudarc: it loads `libnccl.so`; the nvidia-nccl wheel ships only libnccl.so.2.
ensure_nccl() {
  [ "$device" = cuda ] || return 0
  [ -z "${nccl_note:-}" ] || return 0
  if ldconfig -p 2>/dev/null | grep -q 'libnccl\.so '; then nccl_note="system libnccl.so"; return 0; fi
  local dir
  dir="$("$python" -c 'import nvidia.nccl, os; print(os.path.join(list(nvidia.nccl.__path__)[0], "lib"))' 2>/dev/null)" \
    || { echo "no libnccl.so and no nvidia-nccl wheel in $python: install NCCL or pip install nvidia-nccl-cu12"; return 1; }
  mkdir -p "$work/nccl" && ln -sf "$dir/libnccl.so.2" "$work/nccl/libnccl.so"
  export LD_LIBRARY_PATH="$work/nccl:$dir:${LD_LIBRARY_PATH:-}"
  nccl_note="libnccl.so linked from $dir"
}

step_env() {
  if [ "$device" = cuda ]; then
    command -v nvidia-smi >/dev/null || { echo "nvidia-smi not found: no NVIDIA driver on this machine"; return 1; }
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || return 1
    ensure_nccl || return 1
    echo "$nccl_note"
  else
    echo "wgpu: $(vulkaninfo --summary 2>/dev/null | grep -m1 deviceName | sed 's/.*= //' || true)"
  fi
}

step_golden() {
  local t ok=0 log="" n
  # The golden cases of this checkout (the executables were built elsewhere).
  export QUANTIZER_GOLDEN_DIR="$root/quantizers/tests/golden" MODELS_GOLDEN_DIR="$root/models/tests/golden"
  for t in quantizers-golden models-golden; do
    local bin
    bin="$(exe "$t")" || { echo "$t missing from $bundle: run scripts/gpu-check-build.sh"; return 1; }
    local text
    text="$("$bin" --nocapture --test-threads 1 2>&1)"; local rc=$?
    n="$(printf '%s\n' "$text" | grep -E "^golden: checked .* on $device" || echo "no summary on $device")"
    log="$log$t: $n"$'\n'
    if [ $rc -ne 0 ]; then ok=1; log="$log$(printf '%s\n' "$text" | grep -E 'FAIL|panicked' | head -20)"$'\n'; fi
  done
  printf '%s' "$log"
  return $ok
}

# A small VQGAN config for the train and launcher steps (photos from scripts/fetch-data.sh).
write_vqgan() {
  local dir="$1" n="$2"
  local res=64 ch=64 mult="[1, 2, 2]" attn="[16]" z=64 codes=1024 batch=4
  if [ "$tiny" -eq 1 ]; then res=16 ch=32 mult="[1, 2]" attn="[]" z=8 codes=32 batch=2; fi
  cat > "$dir/vqgan.toml" <<EOF
[run]
name = "g"
output_dir = "$dir/runs"
seed = 1
steps = $n
batch_size = $batch
log_every = 1
val_batches = 1
checkpoint_every = $(( steps / 2 ))

[data]
source = { kind = "image_folder", train = "$root/data/photos", val_fraction = 0.2 }
resolution = $res
resize = $res

[model]
kind = "vq_model"

[model.autoencoder]
ch = $ch
ch_mult = $mult
num_res_blocks = 1
attn_resolutions = $attn
resolution = $res
z_channels = $z

[model.quantizer]
kind = "vq"
dim = $z
codebook_size = $codes
estimator = "rotation"
codebook = { kind = "learnable", beta = 0.25, legacy = true }

[objective]
kind = "vqgan"
perceptual_weight = 0.0
disc_start = $(( steps / 4 ))

[objective.discriminator]
ndf = 16
n_layers = 2

[optim]
lr = 1e-4
EOF
}

step_train() {
  local bin
  bin="$(launch_bin)" || { echo "launch missing from $bundle: run scripts/gpu-check-build.sh"; return 1; }
  [ -d "$root/data/photos" ] || { echo "data/photos missing: run scripts/fetch-data.sh here and carry data/photos"; return 1; }
  local a="$work/train-full" b="$work/train-resumed"
  mkdir -p "$a" "$b"
  write_vqgan "$a" "$steps"
  local t0=$SECONDS
  "$bin" $(gpu_args) "$a/vqgan.toml" --resume never > "$a/log" 2>&1 || { tail -20 "$a/log"; return 1; }
  local full_s=$(( SECONDS - t0 ))
  write_vqgan "$b" $(( steps / 2 ))
  "$bin" $(gpu_args) "$b/vqgan.toml" --resume never > "$b/log" 2>&1 || { tail -20 "$b/log"; return 1; }
  write_vqgan "$b" "$steps"
  "$bin" $(gpu_args) "$b/vqgan.toml" --resume auto >> "$b/log" 2>&1 || { tail -20 "$b/log"; return 1; }
  "$python" - "$a/runs/g/metrics.jsonl" "$b/runs/g/metrics.jsonl" "$full_s" "$steps" <<'PY'
import json, sys
load = lambda p: [json.loads(l) for l in open(p) if '"split"' not in l]
full, resumed, secs, steps = load(sys.argv[1]), load(sys.argv[2]), float(sys.argv[3]), int(sys.argv[4])
assert len(full) == steps and len(resumed) == steps, f"{len(full)} and {len(resumed)} records, want {steps}"
worst = 0.0
for x, y in zip(full, resumed):
    for k in ("loss", "rec", "quant_error", "grad_norm"):
        worst = max(worst, abs(x[k] - y[k]) / (1e-4 + abs(x[k])))
q = max(1, steps // 4)
first = sum(r["rec"] for r in full[:q]) / q
last = sum(r["rec"] for r in full[-q:]) / q
reads = max(r["host_reads_per_step"] for r in full)
fig = {"steps": steps, "rec_first_quarter": first, "rec_last_quarter": last, "resume_max_rel_diff": worst,
       "host_reads_per_step_max": reads, "steps_per_s_last": full[-1]["steps_per_s"],
       "wall_s": secs, "d_weight_last": full[-1].get("d_weight")}
print(json.dumps(fig))
# The loss must fall over a run of 20 steps or more (a 4-step run only checks the resume).
ok = (last < first or steps < 20) and worst <= 1e-3 and reads == 0
sys.exit(0 if ok else 1)
PY
}

step_bf16() {
  [ "$device" = cuda ] || { echo "skipped: wgpu has no bf16 type (rotor refuses run.precision = \"bf16\" there)"; return 3; }
  local bin
  bin="$(launch_bin)" || { echo "launch missing from $bundle"; return 1; }
  local f="$work/train-full/runs/g/metrics.jsonl" d="$work/bf16"
  [ -f "$f" ] || { echo "needs the train step's f32 run (run it first: --only train,bf16)"; return 1; }
  mkdir -p "$d"
  write_vqgan "$d" "$steps"
  sed -i 's/^\[run\]$/[run]\nprecision = "bf16"/' "$d/vqgan.toml"
  "$bin" $(gpu_args) "$d/vqgan.toml" --resume never > "$d/log" 2>&1 || { tail -20 "$d/log"; return 1; }
  "$python" - "$f" "$d/runs/g/metrics.jsonl" "$steps" <<'PY'
import json, sys
load = lambda p: [json.loads(l) for l in open(p) if '"split"' not in l]
f32, bf16, steps = load(sys.argv[1]), load(sys.argv[2]), int(sys.argv[3])
assert len(bf16) == steps, f"{len(bf16)} records, want {steps}"
q = max(1, steps // 4)
first = sum(r["rec"] for r in bf16[:q]) / q
last = sum(r["rec"] for r in bf16[-q:]) / q
rel0 = abs(bf16[0]["loss"] - f32[0]["loss"]) / abs(f32[0]["loss"])
worst = max(abs(a["rec"] - b["rec"]) / abs(b["rec"]) for a, b in zip(bf16, f32))
speed = bf16[-1]["steps_per_s"] / f32[-1]["steps_per_s"]
print(json.dumps({"first_loss_rel_diff": rel0, "rec_max_rel_diff": worst, "rec_first_quarter": first,
                  "rec_last_quarter": last, "speed_vs_f32": speed,
                  "host_reads_per_step_max": max(r["host_reads_per_step"] for r in bf16)}))
ok = rel0 <= 0.03 and (last < first or steps < 20) and all(r["loss"] == r["loss"] for r in bf16)
sys.exit(0 if ok else 1)
PY
}

step_launcher() {
  [ "$device" = cuda ] || { echo "skipped: --gpus needs CUDA"; return 3; }
  local bin
  bin="$(launch_bin)" || { echo "launch missing from $bundle"; return 1; }
  local d="$work/launcher"
  mkdir -p "$d"
  write_vqgan "$d" 4
  "$bin" --gpus 1 "$d/vqgan.toml" --resume never > "$d/log" 2>&1 || { tail -20 "$d/log"; return 1; }
  grep -m1 -E "NCCL|all-reduce" "$d/log" || true
  echo "{\"records\": $(grep -vc '"split"' "$d/runs/g/metrics.jsonl")}"
}

step_throughput() {
  [ "$device" = cuda ] || { echo "skipped: the PyTorch side runs on CUDA only"; return 3; }
  local bin
  bin="$(launch_bin)" || { echo "launch missing from $bundle"; return 1; }
  local d="$work/throughput"
  mkdir -p "$d"
  sed -e "s#^output_dir = .*#output_dir = \"$d/runs\"#" -e "s#data/photos#$root/data/photos#" \
    "$root/bench/vqgan_f16.toml" > "$d/f16.toml"
  "$bin" --device cuda "$d/f16.toml" --resume never --set run.steps=30 --set run.log_every=10 > "$d/log" 2>&1 \
    || { tail -20 "$d/log"; return 1; }
  local rotor torch
  rotor="$(metric "$d/runs/bench_vqgan_f16/metrics.jsonl" steps_per_s)" || { echo "no rotor figure"; return 1; }
  # taming-transformers and vector-quantize-pytorch from the bundle's wheels when not installed.
  if ! "$python" -c 'import taming, vector_quantize_pytorch' 2>/dev/null && [ -d "$bundle/wheels" ]; then
    "$python" -m pip install -q --no-index --no-deps --no-compile --target "$work/site" "$bundle"/wheels/*.whl \
      && export PYTHONPATH="$work/site${PYTHONPATH:+:$PYTHONPATH}"
  fi
  torch="$("$python" "$root/bench/taming_vqvae.py" --workload f16 --device cuda --rounds 2 --steps 20 2>"$d/torch.err" | tail -1)" \
    || { tail -5 "$d/torch.err"; echo "rotor $rotor steps/s; PyTorch side failed (torch, taming-transformers and vector-quantize-pytorch importable?)"; return 1; }
  "$python" - "$rotor" "$torch" <<'PY'
import json, sys
rotor, torch = float(sys.argv[1]), json.loads(sys.argv[2])["steps_per_s"]
print(json.dumps({"rotor_steps_per_s": rotor, "pytorch_steps_per_s": torch, "ratio": rotor / torch}))
PY
}

step_estimators() {
  local bin
  bin="$(exe estimators)" || { echo "estimators missing from $bundle: run scripts/gpu-check-build.sh"; return 1; }
  "$bin" --backend "$device" --only-first --reps 3 > "$work/estimators.log" 2>&1 \
    || { grep -v '^ ' "$work/estimators.log" | tail -8; return 1; }
  grep '"bench"' "$work/estimators.log" | tail -1
}

overall=0
for s in $selected; do
  if [ $dry -eq 1 ]; then record "$s" planned 0 "would run on $device"; continue; fi
  t0=$SECONDS
  # In this shell (not a subshell): what a step exports (the NCCL path) holds for the next.
  # NCCL for the steps that start NcclComm (a cuda worker of any world size).
  case $s in golden|estimators) need_nccl=0 ;; *) need_nccl=1 ;; esac
  if [ $need_nccl -eq 0 ] || ensure_nccl > "$work/$s.out" 2>&1; then
    step_$s >> "$work/$s.out" 2>&1; rc=$?
  else
    rc=1
  fi
  text="$(cat "$work/$s.out")"
  secs=$(( SECONDS - t0 ))
  figures="$(printf '%s\n' "$text" | grep -E '^\{.*\}$' | tail -1)"
  [ -n "$figures" ] || figures='{}'
  case $rc in
    0) record "$s" passed "$secs" "$text" "$figures" ;;
    3) record "$s" skipped "$secs" "$text" ;;
    *) record "$s" failed "$secs" "$text" "$figures"; overall=1 ;;
  esac
done

"$python" - "$results" "$out" "$device" "$overall" <<'PY'
import json, platform, sys, time
results, out, device, overall = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
steps = [json.loads(l) for l in open(results)]
report = {"tool": "rotor gpu-check", "device": device, "host": platform.node(),
          "finished": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
          "ok": overall == 0, "steps": steps}
with open(out, "w") as f:
    json.dump(report, f, indent=1)
ran = [s for s in steps if s["status"] != "planned"]
verdict = "dry run, nothing ran" if not ran else ("all passed" if overall == 0 else "FAILED")
report["ok"] = overall == 0 and bool(ran)
with open(out, "w") as f:
    json.dump(report, f, indent=1)
print(f"gpu-check: {verdict}; report in {out}", file=sys.stderr)
PY
rm -rf "$work"
exit $overall
