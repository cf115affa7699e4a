#!/usr/bin/env bash
# deepshard-launch driving real processes (issue 6). Exit 77 = skipped (ctest SKIP_RETURN_CODE).
#   launcher_test.sh local    localhost, tiny-bf16 golden model, plan pp=2,tp=2 (4 ranks): /health
#                             turns 200, a completion returns the golden greedy tokens; a shard rank
#                             is killed and the launcher restarts the job (health 200 again, a new
#                             request answered, new rank PIDs); SIGTERM with an SSE stream in
#                             flight: the coordinator drains before the job is stopped, so the
#                             stream finishes with all its tokens, its finish chunk and [DONE]; the
#                             launcher exits 0 and every process it started (checked by PID) is gone
#   launcher_test.sh failures a shard job that keeps failing: restarted exactly --max-restarts times,
#                             then exit 1 naming the exhausted retries, coordinator stopped; the
#                             coordinator dying: exit 1 naming it, the (healthy) shard job stopped
#   launcher_test.sh netns    the launcher (and so the coordinator) in namespace 0 of a 2-node
#                             launch/netns-cluster, the shard job across both namespaces through
#                             netns-rsh; one request answered with the golden tokens
#   launcher_test.sh slurm    a single-node Slurm started here (munge with a generated key, slurmctld,
#                             slurmd; no cgroups), launch/slurm/deepshard.sbatch submitted with sbatch,
#                             a request answered with the golden tokens, scancel, everything stopped
# Env (set by ctest): DS_SOURCE_DIR, DS_BINARY_DIR. Every wait is bounded; only processes this test
# started are signalled, by PID.
set -euo pipefail

src="${DS_SOURCE_DIR:?DS_SOURCE_DIR not set}"
bin="${DS_BINARY_DIR:?DS_BINARY_DIR not set}/bin"
model="$src/testdata/golden/tiny-bf16"
launch="$bin/deepshard-launch"

skip() { echo "SKIPPED: $*"; exit 77; }
fail() { echo "FAILED: $*" >&2; exit 1; }

for b in deepshard deepshard-launch deepshard-coordinator deepshard-shard; do
    [[ -x $bin/$b ]] || fail "$bin/$b not built"
done
command -v curl >/dev/null || skip "curl is unavailable"
command -v python3 >/dev/null || skip "python3 is unavailable"
command -v mpirun >/dev/null || skip "mpirun is unavailable"
export OMPI_ALLOW_RUN_AS_ROOT=1 OMPI_ALLOW_RUN_AS_ROOT_CONFIRM=1

