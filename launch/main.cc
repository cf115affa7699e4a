// deepshard-launch: one command for a deployment (plan + model -> coordinator + supervised shard job).
//   deepshard-launch --model DIR --plan plan.json [--http 127.0.0.1:8000] [--max-restarts 3] ...
//                    [-- extra mpirun (or srun) arguments]
// See launch/launcher.h for what it does and launch/README.md for examples.
#include <CLI/CLI.hpp>
#include <cstdio>
#include <filesystem>

#include "common/logging.h"
#include "common/version.h"
#include "launch/launcher.h"

int main(int argc, char** argv) {
    deepshard::init_logging();
    deepshard::launch::LaunchOptions o;
    CLI::App app{
        "deepshard-launch: writes the hostfile, rankfile and MPI/UCX/NCCL environment for a plan, starts "
        "deepshard-coordinator and the shard job, and restarts the shard job when it dies.\n"
        "Arguments after `--` go to mpirun (or srun) before the shard program."};
    app.set_version_flag("--version", DEEPSHARD_VERSION_STRING);
    app.add_option("--model", o.model, "Model directory")->required();
    app.add_option("--plan", o.plan, "Plan JSON from `deepshard plan`")->required();
    app.add_option("--run-dir", o.run_dir,
                   "Where hostfile, rankfile, launch.env, ports.json go (default: new /tmp dir)");
    app.add_flag("--dry-run", o.dry_run, "Write and print the files and commands; start nothing");
    app.add_option("--coordinator-bin", o.coordinator_bin, "deepshard-coordinator (default: next to this program)");
    app.add_option("--shard-bin", o.shard_bin, "deepshard-shard (default: next to this program)");
    app.add_option("--mpirun", o.mpirun, "mpirun program")->capture_default_str();
    app.add_option("--http", o.http, "Coordinator HTTP address ('' disables)")->capture_default_str();
    app.add_option("--thrift", o.thrift, "Coordinator Thrift address ('' disables)")->capture_default_str();
    app.add_option("--control", o.control,
                   "Coordinator control address (default 127.0.0.1:0 on one host, <interface IPv4>:0 across hosts)");
    app.add_option("--api-key", o.api_key,
                   "API key the coordinator requires (handed over in a 0600 file; DS_API_KEYS or --api-key-file "
                   "keep it off this command line too)");
    app.add_option("--api-key-file", o.api_key_file, "File of API keys for the coordinator (one per line, mode 0600)");
    app.add_option("--tls-cert", o.tls_cert, "PEM certificate: TLS on the control port, HTTP and Thrift");
    app.add_option("--tls-key", o.tls_key, "PEM private key of --tls-cert");
    app.add_flag("--coordinator-retry", o.coordinator_retry,
                 "Coordinator keeps in-flight requests across a shard-job restart (its --retry)");
    app.add_option("--coordinator-arg", o.coordinator_args, "Extra coordinator argument (repeatable)")
        ->allow_extra_args(false);
    app.add_option("--coordinator-timeout-s", o.coordinator_timeout_s, "Deadline for the coordinator to listen")
        ->capture_default_str();
    app.add_option("--launcher", o.launcher, "Shard job launcher: mpirun or srun")->capture_default_str();
    app.add_option("--srun-mpi", o.srun_mpi, "srun --mpi= plugin")->capture_default_str();
    app.add_option("--hostfile", o.hostfile, "Use this hostfile instead of the one generated from the plan");
    app.add_option("--bind", o.bind, "CPU binding: rankfile (from the plan) or none")->capture_default_str();
    app.add_option("--iface", o.iface, "Network interface for MPI/UCX/NCCL (default: chosen, see launch.env)");
    app.add_option("--sysfs-root", o.sysfs_root, "sysfs to read NICs and RDMA GID tables from")->capture_default_str();
    app.add_option("--route-file", o.route_file, "Routing table (default route interface)")->capture_default_str();
    app.add_option("--shard-arg", o.shard_args, "Extra deepshard-shard argument (repeatable)")->allow_extra_args(false);
    app.add_option("--max-restarts", o.max_restarts, "Shard-job restarts in a row before giving up")
        ->capture_default_str();
    app.add_option("--backoff-s", o.backoff_s, "First restart delay; doubles per failure")->capture_default_str();
    app.add_option("--backoff-max-s", o.backoff_max_s, "Largest restart delay")->capture_default_str();
    app.add_option("--stable-after-s", o.stable_after_s, "A job that ran this long resets the restart count")
        ->capture_default_str();
    app.add_option("--stop-grace-s", o.stop_grace_s, "SIGTERM -> SIGKILL grace per process tree")
        ->capture_default_str();
    app.add_option("--drain-timeout-s", o.drain_timeout_s,
                   "On SIGTERM: how long the coordinator lets accepted requests finish (the shard job keeps "
                   "running meanwhile) before it ends the rest with an error; then the job is stopped")
        ->capture_default_str();
    app.add_option("mpi_args", o.mpi_args, "Extra mpirun/srun arguments (after --)");
    try {
        app.parse(argc, argv);
    } catch (const CLI::ParseError& e) {
        return app.exit(e);
    }
    // Every process (and every rank on other hosts, which may start in another directory) gets the
    // same absolute paths.
    for (std::string* path : {&o.model, &o.plan, &o.hostfile, &o.run_dir}) {
        std::error_code ec;
        if (!path->empty()) {
            *path = std::filesystem::absolute(*path, ec).string();
        }
    }
    return deepshard::launch::run_launcher(o);
}
