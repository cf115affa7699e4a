#!/usr/bin/env bash
# The .deb a user installs (issue 14): cpack builds it from this build tree (the programs are the
# ones already built: cpack stages, strips and compresses them), then
#   - as root, with no deepshard package already installed: `dpkg -i` into the real system (dpkg
#     checks the package's Depends against Debian 12's packages), and `dpkg -r` on the way out, so
#     the machine is left as found;
#   - otherwise (not root, or a deepshard package is installed already): `dpkg -x` into a temporary
#     root, run from there (the reason is printed);
# and from the installed paths: every program answers --version with this build's version and
# resolves all its libraries; `deepshard make-model --tokenizer <installed tokenizer>` + `generate`
# write and run a model; `generate` on the golden tiny model returns the reference greedy tokens;
# `plan` reads the installed full-model config; the Slurm script, configs and tokenizer are there.
# Exit 77 = skipped (no dpkg-deb / cpack). Env (ctest): DS_SOURCE_DIR, DS_BINARY_DIR, DS_VERSION.
set -euo pipefail

src="${DS_SOURCE_DIR:?}"
build="${DS_BINARY_DIR:?}"
version="${DS_VERSION:?}"
skip() { echo "SKIPPED: $*"; exit 77; }
fail() { echo "FAILED: $*" >&2; exit 1; }
command -v dpkg-deb >/dev/null || skip "dpkg-deb is unavailable (not a Debian system)"
command -v cpack >/dev/null || skip "cpack is unavailable"

