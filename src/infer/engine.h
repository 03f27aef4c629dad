// Continuous batching over the decoder: requests wait in a queue, join the batch in a free
// slot at the next step (their prompt is prefilled in that step), get one token per step,
// and leave when done (max tokens, <|endoftext|>, a stop string), freeing the slot for the
// next request. What `loom generate` runs, and what a server admits requests into.
//
// Every tp rank runs the same engine on the same requests: the decoder gives each the same
// logits and sampling is a function of (logits, seed, position), so all ranks agree.
#pragma once

#include <cstdint>
#include <deque>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "infer/decoder.h"
#include "infer/request.h"
#include "infer/sampling.h"

namespace loom {

// What one step produced for one request: a token and the text it releases (text held back
// while it could still be the start of a stop string; nothing of a stop string or of
// <|endoftext|> is ever released), and whether the request finished.
struct TokenEvent {
  int id = 0;
  int32_t token = -1;     // -1 when the request finished without a new token
  std::string text;       // newly released text
  std::optional<FinishReason> finished;
  int prompt_tokens = 0, completion_tokens = 0;
};

class Engine {
 public:
  // `tokenizer` turns tokens into text for stop strings (may be null: no stop strings).
  Engine(Decoder& decoder, const Gpt2Tokenizer* tokenizer);

  // Checks the request (InputError: an empty prompt; a prompt, or a prompt plus max_tokens,
  // that does not fit a sequence, naming both lengths; bad sampling options) and queues it.
  // Returns its id (0, 1, ...).
  int submit(Request request);
  // Drops a queued or running request (its client has gone): a running one's slot is free
  // for the next step. Between steps only; false if the id is not queued or running.
  bool cancel(int id);
  // Nothing queued or running.
  bool idle() const { return queue_.empty() && live_.empty(); }
  int running() const { return int(live_.size()); }
  int queued() const { return int(queue_.size()); }

  // One step: queued requests join free slots (FIFO), every running request gets one token,
  // and `on_event` hears each request's token (and its end, if it ended).
  void step(const std::function<void(const TokenEvent&)>& on_event);
  // Steps until idle.
  void run(const std::function<void(const TokenEvent&)>& on_event);

 private:
  struct Live {
    int id, slot, pos;  // pos: where the next token goes
    Request request;
    std::vector<int32_t> output;
    std::string text;      // the output's text so far
    size_t released = 0;   // bytes of text already released
    bool prefilled = false;
  };
  void admit();
  // Rows of this step, in calls of at most max_rows rows; every live request has exactly
  // one row wanting logits, so the logits come in the order of live_.
  std::vector<std::vector<DecodeRow>> plan_rows() const;
  // Takes live_[i]'s token from its logits; false when it is done.
  bool advance(Live& l, const float* logits, TokenEvent& ev);

  Decoder& decoder_;
  const Gpt2Tokenizer* tokenizer_;
  std::deque<std::pair<int, Request>> queue_;
  std::vector<Live> live_;
  std::vector<int> free_slots_;
  int next_id_ = 0;
  std::vector<float> logits_, all_logits_;
};

}  // namespace loom
