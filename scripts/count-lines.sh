#!/usr/bin/env bash
# Counts, for each example program given (default: the three krcu examples
# and their crossbeam-epoch versions), its lines of code (not blank, not
# only a comment: `//`, `///` and `//!` lines are left out) and its
# `unsafe`: blocks (`unsafe {`) and every use of the keyword outside
# comments (blocks, `unsafe fn`, `unsafe impl`). For the README's table.
#
#   scripts/count-lines.sh [FILE.rs ...]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ $# -eq 0 ]; then
  set -- krcu/examples/{config,stack,realtime}.rs \
    krcu/examples/crossbeam_{config,stack,realtime}.rs
fi
printf '%-36s %6s %14s %16s\n' file code unsafe_blocks unsafe_keywords
for f in "$@"; do
  # Strip `//` comments (also at the end of a line; the examples have no
  # `//` inside string literals), then count what is left.
  awk '
    { sub(/\/\/.*/, "") }
    /[^[:space:]]/ { code++ }
    { blocks += gsub(/unsafe[[:space:]]*\{/, "&"); keywords += gsub(/(^|[^[:alnum:]_])unsafe([^[:alnum:]_]|$)/, "&") }
    END { printf "%-36s %6d %14d %16d\n", FILENAME, code, blocks, keywords }
  ' "$f"
done
