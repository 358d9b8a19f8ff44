#!/usr/bin/env bash
# Regenerates link/symbol-order.txt, the functions the release binary executes in a drain, which
# build.rs has the linker place first (see there for why). Runs the drain bench with the binary
# under valgrind's callgrind, which records every function executed (not a sample: the start-up
# code runs once), on both mixes and in each HEC mode; then lists the functions' symbols. Takes
# ~5 minutes on 2 cores after the build. Needs valgrind.
#
#   link/symbol-order.sh            # then rebuild: cargo build --release
set -euo pipefail
cd "$(dirname "$0")/.."
target="${CARGO_TARGET_DIR:-target}"
cargo build --release --locked --bin auditflow
cargo bench --locked --bench drain --no-run

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat >"$work/auditflow" <<WRAP
#!/bin/sh
exec valgrind --tool=callgrind --demangle=no --compress-strings=no --dump-instr=no \
  --callgrind-out-file="$work/callgrind.%p" "$(realpath "$target/release/auditflow")" "\$@"
WRAP
chmod +x "$work/auditflow"

for mix in realistic alert_heavy; do
  for mode in gzip acks plain; do
    echo "== $mix / $mode"
    DRAIN_BIN="$work/auditflow" DRAIN_MIX="$mix" DRAIN_MODES="$mode" DRAIN_EVENTS=20000 \
      DRAIN_LATENCY_RATE=300 cargo bench --locked --bench drain -- --bench
  done
done

# `fn=` names each function callgrind charged cost to (every function executed has some), under
# the object named by the last `ob=`; only the binary's own count. Grouping them is what saves
# pages; their order within the group matters little.
python3 - "$work" >link/symbol-order.txt <<'PY'
import glob, os, sys
seen, order = set(), []
for path in sorted(glob.glob(os.path.join(sys.argv[1], "callgrind.*")), key=os.path.getmtime):
    ours = False
    with open(path, errors="replace") as f:
        for line in f:
            if line.startswith("ob="):
                ours = os.path.basename(line[3:].strip()) == "auditflow"
            elif ours and line.startswith("fn="):
                name = line[3:].strip()
                if name not in seen and not name.startswith("0x"):
                    seen.add(name)
                    order.append(name)
print("\n".join(order))
PY
echo "link/symbol-order.txt: $(wc -l <link/symbol-order.txt) symbols"
