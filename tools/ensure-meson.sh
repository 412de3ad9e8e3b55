# Sourced by tools/test.sh and tools/demo.sh: a fresh machine has no
# meson/ninja, and the project must install what it needs itself.
ensure_meson() {
    if command -v meson >/dev/null && command -v ninja >/dev/null; then
        return
    fi
    echo "== installing meson and ninja with pip"
    # Debian's system python refuses plain pip installs (PEP 668); fall back to
    # a --user install there.
    local pip=(python3 -m pip install --quiet --disable-pip-version-check
               --no-warn-script-location --root-user-action=ignore)
    "${pip[@]}" meson ninja 2>/dev/null ||
        "${pip[@]}" --user --break-system-packages meson ninja
    PATH="$(python3 -m site --user-base)/bin:$PATH"
    if command -v pyenv >/dev/null; then pyenv rehash; fi
    hash -r
    command -v meson >/dev/null && command -v ninja >/dev/null || {
        echo "meson/ninja still not on PATH after pip install" >&2
        return 1
    }
}

# Configures build/ (or refreshes it) and builds the library; `meson test`
# builds the tests it runs. build/ is a debug build (an unoptimized Rust
# library, quick to rebuild in the test cycle); a plain `meson setup DIR`
# is optimized (debugoptimized), for installing.
meson_build() {
    if [ -f build/build.ninja ]; then
        # A build dir from another meson version cannot be reconfigured.
        meson setup --reconfigure build --buildtype=debug ||
            meson setup --wipe build --buildtype=debug
    else
        meson setup build --buildtype=debug
    fi
    meson compile -C build "$@"
}
