# Device kit setup: FluidSynth + JACK from Debian 12, the Python wheels, the trimmed FluidR3_GM.
#
#   source .devicekit/setup.sh        (from the repo root, as root; or: bash .devicekit/setup.sh,
#                                      then eval the export lines it prints)
#
# Settings (environment): KIT_PREFIX (/opt/kit), KIT_SITE (/tmp/site), KIT_SF2
# (/tmp/kitsf/FluidR3_GM.sf2: the file stem must stay FluidR3_GM), PYTHON (python3),
# KIT_NO_SYSTEM=1 (touch nothing outside KIT_PREFIX/KIT_SITE/KIT_SF2: no ld.so.conf.d, ldconfig,
# /usr/lib/.../jack, /usr/local/bin or /usr/share/sounds links; LD_LIBRARY_PATH only -- a local
# simulation), KIT_NO_PRUNE=1 (keep every kit library, even those the system has: a local
# simulation of a bare machine), KIT_SKIP_JACK_TEST=1.
#
# One line per step; a failing step stops it with a non-zero status (return when sourced, exit
# when run).  Libraries: both tarballs go to $KIT_PREFIX/lib; a dependency that the system already
# has under the same SONAME is moved aside to lib/system-has/ (never shadow a newer system library
# with Debian 12's), except the entry points (libfluidsynth, libjack, libjackserver, libportaudio),
# which are always the kit's (data/fluidr3-shipped was rendered with them).

