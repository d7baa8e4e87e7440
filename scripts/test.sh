#!/usr/bin/env bash
# `make test`: every phase, timed. Any failure, skip outside the allow-list, or empty run fails.
set -uo pipefail
cd "$(dirname "$0")/.."
PY=.venv/bin/python
export DJANGO_SETTINGS_MODULE=controlplane.settings.test
export DATABASE_URL="${DATABASE_URL:-postgres://postgres@127.0.0.1:5432/controlplane}"
export REDIS_URL="${REDIS_URL:-redis://127.0.0.1:6379/9}"
export PYTHONDONTWRITEBYTECODE=1

declare -a PHASES=()
FAILED=""
suite_start=$(date +%s)

phase() {
  local name="$1"; shift
  local start end
  start=$(date +%s.%N)
  echo "==> [$name] $*"
  if "$@"; then status=ok; else status=FAILED; FAILED="$FAILED $name"; fi
  end=$(date +%s.%N)
  PHASES+=("$(awk -v n="$name" -v s="$start" -v e="$end" -v st="$status" 'BEGIN{printf "%-12s %7.1fs  %s", n, e-s, st}')")
  echo "==> [$name] $status"
}

services() {
  if ! pg_isready -q -h 127.0.0.1 -p 5432; then
    echo "PostgreSQL is not answering; starting it"
    pg_ctlcluster --skip-systemctl-redirect "$(ls /etc/postgresql | head -1)" main start || return 1
    for _ in $(seq 1 50); do pg_isready -q -h 127.0.0.1 -p 5432 && break; sleep 0.2; done
  fi
  pg_isready -h 127.0.0.1 -p 5432 || return 1
  $PY scripts/redis_ensure.py || return 1
}

schema_check() {
  local fresh
  fresh=$(mktemp)
  $PY manage.py spectacular --validate --fail-on-warn --file "$fresh" || return 1
  if ! diff -u docs/openapi.yaml "$fresh" > /dev/null; then
    diff -u docs/openapi.yaml "$fresh" | head -40
    echo "docs/openapi.yaml is stale: run 'make schema-update' and commit it"
    rm -f "$fresh"; return 1
  fi
  rm -f "$fresh"
}

run_pytest() {
  $PY -m pytest -p no:cacheprovider "$@"
  local rc=$?
  if [ $rc -eq 5 ]; then echo "pytest collected no tests: that is a failure"; return 1; fi
  return $rc
}

# The static checks need only the installed project: they run beside the native build and tests (mostly
# one core each), and report when those are done. Their output is shown as one block.
static_checks() {
  phase ruff       .venv/bin/ruff check .
  phase mypy       .venv/bin/mypy .
  phase imports    .venv/bin/lint-imports
  phase schema     schema_check
  printf '%s\n' "${PHASES[@]}" > "$STATIC_DIR/phases"
  echo "$FAILED" > "$STATIC_DIR/failed"
}

phase setup      make --no-print-directory setup
STATIC_DIR=$(mktemp -d)
( PHASES=(); FAILED=""; static_checks > "$STATIC_DIR/log" 2>&1 ) &
static_pid=$!
echo "==> [static] ruff, mypy, import contracts and the schema check run in the background"
phase native     make --no-print-directory native
phase native-test make --no-print-directory -C native test PYTHON="$PWD/$PY"
phase sanitize   make --no-print-directory -C native sanitize PYTHON="$PWD/$PY"
phase services   services
static_wait_start=$(date +%s)
wait "$static_pid"
echo "==> [static] output (waited $(( $(date +%s) - static_wait_start ))s for it after the native phases):"
cat "$STATIC_DIR/log"
if [ -s "$STATIC_DIR/phases" ]; then
  while IFS= read -r line; do PHASES+=("$line  (in parallel)"); done < "$STATIC_DIR/phases"
else
  PHASES+=("static        ?       FAILED (no result)"); FAILED="$FAILED static"
fi
FAILED="$FAILED$(cat "$STATIC_DIR/failed" 2>/dev/null)"
rm -rf "$STATIC_DIR"
phase pytest     run_pytest tests --durations=12
phase bench      $PY bench/run.py --tiny

echo
echo "Phase times:"
for line in "${PHASES[@]}"; do echo "  $line"; done
echo "  total        $(( $(date +%s) - suite_start ))s"
if [ -n "$FAILED" ]; then
  echo "FAILED phases:$FAILED"
  exit 1
fi
echo "all phases passed"
