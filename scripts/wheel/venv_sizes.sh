#!/usr/bin/env bash
# Disk size of a fresh venv per install profile, from a built wheel (make wheel):
#   search-only   pip install WHEEL
#   +model        pip install 'WHEEL[model]' + latix model install (model files counted)
#   +model+eval   pip install 'WHEEL[model,eval]' + latix model install
#   everything    pip install 'WHEEL[model,eval,hub,export]' + latix model install
# Prints one line per profile (du -sm of the venv, model directory included) and the largest
# packages of each. Each venv is deleted after it is measured (everything: ~6 GB for a while).
#
#   scripts/wheel/venv_sizes.sh WHEEL [PYTHON]
set -euo pipefail
wheel="$(cd "$(dirname "$1")" && pwd)/$(basename "$1")"
python="${2:-python3}"
tmp="$(mktemp -d "${TMPDIR:-/tmp}/latix-venv-sizes.XXXXXX")"
trap 'rm -rf "$tmp"' EXIT
unset PYTHONPATH VIRTUAL_ENV

measure() {
    local name="$1" extras="$2"
    local v="$tmp/$name"
    "$python" -m venv "$v"
    "$v/bin/python" -m pip install -q --disable-pip-version-check "${wheel}${extras}"
    if [ -n "$extras" ]; then
        LATIX_MODEL_DIR="$v/model" "$v/bin/latix" model install > /dev/null
    fi
    local site
    site="$("$v/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    printf '%-14s %6s MB   largest: %s\n' "$name" "$(du -sm "$v" | cut -f1)" \
        "$(du -sm "$site"/* "$v/model" 2>/dev/null | sort -rn | head -n 4 \
            | awk '{n=split($2,p,"/"); printf "%s %s MB, ", p[n], $1}')"
    if "$v/bin/python" -c "import torch" 2>/dev/null; then echo "               (torch installed)"; fi
    rm -rf "$v"
}

measure search-only ""
measure +model "[model]"
measure +model+eval "[model,eval]"
measure everything "[model,eval,hub,export]"
