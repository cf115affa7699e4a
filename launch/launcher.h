// deepshard-launch: prepares and supervises one deployment. From a plan and a model directory it
// writes the hostfile, the rankfile (CPU binding) and launch.env (MPI/UCX/NCCL settings found from
// this host's interfaces and RDMA GID tables), starts deepshard-coordinator, waits for its ports
// file, then starts the shard job (mpirun or srun) pointed at the coordinator's control port. When the
// shard job dies it is restarted with exponential backoff, at most --max-restarts times in a row;
// the coordinator dying, or the retries running out, ends the launcher with a non-zero exit and a
// reason. SIGTERM/SIGINT/SIGHUP stop the shard job and then the coordinator (each by PID, with a
// bounded grace period before SIGKILL). Every wait is bounded.
#pragma once

#include <string>
#include <vector>

#include "common/status.h"
#include "launch/launch_config.h"

namespace deepshard::launch {

struct LaunchOptions {
    std::string model;
    std::string plan;
    std::string run_dir;  // where hostfile, rankfile, launch.env, ports.json go ("" = a fresh /tmp dir)
    bool dry_run = false;

    // Programs ("" = next to this executable, then PATH).
    std::string coordinator_bin;
    std::string shard_bin;
    std::string mpirun = "mpirun";

    // Coordinator.
    std::string http = "127.0.0.1:8000";
    std::string thrift = "127.0.0.1:9090";
    std::string control;  // "" = 127.0.0.1:0 on one host, <interface IPv4>:0 across hosts
    std::string api_key;       // written to RUN/api-keys (0600); never on the coordinator's command line
    std::string api_key_file;  // passed to the coordinator as is
    std::string tls_cert;      // with tls_key: TLS for control, HTTP and Thrift; the shard job
    std::string tls_key;       // verifies the control port against tls_cert
    bool coordinator_retry = false;  // the coordinator's --retry (re-run requests on a new job)
    std::vector<std::string> coordinator_args;
    double coordinator_timeout_s = 60;  // until its ports file appears

    // Shard job.
    std::string launcher = "mpirun";  // mpirun | srun
    std::string srun_mpi = "pmix";    // srun --mpi=
    std::string hostfile;             // use this hostfile instead of the generated one
    std::string bind = "rankfile";    // rankfile | none
    std::string iface;                // network interface override
    std::string sysfs_root = "/sys";
    std::string route_file = "/proc/net/route";
    std::vector<std::string> shard_args;
    std::vector<std::string> mpi_args;  // extra launcher arguments (after `--`); win over ours

    // Supervision.
    int max_restarts = 3;
    double backoff_s = 1;
    double backoff_max_s = 30;
    double stable_after_s = 300;  // a job that ran this long resets the restart count
    double stop_grace_s = 10;
    // On SIGTERM the coordinator drains first (the coordinator's --drain-timeout-s): accepted
    // requests get this long to finish while the shard job still runs; only then is the job stopped.
    double drain_timeout_s = 30;
};

// The result of preparing a launch: files written and the two command lines.
struct Prepared {
    PlanRanks plan;
    NetworkChoice net;
    LaunchEnv env;
    std::string run_dir;
    std::string hostfile;  // path
    std::string rankfile;  // path, "" when not binding
    std::vector<std::string> coordinator_argv;
    std::string ports_file;
    std::string control_host;  // what the shard leader dials (port comes from the ports file)
    // The job's control secret: a fresh RUN/control.secret (0600) per launch. The coordinator gets
    // its path; the shard job gets DS_CONTROL_SECRET_FILE (one host) or the value in
    // DS_CONTROL_SECRET (several hosts: rank 0 may run where the file is not), in its environment
    // only, never on a command line or in launch.env.
    std::string secret_file;
    std::vector<std::pair<std::string, std::string>> secret_env;
};

// Reads the plan, discovers this host, writes hostfile/rankfile/launch.env into the run dir.
StatusOr<Prepared> prepare(const LaunchOptions& o);

// The shard job command for a coordinator control endpoint "HOST:PORT".
std::vector<std::string> shard_job_argv(const LaunchOptions& o, const Prepared& p, const std::string& control);

// Prepares, then (unless dry_run) runs and supervises until a signal (exit 0) or a failure.
// Returns the process exit code; failures are logged with their reason.
int run_launcher(const LaunchOptions& o);

}  // namespace deepshard::launch
