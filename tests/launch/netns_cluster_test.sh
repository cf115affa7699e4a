#!/usr/bin/env bash
# Multi-host tests over launch/netns-cluster (issue 4, item 6). Exit 77 = skipped (ctest
# SKIP_RETURN_CODE): not root, no `ip netns`, or (shard mode) the shard binaries are not usable yet.
#   netns_cluster_test.sh mpi ob1|ucx N   hostnames differ per rank; comm_mpi_test passes across N
#                                         namespaces; the traffic really crossed the veth links
#   netns_cluster_test.sh cleanup         `run` removes its namespaces when mpirun fails and when
#                                         it is killed by SIGTERM mid-run
#   netns_cluster_test.sh shard ob1|ucx   deepshard-shard pp=2,tp=2 (4 ranks over 2 namespaces)
#                                         reproduces the golden greedy tokens of tiny-bf16
# Env (set by ctest): DS_SOURCE_DIR, DS_BINARY_DIR, NETNS_HOSTCHECK, COMM_MPI_TEST.
set -euo pipefail

src="${DS_SOURCE_DIR:?DS_SOURCE_DIR not set}"
bin="${DS_BINARY_DIR:?DS_BINARY_DIR not set}"
cluster="$src/launch/netns-cluster"
step_timeout=240

skip() { echo "SKIPPED: $*"; exit 77; }
fail() { echo "FAILED: $*" >&2; exit 1; }

[[ $(id -u) -eq 0 ]] || skip "needs root (ip netns add)"
command -v ip >/dev/null && ip netns list >/dev/null 2>&1 || skip "'ip netns' is unavailable"
command -v unshare >/dev/null || skip "unshare is unavailable"
command -v mpirun >/dev/null || skip "mpirun is unavailable"

ns_left() { local f c=0; for f in /run/netns/"$1"-*; do [[ -e $f ]] && c=$((c + 1)); done; echo "$c"; }

# Cluster owned by this test process; torn down on any exit.
cluster_id=""
cleanup() {
    if [[ -n $cluster_id ]]; then
        "$cluster" down "$cluster_id" >/dev/null 2>&1 || echo "warning: down $cluster_id failed" >&2
    fi
}
trap cleanup EXIT
trap 'exit 143' TERM INT

cluster_up() {
    cluster_id="$("$cluster" up "$1")" || fail "netns-cluster up $1"
    echo "cluster $cluster_id: $1 nodes"
}

cluster_down_checked() {
    "$cluster" down "$cluster_id" || fail "netns-cluster down $cluster_id"
    (($(ns_left "$cluster_id") == 0)) || fail "namespaces of $cluster_id left after down"
    [[ ! -e /run/netns-cluster/$cluster_id ]] || fail "state of $cluster_id left after down"
    cluster_id=""
}

rx_bytes() { ip netns exec "$cluster_id-n$1" cat /sys/class/net/dseth0/statistics/rx_bytes; }

mode_mpi() {
    local net="$1" n="$2"
    local hostcheck="${NETNS_HOSTCHECK:?}" mpitest="${COMM_MPI_TEST:?}"
    [[ -x $hostcheck && -x $mpitest ]] || fail "test binaries missing: $hostcheck $mpitest"
    cluster_up "$n"

    # 1. One rank per namespace, each on its own hostname; the requested PML was selected.
    local out
    out="$(timeout "$step_timeout" "$cluster" mpirun "$cluster_id" --net "$net" -- \
           -np "$n" --mca pml_base_verbose 10 "$hostcheck" 2>&1)" || { echo "$out"; fail "hostcheck mpirun"; }
    local hosts
    hosts="$(grep -E '^rank [0-9]+ host ' <<<"$out" | awk '{print $4}' | sort)"
    local want
    want="$(for ((k = 0; k < n; ++k)); do echo "$cluster_id-n$k"; done | sort)"
    echo "ranks ran on: $(tr '\n' ' ' <<<"$hosts")"
    [[ $hosts == "$want" ]] || { echo "$out"; fail "rank hostnames '$hosts' != '$want'"; }
    local pml="ob1"
    [[ $net == ucx ]] && pml="ucx"
    local selected
    selected="$(grep -c "select: component $pml selected" <<<"$out" || true)"
    ((selected == n)) || { echo "$out"; fail "pml $pml selected on $selected of $n ranks"; }

    # 2. The comm layer's multi-rank suite across the namespaces.
    local before=() k
    for ((k = 0; k < n; ++k)); do before[k]="$(rx_bytes "$k")"; done
    out="$(timeout "$step_timeout" "$cluster" mpirun "$cluster_id" --net "$net" -- -np "$n" "$mpitest" 2>&1)" \
        || { echo "$out"; fail "comm_mpi_test across $n namespaces ($net)"; }
    grep -q "\[  PASSED  \]" <<<"$out" || { echo "$out"; fail "comm_mpi_test printed no PASSED line"; }
    grep -q "\[  FAILED  \]" <<<"$out" && { echo "$out"; fail "comm_mpi_test reported failures"; }
    grep -E "tests from .* test suites ran|PASSED" <<<"$out" | sed 's/\x1b\[[0-9;]*m//g'

    # 3. The data really went over the veth links (not loopback / shared memory): every node
    #    received well over the handshake traffic (the suite moves megabytes).
    for ((k = 0; k < n; ++k)); do
        local got=$(($(rx_bytes "$k") - before[k]))
        echo "node $k received $got bytes on dseth0"
        ((got > 256 * 1024)) || fail "node $k received only $got bytes on dseth0"
    done
    cluster_down_checked
}

