#!/usr/bin/env bash
# Communication benchmarks (issue 4): comm_bench (our MPI and UCX backends) beside ucx_perftest on
# the same transport in the same run. 2 ranks. Legs:
#   shm    one host: MPI ob1 + vader BTL;   UCX_TLS=shm; perftest UCX_TLS=shm
#   tcp    one host, loopback: MPI ob1 + tcp BTL on lo; UCX_TLS=tcp; perftest UCX_TLS=tcp
#   netns  two "hosts" (launch/netns-cluster: network namespaces joined by veth through a bridge):
#          MPI ob1 + tcp BTL on the veth; UCX_TLS=tcp on the veth; perftest server and client in the
#          two namespaces. Needs root; skipped with a note otherwise.
# Usage: bench/comm/run_comm_bench.sh [BUILD_DIR]        (default: build)
# Env: LEGS (default "shm tcp netns"), TIME_MS per cell (default 100), MIN_BYTES (8),
#      MAX_BYTES (default 4194304), PERFTEST_PORT (13457), RAW=1 to also print the raw rows,
#      DS_COMM_SPIN_US (comm layer spin budget, default here 1000000).
# Output: per leg, the exact commands, then one markdown table: medians (comm_bench: median of the
# timed iterations; perftest: 50th percentile latency, overall bandwidth). Sizes step by 4x.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
root="$(cd "$here/../.." && pwd)"
build="$(cd "${1:-$root/build}" && pwd)"
bench="$build/bin/comm_bench"
[[ -x "$bench" ]] || { echo "comm_bench not found in $build/bin (build target comm_bench)" >&2; exit 1; }
command -v ucx_perftest >/dev/null || { echo "ucx_perftest not found (Debian package ucx-utils)" >&2; exit 1; }
legs="${LEGS:-shm tcp netns}"
time_ms="${TIME_MS:-100}"
min_bytes="${MIN_BYTES:-8}"
max_bytes="${MAX_BYTES:-4194304}"
port="${PERFTEST_PORT:-13457}"
cluster="$root/launch/netns-cluster"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1
# --oversubscribe would make OpenMPI yield the CPU whenever a rank waits (mpi_yield_when_idle); on a
# busy 2-core host every yield costs a scheduler tick (4 ms), so spin instead, like ucx_perftest.
# Our comm layer spins DS_COMM_SPIN_US (default 1000) before it yields and then sleeps; on a loaded
# host that drops ping-pong into the same 4 ms regime, so spin for up to 1 s here too (override to
# measure the default policy).
export DS_COMM_SPIN_US="${DS_COMM_SPIN_US:-1000000}"
mpi_spin=(--mca mpi_yield_when_idle 0 -x DS_COMM_SPIN_US)
mpirun_local=(mpirun -np 2 --allow-run-as-root --oversubscribe --bind-to none "${mpi_spin[@]}"
              --mca btl_tcp_if_include lo --mca oob_tcp_if_include lo -x UCX_TLS)

