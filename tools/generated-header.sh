#!/usr/bin/env bash
# Prints the path of the header build.rs generates, building first so it is
# fresh. Cargo's JSON messages name the exact OUT_DIR of this build; a stale
# aioctx-*/out from another profile or feature set cannot be picked by mistake.
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --lib --quiet --message-format=json-render-diagnostics | python3 -c '
import json, os, sys
out = None
for line in sys.stdin:
    try:
        msg = json.loads(line)
    except ValueError:
        continue
    if msg.get("reason") == "build-script-executed" and \
            os.path.basename(os.path.dirname(msg["out_dir"])).startswith("aioctx-"):
        out = os.path.join(msg["out_dir"], "aioctx.h")
if not out or not os.path.isfile(out):
    sys.exit("generated-header: cargo reported no aioctx.h from build.rs")
print(out)
'
