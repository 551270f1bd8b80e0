#!/usr/bin/env bash
# The README's measured tables, rerun: the targets table (from the
# criterion benches, the 2-thread flood test and `krcu compare`), the tour
# and the policies' PREEMPT_RT rows, printed as Markdown together with the
# machine they ran on, so that anyone can check or refresh the figures
# instead of copying them by hand.
#
#   scripts/readme-tables.sh           # about 10 minutes on 2 cores
#   scripts/readme-tables.sh --quick   # shorter runs, noisier (about 4 minutes)
#
# The figures go to standard output; cargo's and the benches' chatter to
# standard error. On a shared or virtualised machine figures move by
# +-30 % from run to run: the load average is printed with the machine.
set -euo pipefail
cd "$(dirname "$0")/.."

quick=false
[[ "${1:-}" == "--quick" ]] && quick=true
if $quick; then
  criterion=(--warm-up-time 0.3 --measurement-time 1)
  cell=100ms
  compare=(--objects 500_000 --rounds 2)
else
  criterion=(--warm-up-time 1 --measurement-time 3)
  cell=250ms
  compare=(--objects 2_000_000 --rounds 3)
fi

# --- the machine -----------------------------------------------------------
cpu=$(sed -n 's/^model name[[:space:]]*: //p' /proc/cpuinfo | head -1)
cpus=$(grep -c '^processor' /proc/cpuinfo)
# glibc answers sched_getcpu() from the rseq area when the kernel and
# glibc (>= 2.35) support it, and through the vDSO otherwise: `call_rcu`
# and the per-CPU fast paths pay for that lookup on every call.
rseq=on
[[ "${GLIBC_TUNABLES:-}" == *rseq=0* ]] && rseq="off (GLIBC_TUNABLES)"
glibc=$(getconf GNU_LIBC_VERSION 2>/dev/null | awk '{print $2}')
echo "Measured on: ${cpu:-unknown CPU}, ${cpus} CPUs ($(nproc) usable), $(uname -sr), glibc ${glibc:-unknown} (rseq ${rseq}),"
echo "$(rustc --version), load average at start $(cut -d' ' -f1-3 /proc/loadavg), $(date -u +%Y-%m-%d)."
echo "Release builds; criterion medians (${criterion[*]}), $($quick && echo 'quick run' || echo 'full run')."
echo

