// `deepshard generate`: single-process inference (DESIGN §7). Maps the checkpoint, faults the
// weights in (progress + GB/s), builds the whole model in this process and runs the shared
// generate session (model/generate_cli.h) over it.
#include <cstdio>

#include "cli/commands.h"
#include "common/logging.h"
#include "kernels/kernels.h"
#include "model/checkpoint.h"
#include "model/engine.h"
#include "model/generate_cli.h"

namespace deepshard::cli {

namespace {

struct GenerateArgs {
    std::string model;
    model::GenerateOptions options;
    int64_t kv_budget_mb = 1024;
    bool no_preload = false;
    std::string device = "cpu";
    // fast by default: BF16 dot products on CPUs with AVX512-BF16 (kernels/kernels.h); exact is the
    // float32 reference the golden sets are held to.
    std::string numerics = "fast";
    bool head_fp8 = false;
};

Status run_generate(const GenerateArgs& args) {
    DS_ASSIGN_OR_RETURN(auto ckpt_ptr, model::Checkpoint::open(args.model));
    std::shared_ptr<const model::Checkpoint> ckpt(std::move(ckpt_ptr));
    if (!args.no_preload) {
        DS_ASSIGN_OR_RETURN(model::LoadStats ls, ckpt->load());
        spdlog::info("loaded {:.1f} MB in {:.2f} s ({:.2f} GB/s)", ls.bytes / 1e6, ls.seconds, ls.gb_per_s());
    }
    DS_ASSIGN_OR_RETURN(model::Device device, model::parse_device(args.device));
    model::EngineOptions opt;
    opt.kv_budget_bytes = args.kv_budget_mb << 20;
    if (!kernels::parse_numerics(args.numerics, &opt.numerics)) {
        return invalid_argument("--numerics must be exact or fast, got \"" + args.numerics + "\"");
    }
    // The CPU kernels' ISA (amx, avx512bf16, avx512, avx2, scalar; DS_ISA forces a lower one): what
    // `fast` can run on this host.
    spdlog::info("engine: {}{}{}, numerics {}", model::device_name(device), device == model::Device::kCpu ? ", isa " : "",
                 device == model::Device::kCpu ? kernels::isa_name(kernels::active_isa()) : "",
                 kernels::numerics_name(opt.numerics));
    opt.precision = model::precision_for(opt.numerics);  // the same choice on a CUDA device
    opt.head_fp8 = args.head_fp8;
    model::ShardSpec spec;
    // The MTP module only when asked for (it costs its weights and a KV layer slot); only the CPU
    // engine runs it, and the session refuses --speculative on an engine without it.
    spec.has_mtp = !args.options.speculative.empty() && device == model::Device::kCpu &&
                   ckpt->config().num_nextn_predict_layers > 0;
    DS_ASSIGN_OR_RETURN(auto engine, model::create_engine(device, ckpt, spec, opt));
    model::StepFn step = [&](std::span<const model::SeqChunk> chunks) { return engine->step(chunks); };
    model::DraftFn draft;
    if (engine->has_mtp()) {
        draft = [&](std::span<const model::MtpChunk> chunks) { return engine->mtp_draft(chunks); };
    }
    return model::run_generate_session(args.options, *ckpt, step, draft);
}

}  // namespace

void register_generate(CLI::App& app, int* exit_code) {
    auto args = std::make_shared<GenerateArgs>();
    auto* cmd = app.add_subcommand("generate", "Run the model in this process and print the continuation");
    cmd->add_option("--model", args->model, "model directory")->required();
    model::add_generate_options(cmd, &args->options);
    cmd->add_option("--kv-budget-mb", args->kv_budget_mb, "KV cache pool size in MiB");
    cmd->add_flag("--no-preload", args->no_preload, "do not fault the weights in before running");
    cmd->add_option("--device", args->device, "compute device: cpu (the exact reference) or cuda")
        ->check(CLI::IsMember({"cpu", "cuda"}));
    cmd->add_option("--numerics", args->numerics,
                    "fast (default: BF16 dot products on the CPU; BF16 KV and FP8/BF16 GEMMs on CUDA) or exact (float32 "
                    "activations, the reference)")
        ->check(CLI::IsMember({"exact", "fast"}));
    cmd->add_flag("--head-fp8", args->head_fp8, model::kHeadFp8Help);
    cmd->callback([args, exit_code] {
        Status s = run_generate(*args);
        if (!s.ok()) {
            std::fprintf(stderr, "error: %s\n", s.to_string().c_str());
            *exit_code = 1;
        }
    });
}

}  // namespace deepshard::cli
