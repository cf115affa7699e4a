#include "topology/plan_file.h"

#include <algorithm>
#include <cstdint>

namespace deepshard::topology {

namespace {

using json = nlohmann::json;

// Optional integer field: absent is `fallback`, present but not an integer is an error.
Status get_int(const json& j, const char* key, const std::string& where, int64_t* out) {
    if (!j.contains(key)) {
        return ok_status();
    }
    if (!j[key].is_number_integer()) {
        return invalid_argument(where + ": field '" + key + "' is not an integer");
    }
    *out = j[key].get<int64_t>();
    return ok_status();
}

Status get_int(const json& j, const char* key, const std::string& where, int* out) {
    int64_t v = *out;
    DS_RETURN_IF_ERROR(get_int(j, key, where, &v));
    if (v < INT32_MIN || v > INT32_MAX) {
        return invalid_argument(where + ": field '" + key + "' is out of range");
    }
    *out = static_cast<int>(v);
    return ok_status();
}

Status get_str(const json& j, const char* key, const std::string& where, std::string* out) {
    if (!j.contains(key) || j[key].is_null()) {
        return ok_status();
    }
    if (!j[key].is_string()) {
        return invalid_argument(where + ": field '" + key + "' is not a string");
    }
    *out = j[key].get<std::string>();
    return ok_status();
}

Status int_list(const json& j, const std::string& where, std::vector<int>* out) {
    if (!j.is_array()) {
        return invalid_argument(where + " is not a list of integers");
    }
    out->clear();
    for (const auto& v : j) {
        if (!v.is_number_integer()) {
            return invalid_argument(where + " is not a list of integers");
        }
        out->push_back(v.get<int>());
    }
    return ok_status();
}

}  // namespace

StatusOr<PlanFile> PlanFile::from_json(const std::string& text, const std::string& source) {
    const json j = json::parse(text, nullptr, false);
    if (j.is_discarded()) {
        return invalid_argument("plan " + source + ": not a JSON object");
    }
    return from_json_value(j, source);
}

StatusOr<PlanFile> PlanFile::from_json_value(const json& j, const std::string& source) {
    const std::string where = "plan " + source;
    if (!j.is_object()) {
        return invalid_argument(where + ": not a JSON object");
    }
    PlanFile p;
    if (!j.contains("world_size") || !j["world_size"].is_number_integer() || j["world_size"].get<int64_t>() < 1 ||
        j["world_size"].get<int64_t>() > (1 << 20)) {
        return invalid_argument(where + ": field 'world_size' missing or not a positive integer");
    }
    p.world_size = j["world_size"].get<int>();
    DS_RETURN_IF_ERROR(get_int(j, "ranks_per_stage", where, &p.ranks_per_stage));
    DS_RETURN_IF_ERROR(get_str(j, "attention", where, &p.attention));
    if (p.attention != "tp" && p.attention != "dp") {
        return invalid_argument(where + ": attention must be \"tp\" or \"dp\", got \"" + p.attention + "\"");
    }
    DS_RETURN_IF_ERROR(get_str(j, "numerics", where, &p.numerics));
    if (!p.numerics.empty() && p.numerics != "exact" && p.numerics != "fast") {
        return invalid_argument(where + ": numerics must be \"exact\" or \"fast\", got \"" + p.numerics + "\"");
    }
    DS_RETURN_IF_ERROR(get_int(j, "kv_budget_bytes", where, &p.kv_budget_bytes));
    if (p.kv_budget_bytes < 0) {
        return invalid_argument(where + ": field 'kv_budget_bytes' is negative");
    }
    // A rank allocates this much at start: a corrupt value must fail here, with the field named.
    constexpr int64_t kMaxKvBudgetBytes = int64_t{1} << 50;
    if (p.kv_budget_bytes > kMaxKvBudgetBytes) {
        return invalid_argument(where + ": field 'kv_budget_bytes' (" + std::to_string(p.kv_budget_bytes) +
                                ") is beyond any machine (limit 2^50)");
    }
    if (j.contains("stages")) {
        if (!j["stages"].is_array()) {
            return invalid_argument(where + ": field 'stages' is not a list");
        }
        for (size_t i = 0; i < j["stages"].size(); ++i) {
            const auto& st = j["stages"][i];
            const std::string w = where + ": stages[" + std::to_string(i) + "]";
            if (!st.is_object() || !st.contains("first_layer") || !st.contains("last_layer")) {
                return invalid_argument(w + ": needs 'first_layer' and 'last_layer'");
            }
            PlanStage s;
            DS_RETURN_IF_ERROR(get_int(st, "first_layer", w, &s.first_layer));
            DS_RETURN_IF_ERROR(get_int(st, "last_layer", w, &s.last_layer));
            p.stages.push_back(s);
        }
    }
    if (j.contains("expert_placement")) {
        const auto& ep = j["expert_placement"];
        // Either one list for every stage or a list per stage (identical: the job places experts
        // the same way in every stage).
        if (ep.is_array() && !ep.empty() && ep.front().is_array()) {
            DS_RETURN_IF_ERROR(int_list(ep.front(), where + ": expert_placement[0]", &p.expert_placement));
            for (size_t i = 1; i < ep.size(); ++i) {
                std::vector<int> other;
                DS_RETURN_IF_ERROR(int_list(ep[i], where + ": expert_placement[" + std::to_string(i) + "]", &other));
                if (other != p.expert_placement) {
                    return invalid_argument(where + ": stages with different expert placements are not supported");
                }
            }
        } else {
            DS_RETURN_IF_ERROR(int_list(ep, where + ": expert_placement", &p.expert_placement));
        }
    }
    if (j.contains("ranks")) {
        const auto& ranks = j["ranks"];
        if (!ranks.is_array() || static_cast<int>(ranks.size()) > p.world_size) {
            return invalid_argument(where + ": field 'ranks' must be an array of at most world_size (" +
                                    std::to_string(p.world_size) + ") entries");
        }
        std::vector<bool> seen(static_cast<size_t>(p.world_size), false);
        for (size_t i = 0; i < ranks.size(); ++i) {
            const auto& e = ranks[i];
            const std::string w = where + ": ranks[" + std::to_string(i) + "]";
            if (!e.is_object() || !e.contains("rank") || !e["rank"].is_number_integer()) {
                return invalid_argument(w + ": missing integer 'rank'");
            }
            const int64_t r = e["rank"].get<int64_t>();
            if (r < 0 || r >= p.world_size || seen[static_cast<size_t>(r)]) {
                return invalid_argument(w + ": rank " + std::to_string(r) + " out of range or repeated");
            }
            seen[static_cast<size_t>(r)] = true;
            PlanRank& s = p.ranks.emplace_back();
            s.rank = static_cast<int>(r);
            DS_RETURN_IF_ERROR(get_int(e, "stage", w, &s.stage));
            DS_RETURN_IF_ERROR(get_int(e, "local", w, &s.local));
            DS_RETURN_IF_ERROR(get_int(e, "node", w, &s.node));
            DS_RETURN_IF_ERROR(get_str(e, "host", w, &s.host));
            DS_RETURN_IF_ERROR(get_int(e, "gpu", w, &s.gpu));
            DS_RETURN_IF_ERROR(get_str(e, "device", w, &s.device));
            DS_RETURN_IF_ERROR(get_int(e, "numa", w, &s.numa));
            DS_RETURN_IF_ERROR(get_str(e, "nic", w, &s.nic));
            DS_RETURN_IF_ERROR(get_str(e, "cpus", w, &s.cpus));
        }
    }
    std::sort(p.ranks.begin(), p.ranks.end(), [](const PlanRank& a, const PlanRank& b) { return a.rank < b.rank; });
    return p;
}

nlohmann::json PlanFile::to_json() const {
    json j;
    j["version"] = 1;
    j["world_size"] = world_size;
    j["ranks_per_stage"] = ranks_per_stage;
    j["num_stages"] = stages.size();
    j["attention"] = attention;
    j["stages"] = json::array();
    for (size_t s = 0; s < stages.size(); ++s) {
        std::vector<int> r;
        for (int i = 0; i < ranks_per_stage; ++i) {
            r.push_back(static_cast<int>(s) * ranks_per_stage + i);
        }
        j["stages"].push_back({{"first_layer", stages[s].first_layer}, {"last_layer", stages[s].last_layer}, {"ranks", r}});
    }
    j["expert_placement"] = expert_placement;
    j["kv_budget_bytes"] = kv_budget_bytes;
    if (!numerics.empty()) j["numerics"] = numerics;
    j["ranks"] = json::array();
    for (const auto& r : ranks) {
        j["ranks"].push_back({{"rank", r.rank},
                              {"stage", r.stage},
                              {"local", r.local},
                              {"host", r.host},
                              {"node", r.node},
                              {"gpu", r.gpu},
                              {"device", r.device.empty() ? (r.gpu >= 0 ? "cuda" : "cpu") : r.device},
                              {"numa", r.numa},
                              {"nic", r.nic},
                              {"cpus", r.cpus}});
    }
    return j;
}

}  // namespace deepshard::topology
