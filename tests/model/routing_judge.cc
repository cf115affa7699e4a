// The routing-first judgement shared by the CPU and CUDA fast-precision golden tests (routing_judge.h).
#include "tests/model/routing_judge.h"

#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <sstream>

namespace deepshard::model::golden {

std::string golden_dir(const std::string& name) {
    const char* src = std::getenv("DS_SOURCE_DIR");
    return std::string(src ? src : ".") + "/testdata/golden/" + name;
}

nlohmann::json read_json(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    std::string text = ss.str();
    for (const auto& [from, to] : {std::pair<std::string, std::string>{"-Infinity", "-1e308"}, {"Infinity", "1e308"},
                                   {"NaN", "null"}}) {
        for (size_t pos = text.find(from); pos != std::string::npos; pos = text.find(from, pos + to.size())) {
            text.replace(pos, from.size(), to);
        }
    }
    return nlohmann::json::parse(text);
}

void Trace::attach(ForwardHooks& hooks) {
    hooks.on_final_norm = [this](const float* h, int64_t n, int64_t d) { final_norm.assign(h, h + n * d); };
    hooks.on_routing = [this](int64_t layer, int64_t, std::span<const int32_t> e, std::span<const float>) {
        experts[layer].emplace_back(e.begin(), e.end());
    };
    hooks.on_router_logits = [this](int64_t layer, int64_t, std::span<const float> x, std::span<const float> l) {
        router[layer].push_back({{x.begin(), x.end()}, {l.begin(), l.end()}});
    };
}

Trace traced_prefill(Engine& engine, const std::vector<int32_t>& prompt) {
    Trace r;
    ForwardHooks hooks;
    r.attach(hooks);
    engine.set_hooks(&hooks);
    SeqChunk chunk{.seq_id = 1, .tokens = prompt, .num_tokens = static_cast<int64_t>(prompt.size()), .start_pos = 0,
                   .logits = LogitsMode::kAll};
    auto out = engine.step(std::span<const SeqChunk>(&chunk, 1));
    engine.set_hooks(nullptr);
    EXPECT_TRUE(out.ok()) << out.status().to_string();
    if (out.ok()) r.logits = out->logits;
    engine.release(1);
    return r;
}

float RoutingJudge::score(int64_t layer, const std::vector<float>& logits, int64_t e) const {
    const auto& bias = weights_->layer(layer).bias;
    return 1.0f / (1.0f + std::exp(-logits[e])) + (bias.empty() ? 0.0f : bias[e]);
}

std::pair<double, double> RoutingJudge::score_change(int64_t layer, const RouterCall& exact,
                                                     const RouterCall& fast) const {
    const kernels::WeightView& g = weights_->layer(layer).gate;
    const int64_t H = static_cast<int64_t>(exact.input.size());
    double worst = 0, ratio = 0;
    for (int64_t e = 0; e < static_cast<int64_t>(exact.logits.size()); ++e) {
        double mag = 0;
        for (int64_t k = 0; k < H; ++k) mag += std::fabs(double(exact.input[k]) * g.at(e, k));
        const double bound = 0.25 * unit_ * (2.0 + static_cast<double>(layer)) * mag;
        const double d = std::fabs(score(layer, fast.logits, e) - score(layer, exact.logits, e));
        worst = std::max(worst, d);
        ratio = std::max(ratio, d / bound);
    }
    return {worst, ratio};
}

std::pair<double, double> RoutingJudge::logit_change(const float* h, const float* exact, const float* fast) const {
    const ModelConfig& c = weights_->config();
    const kernels::WeightView& hw = weights_->head();
    const double stages = 2.0 + static_cast<double>(c.num_hidden_layers);
    double worst = 0, ratio = 0;
    for (int64_t v = 0; v < c.vocab_size; ++v) {
        double mag = 0;
        for (int64_t k = 0; k < c.hidden_size; ++k) mag += std::fabs(double(h[k]) * hw.at(v, k));
        const double err = std::fabs(double(fast[v]) - exact[v]);
        worst = std::max(worst, err);
        ratio = std::max(ratio, err / (unit_ * mag * stages));
    }
    return {worst, ratio};
}

void RoutingJudge::judge_prefill(const nlohmann::json& golden, const Trace& exact, const Trace& fast) const {
    const ModelConfig& c = weights_->config();
    ASSERT_EQ(c.scoring_func, "sigmoid") << "the score derivation assumes sigmoid routing";
    const int64_t V = c.vocab_size, H = c.hidden_size;
    const int64_t T = static_cast<int64_t>(exact.logits.size()) / V;
    ASSERT_GT(T, 0);
    ASSERT_EQ(fast.logits.size(), exact.logits.size());
    ASSERT_EQ(exact.final_norm.size(), static_cast<size_t>(T * H));
    ASSERT_FALSE(golden.empty());
    std::vector<int64_t> layers;
    for (const auto& entry : golden) layers.push_back(entry["layer"].get<int64_t>());
    for (int64_t l : layers) {
        ASSERT_EQ(exact.experts.count(l), 1u) << "layer " << l << ": the exact engine reported no routing";
        ASSERT_EQ(fast.experts.count(l), 1u) << "layer " << l << ": the fast engine reported no routing";
        ASSERT_EQ(fast.router.count(l), 1u) << "layer " << l << ": the fast engine reported no router logits";
        ASSERT_EQ(fast.router.at(l).size(), static_cast<size_t>(T));
        ASSERT_EQ(exact.router.at(l).size(), static_cast<size_t>(T));
    }
    // The exact engine chooses the golden experts (golden_test checks this too; here it anchors the rest).
    for (const auto& entry : golden) {
        const int64_t l = entry["layer"].get<int64_t>();
        for (int64_t t = 0; t < T; ++t) {
            ASSERT_EQ(exact.experts.at(l)[t], entry["experts"][t].get<std::set<int32_t>>()) << "layer " << l;
        }
    }
    // first_flip[t]: the first MoE layer (index into `layers`) where fast chose other experts than the
    // golden set at position t (layers.size() when none).
    std::vector<size_t> first_flip(T, layers.size());
    for (size_t li = 0; li < layers.size(); ++li) {
        for (int64_t t = 0; t < T; ++t) {
            if (first_flip[t] == layers.size() &&
                fast.experts.at(layers[li])[t] != golden[li]["experts"][t].get<std::set<int32_t>>()) {
                first_flip[t] = li;
            }
        }
    }
    // Upstream-clean (layer li, position t): no flip at any earlier MoE layer at any position <= t.
    auto clean = [&](size_t li, int64_t t) {
        for (int64_t s = 0; s <= t; ++s) {
            if (first_flip[s] < li) return false;
        }
        return true;
    };
    double noise = 0, noise_ratio = 0;
    for (size_t li = 0; li < layers.size(); ++li) {
        for (int64_t t = 0; t < T; ++t) {
            if (!clean(li, t)) continue;
            const auto [d, ratio] = score_change(layers[li], exact.router.at(layers[li])[t], fast.router.at(layers[li])[t]);
            noise = std::max(noise, d);
            noise_ratio = std::max(noise_ratio, ratio);
            EXPECT_LE(ratio, 1.0) << "layer " << layers[li] << " position " << t
                                  << ": fast moved a router score by more than its rounding explains (" << d << ")";
        }
    }
    EXPECT_GT(noise, 0.0) << "fast changed no router score at all: is the rounded path running?";

    int64_t flips = 0, allowed = 0;
    double min_flip_margin = 1e300;
    for (size_t li = 0; li < layers.size(); ++li) {
        const auto& entry = golden[li];
        for (int64_t t = 0; t < T; ++t) {
            const double em = entry["expert_margin"][t].get<double>(), gm = entry["group_margin"][t].get<double>();
            const bool decided = em > 2 * noise && gm > 4 * noise;
            const bool same = fast.experts.at(layers[li])[t] == entry["experts"][t].get<std::set<int32_t>>();
            if (!same) {
                ++flips;
                min_flip_margin = std::min(min_flip_margin, std::min(em, gm));
            }
            if (!decided) ++allowed;
            EXPECT_TRUE(same || !decided) << "layer " << layers[li] << " position " << t
                                          << ": fast chose other experts although the golden margins (expert " << em
                                          << ", group " << gm << ") exceed the noise bound (score noise " << noise
                                          << ")";
        }
    }

    // Logits where no expert flipped upstream of (or at) the position.
    double worst = 0, worst_ratio = 0;
    int64_t judged = 0;
    for (int64_t t = 0; t < T; ++t) {
        if (!clean(layers.size(), t)) continue;
        ++judged;
        const auto [err, ratio] =
            logit_change(exact.final_norm.data() + t * H, exact.logits.data() + t * V, fast.logits.data() + t * V);
        worst = std::max(worst, err);
        worst_ratio = std::max(worst_ratio, ratio);
        EXPECT_LE(ratio, 1.0) << "position " << t << ": logits moved by " << err << ", more than the derived bound";
    }
    std::printf("[%s] fast (u = 2^%d): router score noise %.3g (%.2f of its derived bound); %lld flips among %lld "
                "decisions (%lld below the noise bound, smallest flipped margin %.3g); logits judged at %lld/%lld "
                "positions: max |fast - exact| %.3g = %.2f of the derived bound\n",
                label_.c_str(), static_cast<int>(std::lround(std::log2(unit_))), noise, noise_ratio,
                static_cast<long long>(flips), static_cast<long long>(layers.size() * T),
                static_cast<long long>(allowed), flips ? min_flip_margin : 0.0, static_cast<long long>(judged),
                static_cast<long long>(T), worst, worst_ratio);
    EXPECT_GT(judged, 0) << "every position had a flip upstream: nothing left to judge the logits on";
}

void RoutingJudge::judge_greedy(Engine& fast, Engine& exact, const std::vector<int32_t>& prompt,
                                const std::vector<int32_t>& expected, const std::vector<float>& ref) const {
    const ModelConfig& c = weights_->config();
    const int64_t V = c.vocab_size, H = c.hidden_size;
    ASSERT_EQ(ref.size(), expected.size() * V);
    Trace tf, te;
    ForwardHooks hf, he;
    tf.attach(hf);
    te.attach(he);
    fast.set_hooks(&hf);
    exact.set_hooks(&he);
    std::vector<int32_t> next = prompt;
    int64_t pos = 0;
    double worst = 0, worst_ratio = 0;
    size_t agreed = 0, clean_steps = 0;
    std::string stop = "none";
    for (size_t i = 0; i < expected.size(); ++i) {
        tf.clear();
        te.clear();
        SeqChunk chunk{.seq_id = 3, .tokens = next, .num_tokens = static_cast<int64_t>(next.size()), .start_pos = pos};
        auto of = fast.step(std::span<const SeqChunk>(&chunk, 1));
        auto oe = exact.step(std::span<const SeqChunk>(&chunk, 1));
        ASSERT_TRUE(of.ok()) << of.status().to_string();
        ASSERT_TRUE(oe.ok()) << oe.status().to_string();
        // The first MoE layer where the two engines chose other experts for some position of this step.
        int64_t flip_layer = -1;
        for (const auto& [layer, sets] : te.experts) {
            if (tf.experts.at(layer) != sets) {
                flip_layer = layer;
                break;
            }
        }
        if (flip_layer >= 0) {
            // Everything upstream of this layer agreed, so its router scores may differ by rounding only.
            const auto& re = te.router.at(flip_layer);
            const auto& rf = tf.router.at(flip_layer);
            ASSERT_EQ(re.size(), rf.size());
            for (size_t t = 0; t < re.size(); ++t) {
                const auto [d, ratio] = score_change(flip_layer, re[t], rf[t]);
                EXPECT_LE(ratio, 1.0) << "step " << i << " layer " << flip_layer << ": the routing flipped with a score "
                                      << "change of " << d << ", more than rounding explains";
            }
            stop = "routing near tie at step " + std::to_string(i) + ", layer " + std::to_string(flip_layer);
            break;
        }
        ++clean_steps;
        const float* h = te.final_norm.data() + te.final_norm.size() - H;
        const auto [err, ratio] = logit_change(h, oe->logits.data(), of->logits.data());
        worst = std::max(worst, err);
        worst_ratio = std::max(worst_ratio, ratio);
        EXPECT_LE(ratio, 1.0) << "step " << i << ": logits moved by " << err << ", more than the derived bound";
        const float* r = ref.data() + i * V;
        float m1 = -INFINITY, m2 = -INFINITY;  // golden top-1 and top-2 of this step
        for (int64_t v = 0; v < V; ++v) {
            if (r[v] > m1) {
                m2 = m1;
                m1 = r[v];
            } else if (r[v] > m2) {
                m2 = r[v];
            }
        }
        const int32_t tok =
            static_cast<int32_t>(std::max_element(of->logits.begin(), of->logits.end()) - of->logits.begin());
        if (tok != expected[i]) {
            EXPECT_LT(m1 - m2, 2 * err) << "step " << i << ": fast left the golden greedy path at a golden margin of "
                                        << m1 - m2 << ", more than twice its logit error " << err;
            stop = "logit near tie at step " + std::to_string(i);
            break;
        }
        ++agreed;
        pos += static_cast<int64_t>(next.size());
        next = {tok};
    }
    fast.set_hooks(nullptr);
    exact.set_hooks(nullptr);
    EXPECT_GT(clean_steps, 0u) << "the routing flipped already in the prompt's step";
    std::printf("[%s] fast greedy: %zu/%zu tokens equal to the golden continuation, stopped by: %s; max |fast - exact| "
                "logit %.3g = %.2f of the derived bound\n",
                label_.c_str(), agreed, expected.size(), stop.c_str(), worst, worst_ratio);
}

}  // namespace deepshard::model::golden
