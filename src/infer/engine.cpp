#include "infer/engine.h"

#include <algorithm>

#include "core/check.h"

namespace loom {

namespace {

// Bytes at the end of text[from..) that could begin one of the stop strings.
size_t stop_prefix_tail(const std::string& text, size_t from, const std::vector<std::string>& stop) {
  size_t keep = 0;
  for (const std::string& s : stop)
    for (size_t n = std::min(s.size() - 1, text.size() - from); n > keep; --n)
      if (text.compare(text.size() - n, n, s, 0, n) == 0) {
        keep = n;
        break;
      }
  return keep;
}

// Bytes at the end of text that are an unfinished UTF-8 sequence (held until complete).
size_t utf8_incomplete_tail(const std::string& text) {
  for (size_t back = 1; back <= std::min<size_t>(3, text.size()); ++back) {
    const auto c = static_cast<unsigned char>(text[text.size() - back]);
    if ((c & 0xC0) == 0x80) continue;  // a continuation byte: look further back
    const size_t need = c >= 0xF0 ? 4 : c >= 0xE0 ? 3 : c >= 0xC0 ? 2 : 1;
    return need > back ? back : 0;
  }
  return 0;
}

}  // namespace

Engine::Engine(Decoder& decoder, const Gpt2Tokenizer* tokenizer)
    : decoder_(decoder), tokenizer_(tokenizer) {
  for (int s = decoder.slots() - 1; s >= 0; --s) free_slots_.push_back(s);
}

int Engine::submit(Request request) {
  validate(request.sample);
  const int P = int(request.prompt.size()), M = request.sample.max_tokens;
  const int cap = decoder_.capacity(), V = decoder_.vocab_size();
  LOOM_REQUIRE(P > 0, "the prompt is empty: give at least one token");
  LOOM_REQUIRE(P <= cap, "the prompt has {} tokens but the context holds {}", P, cap);
  LOOM_REQUIRE(int64_t(P) + M <= cap, "the prompt ({} tokens) plus max_tokens {} exceeds the "
               "context of {} tokens", P, M, cap);
  for (int32_t t : request.prompt)
    LOOM_REQUIRE(t >= 0 && t < V, "prompt token {} is outside the vocabulary [0, {})", t, V);
  LOOM_REQUIRE(tokenizer_ || request.sample.stop.empty(), "stop strings need a tokenizer");
  queue_.emplace_back(next_id_, std::move(request));
  return next_id_++;
}

bool Engine::cancel(int id) {
  for (auto it = queue_.begin(); it != queue_.end(); ++it)
    if (it->first == id) {
      queue_.erase(it);
      return true;
    }
  for (auto it = live_.begin(); it != live_.end(); ++it)
    if (it->id == id) {
      free_slots_.push_back(it->slot);
      live_.erase(it);
      return true;
    }
  return false;
}

void Engine::admit() {
  while (!queue_.empty() && !free_slots_.empty()) {
    auto [id, request] = std::move(queue_.front());
    queue_.pop_front();
    live_.push_back({id, free_slots_.back(), 0, std::move(request), {}, {}, 0, false});
    free_slots_.pop_back();
  }
}

std::vector<std::vector<DecodeRow>> Engine::plan_rows() const {
  std::vector<std::vector<DecodeRow>> calls(1);
  auto add = [&](DecodeRow r) {
    if (int(calls.back().size()) == decoder_.max_rows()) calls.emplace_back();
    calls.back().push_back(r);
  };
  for (const Live& l : live_) {
    if (l.prefilled) {
      add({l.slot, l.pos, l.output.back(), true});
      continue;
    }
    const std::vector<int32_t>& p = l.request.prompt;
    for (size_t i = 0; i < p.size(); ++i) add({l.slot, int(i), p[i], i + 1 == p.size()});
  }
  return calls;
}

bool Engine::advance(Live& l, const float* logits, TokenEvent& ev) {
  const SampleOptions& opt = l.request.sample;
  const int32_t token = sample_token(logits, decoder_.vocab_size(), opt, l.output.size());
  ev.id = l.id;
  ev.prompt_tokens = int(l.request.prompt.size());
  if (opt.stop_at_end_of_text && token == Gpt2Tokenizer::kEndOfText) {
    ev.finished = FinishReason::kStop;
  } else {
    ev.token = token;
    l.output.push_back(token);
    if (tokenizer_) l.text += tokenizer_->decode_token(token);
    for (const std::string& s : opt.stop) {  // a stop string never starts in released text
      const size_t at = l.text.find(s, l.released);
      if (at != std::string::npos) {
        l.text.resize(at);
        ev.finished = FinishReason::kStop;
      }
    }
    if (!ev.finished && int(l.output.size()) == opt.max_tokens) ev.finished = FinishReason::kLength;
  }
  size_t end = l.text.size();
  if (!ev.finished) {
    end -= stop_prefix_tail(l.text, l.released, opt.stop);
    end -= utf8_incomplete_tail(l.text.substr(0, end));
  }
  ev.text = l.text.substr(l.released, end - l.released);
  l.released = end;
  ev.completion_tokens = int(l.output.size());
  return !ev.finished;
}

void Engine::step(const std::function<void(const TokenEvent&)>& on_event) {
  admit();
  // Requests that want no token end at once and give their slot back.
  for (size_t i = 0; i < live_.size();) {
    if (live_[i].request.sample.max_tokens > 0) {
      ++i;
      continue;
    }
    TokenEvent ev;
    ev.id = live_[i].id;
    ev.prompt_tokens = int(live_[i].request.prompt.size());
    ev.finished = FinishReason::kLength;
    free_slots_.push_back(live_[i].slot);
    live_.erase(live_.begin() + long(i));
    on_event(ev);
  }
  if (live_.empty()) return;
  const int V = decoder_.vocab_size();
  all_logits_.clear();
  for (const std::vector<DecodeRow>& call : plan_rows()) {
    decoder_.forward(call, logits_);
    all_logits_.insert(all_logits_.end(), logits_.begin(), logits_.end());
  }
  std::vector<Live> still;
  for (size_t i = 0; i < live_.size(); ++i) {
    Live& l = live_[i];
    if (!l.prefilled) {
      l.prefilled = true;
      l.pos = int(l.request.prompt.size());
    } else {
      ++l.pos;
    }
    TokenEvent ev;
    if (advance(l, all_logits_.data() + i * size_t(V), ev)) still.push_back(std::move(l));
    else free_slots_.push_back(l.slot);
    on_event(ev);
  }
  live_ = std::move(still);
}

void Engine::run(const std::function<void(const TokenEvent&)>& on_event) {
  while (!idle()) step(on_event);
}

}  // namespace loom
