#!/usr/bin/env bash
# Build the one-folder bundle: packaging/build.sh [extra pyinstaller options, e.g. --clean]
#   DASR_BUNDLE_CPU_ONLY=1 packaging/build.sh   -> CPU-only variant (about 1.4 GB lighter)
# Creates .venv when missing and installs the project with its `package` extra (PyInstaller).
# Output: dist/dasr-annotator-VERSION[-cpu]/dasr-annotator; work files under build/.
# docs/packaging.md describes both variants and the smoke check (packaging/smoke.sh).
set -euo pipefail
cd "$(dirname "$0")/.."

variant=gpu
[[ "${DASR_BUNDLE_CPU_ONLY:-0}" == 1 ]] && variant=cpu

[[ -x .venv/bin/python ]] || python3 -m venv .venv
.venv/bin/pip install -q -e '.[package]'

version=$(.venv/bin/python -c 'import dasr_annotator; print(dasr_annotator.__version__)')
name="dasr-annotator-$version"
[[ $variant == cpu ]] && name+="-cpu"
bundle="dist/$name"

start=$SECONDS
# One work folder per variant, so switching variants keeps each one's analysis cache.
.venv/bin/pyinstaller --noconfirm --log-level WARN \
    --distpath dist --workpath "build/pyinstaller-$variant" "$@" dasr_annotator.spec
echo "built $bundle in $((SECONDS - start)) s"

internal="$bundle/_internal"
echo "size: $(du -sh "$bundle" | cut -f1). Largest folders (MiB):"
du -s --block-size=1M "$internal"/* | sort -rn | awk 'NR <= 8'
echo "Largest files (MiB):"
find "$internal" -type f -size +40M -printf '%s %P\n' | sort -rn | awk 'NR <= 12 {printf "%d\t%s\n", $1 / 1048576, $2}'

broken=$(find "$bundle" -xtype l)
[[ -z $broken ]] || { echo "error: symlinks to files not in the bundle:" $broken >&2; exit 1; }

# The xcb plugin needs a few X libraries that PyInstaller copies from the build host; a host
# without them yields a bundle that only runs offscreen. Say so instead of failing later.
for plugin in "$internal"/PySide6/Qt/plugins/platforms/*.so; do
    missing=$(LD_LIBRARY_PATH="$internal:$internal/PySide6/Qt/lib" ldd "$plugin" | awk '/not found/ {print $1}' | sort -u)
    if [[ -n $missing ]]; then
        echo "warning: $(basename "$plugin") will not load where these are missing (not on the build host):" $missing
    fi
done
