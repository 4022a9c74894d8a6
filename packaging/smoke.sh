#!/usr/bin/env bash
# Smoke check of a built bundle: packaging/smoke.sh [BUNDLE_DIR]   (default: newest dist/dasr-annotator-*)
# Runs the frozen binary on a few dev images: --version, index, search (the query instance's other
# frames must rank first), and the GUI offscreen. Needs ../shared/data/dev (or DASR_DEV_DATA) and
# python3 (to read JSON). Never touches the user's settings or cache. Not part of CI: ~1-2 minutes.
set -euo pipefail
cd "$(dirname "$0")/.."

bundle=${1:-$(ls -dt dist/dasr-annotator-*/ 2>/dev/null | head -1)}
bundle=${bundle%/}
exe="$PWD/$bundle/dasr-annotator"
[[ "$bundle" = /* ]] && exe="$bundle/dasr-annotator"
[[ -x "$exe" ]] || { echo "smoke: no bundle at '$bundle' (run packaging/build.sh)" >&2; exit 2; }
dev=${DASR_DEV_DATA:-../shared/data/dev}
[[ -f "$dev/manifest.json" ]] || { echo "smoke: dev data not found at $dev (set DASR_DEV_DATA)" >&2; exit 2; }
dev=$(cd "$dev" && pwd)
repo=$PWD
# Instances the search step uses: the query's instance and a distractor from another video.
query_instance=${SMOKE_QUERY_INSTANCE:-Box}
other_instance=${SMOKE_OTHER_INSTANCE:-Dog}
gui_seconds=${SMOKE_GUI_SECONDS:-20}

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
# The bundle must run on its own: no venv, no user state.
unset PYTHONPATH PYTHONHOME LD_LIBRARY_PATH VIRTUAL_ENV
export XDG_CONFIG_HOME="$work/config" XDG_CACHE_HOME="$work/cache" DASR_ANNOTATOR_CACHE="$work/cache/dasr"
cd "$work"

passed=0
failed=0
ok() { echo "ok    $1"; passed=$((passed + 1)); }
fail() { echo "FAIL  $1"; failed=$((failed + 1)); }
show() { sed 's/^/      | /' "$1" | tail -n "${2:-15}"; }

# 1. --version prints the package version.
expected="dasr-annotator $(sed -n 's/^__version__ = "\(.*\)"/\1/p' "$repo/__init__.py")"
if out=$("$exe" --version 2>&1) && [[ "$out" == "$expected" ]]; then ok "--version: $out"; else fail "--version: got '$out', want '$expected'"; fi

# 2. Three frames of each instance, flattened into one photo folder; the query is the first
# frame of the query instance, with its ground-truth box.
mkdir photos
query=$(python3 - "$dev" "$query_instance" "$other_instance" <<'EOF'
import json, shutil, sys
from pathlib import Path
dev, wanted = Path(sys.argv[1]), sys.argv[2:]
instances = {i["name"]: i for i in json.loads((dev / "manifest.json").read_text())["instances"]}
for name in wanted:
    for entry in instances[name]["images"][:3]:
        shutil.copy(dev / entry["file"], Path("photos") / entry["file"].replace("/", "_"))
first = instances[wanted[0]]["images"][0]
print(first["file"].replace("/", "_"), ",".join(str(round(v)) for v in first["box"]))
EOF
)
read -r query_image query_box <<<"$query"
echo "      photos: $(ls photos | tr '\n' ' ')"

# 3. index: every image indexed, none skipped.
start=$SECONDS
if "$exe" index photos --json >index.json 2>index.err \
    && python3 -c 'import json,sys; r=json.load(open("index.json")); sys.exit(not (r["indexed"] == 6 and not r["skipped"]))'; then
    ok "index: $(python3 -c 'import json; r=json.load(open("index.json")); print(r["indexed"], "images,", r["regions"], "regions")') in $((SECONDS - start)) s"
else
    fail "index"; show index.err; cat index.json 2>/dev/null | head -20
fi

# 4. search: the query instance's two other frames rank above the distractor's frames.
start=$SECONDS
if "$exe" search photos --query "$query_image" --box "$query_box" --top 5 --json >search.json 2>search.err; then
    ranked=$(python3 - "$query_image" "$query_instance" <<'EOF'
import json, sys
query, instance = sys.argv[1:]
hits = [h["image"] for h in json.load(open("search.json"))["queries"][0]["hits"] if h["image"] != query]
print(" ".join(hits))
sys.exit(not (len(hits) >= 2 and all(h.startswith(f"images_{instance}_") for h in hits[:2])))
EOF
) && ok "search: $ranked ($((SECONDS - start)) s)" || fail "search ranked: $ranked"
else
    fail "search"; show search.err
fi

# 5. GUI, offscreen: still running after a while, no traceback, and nothing loaded from a venv.
QT_QPA_PLATFORM=offscreen "$exe" photos >gui.log 2>&1 &
gui=$!
sleep "$gui_seconds"
if kill -0 "$gui" 2>/dev/null; then
    outside=$(for pid in "$gui" $(pgrep -P "$gui" || true); do cat "/proc/$pid/maps"; done | awk '{print $6}' | grep -E 'site-packages|/\.venv/' | sort -u | head -3 || true)
    kill "$gui"
    wait "$gui" 2>/dev/null || true
    if grep -qE 'Traceback|PYI-[0-9]+:ERROR' gui.log; then fail "GUI: traceback"; show gui.log 30
    elif [[ -n "$outside" ]]; then fail "GUI: loaded files from outside the bundle: $outside"
    else ok "GUI offscreen: running after ${gui_seconds} s, closed without a traceback"; fi
else
    wait "$gui" && rc=0 || rc=$?
    fail "GUI exited early (rc $rc)"; show gui.log 30
fi

echo "smoke ($bundle): $passed passed, $failed failed"
[[ $failed == 0 ]]
