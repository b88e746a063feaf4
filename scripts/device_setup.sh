# Sourced by the device scripts: install what the lent GPU machine lacks, log the card.
# Wheels missing there (pydantic and its dependencies) travel in .whl/. flashbench itself is
# installed as a user installs it (not editable), into /tmp/site with the wheels; PYTHONPATH
# and PATH point there.
OUT=${OUT:-/tmp/flashbench-out}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
log="$OUT/device.log"
{
  nvidia-smi --query-gpu=name,uuid,driver_version,memory.total,clocks.sm,clocks.max.sm,power.limit \
    --format=csv
  if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
      --target /tmp/site .whl/*.whl
  fi
  python3 -m pip install -q --no-index --no-deps --no-build-isolation --upgrade \
    --target /tmp/site .
} >>"$log" 2>&1  # appended: a call may run several of these scripts
export PYTHONPATH=/tmp/site PATH="/tmp/site/bin:$PATH"
python3 -c "import torch, triton; print('torch', torch.__version__, 'triton', triton.__version__)" \
  | tee -a "$log"