tmp="$(mktemp -d /tmp/ds_launch_test.XXXXXX)"
cleanups=()   # commands run on exit, last first
on_exit() {
    local i
    for ((i = ${#cleanups[@]} - 1; i >= 0; --i)); do eval "${cleanups[i]}" || true; done
    rm -rf "$tmp"
}
trap on_exit EXIT
trap 'exit 143' TERM INT

prompt_csv="$(python3 -c 'import json,sys; print(",".join(map(str, json.load(open(sys.argv[1]))["prompt_for_generation"])))' "$model/tokens.json")"
golden="$(python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))["greedy_generated"])' "$model/tokens.json")"
n_gen="$(python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["greedy_generated"]))' "$model/tokens.json")"
body="{\"model\": \"tiny-bf16\", \"prompt\": [$prompt_csv], \"max_tokens\": $n_gen, \"temperature\": 0, \"ignore_eos\": true}"

# Descendants of PID as "pid comm" lines (from /proc; zombies left out).
descendants() {
    python3 - "$1" <<'EOF'
import os, sys
procs = {}
for p in os.listdir("/proc"):
    if not p.isdigit():
        continue
    try:
        stat = open(f"/proc/{p}/stat").read()
    except OSError:
        continue
    comm = stat[stat.index("(") + 1:stat.rindex(")")]
    state, ppid = stat[stat.rindex(")") + 2:].split()[:2]
    if state != "Z":
        procs[int(p)] = (int(ppid), comm)
out, frontier = [], [int(sys.argv[1])]
while frontier:
    parent = frontier.pop()
    for pid, (pp, comm) in procs.items():
        if pp == parent:
            out.append(f"{pid} {comm}")
            frontier.append(pid)
print("\n".join(out))
EOF
}

# PIDs among $@ still alive (zombies count as gone).
alive_of() {
    local p out=""
    for p in "$@"; do
        local st
        st="$(awk '{print $3}' /proc/"$p"/stat 2>/dev/null || true)"
        [[ -n $st && $st != Z ]] && out+=" $p"
    done
    echo "$out"
}

# PIDs of live processes whose command line mentions $1 (the test's own plan path: only ours match).
job_pids() {
    local f out=""
    for f in /proc/[0-9]*/cmdline; do
        if { tr '\0' ' ' <"$f"; } 2>/dev/null | grep -qF -- "$1"; then
            local p="${f#/proc/}"
            p="${p%/cmdline}"
            [[ $p != "$$" && $p != "$BASHPID" && -n $(alive_of "$p") ]] && out+=" $p"
        fi
    done
    echo "$out"
}

# stop_daemon PID: SIGTERM, bounded wait, SIGKILL.
stop_daemon() {
    local i
    kill -TERM "$1" 2>/dev/null || return 0
    for ((i = 0; i < 100; ++i)); do
        kill -0 "$1" 2>/dev/null || { wait "$1" 2>/dev/null; return 0; }
        sleep 0.1
    done
    kill -KILL "$1" 2>/dev/null
    wait "$1" 2>/dev/null
}

# wait_file FILE SECONDS [PID]: until FILE exists (fails early when PID exits).
wait_file() {
    local i
    for ((i = 0; i < $2 * 10; ++i)); do
        [[ -s $1 || -S $1 ]] && return 0
        [[ -n ${3:-} ]] && ! kill -0 "$3" 2>/dev/null && return 1
        sleep 0.1
    done
    return 1
}

# http_code RUNNER PORT PATH: the status of GET (000 on no answer). RUNNER prefixes curl (netns).
http_code() {
    $1 curl -s -o /dev/null -w '%{http_code}' --max-time 5 "http://127.0.0.1:$2$3" 2>/dev/null || true
}

# wait_healthy RUNNER PORT SECONDS PID
wait_healthy() {
    local i
    for ((i = 0; i < $3 * 2; ++i)); do
        [[ $(http_code "$1" "$2" /health) == 200 ]] && return 0
        kill -0 "$4" 2>/dev/null || return 1
        sleep 0.5
    done
    return 1
}

# complete RUNNER PORT: the generated token ids of one greedy completion (python list), or the error.
complete() {
    local out
    out="$($1 curl -s --max-time 300 -H 'Content-Type: application/json' -d "$body" \
        "http://127.0.0.1:$2/v1/completions" 2>&1 || true)"
    python3 -c 'import json,sys
try:
    print(json.loads(sys.argv[1])["choices"][0]["token_ids"])
except Exception:
    print("bad answer: " + sys.argv[1][:400])' "$out"
}

check_tokens() {
    local got="$1" what="$2"
    echo "golden:    $golden"
    echo "$what: $got"
    [[ $got == "$golden" ]] || fail "$what: tokens differ from the golden greedy run"
}

json_field() { python3 -c 'import json,sys; print(json.load(open(sys.argv[1]))[sys.argv[2]])' "$1" "$2"; }

# stop_launcher PID LOG [clean]: SIGTERM, bounded wait, exit status 0, no descendant left. With
# "clean": the stop is a departure, not a failure: the coordinator logs no lost shard job (the
# leader said goodbye) and no process needed SIGKILL.
stop_launcher() {
    local pid="$1" log="$2" clean="${3:-}" kids i lines
    kids="$(descendants "$pid" | awk '{print $1}' | tr '\n' ' ')"
    echo "launcher $pid processes before SIGTERM: $kids"
    lines="$(wc -l <"$log")"
    kill -TERM "$pid"
    # Bounded by the drain period the launcher was given plus the stop grace.
    for ((i = 0; i < 1800; ++i)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    if kill -0 "$pid" 2>/dev/null; then
        tail -30 "$log"
        fail "deepshard-launch did not exit within 180 s of SIGTERM"
    fi
    local rc=0
    wait "$pid" || rc=$?
    ((rc == 0)) || { tail -30 "$log"; fail "deepshard-launch exited $rc after SIGTERM, want 0"; }
    local left=""
    for ((i = 0; i < 100; ++i)); do
        # shellcheck disable=SC2086
        left="$(alive_of $kids)"
        [[ -z $left ]] && break
        sleep 0.1
    done
    [[ -z $left ]] || fail "processes of the launcher still alive after it exited:$left"
    if [[ $clean == clean ]]; then
        local after
        after="$(tail -n +"$((lines + 1))" "$log")"
        if grep -E 'lost|needed SIGKILL' <<<"$after"; then
            echo "$after" | tail -40
            fail "SIGTERM: the shard job was reported lost or needed SIGKILL"
        fi
        # The coordinator drains, then ends the job's session itself (the job is stopped only after).
        grep -q 'stopping the coordinator (it drains' <<<"$after" ||
            { echo "$after" | tail -40; fail "SIGTERM: the launcher did not stop the coordinator first"; }
    fi
    echo "SIGTERM: launcher exited 0, its processes ($kids) are gone"
}

mode_local() {
    local run="$tmp/run" log="$tmp/launch.log"
    "$bin/deepshard" plan --model "$model" --layout pp=2,tp=2 --numerics exact --kv-budget-mb 64 --out "$tmp/plan.json" >"$tmp/plan.log" 2>&1 \
        || { cat "$tmp/plan.log"; fail "deepshard plan --layout pp=2,tp=2"; }
    # The stream below needs a few seconds on a loaded 2-core machine; the drain allows 120.
    local stream_tokens=400
    "$launch" --model "$model" --plan "$tmp/plan.json" --run-dir "$run" --http 127.0.0.1:0 --thrift 127.0.0.1:0 \
        --max-restarts 3 --backoff-s 0.5 --stop-grace-s 10 --drain-timeout-s 120 >"$log" 2>&1 &
    local pid=$!
    cleanups+=("kill -KILL $pid 2>/dev/null; for p in \$(descendants $pid | awk '{print \$1}'); do kill -KILL \$p; done 2>/dev/null")
    wait_file "$run/ports.json" 60 "$pid" || { cat "$log"; fail "no ports file from the coordinator"; }
    local http
    http="$(json_field "$run/ports.json" http)"
    # What the launcher wrote.
    grep -qx "$(hostname) slots=4" "$run/hostfile" || { cat "$run/hostfile"; fail "hostfile"; }
    [[ $(grep -c '^rank [0-3]=' "$run/rankfile") == 4 ]] || { cat "$run/rankfile"; fail "rankfile"; }
    grep -q 'OMPI_MCA_btl_tcp_if_include=lo' "$run/launch.env" || { cat "$run/launch.env"; fail "launch.env"; }

    wait_healthy "" "$http" 240 "$pid" || { tail -40 "$log"; fail "/health never turned 200"; }
    check_tokens "$(complete "" "$http")" "first answer"

    # Kill one rank: mpirun takes the job down, the launcher restarts it.
    local ranks victim
    ranks="$(descendants "$pid" | awk '$2 == "deepshard-shard" {print $1}' | sort -n | tr '\n' ' ')"
    [[ $(wc -w <<<"$ranks") == 4 ]] || { descendants "$pid"; fail "expected 4 deepshard-shard ranks, got '$ranks'"; }
    victim="$(awk '{print $NF}' <<<"$ranks")"
    echo "killing rank pid $victim of ($ranks)"
    kill -KILL "$victim"
    local i restarted=0
    for ((i = 0; i < 1200; ++i)); do
        grep -q 'restart 1/3' "$log" && { restarted=1; break; }
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    ((restarted)) || { tail -40 "$log"; fail "the launcher did not restart the shard job"; }
    # Health goes back to 200 with a new job (new rank PIDs).
    local ok=0 now
    for ((i = 0; i < 480; ++i)); do
        now="$(descendants "$pid" | awk '$2 == "deepshard-shard" {print $1}' | sort -n | tr '\n' ' ')"
        if [[ $(wc -w <<<"$now") == 4 && -z $(comm -12 <(tr ' ' '\n' <<<"$now" | sort) <(tr ' ' '\n' <<<"$ranks" | sort) | tr -d '\n') &&
              $(http_code "" "$http" /health) == 200 ]]; then
            ok=1
            break
        fi
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.5
    done
    ((ok)) || { tail -40 "$log"; fail "no healthy restarted shard job"; }
    echo "restarted job ranks: $now"
    check_tokens "$(complete "" "$http")" "after restart"

    # SIGTERM with a stream in flight (issue 12 item 4). The launcher must let the coordinator drain
    # before it stops the job: stopping the job first fails the stream ("shard job lost").
    local sbody="{\"model\": \"tiny-bf16\", \"prompt\": [$prompt_csv], \"max_tokens\": $stream_tokens, \"temperature\": 0, \"ignore_eos\": true, \"stream\": true}"
    curl -sN --max-time 300 -H 'Content-Type: application/json' -d "$sbody" \
        "http://127.0.0.1:$http/v1/completions" >"$tmp/stream.out" 2>&1 &
    local curl_pid=$!
    cleanups+=("kill $curl_pid 2>/dev/null")
    for ((i = 0; i < 600; ++i)); do
        grep -q '"token_ids"' "$tmp/stream.out" && break
        kill -0 "$curl_pid" 2>/dev/null || break
        sleep 0.1
    done
    grep -q '"token_ids"' "$tmp/stream.out" || { cat "$tmp/stream.out"; fail "the stream sent no token within 60 s"; }
    # Guard for the test's own premise (not a timing assertion on the server): the stream must
    # still be running when the signal goes out, else it would prove nothing.
    if grep -q '\[DONE\]' "$tmp/stream.out"; then
        fail "the $stream_tokens-token stream ended before SIGTERM; raise stream_tokens"
    fi
    stop_launcher "$pid" "$log" clean
    local crc=0
    wait "$curl_pid" || crc=$?
    ((crc == 0)) || { tail -c 600 "$tmp/stream.out"; fail "curl exited $crc (the stream did not end properly)"; }
    python3 - "$tmp/stream.out" "$stream_tokens" <<'PYEOF'
import json, sys
raw, want = open(sys.argv[1]).read(), int(sys.argv[2])
events = [l[6:] for l in raw.splitlines() if l.startswith("data: ")]
if not events or events[-1] != "[DONE]":
    sys.exit("FAILED: the stream did not end with [DONE]: ..." + raw[-400:])
tokens, finish = 0, None
for e in events[:-1]:
    j = json.loads(e)
    if "error" in j:
        sys.exit("FAILED: the in-flight stream got an error event on SIGTERM: " + e)
    for c in j["choices"]:
        tokens += len(c.get("token_ids") or [])
        finish = c.get("finish_reason") or finish
if tokens != want or finish != "length":
    sys.exit(f"FAILED: the stream ended with {tokens}/{want} tokens, finish_reason {finish}")
print(f"SIGTERM during a stream: it finished ({tokens} tokens, finish_reason {finish}, [DONE])")
PYEOF
}

mode_failures() {
    "$bin/deepshard" plan --model "$model" --layout pp=1,tp=2 --numerics exact --kv-budget-mb 64 --out "$tmp/plan.json" >"$tmp/plan.log" 2>&1 \
        || { cat "$tmp/plan.log"; fail "deepshard plan --layout pp=1,tp=2"; }
    # 1. Every job fails at once (the "shard" is false): 2 restarts, then give up.
    local log="$tmp/fail.log" rc=0 coord
    timeout 120 "$launch" --model "$model" --plan "$tmp/plan.json" --run-dir "$tmp/run1" --http 127.0.0.1:0 \
        --thrift 127.0.0.1:0 --shard-bin /bin/false --max-restarts 2 --backoff-s 0.1 --backoff-max-s 0.2 \
        >"$log" 2>&1 || rc=$?
    ((rc == 1)) || { cat "$log"; fail "launcher exited $rc with a failing shard job, want 1"; }
    [[ $(grep -c 'launch: shard job started' "$log") == 3 ]] || { cat "$log"; fail "want 3 attempts (1 + 2 restarts)"; }
    grep -q 'failed 3 time(s) in a row.*--max-restarts 2 exhausted' "$log" || { cat "$log"; fail "no clear reason"; }
    coord="$(json_field "$tmp/run1/ports.json" pid)"
    [[ -z $(alive_of "$coord") ]] || fail "coordinator $coord still alive after the launcher gave up"
    echo "retries exhausted: exit 1, 3 attempts, coordinator $coord stopped"

    # 2. The coordinator dies under a running job: exit 1, the job stopped.
    printf '#!/bin/sh\nexec sleep 300\n' >"$tmp/fake-shard"
    chmod +x "$tmp/fake-shard"
    log="$tmp/coord.log"
    "$launch" --model "$model" --plan "$tmp/plan.json" --run-dir "$tmp/run2" --http 127.0.0.1:0 \
        --thrift 127.0.0.1:0 --shard-bin "$tmp/fake-shard" --bind none >"$log" 2>&1 &
    local pid=$! i sleepers=""
    cleanups+=("kill -KILL $pid 2>/dev/null")
    wait_file "$tmp/run2/ports.json" 60 "$pid" || { cat "$log"; fail "no ports file"; }
    for ((i = 0; i < 600; ++i)); do
        sleepers="$(descendants "$pid" | awk '$2 == "sleep" {print $1}' | tr '\n' ' ')"
        [[ $(wc -w <<<"$sleepers") == 2 ]] && break
        sleep 0.1
    done
    [[ $(wc -w <<<"$sleepers") == 2 ]] || { descendants "$pid"; fail "the fake shard job never started 2 ranks"; }
    coord="$(json_field "$tmp/run2/ports.json" pid)"
    kill -KILL "$coord"
    rc=0
    for ((i = 0; i < 600; ++i)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && fail "launcher still running 60 s after its coordinator died"
    wait "$pid" || rc=$?
    ((rc == 1)) || { cat "$log"; fail "launcher exited $rc after the coordinator died, want 1"; }
    grep -q 'the coordinator exited (killed by signal 9' "$log" || { cat "$log"; fail "no clear reason"; }
    local left=""
    for ((i = 0; i < 100; ++i)); do
        # shellcheck disable=SC2086
        left="$(alive_of $sleepers)"
        [[ -z $left ]] && break
        sleep 0.1
    done
    [[ -z $left ]] || fail "shard ranks left after the coordinator died:$left"
    echo "coordinator died: exit 1, shard ranks ($sleepers) stopped"

    # 3. A requested shutdown (SIGTERM) without --run-dir: logged as requested, exit 0, nothing of
    # the job left, and the launcher's own run folder (made under TMPDIR) removed.
    mkdir -p "$tmp/tmpd"
    log="$tmp/term.log"
    TMPDIR="$tmp/tmpd" "$launch" --model "$model" --plan "$tmp/plan.json" --http 127.0.0.1:0 \
        --thrift 127.0.0.1:0 --shard-bin "$tmp/fake-shard" --bind none >"$log" 2>&1 &
    pid=$!
    cleanups+=("kill -KILL $pid 2>/dev/null")
    sleepers=""
    for ((i = 0; i < 600; ++i)); do
        sleepers="$(descendants "$pid" | awk '$2 == "sleep" {print $1}' | tr '\n' ' ')"
        [[ $(wc -w <<<"$sleepers") == 2 ]] && break
        sleep 0.1
    done
    [[ $(wc -w <<<"$sleepers") == 2 ]] || { cat "$log"; fail "the fake shard job never started 2 ranks"; }
    local rundir
    rundir="$(ls -d "$tmp"/tmpd/deepshard-launch.* 2>/dev/null | head -1)"
    [[ -n $rundir ]] || fail "no run folder under TMPDIR while the launcher runs"
    coord="$(json_field "$rundir/ports.json" pid)"
    kill -TERM "$pid"
    for ((i = 0; i < 600; ++i)); do
        kill -0 "$pid" 2>/dev/null || break
        sleep 0.1
    done
    kill -0 "$pid" 2>/dev/null && fail "launcher still running 60 s after SIGTERM"
    rc=0
    wait "$pid" || rc=$?
    ((rc == 0)) || { cat "$log"; fail "launcher exited $rc after SIGTERM, want 0"; }
    grep -q 'launch: signal 15 (Terminated): shutting down' "$log" || { cat "$log"; fail "SIGTERM not logged as a requested shutdown"; }
    grep -qi 'lost\|error' "$log" && { cat "$log"; fail "a requested shutdown logged an error"; }
    [[ ! -e $rundir ]] || fail "run folder $rundir left behind after SIGTERM"
    for ((i = 0; i < 100; ++i)); do
        # shellcheck disable=SC2086
        left="$(alive_of $sleepers $coord)"
        [[ -z $left ]] && break
        sleep 0.1
    done
    [[ -z $left ]] || fail "processes left after SIGTERM:$left"
    echo "SIGTERM: exit 0, logged as requested, run folder removed, ranks ($sleepers) and coordinator $coord gone"
}

mode_netns() {
    [[ $(id -u) -eq 0 ]] || skip "needs root (ip netns add)"
    command -v ip >/dev/null && ip netns list >/dev/null 2>&1 || skip "'ip netns' is unavailable"
    command -v unshare >/dev/null || skip "unshare is unavailable"
    local cluster="$src/launch/netns-cluster" id
    id="$(NETNS_CLUSTER_SLOTS=2 "$cluster" up 2)" || fail "netns-cluster up 2"
    cleanups+=("'$cluster' down '$id' >/dev/null 2>&1")
    echo "cluster $id"
    # The plan for the two namespace hosts: stage 0 on n0, stage 1 on n1 (activations cross the veth).
    "$bin/deepshard" plan --model "$model" --hostfile "/run/netns-cluster/$id/hostfile" --layout pp=2,tp=2 --numerics exact --kv-budget-mb 64 \
        --out "$tmp/plan.json" >"$tmp/plan.log" 2>&1 || { cat "$tmp/plan.log"; fail "deepshard plan --hostfile"; }
    local run="$tmp/run" log="$tmp/launch.log" rx0
    rx0="$(ip netns exec "$id-n1" cat /sys/class/net/dseth0/statistics/rx_bytes)"
    "$cluster" exec "$id" 0 -- "$launch" --model "$model" --plan "$tmp/plan.json" --run-dir "$run" \
        --http 127.0.0.1:0 --thrift 127.0.0.1:0 --max-restarts 0 --stop-grace-s 10 \
        -- --mca plm_rsh_agent "$src/launch/netns-rsh" >"$log" 2>&1 &
    local pid=$!
    cleanups+=("kill -KILL $pid 2>/dev/null")
    wait_file "$run/ports.json" 60 "$pid" || { cat "$log"; fail "no ports file from the coordinator"; }
    grep -qx "$id-n0 slots=2" "$run/hostfile" && grep -qx "$id-n1 slots=2" "$run/hostfile" \
        || { cat "$run/hostfile"; fail "hostfile for the namespace hosts"; }
    grep -q 'OMPI_MCA_btl_tcp_if_include=dseth0' "$run/launch.env" || { cat "$run/launch.env"; fail "interface"; }
    local http in_ns="ip netns exec $id-n0"
    http="$(json_field "$run/ports.json" http)"
    wait_healthy "$in_ns" "$http" 240 "$pid" || { tail -40 "$log"; fail "/health never turned 200"; }
    check_tokens "$(complete "$in_ns" "$http")" "across namespaces"
    local rx=$(($(ip netns exec "$id-n1" cat /sys/class/net/dseth0/statistics/rx_bytes) - rx0))
    echo "node 1 received $rx bytes on dseth0"
    ((rx > 64 * 1024)) || fail "node 1 received only $rx bytes: the job did not run across the namespaces"
    stop_launcher "$pid" "$log"
}

mode_slurm() {
    local b
    for b in slurmctld slurmd munged sbatch scancel squeue srun scontrol; do
        command -v "$b" >/dev/null || [[ -x /usr/sbin/$b ]] || skip "slurm/munge binary $b is missing"
    done
    [[ $(id -u) -eq 0 ]] || skip "slurmd needs root here"
    local PATH="$PATH:/usr/sbin"
    local d="$tmp/slurm" tag
    tag="ds$(od -An -N4 -tx1 /dev/urandom | tr -d ' \n')"
    mkdir -p "$d/state" "$d/spool" "$d/munge" "$d/log"
    chmod 700 "$d/munge"
    # munge with a key of its own, on a socket of its own.
    dd if=/dev/urandom of="$d/munge/key" bs=1024 count=1 status=none
    chmod 400 "$d/munge/key"
    # Daemons run in the foreground as our children, so we hold their PIDs.
    munged --foreground --key-file="$d/munge/key" --socket="$d/munge/sock" --pid-file="$d/munge/pid" \
        --log-file="$d/munge/log" --seed-file="$d/munge/seed" --force >"$d/log/munged.out" 2>&1 &
    local munge_pid=$!
    cleanups+=("kill -TERM $munge_pid 2>/dev/null; wait $munge_pid 2>/dev/null")
    wait_file "$d/munge/sock" 10 "$munge_pid" || { cat "$d/log/munged.out" "$d/munge/log"; fail "munged did not start"; }

    local free_ports ctl_port node_port host
    free_ports="$(python3 -c 'import socket
ss=[socket.socket() for _ in range(2)]
[s.bind(("127.0.0.1",0)) for s in ss]
print(" ".join(str(s.getsockname()[1]) for s in ss))')"
    read -r ctl_port node_port <<<"$free_ports"
    host="$(hostname)"
    local mpi_default=none
    cat >"$d/slurm.conf" <<EOF
ClusterName=$tag
SlurmctldHost=$host(127.0.0.1)
SlurmctldPort=$ctl_port
SlurmdPort=$node_port
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket=$d/munge/sock
StateSaveLocation=$d/state
SlurmdSpoolDir=$d/spool/%n
SlurmctldPidFile=$d/slurmctld.pid
SlurmdPidFile=$d/slurmd.pid
SlurmctldLogFile=$d/log/slurmctld.log
SlurmdLogFile=$d/log/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
SchedulerType=sched/builtin
MpiDefault=$mpi_default
ReturnToService=2
SlurmdParameters=config_overrides
KillWait=10
InactiveLimit=0
MinJobAge=30
NodeName=$tag NodeHostname=$host NodeAddr=127.0.0.1 CPUs=8 RealMemory=1000 State=UNKNOWN
PartitionName=$tag Nodes=$tag Default=YES MaxTime=INFINITE State=UP
EOF
    export SLURM_CONF="$d/slurm.conf"
    if srun --mpi=list 2>&1 | grep -qw pmix; then
        sed -i 's/^MpiDefault=none/MpiDefault=pmix/' "$d/slurm.conf"
    fi
    slurmctld -D -i -f "$d/slurm.conf" >"$d/log/slurmctld.out" 2>&1 &
    local ctld_pid=$!
    cleanups+=("stop_daemon $ctld_pid")
    mkdir -p "$d/spool/$tag"
    slurmd -D -f "$d/slurm.conf" -N "$tag" >"$d/log/slurmd.out" 2>&1 &
    local slurmd_pid=$!
    cleanups+=("stop_daemon $slurmd_pid")
    local i state=""
    for ((i = 0; i < 300; ++i)); do
        state="$(sinfo -h -N -o '%t' 2>/dev/null | head -1 || true)"
        [[ $state == idle ]] && break
        sleep 0.1
    done
    [[ $state == idle ]] || { kill -0 $ctld_pid; kill -0 $slurmd_pid; cat "$d/log/"*.out; sinfo -N -l 2>&1; tail -20 "$d/log/slurmctld.log" "$d/log/slurmd.log"; fail "node never idle ($state)"; }
    echo "slurm cluster $tag up (mpi plugins: $(srun --mpi=list 2>&1 | tr -s ' \n' ' '))"

    # The job: coordinator on the node, 4 shard tasks via srun.
    local run="$tmp/run" plan="$tmp/plan.json"
    "$bin/deepshard" plan --model "$model" --layout pp=2,tp=2 --numerics exact --kv-budget-mb 64 --out "$plan" >"$tmp/plan.log" 2>&1 \
        || { cat "$tmp/plan.log"; fail "deepshard plan"; }
    local job
    job="$(cd "$tmp" && sbatch --parsable --nodes=1 --ntasks=4 --output="$tmp/job.out" \
        --export="ALL,DS_MODEL=$model,DS_PLAN=$plan,DS_BIN=$bin,DS_RUN_DIR=$run,DS_HTTP=127.0.0.1:0,DS_THRIFT=127.0.0.1:0,DS_MAX_RESTARTS=1" \
        "$src/launch/slurm/deepshard.sbatch")" || fail "sbatch refused the job"
    job="${job%%;*}"
    cleanups+=("scancel $job 2>/dev/null")
    echo "submitted job $job"
    for ((i = 0; i < 600; ++i)); do
        [[ -s $run/ports.json ]] && break
        [[ -z $(squeue -h -j "$job" 2>/dev/null) ]] && break
        sleep 0.1
    done
    [[ -s $run/ports.json ]] || { cat "$tmp/job.out" 2>/dev/null; squeue; fail "the job's coordinator wrote no ports file"; }
    local http ok=0
    http="$(json_field "$run/ports.json" http)"
    for ((i = 0; i < 480; ++i)); do
        [[ $(http_code "" "$http" /health) == 200 ]] && { ok=1; break; }
        [[ -n $(squeue -h -j "$job" 2>/dev/null) ]] || break
        sleep 0.5
    done
    ((ok)) || { cat "$tmp/job.out"; fail "/health never turned 200 under Slurm"; }
    grep -q 'srun --mpi=' "$tmp/job.out" || { cat "$tmp/job.out"; fail "the shard job was not started with srun"; }
    check_tokens "$(complete "" "$http")" "under Slurm"
    scancel "$job"
    local gone=0
    for ((i = 0; i < 600; ++i)); do
        [[ -z $(squeue -h -j "$job" 2>/dev/null) ]] && { gone=1; break; }
        sleep 0.1
    done
    ((gone)) || fail "job $job still queued 60 s after scancel"
    for ((i = 0; i < 300; ++i)); do
        [[ $(http_code "" "$http" /health) == 000 ]] && break
        sleep 0.1
    done
    [[ $(http_code "" "$http" /health) == 000 ]] || fail "the coordinator still answers after scancel"
    # Nothing of the job is left: the coordinator (its PID is in the ports file) and every rank.
    local coord_pid left=""
    coord_pid="$(json_field "$run/ports.json" pid)"
    for ((i = 0; i < 300; ++i)); do
        left="$(alive_of "$coord_pid") $(job_pids "$plan")"
        [[ -z ${left// /} ]] && break
        sleep 0.1
    done
    [[ -z ${left// /} ]] || fail "job processes left after scancel:$left"
    echo "scancel: job gone, coordinator stopped"
}

case "${1:-}" in
    local) mode_local ;;
    failures) mode_failures ;;
    netns) mode_netns ;;
    slurm) mode_slurm ;;
    *) echo "usage: $0 local | failures | netns | slurm" >&2; exit 2 ;;
esac
echo "PASSED"
