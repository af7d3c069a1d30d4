#!/usr/bin/env bash
# Two `onnxcompress search` workers on one study in a local PostgreSQL server, then a count check.
#
#   bash benchmarks/search_postgres.sh            # TRIALS=16 PORT=54329 WORK=/tmp/... to change
#
# What it does (the many-machine recipe of docs/search.md, on one machine):
#  1. finds PostgreSQL's server binaries (Debian's `postgresql` package; installed with apt-get when
#     missing), initialises a throwaway cluster in $WORK and starts it on 127.0.0.1:$PORT (as the
#     `postgres` user when run as root: the server refuses root);
#  2. makes sure Python can import psycopg2 (else: a venv in .cache/pgvenv that sees the system
#     packages, with `pip install psycopg2-binary`; nothing is installed into the system Python);
#  3. starts two independent `python -m onnxcompress search` processes with the same --storage URL and
#     --study name (exactly what two machines would run), waits for both;
#  4. checks the study: every trial number once, none left RUNNING/WAITING/FAIL, at least TRIALS
#     finished, trials run by both processes, and both processes wrote byte-identical best models.
# The server is stopped and $WORK removed on exit (KEEP=1 keeps $WORK).
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
cd "$ROOT"
TRIALS=${TRIALS:-16}
PORT=${PORT:-54329}
WORK=${WORK:-$(mktemp -d /tmp/onnxcompress-pg.XXXXXX)}
mkdir -p "$WORK"
PY=${PYTHON:-python}

pgbin() { ls -d /usr/lib/postgresql/*/bin 2>/dev/null | sort -V | tail -1; }
PGBIN=$(pgbin)
if [ -z "$PGBIN" ]; then
  echo "installing PostgreSQL (apt-get install postgresql)" >&2
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq postgresql >/dev/null
  PGBIN=$(pgbin)
fi
if ! "$PY" -c "import psycopg2" 2>/dev/null; then
  VENV="$ROOT/.cache/pgvenv"
  if [ ! -x "$VENV/bin/python" ]; then
    "$PY" -m venv --system-site-packages "$VENV"
  fi
  "$VENV/bin/python" -c "import psycopg2" 2>/dev/null || "$VENV/bin/pip" install -q psycopg2-binary
  PY="$VENV/bin/python"
fi
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"

AS=()
if [ "$(id -u)" = 0 ]; then AS=(runuser -u postgres --); chown postgres "$WORK"; fi
cleanup() {
  "${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" -m fast -w stop >/dev/null 2>&1 || true
  if [ "${KEEP:-0}" != 1 ]; then rm -rf "$WORK"; fi
}
trap cleanup EXIT
"${AS[@]}" "$PGBIN/initdb" -D "$WORK/data" -A trust -U oc >/dev/null
"${AS[@]}" "$PGBIN/pg_ctl" -D "$WORK/data" -l "$WORK/server.log" -w \
  -o "-p $PORT -k $WORK -c listen_addresses=127.0.0.1" start >/dev/null
"$PGBIN/createdb" -h 127.0.0.1 -p "$PORT" -U oc search
URL="postgresql+psycopg2://oc@127.0.0.1:$PORT/search"
echo "PostgreSQL $("$PGBIN/postgres" --version | awk '{print $3}') on 127.0.0.1:$PORT, study storage $URL" >&2

mkdir -p "$WORK/w1" "$WORK/w2" && chmod 777 "$WORK/w1" "$WORK/w2"
start=$(date +%s)
for i in 1 2; do
  "$PY" -m onnxcompress search models/lenet_300_100.onnx -o "$WORK/w$i/best.onnxc" --data models/digits_val.npz \
    --max-accuracy-drop 1 --trials "$TRIALS" --storage "$URL" --study pg-demo --seed "$i" --quiet \
    --sparsities 0,0.7,0.9 --bits 3,5 --sensitivity-samples 128 > "$WORK/w$i.log" 2>&1 &
done
wait
echo "both workers finished in $(( $(date +%s) - start )) s" >&2
"$PY" - "$URL" "$TRIALS" "$WORK" <<'PYEOF'
import sys, collections, filecmp
import optuna
url, trials, work = sys.argv[1], int(sys.argv[2]), sys.argv[3]
optuna.logging.set_verbosity(optuna.logging.WARNING)
study = optuna.load_study(study_name="pg-demo", storage=url)
ts = study.get_trials(deepcopy=False)
numbers = [t.number for t in ts]
states = collections.Counter(t.state.name for t in ts)
pids = collections.Counter(t.user_attrs.get("pid") for t in ts)
same = filecmp.cmp(f"{work}/w1/best.onnxc", f"{work}/w2/best.onnxc", shallow=False)
print(f"trials: {len(ts)} (numbers unique: {len(numbers) == len(set(numbers))}), states: {dict(states)}, "
      f"trials per process: {sorted(pids.values())}, identical best models: {same}")
ok = (len(numbers) == len(set(numbers)) and set(states) <= {"COMPLETE", "PRUNED"} and len(ts) >= trials
      and len(pids) == 2 and same)
print("OK: every trial recorded once" if ok else "FAILED")
sys.exit(0 if ok else 1)
PYEOF
