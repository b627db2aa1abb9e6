# shellcheck shell=bash
# tutorials/lib.sh - helpers shared by the tutorials' run scripts; sourced,
# never run. Before sourcing, a script sets:
#
#   TUTORIAL_LOGS   files in $SLUICE_ENV_DIR to show when a check fails
#   TUTORIAL_PIDS   names of the variables holding the pids of the processes
#                   it starts (each stopped with SIGKILL on exit)
#
# Sourcing moves to the repository root, sets BUILD (SLUICE_BUILD_DIR, default
# build) and TIMEOUT_S (TUTORIAL_TIMEOUT_S, default 30), and installs an EXIT
# trap that stops those processes and the environment, whatever happened.

cd "$(dirname "${BASH_SOURCE[0]}")/.." || exit 1
# shellcheck disable=SC2034 # used by the sourcing script
BUILD=${SLUICE_BUILD_DIR:-build}
TIMEOUT_S=${TUTORIAL_TIMEOUT_S:-30}

step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }

fail() {
  echo "tutorial: FAILED: $*" >&2
  local f
  for f in "${TUTORIAL_LOGS[@]}"; do
    if [[ -n "${SLUICE_ENV_DIR:-}" && -f "$SLUICE_ENV_DIR/$f" ]]; then
      echo "--- $f" >&2
      cut -c1-300 "$SLUICE_ENV_DIR/$f" >&2
    fi
  done
  exit 1
}

# wait_for WHAT COMMAND...: runs COMMAND every 0.2 s until it succeeds; fails
# the tutorial when TIMEOUT_S pass first.
wait_for() {
  local what=$1 end=$((SECONDS + TIMEOUT_S))
  shift
  until "$@"; do
    ((SECONDS < end)) || fail "no $what after ${TIMEOUT_S}s"
    sleep 0.2
  done
}

# stop_pid PID: SIGKILL and reap a process this script started, if it runs.
stop_pid() {
  if [[ -n "$1" ]] && kill -0 "$1" 2>/dev/null; then
    kill -KILL "$1" 2>/dev/null
    wait "$1" 2>/dev/null
  fi
}

# One value from the source database.
psql_value() { psql -X -qAt -v ON_ERROR_STOP=1 "$SLUICE_PG_URL" -c "$1"; }

tutorial_cleanup() {
  local rc=$? var
  set +e
  exec 3>&- 2>/dev/null # a psql fed through fd 3, if the script opened one
  for var in "${TUTORIAL_PIDS[@]}"; do
    stop_pid "${!var:-}"
  done
  if [[ -n "${SLUICE_ENV_DIR:-}" ]]; then
    scripts/dev-env stop "$SLUICE_ENV_DIR" >/dev/null 2>&1
  fi
  if ((rc == 0)); then
    printf '\n\033[1mtutorial: every step passed\033[0m\n'
  fi
  exit "$rc"
}
trap tutorial_cleanup EXIT
