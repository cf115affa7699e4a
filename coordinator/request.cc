#include "coordinator/request.h"

#include <algorithm>

namespace deepshard::coordinator {

Request::Request(std::shared_ptr<const model::Tokenizer> tokenizer, std::vector<std::string> stop,
                 int64_t prompt_tokens, bool want_logprobs)
    : tokenizer_(std::move(tokenizer)), stop_(std::move(stop)), prompt_tokens_(prompt_tokens),
      want_logprobs_(want_logprobs) {
    if (tokenizer_) decoder_.emplace(*tokenizer_, /*skip_special=*/true);
}

RequestSnapshot Request::snapshot(size_t offset) const {
    std::lock_guard lock(mu_);
    RequestSnapshot s;
    if (offset < events_.size()) s.events.assign(events_.begin() + static_cast<std::ptrdiff_t>(offset), events_.end());
    s.next_offset = std::max(offset, events_.size());
    s.finished = finished_;
    s.finish_reason = reason_;
    s.error = error_;
    s.prompt_tokens = prompt_tokens_;
    s.completion_tokens = static_cast<int64_t>(tokens_.size());
    return s;
}

RequestSnapshot Request::wait(size_t offset, Clock::time_point deadline) const {
    {
        std::unique_lock lock(mu_);
        cv_.wait_until(lock, deadline, [&] { return finished_ || events_.size() > offset; });
    }
    return snapshot(offset);
}

void Request::subscribe(std::function<void()> on_change) {
    bool fire = false;
    {
        std::lock_guard lock(mu_);
        on_change_ = std::move(on_change);
        fire = finished_ || !events_.empty();
    }
    if (fire) notify();
}

bool Request::finished() const {
    std::lock_guard lock(mu_);
    return finished_;
}

std::vector<double> Request::token_times() const {
    std::lock_guard lock(mu_);
    return token_times_;
}

void Request::notify() {
    std::function<void()> cb;
    {
        std::lock_guard lock(mu_);
        cb = on_change_;
    }
    cv_.notify_all();
    if (cb) cb();
}

bool Request::release_text(bool final) {
    // Earliest stop-string occurrence in the held text ends the output there.
    size_t cut = std::string::npos;
    for (const std::string& s : stop_) {
        if (s.empty()) continue;
        size_t p = held_.find(s);
        if (p != std::string::npos) cut = std::min(cut, p);
    }
    std::string out;
    bool hit = false;
    if (cut != std::string::npos) {
        out = held_.substr(0, cut);
        held_.clear();
        hit = true;
    } else if (final) {
        out = std::move(held_);
        held_.clear();
    } else {
        // Hold back the longest suffix that is a proper prefix of some stop string.
        size_t keep = 0;
        for (const std::string& s : stop_) {
            for (size_t k = std::min(s.size() - (s.empty() ? 0 : 1), held_.size()); k > keep; --k) {
                if (held_.compare(held_.size() - k, k, s, 0, k) == 0) {
                    keep = k;
                    break;
                }
            }
        }
        out = held_.substr(0, held_.size() - keep);
        held_.erase(0, held_.size() - keep);
    }
    // The decoder only yields whole characters, but a cut or hold-back boundary inside a multi-byte
    // character is impossible only if stop strings are valid UTF-8 (checked on input).
    if (!out.empty() || !unflushed_.empty()) {
        RequestEvent ev;
        ev.text = std::move(out);
        ev.tokens = std::move(unflushed_);
        unflushed_.clear();
        std::lock_guard lock(mu_);
        events_.push_back(std::move(ev));
    }
    return hit;
}

FinishReason Request::on_token(const control::SeqOutput& out, FinishReason by_ids) {
    const double t = std::chrono::duration<double>(Clock::now() - created_).count();
    if (replaying_) {
        size_t recorded = 0;
        {
            std::lock_guard lock(mu_);
            recorded = tokens_.size();
            if (replay_ < recorded && tokens_[replay_] != out.token) {
                replay_error_ = internal_error("retry after losing the shard job produced token " +
                                               std::to_string(out.token) + " at position " + std::to_string(replay_) +
                                               " where " + std::to_string(tokens_[replay_]) +
                                               " was already streamed; the output cannot be continued consistently");
            }
        }
        if (!replay_error_.ok()) return FinishReason::kError;
        if (replay_ < recorded) {
            // Rebuild the decoder/stop state exactly as before, without emitting anything.
            ++replay_;
            if (decoder_) decoder_->feed(out.token);
            return by_ids;  // the original run did not stop here, so neither will this one
        }
        replaying_ = false;
    }
    TokenLogprob tl;
    tl.token = out.token;
    tl.logprob = out.logprob;
    if (want_logprobs_) {
        tl.top_ids = out.top_ids;
        tl.top_logprobs = out.top_logprobs;
    }
    {
        std::lock_guard lock(mu_);
        if (metrics_) {
            if (token_times_.empty()) {
                metrics_->ttft.observe(t);
            } else {
                metrics_->itl.observe(t - token_times_.back());
            }
        }
        tokens_.push_back(out.token);
        token_times_.push_back(t);
    }
    unflushed_.push_back(std::move(tl));
    if (decoder_) held_ += decoder_->feed(out.token);
    const bool final = by_ids != FinishReason::kNone;
    if (final && decoder_) held_ += decoder_->flush();
    const bool hit = release_text(final);
    text_done_ = final || hit;
    notify();
    if (hit) return FinishReason::kStop;
    return by_ids;
}

void Request::on_finish(FinishReason reason, const Status& error) {
    if (reason == FinishReason::kError && error.ok() && !replay_error_.ok()) {
        on_finish(reason, replay_error_);
        return;
    }
    if ((reason == FinishReason::kStop || reason == FinishReason::kLength) && !text_done_) {
        if (decoder_) held_ += decoder_->flush();
        release_text(true);
    }
    {
        std::lock_guard lock(mu_);
        finished_ = true;
        reason_ = reason;
        error_ = error;
    }
    notify();
}

void Request::on_restart() {
    // Keep what was recorded; start comparing regenerated tokens from position 0.
    if (tokenizer_) decoder_.emplace(*tokenizer_, /*skip_special=*/true);
    std::lock_guard lock(mu_);
    replaying_ = !tokens_.empty();
    replay_ = 0;
    // held_ stays: replayed tokens only rebuild the decoder's pending bytes, their text was
    // already released or is still in held_.
}

}  // namespace deepshard::coordinator
