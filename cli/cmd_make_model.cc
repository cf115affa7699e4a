// `deepshard make-model`: a random-weight DeepSeek-V3 checkpoint in the published layout
// (DESIGN §6-7): preset, dtype, `--set key=value` overrides, seed, shard count, tokenizer files.
#include <cstdio>

#include "cli/commands.h"
#include "common/logging.h"
#include "model/make_model.h"
#include "model/tokenizer/tokenizer.h"

namespace deepshard::cli {

namespace {

struct MakeModelArgs {
    std::string preset;
    std::string out;
    std::string dtype = "fp8";
    uint64_t seed = 0;
    std::vector<std::string> sets;
    std::string tokenizer;
    int shards = 0;
    std::string mtp_init = "random";
};

Status run_make_model(const MakeModelArgs& a) {
    DS_ASSIGN_OR_RETURN(model::ModelConfig cfg, model::preset_config(a.preset));
    if (a.dtype != "fp8" && a.dtype != "bf16") {
        return invalid_argument("--dtype must be fp8 or bf16, got '" + a.dtype + "'");
    }
    cfg.quantization = model::QuantizationConfig{};
    cfg.quantization.fp8 = a.dtype == "fp8";
    if (!a.tokenizer.empty()) {
        // The vocabulary follows the tokenizer (a preset's smaller one would make every request with
        // a higher id fail); an explicit --set vocab_size below still wins, and make_model refuses
        // it when the tokenizer does not fit.
        DS_ASSIGN_OR_RETURN(model::Tokenizer tok, model::Tokenizer::load(a.tokenizer));
        if (cfg.vocab_size < tok.vocab_size()) {
            const int64_t v = model::vocab_for_tokenizer(tok.vocab_size());
            std::printf("vocab_size %lld -> %lld: the tokenizer in %s uses %d token ids (rounded up to a multiple "
                        "of 128)\n",
                        static_cast<long long>(cfg.vocab_size), static_cast<long long>(v), a.tokenizer.c_str(),
                        tok.vocab_size());
            cfg.vocab_size = v;
        }
    }
    for (const auto& kv : a.sets) {
        DS_RETURN_IF_ERROR(model::apply_override(&cfg, kv));
    }
    model::MakeModelOptions opt;
    opt.seed = a.seed;
    opt.shards = a.shards;
    opt.tokenizer_dir = a.tokenizer;
    opt.progress = true;
    if (a.mtp_init == "mirror") {
        opt.mtp_init = model::MakeModelOptions::MtpInit::kMirror;
    } else if (a.mtp_init != "random") {
        return invalid_argument("--mtp-init must be random or mirror, got '" + a.mtp_init + "'");
    }
    DS_ASSIGN_OR_RETURN(model::MakeModelResult r, model::make_model(cfg, a.out, opt));
    std::printf("wrote %s: %lld parameters, %.3f GB in %zu file(s), %.1f s (%.2f GB/s)\n", a.out.c_str(),
                static_cast<long long>(r.parameters), r.bytes / 1e9, r.files.size(), r.seconds,
                r.seconds > 0 ? r.bytes / r.seconds / 1e9 : 0.0);
    return ok_status();
}

}  // namespace

void register_make_model(CLI::App& app, int* exit_code) {
    auto args = std::make_shared<MakeModelArgs>();
    auto* cmd = app.add_subcommand("make-model", "Write a random-weight model in the DeepSeek-V3 checkpoint layout");
    cmd->add_option("--preset", args->preset, "tiny, small or medium (medium has >= 1B parameters)")->required();
    cmd->add_option("--out", args->out, "output directory")->required();
    cmd->add_option("--dtype", args->dtype, "fp8 (e4m3 with 128x128 block scales) or bf16");
    cmd->add_option("--seed", args->seed, "random seed: the same seed writes the same bytes");
    cmd->add_option("--set", args->sets, "override a config.json field, key=value (dotted: rope_scaling.factor=8)");
    cmd->add_option("--tokenizer", args->tokenizer,
                    "copy tokenizer.json and tokenizer_config.json from this directory; the vocabulary grows "
                    "to fit its ids");
    cmd->add_option("--mtp-init", args->mtp_init,
                    "MTP module (num_nextn_predict_layers > 0): random, or mirror (copies the last layer; drafts "
                    "approximate the main model, for speculative-decoding tests and benchmarks)");
    cmd->add_option("--shards", args->shards, "number of shard files (default: automatic; 1 = model.safetensors)");
    cmd->callback([args, exit_code] {
        Status s = run_make_model(*args);
        if (!s.ok()) {
            std::fprintf(stderr, "error: %s\n", s.to_string().c_str());
            *exit_code = 1;
        }
    });
}

}  // namespace deepshard::cli
