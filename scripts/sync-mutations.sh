#!/usr/bin/env bash
# The sync mutation check: removes each of the store's syncs in turn (AICORE_SKIP_SYNC,
# honoured by test builds only) and runs the runtime's tests, showing which fail.
# A durability sync must make at least one test fail; the list, with the tests expected
# to fail, is the table in runtime/src/fs.rs. Exit status: non-zero if a sync listed
# with tests made none of them fail. Extra arguments go to `cargo nextest run`.
set -euo pipefail
cd "$(dirname "$0")/.."
table=runtime/src/fs.rs
names=$(sed -n '/<!-- syncs -->/,/<!-- \/syncs -->/p' "$table" | grep -o '^//! | `[a-z-]*`' | grep -o '[a-z-]*`$' | tr -d '`')
cargo nextest run -p aicore-runtime --no-run "$@" >/dev/null 2>&1
status=0
printf '%-12s %-8s %s\n' sync result "failing tests"
for name in $names; do
  expected=$(grep -F "| \`$name\` |" "$table" | awk -F'|' '{print $4}')
  out=$(AICORE_SKIP_SYNC=$name cargo nextest run -p aicore-runtime --no-fail-fast "$@" 2>&1 || true)
  failed=$(echo "$out" | grep -E '^\s+FAIL ' | awk '{print $NF}' | sort -u | tr '\n' ' ' || true)
  if [[ -n "$failed" ]]; then
    printf '%-12s %-8s %s\n' "$name" caught "$failed"
  elif [[ "$expected" == *"none, by design"* ]]; then
    printf '%-12s %-8s %s\n' "$name" none "(not a durability sync, as listed)"
  else
    printf '%-12s %-8s %s\n' "$name" MISSED "no test failed without it"
    status=1
  fi
done
exit $status
