#!/usr/bin/env bash
# Regenerates the functions a build of the binary executes in a drain, in link/symbol-order.txt,
# which build.rs has the linker place first (see there for why). Runs the drain bench with the
# binary under valgrind's callgrind, which records every function executed (not a sample: the
# start-up code runs once), on both mixes and in each HEC mode; then lists the functions'
# symbols. Takes ~5 minutes on 2 cores after the build. Needs valgrind.
#
# Symbol names carry a hash of the build's settings, so each cargo profile has its own list: a
# section of the file headed `# profile NAME` (the linker reads `#` lines as comments and skips
# the names a build does not have). This replaces the section of the profile given:
#
#   link/symbol-order.sh                   # the release build (benches, cargo run --release)
#   link/symbol-order.sh --profile dist    # the shipped build (a 30-minute build from cold)
#
# then rebuild that profile.
set -euo pipefail
cd "$(dirname "$0")/.."
profile=release
if [ "${1:-}" = "--profile" ]; then profile="$2"; fi
target="${CARGO_TARGET_DIR:-target}"
cargo build --profile "$profile" --locked --bin auditflow
cargo bench --locked --bench drain --no-run

work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cat >"$work/auditflow" <<WRAP
#!/bin/sh
exec valgrind --tool=callgrind --demangle=no --compress-strings=no --dump-instr=no \
  --callgrind-out-file="$work/callgrind.%p" "$(realpath "$target/$profile/auditflow")" "\$@"
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
python3 - "$work" "$profile" link/symbol-order.txt <<'PY'
import glob, os, sys
work, profile, path = sys.argv[1:]
seen, order = set(), []
for trace in sorted(glob.glob(os.path.join(work, "callgrind.*")), key=os.path.getmtime):
    ours = False
    with open(trace, errors="replace") as f:
        for line in f:
            if line.startswith("ob="):
                ours = os.path.basename(line[3:].strip()) == "auditflow"
            elif ours and line.startswith("fn="):
                name = line[3:].strip()
                if name not in seen and not name.startswith("0x"):
                    seen.add(name)
                    order.append(name)
sections, current = {}, None
if os.path.exists(path):
    for line in open(path):
        line = line.rstrip("\n")
        if line.startswith("# profile "):
            current = line[len("# profile "):]
            sections[current] = []
        elif current is not None and line:
            sections[current].append(line)
sections[profile] = order
with open(path, "w") as out:
    for name in sorted(sections):
        out.write(f"# profile {name}\n")
        out.write("".join(s + "\n" for s in sections[name]))
print(f"{path}: {len(order)} symbols for the {profile} profile")
PY
