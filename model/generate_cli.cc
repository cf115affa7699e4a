// Shared generate flags and session (see generate_cli.h).
#include "model/generate_cli.h"

#include <cstdio>
#include <iostream>
#include <optional>
#include <sstream>

#include <nlohmann/json.hpp>

#include "common/npy.h"
#include "common/request_limits.h"
#include "model/tokenizer/chat_template.h"
#include "model/tokenizer/tokenizer.h"

namespace deepshard::model {

namespace {

StatusOr<std::vector<int32_t>> parse_token_list(const std::string& s) {
    std::vector<int32_t> out;
    std::stringstream ss(s);
    std::string item;
    while (std::getline(ss, item, ',')) {
        if (item.empty()) continue;
        try {
            size_t used = 0;
            long v = std::stol(item, &used);
            if (used != item.size() || v < 0 || v > INT32_MAX) throw std::invalid_argument(item);
            out.push_back(static_cast<int32_t>(v));
        } catch (const std::exception&) {
            return invalid_argument("--tokens: '" + item + "' is not a token id");
        }
    }
    if (out.empty()) return invalid_argument("--tokens: no token ids given");
    return out;
}

Status run_session(const GenerateOptions& args, const Checkpoint& ckpt, const StepFn& step, const DraftFn& draft) {
    const ModelConfig& cfg = ckpt.config();

    std::optional<Tokenizer> tok;
    if (auto t = Tokenizer::load(ckpt.dir()); t.ok()) {
        tok = std::move(t).value();
        DS_RETURN_IF_ERROR(tok->check_model_vocab(cfg.vocab_size, ckpt.dir()));
    } else if (!args.prompt.empty()) {
        return t.status().with_context("--prompt needs the model's tokenizer");
    }

    std::vector<int32_t> prompt;
    if (!args.tokens.empty()) {
        DS_ASSIGN_OR_RETURN(prompt, parse_token_list(args.tokens));
    } else if (args.chat) {
        DS_ASSIGN_OR_RETURN(std::string text, apply_chat_template({{"user", args.prompt}}, true));
        DS_ASSIGN_OR_RETURN(prompt, tok->encode(text, false));  // the template already starts with BOS
    } else {
        DS_ASSIGN_OR_RETURN(prompt, tok->encode(args.prompt, tok->add_bos_token()));
    }
    for (int32_t id : prompt) {
        if (id >= cfg.vocab_size) {
            return invalid_argument("prompt token " + std::to_string(id) + " is outside the model's vocabulary of " +
                                    std::to_string(cfg.vocab_size));
        }
    }

    GenerateRequest req;
    req.prompt = prompt;
    req.eos_id = static_cast<int32_t>(cfg.eos_token_id);
    req.prefill_chunk = args.prefill_chunk;
    req.prompt_logits = !args.dump_logits.empty();
    req.draft_tokens = args.speculative.empty() ? 0 : (args.draft_tokens == 0 ? 1 : args.draft_tokens);
    SamplingParams& p = req.params;
    p.temperature = args.temperature;
    p.top_k = args.top_k;
    p.top_p = args.top_p;
    p.min_p = args.min_p;
    p.repetition_penalty = args.repetition_penalty;
    p.frequency_penalty = args.frequency_penalty;
    p.presence_penalty = args.presence_penalty;
    if (args.seed >= 0) {
        p.seed = static_cast<uint64_t>(args.seed);
        p.has_seed = true;
    }
    p.max_tokens = static_cast<int>(args.max_tokens);
    p.ignore_eos = args.ignore_eos;
    p.stop = args.stop;
    p.logprobs = args.logprobs;
    DS_RETURN_IF_ERROR(p.validate(static_cast<int>(cfg.vocab_size)));

    // Streaming text with stop strings: hold back what could still become a stop string.
    std::optional<IncrementalDecoder> dec;
    if (tok) dec.emplace(*tok, true);
    std::string text;
    size_t emitted = 0;
    bool stopped_by_string = false;
    auto on_token = [&](int32_t id) -> bool {
        if (!dec) return true;
        if (id == req.eos_id && !args.ignore_eos) return true;
        text += dec->feed(id);
        for (const auto& s : args.stop) {
            auto at = text.find(s);
            if (at != std::string::npos) {
                text.resize(at);
                stopped_by_string = true;
            }
        }
        size_t safe = text.size();
        if (!stopped_by_string) {
            for (const auto& s : args.stop) {
                for (size_t k = std::min(s.size() - 1, text.size()); k > 0; --k) {
                    if (text.compare(text.size() - k, k, s, 0, k) == 0) {
                        safe = std::min(safe, text.size() - k);
                        break;
                    }
                }
            }
        }
        if (!args.json && safe > emitted) {
            std::fwrite(text.data() + emitted, 1, safe - emitted, stdout);
            std::fflush(stdout);
            emitted = safe;
        }
        return !stopped_by_string;
    };
    DS_ASSIGN_OR_RETURN(GenerateResult r, generate(step, req, on_token, draft));
    if (dec && !stopped_by_string) {
        text += dec->flush();
    }
    if (!args.json) {
        if (text.size() > emitted) std::fwrite(text.data() + emitted, 1, text.size() - emitted, stdout);
        if (!tok) {
            for (size_t i = 0; i < r.tokens.size(); ++i) std::printf("%s%d", i ? "," : "", r.tokens[i]);
        }
        std::printf("\n");
    }

    if (!args.dump_logits.empty()) {
        DS_RETURN_IF_ERROR(write_npy_f32(args.dump_logits, {static_cast<int64_t>(prompt.size()), r.vocab},
                                         r.prompt_logits.data()));
    }
    if (args.json) {
        nlohmann::json j;
        j["prompt_tokens"] = prompt;
        j["generated_tokens"] = r.tokens;
        j["text"] = utf8::to_valid_lossy(text);
        j["finish_reason"] = r.finish_reason;
        const double n = static_cast<double>(r.tokens.size());
        j["timings"] = {{"prefill_seconds", r.prefill_seconds},
                        {"decode_seconds", r.decode_seconds},
                        {"prefill_tokens_per_second", r.prefill_seconds > 0 ? prompt.size() / r.prefill_seconds : 0.0},
                        {"decode_tokens_per_second", r.decode_seconds > 0 && n > 1 ? (n - 1) / r.decode_seconds : 0.0}};
        if (req.draft_tokens > 0) {
            const auto ratio = [](int64_t a, int64_t b) { return b > 0 ? static_cast<double>(a) / static_cast<double>(b) : 0.0; };
            j["speculative"] = {{"draft_tokens", r.spec_draft_tokens},
                                {"accepted_tokens", r.spec_accepted_tokens},
                                {"verify_steps", r.spec_verify_steps},
                                {"acceptance_ratio", ratio(r.spec_accepted_tokens, r.spec_draft_tokens)},
                                {"tokens_per_step", r.spec_verify_steps > 0
                                                        ? 1.0 + ratio(r.spec_accepted_tokens, r.spec_verify_steps)
                                                        : 0.0}};
        }
        if (args.logprobs > 0) {
            nlohmann::json lp = nlohmann::json::array();
            for (const auto& s : r.samples) {
                nlohmann::json top = nlohmann::json::array();
                for (const auto& [id, v] : s.top_logprobs) top.push_back({{"token", id}, {"logprob", v}});
                lp.push_back({{"token", s.token}, {"logprob", s.logprob}, {"top", top}});
            }
            j["logprobs"] = lp;
        }
        std::cout << j.dump() << std::endl;
    }
    return ok_status();
}

}  // namespace

void add_generate_options(CLI::App* cmd, GenerateOptions* o) {
    auto* prompt = cmd->add_option("--prompt", o->prompt, "prompt text (needs the model's tokenizer)");
    auto* tokens = cmd->add_option("--tokens", o->tokens, "prompt as comma-separated token ids");
    prompt->excludes(tokens);
    cmd->add_flag("--chat", o->chat, "wrap --prompt in the chat template as one user turn");
    cmd->add_option("--max-tokens", o->max_tokens, "tokens to generate")->check(CLI::Range(1, 1 << 20));
    cmd->add_option("--temperature", o->temperature, "0 = greedy");
    cmd->add_option("--top-k", o->top_k, "0 = off");
    cmd->add_option("--top-p", o->top_p, "nucleus sampling");
    cmd->add_option("--min-p", o->min_p, "min-p filter");
    cmd->add_option("--repetition-penalty", o->repetition_penalty, "HF-style repetition penalty");
    cmd->add_option("--frequency-penalty", o->frequency_penalty, "OpenAI frequency penalty");
    cmd->add_option("--presence-penalty", o->presence_penalty, "OpenAI presence penalty");
    cmd->add_option("--seed", o->seed, "sampling seed (same seed, same output)");
    cmd->add_flag("--ignore-eos", o->ignore_eos, "keep generating after EOS");
    cmd->add_option("--stop", o->stop, "stop string (repeatable)");
    cmd->add_option("--logprobs", o->logprobs, "top-n logprobs per token in --json output");
    cmd->add_flag("--json", o->json, "print one JSON object");
    cmd->add_option("--dump-logits", o->dump_logits, "write prompt logits [positions, vocab] as .npy");
    cmd->add_option("--prefill-chunk", o->prefill_chunk, "tokens per prefill step");
    cmd->add_option("--speculative", o->speculative,
                    "speculative decoding: \"mtp\" drafts with the model's MTP module (num_nextn_predict_layers > 0); "
                    "the output is unchanged, token for token");
    cmd->add_option("--draft-tokens", o->draft_tokens, "tokens drafted per step with --speculative (default 1)");
}

Status run_generate_session(const GenerateOptions& options, const Checkpoint& checkpoint, const StepFn& step,
                            const DraftFn& draft) {
    if (options.prompt.empty() && options.tokens.empty()) {
        return invalid_argument("generate needs --prompt or --tokens");
    }
    // The coordinator's rules for the same flags (coordinator/main.cc).
    if (!options.speculative.empty() && options.speculative != "mtp") {
        return invalid_argument("--speculative " + options.speculative + ": the only method is \"mtp\"");
    }
    if (options.speculative.empty() && options.draft_tokens != 0) {
        return invalid_argument("--draft-tokens needs --speculative mtp");
    }
    if (!options.speculative.empty()) {
        if (options.draft_tokens < 0 || options.draft_tokens > limits::kMaxDraftTokens) {
            return invalid_argument("--draft-tokens " + std::to_string(options.draft_tokens) + ": must be 1.." +
                                    std::to_string(limits::kMaxDraftTokens));
        }
        if (checkpoint.config().num_nextn_predict_layers <= 0) {
            return invalid_argument("--speculative mtp: the model has no MTP module (config.json "
                                    "num_nextn_predict_layers = 0); make one with `deepshard make-model ... --set "
                                    "num_nextn_predict_layers=1` or drop --speculative");
        }
        if (!draft) {
            return invalid_argument("--speculative mtp: this engine does not run the MTP module (deepshard generate "
                                    "--device cpu does; so does deepshard-coordinator --speculative mtp)");
        }
    }
    return run_session(options, checkpoint, step, draft);
}

}  // namespace deepshard::model
