#!/usr/bin/env python3
"""Side-by-side CPU benchmark of deepshard's engine against llama.cpp on the same weights.

For every preset: deepshard's BF16 model against llama.cpp's BF16 GGUF made from it, and deepshard's
FP8 model (same shape and seed) against llama.cpp's Q8_0 GGUF of the BF16 model (llama.cpp reads no
FP8). Runs are interleaved round by round (deepshard fast, llama.cpp, deepshard exact, per pair) so
that load changes on a shared machine hit all engines alike; every figure is the median over rounds.

  decode batch 1 and 8 : tokens/s after a 32-token prompt (deepshard engine_bench; llama.cpp
                         llama-batched-bench -npp 32 -npl 1,8, S_TG)
  prefill 64 and 512   : tokens/s of one prompt, logits of the last position only (engine_bench;
                         llama-bench -p 64,512 -n 0)
  STREAM triad         : measured by engine_bench in the same process, right before its runs

A third pair per preset (unless --no-head-fp8) runs the FP8 model with --head-fp8: the output head
requantized to FP8 at load, as the Q8_0 file quantizes its head too.

Writes a markdown table (stdout and --out-md) and all raw runs as JSON (--out-json). Standard
library only; the GGUF conversion and builds are done by run_peer_bench.sh.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time


def run_rss(cmd, env=None):
    """Runs cmd, returns (stdout, stderr, peak RSS of that child in bytes)."""
    # errors="replace": the peer logs its vocabulary, whose synthetic tokens are not all valid UTF-8.
    with tempfile.TemporaryFile("w+", errors="replace") as fo, tempfile.TemporaryFile("w+", errors="replace") as fe:
        p = subprocess.Popen(cmd, stdout=fo, stderr=fe, env=env, text=True)
        _, status, ru = os.wait4(p.pid, 0)  # reap it here, for its own rusage
        p.returncode = os.waitstatus_to_exitcode(status)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    if p.returncode != 0:
        sys.stderr.write(err[-4000:])
        raise SystemExit(f"peer_bench: {' '.join(cmd)} failed with {p.returncode}")
    return out, err, ru.ru_maxrss * 1024


def deepshard(args, model, numerics, extra):
    env = dict(os.environ, DS_NUM_THREADS=str(args.threads))
    cmd = [os.path.join(args.build, "bin", "engine_bench"), "--model", model, "--batches", "1,8",
           "--prefill", args.prefill, "--decode", str(args.decode), "--reps", "1",
           "--stream-mb", str(args.stream_mb), "--numerics", numerics] + extra
    out, _, rss = run_rss(cmd, env)
    r = {"rss": rss, "prefill": {}, "decode": {}}
    for line in out.splitlines():
        if line.startswith("engine_bench:"):
            r["header"] = line
        if not line.startswith("JSON "):
            continue
        j = json.loads(line[5:])
        if j["phase"] == "prefill":
            r["prefill"][j["tokens"]] = j["tokens_per_s"]
        elif j["phase"] == "decode":
            r["decode"][j["batch"]] = j["tokens_per_s"]
            r["triad"] = j["triad_gbs"]
            r["bytes_per_token"] = j["bytes_per_token"]
    return r


def llama(args, gguf):
    bindir = os.path.join(args.llama_build, "bin")
    r = {"prefill": {}, "decode": {}, "rss": 0}
    # llama.cpp's OpenMP threads spin at every barrier by default; on a machine shared with other jobs
    # (more runnable threads than cores) that collapses its decode 5-20x (measured: 1.2-4.2 tok/s
    # spinning against 22-34 passive on the small preset), so passive waiting is the fair setting
    # there. On a quiet machine passive costs llama.cpp itself 2-3x of decode (Q8_0 batch 1: 39 tok/s
    # passive against 132 active, session 8), so there its default (active) is the fair one. `auto`
    # (the default) picks by the load average at start (see resolve_omp_wait).
    env = dict(os.environ, OMP_WAIT_POLICY=args.llama_omp_wait.upper())
    out, _, rss = run_rss([os.path.join(bindir, "llama-bench"), "-m", gguf, "-p", args.prefill, "-n", "0",
                           "-t", str(args.threads), "-r", "1", "-o", "json"], env)
    r["rss"] = max(r["rss"], rss)
    for e in json.loads(out):
        if e.get("n_gen", 0) == 0 and e.get("n_prompt", 0) > 0:
            r["prefill"][e["n_prompt"]] = e["avg_ts"]
    out, err, rss = run_rss([os.path.join(bindir, "llama-batched-bench"), "-m", gguf, "-c", "4096", "-b", "2048",
                             "-ub", "512", "-npp", "32", "-ntg", str(args.decode), "-npl", "1,8", "-t",
                             str(args.threads), "-tb", str(args.threads), "--output-format", "jsonl"], env)
    r["rss"] = max(r["rss"], rss)
    for line in (out + "\n" + err).splitlines():
        line = line.strip()
        if line.startswith("{") and "speed_tg" in line:
            j = json.loads(line)
            r["decode"][j["pl"]] = j["speed_tg"]
    return r


def med(xs):
    xs = [x for x in xs if x is not None]
    return statistics.median(xs) if xs else float("nan")


def others_running():
    """Mean number of runnable threads besides this one over about a second (/proc/stat's
    procs_running, sampled; the load average lags by minutes and would count our own build)."""
    samples = []
    for _ in range(10):
        try:
            with open("/proc/stat") as f:
                for line in f:
                    if line.startswith("procs_running"):
                        samples.append(int(line.split()[1]) - 1)
        except OSError:
            return 0.0
        time.sleep(0.1)
    return statistics.mean(samples) if samples else 0.0


def resolve_omp_wait(choice, threads):
    """`auto`: passive when other runnable threads leave fewer idle cores than the runs' threads
    (spinning threads and the other jobs would preempt each other), else llama.cpp's active default."""
    if choice != "auto":
        return choice
    busy = others_running()
    idle = (os.cpu_count() or 1) - busy
    mode = "active" if idle >= threads - 0.5 else "passive"
    print(f"peer_bench: {busy:.1f} other runnable threads on {os.cpu_count()} CPUs: llama.cpp runs with "
          f"OMP_WAIT_POLICY={mode}", file=sys.stderr)
    return mode


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--build", default="build")
    ap.add_argument("--llama-build", required=True, help="llama.cpp build folder (bin/llama-bench)")
    ap.add_argument("--models", default="out/bench", help="folder of PRESET-bf16 / PRESET-fp8 models")
    ap.add_argument("--gguf", required=True, help="folder of PRESET-bf16.gguf / PRESET-q8_0.gguf")
    ap.add_argument("--presets", default="small,medium")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--prefill", default="64,512")
    ap.add_argument("--decode", type=int, default=16)
    ap.add_argument("--stream-mb", type=int, default=256)
    ap.add_argument("--llama-omp-wait", choices=["auto", "passive", "active"], default="auto",
                    help="OMP_WAIT_POLICY of the llama.cpp runs (see llama()); auto: active (llama.cpp's "
                         "default) on a quiet machine, passive when the load average says it is shared")
    ap.add_argument("--no-head-fp8", action="store_true",
                    help="skip the third pair (deepshard's FP8 model with --head-fp8 against Q8_0)")
    ap.add_argument("--out-md", default=None)
    ap.add_argument("--out-json", default=None)
    args = ap.parse_args()
    args.llama_omp_wait = resolve_omp_wait(args.llama_omp_wait, args.threads)

    prefills = [int(p) for p in args.prefill.split(",")]
    raw = {}
    for preset in args.presets.split(","):
        pairs = [("BF16", f"{preset}-bf16", f"{preset}-bf16.gguf", []),
                 ("FP8 vs Q8_0", f"{preset}-fp8", f"{preset}-q8_0.gguf", [])]
        if not args.no_head_fp8:
            # DeepSeek's FP8 checkpoints keep the output head in BF16; the Q8_0 GGUF quantizes it. This
            # pair reads the same kind of bytes as the peer: the head requantized to FP8 at load.
            pairs.append(("FP8 + FP8 head vs Q8_0", f"{preset}-fp8", f"{preset}-q8_0.gguf", ["--head-fp8"]))
        for rnd in range(args.rounds):
            for name, model, gguf, extra in pairs:
                key = f"{preset} {name}"
                slot = raw.setdefault(key, {"fast": [], "exact": [], "llama": []})
                print(f"[{time.strftime('%H:%M:%S')}] {preset} {name} round {rnd + 1}/{args.rounds}", file=sys.stderr,
                      flush=True)
                slot["fast"].append(deepshard(args, os.path.join(args.models, model), "fast", extra))
                slot["llama"].append(llama(args, os.path.join(args.gguf, gguf)))
                slot["exact"].append(deepshard(args, os.path.join(args.models, model), "exact", extra))

    lines = []
    header = next((r["header"] for v in raw.values() for r in v["fast"] if "header" in r), "")
    lines.append(f"deepshard: `{header}`; llama.cpp b4747, {args.threads} threads, OMP_WAIT_POLICY="
                 f"{args.llama_omp_wait}; medians of {args.rounds} interleaved rounds")
    lines.append("")
    lines.append("| model | phase | deepshard fast tok/s | deepshard exact tok/s | llama.cpp tok/s | fast / llama.cpp "
                 "| exact / fast | STREAM triad GB/s | fast weight GB/s (% triad) | peak RSS deepshard / llama.cpp |")
    lines.append("|---|---|---:|---:|---:|---:|---:|---:|---:|---|")
    summary = {}
    for key, v in raw.items():
        triad = med([r.get("triad") for r in v["fast"] + v["exact"]])
        bpt = v["fast"][0].get("bytes_per_token", 0)
        rss_d = max(r["rss"] for r in v["fast"] + v["exact"])
        rss_l = max(r["rss"] for r in v["llama"])
        phases = [("decode b=1", "decode", 1), ("decode b=8", "decode", 8)] + [
            (f"prefill {p}", "prefill", p) for p in prefills]
        for label, kind, n in phases:
            f = med([r[kind].get(n) for r in v["fast"]])
            e = med([r[kind].get(n) for r in v["exact"]])
            ll = med([r[kind].get(n) for r in v["llama"]])
            bw = ""
            if label == "decode b=1" and bpt:
                gbs = f * bpt / 1e9
                bw = f"{gbs:.1f} ({100 * gbs / triad:.0f}%)"
            summary[f"{key} {label}"] = {"fast": f, "exact": e, "llama": ll, "fast_over_llama": f / ll if ll else None,
                                         "exact_over_fast": e / f if f else None, "triad": triad}
            lines.append(f"| {key} | {label} | {f:.1f} | {e:.1f} | {ll:.1f} | **{f / ll:.2f}** | {e / f:.2f} | "
                         f"{triad:.1f} | {bw} | {rss_d / 1e6:.0f} MB / {rss_l / 1e6:.0f} MB |")
        b1 = med([r["decode"].get(1) for r in v["fast"]])
        b8 = med([r["decode"].get(8) for r in v["fast"]])
        lines.append(f"| {key} | batch 8 / batch 1 | {b8 / b1:.2f}x | | | | | | | |")
    md = "\n".join(lines)
    print(md)
    if args.out_md:
        with open(args.out_md, "w") as f:
            f.write(md + "\n")
    if args.out_json:
        with open(args.out_json, "w") as f:
            json.dump({"raw": raw, "summary": summary, "args": vars(args)}, f, indent=1, default=str)


if __name__ == "__main__":
    main()
