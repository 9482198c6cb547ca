#!/usr/bin/env bash
# Start the reference lab (4 instruments, 0.5 s per run, a few injected faults), run the
# campaign against it, show the ledger, stop the lab. Needs alloop installed (pip install -e .).
set -euo pipefail
cd "$(dirname "$0")"
export ALLOOP_LAB_TOKEN="${ALLOOP_LAB_TOKEN:-$(python -c 'import secrets; print(secrets.token_urlsafe(24))')}"

# `alloop lab serve` once the lab command is mounted on the CLI; the module works either way.
python -m oracles.lab.cli serve --port 8765 --db lab.db --instruments 4 --latency 0.5 \
    --program thin_film --failure-probability 0.05 --drop-probability 0.05 --error-probability 0.05 \
    --log-level warning &
LAB=$!
trap 'kill "$LAB" 2>/dev/null || true; wait "$LAB" 2>/dev/null || true' EXIT

python - <<'PY'
import time, httpx
for _ in range(300):
    try:
        if httpx.get("http://127.0.0.1:8765/v1/health").status_code == 200:
            break
    except httpx.TransportError:
        time.sleep(0.1)
else:
    raise SystemExit("the lab did not start")
PY

python -m loop.cli run campaign.toml
python -m loop.cli status campaign.db
