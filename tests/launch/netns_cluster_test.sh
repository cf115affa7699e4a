#!/usr/bin/env bash
# Multi-host tests over launch/netns-cluster (issue 4, item 6). Exit 77 = skipped (ctest
# SKIP_RETURN_CODE): not root, no `ip netns`, or (shard mode) the shard binaries are not usable yet.
#   netns_cluster_test.sh mpi ob1|ucx N   hostnames differ per rank; comm_mpi_test passes across N
#                                         namespaces; the traffic really crossed the veth links
#   netns_cluster_test.sh cleanup         `run` removes its namespaces when mpirun fails and when
#                                         it is killed by SIGTERM mid-run
#   netns_cluster_test.sh shard ob1|ucx   deepshard-shard pp=2,tp=2 (4 ranks over 2 namespaces)
#                                         reproduces the golden greedy tokens of tiny-bf16
#   netns_cluster_test.sh pd              prefill/decode disaggregation over 3 namespaces: the
#                                         coordinator on node 0, a decode job (tp=2) on node 1, a
#                                         prefill job (pp=2, --kv-listen) on node 2; the prompts' KV
#                                         crosses the veth links over UCX (tcp) and the greedy
#                                         outputs equal `deepshard generate`
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

# Prefill/decode disaggregation across namespaces (issue 13, part 4).
mode_pd() {
    local shard="$bin/bin/deepshard-shard" cli="$bin/bin/deepshard" coord="$bin/bin/deepshard-coordinator"
    local model="$src/testdata/golden/tiny-bf16"
    for b in "$shard" "$cli" "$coord"; do [[ -x $b ]] || skip "$b not built"; done
    command -v curl >/dev/null || skip "curl is unavailable"
    command -v python3 >/dev/null || skip "python3 is unavailable"
    pd_tmp="$(mktemp -d /tmp/netns_pd.XXXXXX)"
    trap 'rm -rf "$pd_tmp"; cleanup' EXIT
    local tmp="$pd_tmp"
    # Different layouts on purpose: the decode job's two ranks each fetch all 4 layers (tensor
    # parallel), from the prefill job's two stages (layers split between its ranks).
    "$cli" plan --model "$model" --layout tp=2 --numerics exact --kv-budget-mb 64 --out "$tmp/decode.json" >"$tmp/plan.log" 2>&1 \
        || { cat "$tmp/plan.log"; fail "deepshard plan tp=2"; }
    "$cli" plan --model "$model" --layout pp=2 --numerics exact --kv-budget-mb 64 --out "$tmp/prefill.json" >>"$tmp/plan.log" 2>&1 \
        || { cat "$tmp/plan.log"; fail "deepshard plan pp=2"; }
    cluster_up 3
    local n0=10.77.0.1 n2=10.77.0.3
    "$cluster" exec "$cluster_id" 0 -- "$coord" --model "$model" --name m --plan "$tmp/decode.json" \
        --control "$n0:0" --prefill-control "$n0:0" --prefill-plan "$tmp/prefill.json" --pd-min-prompt-tokens 2 \
        --no-prefix-cache --http 127.0.0.1:0 --thrift "" --control-secret-file "$tmp/secret" \
        --ports-file "$tmp/ports.json" >"$tmp/coordinator.log" 2>&1 &
    local i
    for ((i = 0; i < 300; ++i)); do
        [[ -s $tmp/ports.json ]] && break
        sleep 0.2
    done
    [[ -s $tmp/ports.json ]] || { cat "$tmp/coordinator.log"; fail "the coordinator did not start"; }
    local port_of='import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])'
    local http control prefill
    http="$(python3 -c "$port_of" "$tmp/ports.json" http)"
    control="$(python3 -c "$port_of" "$tmp/ports.json" control)"
    prefill="$(python3 -c "$port_of" "$tmp/ports.json" prefill_control)"
    # Each job runs on its own "host"; UCX_TLS=tcp keeps the KV on the network path (the hosts share
    # memory, and UCX would otherwise use it).
    local job_env=(env OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1 UCX_TLS=tcp
                   DS_CONTROL_SECRET_FILE="$tmp/secret")
    "$cluster" exec "$cluster_id" 1 -- "${job_env[@]}" mpirun -np 2 --oversubscribe -x UCX_TLS -x DS_CONTROL_SECRET_FILE \
        "$shard" --model "$model" --plan "$tmp/decode.json" --coordinator "$n0:$control" >"$tmp/decode.log" 2>&1 &
    "$cluster" exec "$cluster_id" 2 -- "${job_env[@]}" mpirun -np 2 --oversubscribe -x UCX_TLS -x DS_CONTROL_SECRET_FILE \
        "$shard" --model "$model" --plan "$tmp/prefill.json" --coordinator "$n0:$prefill" --kv-listen "$n2" \
        >"$tmp/prefill.log" 2>&1 &
    on0() { "$cluster" exec "$cluster_id" 0 -- "$@"; }
    metric() { on0 curl -s --max-time 10 "http://127.0.0.1:$http/metrics" | awk -v n="$1" '$1 == n {print $2}'; }
    for ((i = 0; i < 600; ++i)); do
        [[ $(metric deepshard_shard_job_up) == 1 && $(metric deepshard_prefill_job_up) == 1 ]] && break
        sleep 0.5
    done
    [[ $(metric deepshard_prefill_job_up) == 1 && $(metric deepshard_shard_job_up) == 1 ]] \
        || { tail -20 "$tmp/coordinator.log" "$tmp/decode.log" "$tmp/prefill.log"; fail "the two jobs did not register"; }
    local rx0 imported=0 p
    rx0="$(rx_bytes 1)"
    for p in "5,17,300,41,7,8,9,10,11" "100,200,300,400,500,600,700,800,900,1000,1100,1200,1300,1400,1500,1600,1700,1800,1900,2000,2100,2200,2300,2400,2500,2600,2700,2800,2900,3000,3100,3200,3300" "42,43"; do
        local body got want
        body="{\"model\":\"m\",\"prompt\":[$p],\"max_tokens\":12,\"ignore_eos\":true,\"temperature\":0,\"return_token_ids\":true}"
        got="$(on0 curl -s --max-time 300 -H 'Content-Type: application/json' -d "$body" "http://127.0.0.1:$http/v1/completions" \
               | python3 -c 'import json,sys; print(json.load(sys.stdin)["choices"][0]["token_ids"])')" \
            || { tail -20 "$tmp/coordinator.log" "$tmp/decode.log" "$tmp/prefill.log"; fail "request failed"; }
        want="$("$cli" generate --model "$model" --tokens "$p" --max-tokens 12 --ignore-eos --json --numerics exact 2>/dev/null \
                | python3 -c 'import json,sys; print([json.loads(l)["generated_tokens"] for l in sys.stdin if l.startswith("{")][-1])')"
        echo "prompt of $(($(tr -cd , <<<"$p" | wc -c) + 1)) tokens: disaggregated $got, one process $want"
        [[ $got == "$want" ]] || { tail -30 "$tmp/coordinator.log" "$tmp/decode.log" "$tmp/prefill.log"; fail "outputs differ"; }
        imported=$((imported + $(tr -cd , <<<"$p" | wc -c)))
    done
    local handoffs fetched failures
    handoffs="$(metric deepshard_pd_handoffs_total)"
    fetched="$(metric deepshard_kv_imported_tokens_total)"
    failures="$(metric deepshard_kv_import_failures_total)"
    echo "hand-offs $handoffs, imported positions $fetched (want $imported), failed imports $failures"
    [[ $handoffs == 3 && $fetched == "$imported" && $failures == 0 ]] || fail "the requests did not go through both jobs"
    # Each of the decode job's two ranks fetched 4 layers x 80 float32 values per imported position.
    local rx=$(($(rx_bytes 1) - rx0)) want_rx=$((imported * 2 * 4 * 80 * 4))
    echo "node 1 (decode) received $rx bytes on dseth0; the KV alone is $want_rx"
    ((rx >= want_rx)) || fail "the KV did not cross the namespaces"
    cluster_down_checked
}

case "${1:-}" in
    mpi) mode_mpi "${2:?net}" "${3:?node count}" ;;
    pd) mode_pd ;;
    cleanup) mode_cleanup ;;
    shard) mode_shard "${2:?net}" ;;
    *) echo "usage: $0 mpi ob1|ucx N | cleanup | shard ob1|ucx | pd" >&2; exit 2 ;;
esac
echo "PASSED"