# --- criterion benches: id -> median ---------------------------------------
declare -A median
# Runs `cargo bench -p krcu --bench $1` on the ids matching $2 and records
# each one's median ("time: [low median high]").
bench() {
  local out
  out=$(cargo bench -q -p krcu --bench "$1" -- "$2" "${criterion[@]}" 2>/dev/null)
  while IFS=$'\t' read -r id value; do
    median["$id"]=$value
  done < <(awk '
    /time:/ {
      line = $0
      name = line; sub(/[[:space:]]*time:.*/, "", name)
      if (name == "") name = last
      sub(/.*\[/, "", line); split(line, v, " ")
      printf "%s\t%s %s\n", name, v[3], v[4]
      next
    }
    /^[^[:space:]]/ && !/:/ && !/^(Gnuplot|Found|Benchmarking)/ { last = $0 }
  ' <<<"$out")
}
m() { echo "${median[$1]:-n/a}"; }

echo "running the benches..." >&2
bench kvfree '^kfree_rcu/call|^reclaim per object'
bench rcu '^rcu_read_lock/(handle|instance)/membarrier$|^rcu_synchronize/expedited/2_idle_registered$|^call_rcu/'
bench page '^page/(pcp order-0 alloc only|pcp order-0 alloc\+free|buddy order-0 alloc\+free)|^slab/(SlabCache|Box) alloc\+free'
bench locks '^baseline/AtomicBool|^lock\+unlock/[^/]*/RawSpinLock$'

# The ids under a group, "rest-of-id: median", joined with "; ".
group() {
  local id
  for id in "${!median[@]}"; do
    if [[ $id == "$1"/* ]]; then echo "${id#"$1"/}: ${median[$id]}"; fi
  done | sort | paste -sd ';' | sed 's/;/; /g'
}
reclaim=$(group 'reclaim per object (cold)')
raw_lock=$(for id in "${!median[@]}"; do
  if [[ $id == lock+unlock/*/RawSpinLock ]]; then echo "$(cut -d/ -f2 <<<"$id"): ${median[$id]}"; fi
done | paste -sd ';' | sed 's/;/; /g')

echo "running the 2-thread flood of 20 M objects..." >&2
flood=$(cargo test -q --release -p krcu --test kvfree_flood -- --nocapture 2>/dev/null | grep '^flood:' | head -1 || true)
peak=$(grep -o 'peak pending [0-9]* objects, [0-9.]* MiB' <<<"$flood" || echo "n/a")

echo "building the CLI and running the tour's comparison..." >&2
cargo build -q --release -p krcu-cli 2>/dev/null
krcu=target/release/krcu
compare_json=$($krcu compare "${compare[@]}" --json)
# krcu ÷ other (median) per system and thread count, from the JSON.
ratio() {
  python3 -c '
import json, sys
rows = json.load(sys.stdin)["rows"]
out = []
for r in rows:
    if r["system"] in ("crossbeam-epoch", "seize", "drop at once") and r["threads"] == int(sys.argv[1]):
        out.append("%.2fx %s" % (r["krcu_ratio"]["median"], r["system"]))
print(", ".join(out))' "$1" <<<"$compare_json"
}
# The sheaf path ÷ other (median) per thread count; with rss, its peak RSS ÷ the peers'.
sheaves() {
  python3 -c '
import json, sys
rows = [r for r in json.load(sys.stdin)["rows"] if r["threads"] == int(sys.argv[1])]
sheaf = next(r for r in rows if r["system"] == "krcu sheaves (SlabBox)")
out = []
for r in rows:
    if r["system"] in ("crossbeam-epoch", "seize", "drop at once"):
        if sys.argv[2] == "rss":
            out.append("%.2fx %s" % (sheaf["peak_rss_bytes"] / r["peak_rss_bytes"], r["system"]))
        else:
            out.append("%.2fx %s" % (r["sheaves_ratio"]["median"], r["system"]))
print(", ".join(out))' "$1" "${2:-speed}" <<<"$compare_json"
}
policies_json=$($krcu policies --duration "$cell" --json)
fallback_default=$(python3 -c '
import json, sys
cells = [c for c in json.load(sys.stdin)["cells"] if c["policy"] == "cache-refill+nolock"]
print("%.3f %% at most over its %d cells" % (max(c["fallback_pct"] for c in cells), len(cells)))' <<<"$policies_json")

cat <<EOF
### Targets

| what | target | measured here (median) | command |
|---|---|---|---|
| \`kfree_rcu\` call, room in the block | ≤ 10 ns | $(m 'kfree_rcu/call (room in the block)') | \`cargo bench -p krcu --bench kvfree -- call\` |
| end to end, 1 thread: krcu ÷ other | ≥ 3× crossbeam-epoch and seize, ≥ 0.5× drop | $(ratio 1) | \`krcu compare ${compare[*]}\` |
| end to end, 2 threads: krcu ÷ other | as above | $(ratio 2) | \`krcu compare ${compare[*]}\` |
| end to end with sheaves, 1 thread: sheaves ÷ other | ≥ 1.0× drop at once, ≥ 3× crossbeam-epoch and seize | $(sheaves 1) | \`krcu compare ${compare[*]}\` |
| end to end with sheaves, 2 threads: sheaves ÷ other | as above | $(sheaves 2) | \`krcu compare ${compare[*]}\` |
| peak RSS of the sheaf path ÷ other (1 / 2 threads) | ≤ 2× the peers' | $(sheaves 1 rss) / $(sheaves 2 rss) | \`krcu compare ${compare[*]}\` |
| reclaim per object, cold: blocks vs \`rcu_head\` list | faster | ${reclaim:-n/a} | \`cargo bench -p krcu --bench kvfree -- reclaim\` |
| peak pending, 2-thread flood of 20 M | ≤ 23 MiB | ${peak} | \`cargo test --release -p krcu --test kvfree_flood -- --nocapture\` |
| page from a per-CPU list | ≤ 15 ns | $(m 'page/pcp order-0 alloc only (NOWAIT)') | \`cargo bench -p krcu --bench page\` |
| page round trip: per-CPU list vs zone lock | ≥ 2× faster | $(m 'page/pcp order-0 alloc+free (NOWAIT)') vs $(m 'page/buddy order-0 alloc+free (zone lock, pcp off)') | \`cargo bench -p krcu --bench page\` |
| fallbacks under flood, default policy | ≤ 1 % | ${fallback_default} | \`krcu policies --duration $cell\` |
| \`read_lock\` + \`read_unlock\` | ≤ 2 ns | $(m 'rcu_read_lock/handle/membarrier') through a \`ReaderHandle\`, $(m 'rcu_read_lock/instance/membarrier') through \`rcu.read_lock()\` | \`cargo bench -p krcu --bench rcu -- membarrier\` |
| \`synchronize_expedited\`, 2 threads registered | ≤ 100 µs | $(m 'rcu_synchronize/expedited/2_idle_registered') | \`cargo bench -p krcu --bench rcu -- expedited\` |
| \`call_rcu\` enqueue (one thread, own instance) | ≤ 20 ns | $(m 'call_rcu/enqueue') warm heads, $(m 'call_rcu/enqueue_cold_heads') cold | \`cargo bench -p krcu --bench rcu -- call_rcu\` |
| \`RawSpinLock\` lock + unlock | ≤ 5 ns | ${raw_lock:-n/a} (floor: CAS + store $(m 'baseline/AtomicBool cas+store')) | \`cargo bench -p krcu --bench locks\` |
| \`SlabCache\` alloc + free | ≤ 1.5× \`Box\` | $(m 'slab/SlabCache alloc+free (24 B)') vs $(m 'slab/Box alloc+free (24 B)') | \`cargo bench -p krcu --bench page\` |

EOF

echo "running the tour..." >&2
echo "### The tour (\`krcu tour\`)"
echo
echo '```text'
$krcu tour 2>/dev/null
echo '```'
echo

echo "### The policies under PREEMPT_RT (\`krcu policies --preempt rt --duration $cell\`)"
echo
echo '```text'
# The table of cells only: from its header to the first blank line.
$krcu policies --preempt rt --duration "$cell" 2>/dev/null | awk '/^policy /{on=1} on && /^$/{exit} on'
echo '```'