_kit_setup() {
    local kit prefix site sf2 py t0 t rc
    kit="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)" || return 1
    prefix="${KIT_PREFIX:-/opt/kit}"
    site="${KIT_SITE:-/tmp/site}"
    sf2="${KIT_SF2:-/tmp/kitsf/FluidR3_GM.sf2}"
    py="${PYTHON:-python3}"
    _kit_t0=$(date +%s%N)
    _kit_step() { echo "[kit $(awk -v a="$_kit_t0" -v b="$(date +%s%N)" 'BEGIN {printf "%.1f", (b - a) / 1e9}') s] $*"; }
    _kit_fail() { echo "[kit] FAILED: $*" >&2; }
    local entry="libfluidsynth.so.3 libjack.so.0 libjackserver.so.0 libportaudio.so.2"
    local arch="x86_64-linux-gnu"

    "$py" -c 'import sys; assert sys.version_info >= (3, 10)' 2>/dev/null \
        || { _kit_fail "$py: no Python >= 3.10"; return 1; }
    [ "$(uname -m)" = x86_64 ] || { _kit_fail "not an x86-64 machine"; return 1; }

    # 1. shared libraries and programs
    rm -rf "$prefix/lib" "$prefix/bin" && mkdir -p "$prefix" || { _kit_fail "cannot write $prefix"; return 1; }
    "$py" - "$prefix" "$kit/fluidlibs.tar.xz" "$kit/jacklibs.tar.xz" <<'EOF' || { _kit_fail "unpacking the libraries"; return 1; }
import sys, tarfile
for path in sys.argv[2:]:
    with tarfile.open(path) as tar:
        if hasattr(tarfile, "fully_trusted_filter"):
            tar.extractall(sys.argv[1], filter="fully_trusted")
        else:
            tar.extractall(sys.argv[1])
EOF
    local n_all n_aside=0 f name sys_libs
    n_all=$(ls "$prefix/lib" | grep -c '\.so')
    # sonames the system already provides (x86-64 entries of the loader cache outside the kit)
    sys_libs=$(ldconfig -p 2>/dev/null | awk -v p="$prefix/" '/x86-64/ && index($NF, p) != 1 {print $1}' | sort -u)
    mkdir -p "$prefix/lib/system-has"
    for f in "$prefix"/lib/*.so*; do
        name=$(basename "$f")
        case " $entry " in *" $name "*) continue ;; esac
        if [ -z "$KIT_NO_PRUNE" ] && grep -qxF "$name" <<<"$sys_libs"; then
            mv "$f" "$prefix/lib/system-has/" && n_aside=$((n_aside + 1))
        fi
    done
    # libpulse finds its private libpulsecommon-16.1.so through its RUNPATH: the system's libpulse
    # must get the system's, not the kit's (LD_LIBRARY_PATH would win over RUNPATH)
    if [ -e "$prefix/lib/system-has/libpulse.so.0" ]; then
        for f in "$prefix"/lib/libpulsecommon-*.so; do
            [ -e "$f" ] && mv "$f" "$prefix/lib/system-has/" && n_aside=$((n_aside + 1))
        done
    fi
    _kit_step "libraries: $n_all unpacked to $prefix/lib, $n_aside left to the system's copies (lib/system-has/)"

    # 2. loader: ld.so.conf.d + ldconfig (ctypes.util.find_library reads its cache), LD_LIBRARY_PATH
    export LD_LIBRARY_PATH="$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
    export JACK_DRIVER_DIR="$prefix/lib/jack"
    export PATH="$prefix/bin:$PATH"
    if [ -z "$KIT_NO_SYSTEM" ]; then
        echo "$prefix/lib" > /etc/ld.so.conf.d/00-kit.conf && ldconfig \
            || { _kit_fail "/etc/ld.so.conf.d/00-kit.conf + ldconfig (not root?)"; return 1; }
        for name in $entry; do
            f=$(ldconfig -p | awk -v n="$name" '$1 == n && /x86-64/ {print $NF; exit}')
            case "$f" in
                "$prefix"/*) ;;
                "") _kit_fail "$name is not in the loader cache after ldconfig"; return 1 ;;
                *) echo "[kit] warning: ldconfig prefers the system's $f to the kit's $name;" \
                        "LD_LIBRARY_PATH (exported) still picks the kit's" ;;
            esac
        done
        # jackd looks for drivers in /usr/lib/x86_64-linux-gnu/jack (compiled in) or JACK_DRIVER_DIR
        if [ ! -e "/usr/lib/$arch/jack" ]; then
            mkdir -p "/usr/lib/$arch" && ln -s "$prefix/lib/jack" "/usr/lib/$arch/jack"
        fi
        for name in jackd jack_lsp fluidsynth; do   # found without PATH too, if none is there
            [ -e "/usr/local/bin/$name" ] || [ -n "$(PATH=${PATH#"$prefix/bin:"} command -v $name)" ] \
                || ln -s "$prefix/bin/$name" "/usr/local/bin/$name"
        done
    fi
    local missing
    missing=$(for f in "$prefix"/lib/*.so* "$prefix"/lib/jack/*.so "$prefix"/bin/*; do
                  ldd "$f" 2>&1 | awk -v f="$(basename "$f")" '/not found/ {print f ": " $1}'; done | sort -u)
    [ -z "$missing" ] || { _kit_fail "unresolved libraries:"$'\n'"$missing"; return 1; }
    _kit_step "loader: $([ -z "$KIT_NO_SYSTEM" ] && echo "/etc/ld.so.conf.d/00-kit.conf + ldconfig, ")LD_LIBRARY_PATH, PATH, JACK_DRIVER_DIR set; ldd: everything resolves"

    # 3. Python packages
    rm -rf "$site" && mkdir -p "$site" || { _kit_fail "cannot write $site"; return 1; }
    rc=1
    if "$py" -m pip --version >/dev/null 2>&1; then
        "$py" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check \
            --target "$site" "$kit"/wheels/*.whl >/tmp/kit-pip.log 2>&1
        rc=$?
        [ "$rc" = 0 ] || { tail -5 /tmp/kit-pip.log; echo "[kit] pip failed: unzipping the wheels instead"; }
    fi
    if [ "$rc" != 0 ]; then   # no pip (or it failed): a wheel is a zip file
        rm -rf "$site" && mkdir -p "$site" && "$py" -c \
            'import sys, zipfile; [zipfile.ZipFile(w).extractall(sys.argv[1]) for w in sys.argv[2:]]' \
            "$site" "$kit"/wheels/*.whl
        rc=$?
    fi
    [ "$rc" = 0 ] || { _kit_fail "installing the wheels into $site"; return 1; }
    # packaging (mido) and typing_extensions (soundfile) come with pytest and torch: the kit's
    # copies only where they are missing, never shadowing the machine's
    for f in "$kit"/wheels/fallback/*.whl; do
        name=$(basename "$f" | cut -d- -f1)
        "$py" -c "import $name" 2>/dev/null && continue
        "$py" -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[2]).extractall(sys.argv[1])' "$site" "$f" \
            || { _kit_fail "installing $f"; return 1; }
        echo "[kit] python: $name was missing: installed from $(basename "$f")"
    done
    export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
    # (stderr to a file: PortAudio's ALSA probing talks there on a machine without sound cards)
    JACK_NO_START_SERVER=1 "$py" - "$prefix" 2>/tmp/kit-imports.log <<'EOF' \
        || { cat /tmp/kit-imports.log >&2; echo "[kit] WARNING: the joint import check failed (see the per-module check)"; }
import sys
import fluidsynth, soundfile, soxr, mido, rtmidi, jack, cffi, sounddevice
prefix = sys.argv[1]
maps = open("/proc/self/maps").read().split()
fl = sorted({p for p in maps if "libfluidsynth" in p})
pa = sorted({p for p in maps if "libportaudio" in p})
assert fl and all(p.startswith(prefix) for p in fl), f"libfluidsynth loaded from {fl}"
assert pa and all(p.startswith(prefix) for p in pa), f"libportaudio loaded from {pa}"
print(f"[kit] python: fluidsynth <- {fl[0]}, soundfile {soundfile.__version__} "
      f"(libsndfile {soundfile.__libsndfile_version__}), soxr {soxr.__version__}, "
      f"JACK-Client {jack.__version__}, sounddevice {sounddevice.__version__}")
EOF
    _kit_step "python: wheels in $site (PYTHONPATH), imports ok"

    # 4. the trimmed soundfont (sha256 checked)
    "$py" "$kit/make_kit.py" rebuild "$sf2" || { _kit_fail "rebuilding $sf2"; return 1; }
    export KIT_SF2="$sf2"
    if [ -z "$KIT_NO_SYSTEM" ] && [ ! -e /usr/share/sounds/sf2/FluidR3_GM.sf2 ]; then
        # bench.common.SF2 (FluidSynth's rows of the benchmarks: piano keys 24-96, a shipped program)
        mkdir -p /usr/share/sounds/sf2 && ln -s "$sf2" /usr/share/sounds/sf2/FluidR3_GM.sf2
    fi
    _kit_step "soundfont: $sf2 (sha256 ok)"

    # 5. JACK: the kit's jackd on the dummy driver, one client listing its ports
    if [ -z "$KIT_SKIP_JACK_TEST" ]; then
        local jname="kitcheck-$$" jpid ports="" i
        "$prefix/bin/jackd" -n "$jname" --no-realtime -d dummy -r 48000 -p 256 >"/tmp/$jname.log" 2>&1 &
        jpid=$!
        for i in $(seq 50); do
            ports=$(JACK_NO_START_SERVER=1 "$prefix/bin/jack_lsp" -s "$jname" 2>/dev/null) && [ -n "$ports" ] && break
            kill -0 "$jpid" 2>/dev/null || break
            sleep 0.1
        done
        kill "$jpid" 2>/dev/null; wait "$jpid" 2>/dev/null
        [ -n "$ports" ] || { _kit_fail "jackd -d dummy did not start:"$'\n'"$(tail -5 "/tmp/$jname.log")"; return 1; }
        _kit_step "jack: $prefix/bin/jackd -d dummy ran; ports: $(echo $ports)"
    fi

    echo "export PATH=\"$prefix/bin:\$PATH\" LD_LIBRARY_PATH=\"$LD_LIBRARY_PATH\" JACK_DRIVER_DIR=\"$JACK_DRIVER_DIR\" PYTHONPATH=\"$PYTHONPATH\" KIT_SF2=\"$sf2\""
    _kit_step "done"
}

if [ "${BASH_SOURCE[0]}" != "$0" ]; then
    _kit_setup
    return $?
else
    _kit_setup
    exit $?
fi