tmp="$(mktemp -d /tmp/comm_bench.XXXXXX)"
cluster_id=""
cleanup() {
    [[ -z $cluster_id ]] || "$cluster" down "$cluster_id" >/dev/null 2>&1 || true
    rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 143' TERM INT

sizes() {
    local s=$min_bytes
    while ((s <= max_bytes)); do
        echo "$s"
        if ((s < max_bytes && s * 4 > max_bytes)); then s=$max_bytes; else s=$((s * 4)); fi
    done
}

# perftest_row TEST SIZE SERVER_ADDR -> "perftest OP SIZE us MB/s". The server and client run under
# the command prefixes in the arrays srv_pre and cli_pre (env, namespace).
perftest_row() {
    local test="$1" size="$2" addr="$3"
    local iters=2000 warm=200
    ((size >= 65536)) && { iters=300; warm=30; }
    ((size >= 1048576)) && { iters=100; warm=10; }
    local line=""
    for _ in 1 2 3; do
        "${srv_pre[@]}" timeout 120 ucx_perftest -p "$port" >/dev/null 2>&1 &
        local srv=$!
        # The server needs a moment to listen; the client retries its connect for a while.
        local i
        for ((i = 0; i < 30; ++i)); do
            sleep 0.1
            line="$("${cli_pre[@]}" timeout 120 ucx_perftest "$addr" -p "$port" -t "$test" -s "$size" \
                    -n "$iters" -w "$warm" -f 2>/dev/null | awk 'NF == 8 && $1 ~ /^[0-9]+$/ {print}')" || true
            [[ -n $line ]] && break
            kill -0 "$srv" 2>/dev/null || break
        done
        kill "$srv" 2>/dev/null || true
        wait "$srv" 2>/dev/null || true
        [[ -n $line ]] && break
    done
    [[ -n $line ]] || { echo "perftest $test failed to run size $size" >&2; return 0; }
    # -f columns: iters lat50 lat_avg lat_overall bw_avg bw_overall rate_avg rate_overall
    # (latency in us, one-way for *_lat; bandwidth in MiB/s -> MB/s here).
    if [[ $test == tag_lat ]]; then
        awk -v s="$size" '{printf "perftest tag_lat %d %.2f %.1f\n", s, $2, s / $2}' <<<"$line"
    else
        awk -v s="$size" '{printf "perftest tag_bw %d %.2f %.1f\n", s, s / ($6 * 1.048576), $6 * 1.048576}' <<<"$line"
    fi
}

# table LEG ROWS_FILE: markdown table joined by size.
table() {
    awk -v leg="$1" '
        { v[$1 " " $2 " " $3] = ($2 ~ /_bw$/) ? $5 : $4; seen[$3] = 1 }
        function g(k) { return (k in v) ? v[k] : "–" }
        END {
            printf "| bytes | MPI p2p lat µs | UCX p2p lat µs | perftest tag_lat µs | MPI p2p bw MB/s | UCX p2p bw MB/s | perftest tag_bw MB/s | MPI allreduce µs | MPI alltoallv µs |\n"
            printf "|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
            n = 0; for (s in seen) sz[++n] = s + 0
            for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (sz[j] < sz[i]) { t = sz[i]; sz[i] = sz[j]; sz[j] = t }
            for (i = 1; i <= n; i++) {
                s = sz[i]
                printf "| %d | %s | %s | %s | %s | %s | %s | %s | %s |\n", s,
                    g("mpi p2p_lat " s), g("ucx p2p_lat " s), g("perftest tag_lat " s),
                    g("mpi p2p_bw " s), g("ucx p2p_bw " s), g("perftest tag_bw " s),
                    g("mpi allreduce " s), g("mpi alltoallv " s)
            }
        }' "$2"
}

echo "# $(date -u +%FT%TZ); host: $(nproc) cores, load avg $(cut -d' ' -f1-3 /proc/loadavg), $(uname -r)"
echo "# $(mpirun --version | head -1); UCX $(ucx_info -v | awk '/Version/ {print $3}')"
echo "# TIME_MS=$time_ms MIN_BYTES=$min_bytes MAX_BYTES=$max_bytes DS_COMM_SPIN_US=$DS_COMM_SPIN_US"

for leg in $legs; do
    rows="$tmp/$leg.rows"
    : >"$rows"
    bench_args=(--time-ms "$time_ms" --min "$min_bytes" --max "$max_bytes")
    case $leg in
        shm|tcp)
            tls=$leg
            if [[ $leg == shm ]]; then btl="self,vader"; else btl="self,tcp"; fi
            cmd=(env "UCX_TLS=$tls" "${mpirun_local[@]}" --mca pml ob1 --mca btl "$btl" "$bench" "${bench_args[@]}")
            srv_pre=(env "UCX_TLS=$tls")
            cli_pre=(env "UCX_TLS=$tls")
            addr=127.0.0.1
            ;;
        netns)
            if [[ $(id -u) -ne 0 ]] || ! ip netns list >/dev/null 2>&1; then
                echo; echo "## leg netns: skipped (needs root and ip netns)"; continue
            fi
            cluster_id="$("$cluster" up 2)"
            tls=tcp
            cmd=(env UCX_TLS=tcp UCX_NET_DEVICES=dseth0 "$cluster" mpirun "$cluster_id" --net ob1 --
                 -np 2 "${mpi_spin[@]}" -x UCX_TLS -x UCX_NET_DEVICES "$bench" "${bench_args[@]}")
            srv_pre=(env UCX_TLS=tcp UCX_NET_DEVICES=dseth0 "$cluster" exec "$cluster_id" 1 --)
            cli_pre=(env UCX_TLS=tcp UCX_NET_DEVICES=dseth0 "$cluster" exec "$cluster_id" 0 --)
            addr=10.77.0.2
            ;;
        *) echo "unknown leg '$leg' (shm, tcp, netns)" >&2; exit 2 ;;
    esac
    echo
    echo "## leg $leg"
    echo "\$ ${cmd[*]}"
    "${cmd[@]}" 2>"$tmp/$leg.err" | awk '$1 == "mpi" || $1 == "ucx"' >>"$rows" \
        || { echo "comm_bench failed:" >&2; tail -20 "$tmp/$leg.err" >&2; }
    echo "\$ ${srv_pre[*]} ucx_perftest -p $port &  ${cli_pre[*]} ucx_perftest $addr -p $port -t tag_lat|tag_bw -s SIZE -n N -w W -f"
    for size in $(sizes); do
        for test in tag_lat tag_bw; do
            perftest_row "$test" "$size" "$addr" >>"$rows"
        done
    done
    if [[ $leg == netns ]]; then
        "$cluster" down "$cluster_id" >/dev/null
        cluster_id=""
    fi
    [[ -n ${RAW:-} ]] && cat "$rows"
    echo
    table "$leg" "$rows"
done