mode_cleanup() {
    # A failing job: run must report the failure and leave nothing behind.
    local id="dsnct$$"
    id="${id:0:12}"
    local rc=0
    timeout "$step_timeout" "$cluster" run 2 --id "$id" -- -np 2 false >/dev/null 2>&1 || rc=$?
    ((rc != 0)) || fail "run with a failing job exited 0"
    (($(ns_left "$id") == 0)) || fail "namespaces of $id left after a failed run"
    [[ ! -e /run/netns-cluster/$id ]] || fail "state of $id left after a failed run"
    echo "failed job: exit $rc, cleaned up"

    # A job killed mid-run (as a ctest timeout would): namespaces and all processes in them go.
    id="dsncs$$"
    id="${id:0:12}"
    "$cluster" run 2 --id "$id" -- -np 2 sleep 300 >/dev/null 2>&1 &
    local runner=$! ns p
    local i pids="" started=0
    for ((i = 0; i < 300 && started < 2; ++i)); do
        sleep 0.1
        started=0
        for ns in "$id-n0" "$id-n1"; do
            for p in $(ip netns pids "$ns" 2>/dev/null || true); do
                if [[ $(cat /proc/"$p"/comm 2>/dev/null) == sleep ]]; then
                    started=$((started + 1))
                    break
                fi
            done
        done
    done
    ((started == 2)) || { kill -TERM "$runner" 2>/dev/null; fail "job on $id never started its ranks"; }
    pids="$(for ns in "$id-n0" "$id-n1"; do ip netns pids "$ns" 2>/dev/null; done | tr '\n' ' ')"
    kill -TERM "$runner"
    rc=0
    for ((i = 0; i < 300; ++i)); do
        kill -0 "$runner" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$runner" 2>/dev/null && { kill -KILL "$runner"; fail "run did not exit within 30 s of SIGTERM"; }
    wait "$runner" || rc=$?
    ((rc == 143)) || fail "run exited $rc after SIGTERM, want 143"
    (($(ns_left "$id") == 0)) || fail "namespaces of $id left after SIGTERM"
    [[ ! -e /run/netns-cluster/$id ]] || fail "state of $id left after SIGTERM"
    # SIGKILLed processes linger for a moment as zombies until reaped; those count as gone.
    local alive=""
    for ((i = 0; i < 50; ++i)); do
        alive=""
        for p in $pids; do
            local state
            state="$(awk '{print $3}' /proc/"$p"/stat 2>/dev/null || true)"
            [[ -n $state && $state != Z ]] && alive+=" $p($(cat /proc/"$p"/comm 2>/dev/null))"
        done
        [[ -z $alive ]] && break
        sleep 0.1
    done
    [[ -z $alive ]] || fail "processes of the killed job still alive:$alive"
    echo "killed job: exit $rc, processes ($pids) gone, namespaces removed"
}

mode_shard() {
    local net="$1"
    local shard="$bin/bin/deepshard-shard" cli="$bin/bin/deepshard"
    local model="$src/testdata/golden/tiny-bf16"
    [[ -x $shard ]] || skip "$shard not built"
    [[ -x $cli ]] || skip "$cli not built"
    command -v python3 >/dev/null || skip "python3 needed to read the golden tokens"
    shard_tmp="$(mktemp -d /tmp/netns_shard.XXXXXX)"
    trap 'rm -rf "$shard_tmp"; cleanup' EXIT
    local tmp="$shard_tmp"
    "$cli" plan --model "$model" --layout pp=2,tp=2 --numerics exact --kv-budget-mb 64 --out "$tmp/plan.json" >"$tmp/plan.log" 2>&1 \
        || { cat "$tmp/plan.log"; skip "deepshard plan --layout pp=2,tp=2 failed"; }
    local prompt want
    prompt="$(python3 -c 'import json,sys; print(",".join(map(str, json.load(open(sys.argv[1]))["prompt_for_generation"])))' \
              "$model/tokens.json")"
    want="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["greedy_generated"])' "$model/tokens.json")"

    cluster_up 2
    local rc=0 rx0
    rx0="$(rx_bytes 1)"
    # --map-by node: ranks 0,2 on node 0 and 1,3 on node 1, so each stage's TP pair spans both hosts.
    timeout "$step_timeout" "$cluster" mpirun "$cluster_id" --net "$net" -- -np 4 \
        "$shard" --model "$model" --plan "$tmp/plan.json" --tokens "$prompt" --max-tokens 16 --ignore-eos --json \
        >"$tmp/out.txt" 2>"$tmp/err.txt" || rc=$?
    if ((rc != 0)); then
        tail -50 "$tmp/err.txt"
        fail "deepshard-shard across 2 namespaces ($net) exited $rc"
    fi
    local got
    got="$(python3 - "$tmp/out.txt" <<'EOF'
import json, sys
found = None
for line in open(sys.argv[1]):
    line = line.strip()
    if line.startswith("{"):
        try:
            obj = json.loads(line)
        except ValueError:
            continue
        if "generated_tokens" in obj:
            found = obj["generated_tokens"]
print(found)
EOF
)"
    echo "golden:    $want"
    echo "generated: $got"
    [[ $got == "$want" ]] || { cat "$tmp/out.txt"; tail -30 "$tmp/err.txt"; fail "tokens differ from the golden greedy run"; }
    local rx=$(($(rx_bytes 1) - rx0))
    echo "node 1 received $rx bytes on dseth0"
    ((rx > 64 * 1024)) || fail "node 1 received only $rx bytes: the job did not run across the namespaces"
    cluster_down_checked
}

case "${1:-}" in
    mpi) mode_mpi "${2:?net}" "${3:?node count}" ;;
    cleanup) mode_cleanup ;;
    shard) mode_shard "${2:?net}" ;;
    *) echo "usage: $0 mpi ob1|ucx N | cleanup | shard ob1|ucx" >&2; exit 2 ;;
esac
echo "PASSED"