tmp="$(mktemp -d /tmp/ds_deb_test.XXXXXX)"
installed_here=0
cleanup() {
    if [[ $installed_here == 1 ]]; then
        dpkg -r deepshard >/dev/null || echo "deb_test: dpkg -r deepshard failed" >&2
    fi
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

t0=$SECONDS
cpack -G DEB --config "$build/CPackConfig.cmake" -B "$tmp/pkg" >"$tmp/cpack.log" 2>&1 \
    || { cat "$tmp/cpack.log"; fail "cpack -G DEB failed"; }
deb=$(ls "$tmp"/pkg/deepshard_*.deb 2>/dev/null | head -n1)
[[ -f $deb ]] || { cat "$tmp/cpack.log"; fail "cpack wrote no deepshard_*.deb"; }
echo "deb_test: built $(basename "$deb") ($(du -h "$deb" | cut -f1)) in $((SECONDS - t0)) s"
[[ $(dpkg-deb -f "$deb" Version) == "$version" ]] || fail "package version $(dpkg-deb -f "$deb" Version) != $version"
depends=$(dpkg-deb -f "$deb" Depends)
echo "deb_test: Depends: $depends"
for lib in libspdlog libopenmpi openmpi-bin libthrift; do
    [[ $depends == *"$lib"* ]] || fail "Depends lacks $lib (dpkg-shlibdeps did not run?): $depends"
done

# Real install when we may (root) and nobody else's deepshard package is in the way. The lock
# serialises concurrent runs of this test on one machine; dpkg's own lock is waited for (bounded).
mode=extract
why=""
if [[ $(id -u) -ne 0 ]]; then
    why="not root"
elif ! command -v dpkg >/dev/null; then
    why="no dpkg"
fi
if [[ -z $why ]]; then
    exec 9>/var/lock/deepshard-deb-test.lock
    flock -w 300 9 || fail "another deb_test held /var/lock/deepshard-deb-test.lock for 300 s"
    if dpkg-query -W -f='${Status}' deepshard 2>/dev/null | grep -q "installed"; then
        why="a deepshard package is already installed; leaving it alone"
    else
        mode=dpkg
    fi
fi
if [[ $mode == dpkg ]]; then
    ok=0
    for _ in $(seq 60); do  # dpkg refuses at once while apt/dpkg elsewhere holds its lock
        installed_here=1
        if dpkg -i "$deb" >"$tmp/dpkg.log" 2>&1; then ok=1; break; fi
        grep -q "lock" "$tmp/dpkg.log" || break
        installed_here=0
        sleep 5
    done
    [[ $ok == 1 ]] || { cat "$tmp/dpkg.log"; fail "dpkg -i $(basename "$deb") failed"; }
    dpkg-query -W -f='${Status}' deepshard | grep -q "install ok installed" || fail "dpkg does not list deepshard as installed"
    prefix=/usr
    echo "deb_test: installed with dpkg -i (removed again on exit)"
else
    dpkg-deb -x "$deb" "$tmp/root"
    prefix="$tmp/root/usr"
    echo "deb_test: $why: extracted with dpkg-deb -x into $tmp/root instead of installing"
fi

bin="$prefix/bin"
share="$prefix/share/deepshard"
for p in deepshard deepshard-shard deepshard-coordinator deepshard-launch; do
    [[ -x $bin/$p ]] || fail "$bin/$p is not installed"
    if ldd "$bin/$p" | grep -q "not found"; then
        ldd "$bin/$p" | grep "not found" >&2
        fail "$bin/$p has unresolved libraries"
    fi
    out=$("$bin/$p" --version) || fail "$p --version failed"
    [[ $out == *"deepshard $version"* ]] || fail "$p --version printed '$out', expected deepshard $version"
done
echo "deb_test: $("$bin/deepshard" --version)"
for f in slurm/deepshard.sbatch configs/deepseek-v3-671b.json tokenizer/tokenizer.json tokenizer/tokenizer_config.json \
         examples/deepshard.thrift; do
    [[ -f $share/$f ]] || fail "$share/$f is not installed"
done
bash -n "$share/slurm/deepshard.sbatch" || fail "the installed Slurm script does not parse"

# A model made and run by the installed tools, with the installed tokenizer.
"$bin/deepshard" make-model --preset tiny --seed 3 --tokenizer "$share/tokenizer" --out "$tmp/model" >"$tmp/make.log" 2>&1 \
    || { cat "$tmp/make.log"; fail "installed make-model failed"; }
"$bin/deepshard" generate --model "$tmp/model" --prompt "Hello" --max-tokens 4 --ignore-eos --json >"$tmp/gen.json" \
    || fail "installed generate failed"
python3 - "$tmp/gen.json" <<'PY' || fail "installed generate did not produce 4 tokens"
import json, sys
r = json.load(open(sys.argv[1]))
assert len(r["generated_tokens"]) == 4, r
PY
# The reference check: the golden tiny model's greedy tokens.
golden="$src/testdata/golden/tiny-bf16"
prompt=$(python3 -c 'import json,sys; print(",".join(map(str, json.load(open(sys.argv[1]))["prompt_for_generation"])))' "$golden/tokens.json")
n=$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["greedy_generated"]))' "$golden/tokens.json")
"$bin/deepshard" generate --model "$golden" --tokens "$prompt" --max-tokens "$n" --ignore-eos --temperature 0 \
    --numerics exact --json \
    >"$tmp/golden.json" || fail "installed generate on the golden model failed"
python3 - "$tmp/golden.json" "$golden/tokens.json" <<'PY' || fail "installed generate differs from the golden tokens"
import json, sys
got = json.load(open(sys.argv[1]))["generated_tokens"]
want = json.load(open(sys.argv[2]))["greedy_generated"]
assert got == want, (got, want)
PY
"$bin/deepshard" plan --model "$share/configs/deepseek-v3-671b.json" --cluster 2x8xH100-80G >"$tmp/plan.txt" \
    || fail "installed plan on the installed config failed"

if [[ $mode == dpkg ]]; then
    dpkg -r deepshard >"$tmp/dpkg-r.log" 2>&1 || { cat "$tmp/dpkg-r.log"; fail "dpkg -r deepshard failed"; }
    installed_here=0
    [[ ! -e /usr/bin/deepshard ]] || fail "/usr/bin/deepshard is still there after dpkg -r"
    echo "deb_test: removed with dpkg -r"
fi
echo "deb_test: OK ($mode, $((SECONDS - t0)) s)"
