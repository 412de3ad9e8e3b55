#!/usr/bin/env bash
# TAP test: what README.md shows is true.
#   - every ```c block is a whole program that compiles as shown (strict
#     C11, -Werror) against include/ and the built library, and runs;
#   - every environment variable the library reads (env::var in src/) has a
#     row in its table.
#
# Usage: check-readme.sh SOURCE_DIR BUILD_DIR
set -uo pipefail

if [ $# -ne 2 ]; then
    echo "usage: $0 SOURCE_DIR BUILD_DIR" >&2
    exit 2
fi
src=$1 build=$2
readme=$src/README.md

source "$(dirname "$0")/tap.sh"

tmp=$(mktemp -d "${TMPDIR:-/tmp}/aioctx-readme.XXXXXX") || exit 1
trap 'rm -rf "$tmp"' EXIT

# Writes the README's C blocks to $tmp/snippet-N.c.
awk -v dir="$tmp" '
    /^```c[ \t]*$/ { n++; out = dir "/snippet-" n ".c"; next }
    /^```/ { out = ""; next }
    out != "" { print > out }
' "$readme"

snippets=("$tmp"/snippet-*.c)
ok "$([ -e "${snippets[0]}" ]; echo $?)" "README.md has C snippets"
for c in "${snippets[@]}"; do
    [ -e "$c" ] || continue
    name=${c##*/}
    if "${CC:-cc}" -std=c11 -Wall -Wextra -Werror -Wpedantic -I"$src/include" "$c" \
            -o "${c%.c}" -L"$build" -laioctx -pthread >"$tmp/cc.log" 2>&1; then
        ok 0 "$name compiles as shown"
        if env LD_LIBRARY_PATH="$build" timeout 60 "${c%.c}" >"$tmp/run.log" 2>&1; then
            ok 0 "$name runs"
        else
            diag <"$tmp/run.log"
            ok 1 "$name runs"
        fi
    else
        diag <"$tmp/cc.log"
        ok 1 "$name compiles as shown"
    fi
done

vars=$(grep -rhoE 'env::var(_os)?\("[A-Z0-9_]+"' "$src/src" | sed 's/.*("\(.*\)"/\1/' | sort -u)
ok "$([ -n "$vars" ]; echo $?)" "the library reads environment variables: $(echo $vars)"
for v in $vars; do
    grep -q "^| \`$v\` |" "$readme"
    ok $? "README's environment table has $v"
done

echo "1..$n"
[ "$failed" -eq 0 ]
