#include "serve/protocol.h"

#include <fmt/format.h>

#include <cmath>
#include <limits>

namespace loom {
namespace {

using nlohmann::json;

ApiError bad(const std::string& code, const std::string& message) {
  return ApiError(400, "invalid_request_error", code, message);
}

const char* type_name(const json& v) {
  if (v.is_null()) return "null";
  if (v.is_boolean()) return "a boolean";
  if (v.is_number()) return "a number";
  if (v.is_string()) return "a string";
  if (v.is_array()) return "an array";
  return "an object";
}

// The field's value if present and not null.
const json* field(const json& body, const char* name) {
  const auto it = body.find(name);
  return it == body.end() || it->is_null() ? nullptr : &*it;
}

double number(const json& v, const char* name, double lo, double hi, const char* range) {
  if (!v.is_number())
    throw bad("invalid_type", fmt::format("'{}' must be a number, not {}", name, type_name(v)));
  const double x = v.get<double>();
  if (!(x >= lo && x <= hi))
    throw bad("invalid_value", fmt::format("'{}' is {}: it must be in {}", name, x, range));
  return x;
}

int64_t integer(const json& v, const char* name, int64_t lo, int64_t hi) {
  if (!v.is_number_integer())
    throw bad("invalid_type",
              fmt::format("'{}' must be an integer, not {}", name, type_name(v)));
  if (v.is_number_unsigned() && v.get<uint64_t>() > uint64_t(hi))
    throw bad("invalid_value", fmt::format("'{}' is {}: it must be in [{}, {}]", name,
                                           v.get<uint64_t>(), lo, hi));
  const int64_t x = v.get<int64_t>();
  if (x < lo || x > hi)
    throw bad("invalid_value", fmt::format("'{}' is {}: it must be in [{}, {}]", name, x, lo, hi));
  return x;
}

bool boolean(const json& v, const char* name) {
  if (!v.is_boolean())
    throw bad("invalid_type", fmt::format("'{}' must be true or false, not {}", name, type_name(v)));
  return v.get<bool>();
}

std::vector<int32_t> prompt_tokens(const json& v, const Gpt2Tokenizer& tok, int vocab) {
  std::vector<int32_t> out;
  if (v.is_string()) {
    out = tok.encode(v.get<std::string>());
  } else if (v.is_array() && (v.empty() || v.front().is_number())) {
    for (const json& t : v) out.push_back(int32_t(integer(t, "prompt[]", 0, vocab - 1)));
  } else if (v.is_array()) {
    throw bad("invalid_value", "'prompt' holds one prompt per request: a string or a list of "
                               "token ids, not a list of prompts");
  } else {
    throw bad("invalid_type", fmt::format("'prompt' must be a string or a list of token ids, "
                                          "not {}", type_name(v)));
  }
  if (out.empty()) throw bad("invalid_value", "'prompt' is empty: give at least one token");
  return out;
}

std::vector<std::string> stop_strings(const json& v) {
  std::vector<std::string> out;
  if (v.is_string()) {
    out.push_back(v.get<std::string>());
  } else if (v.is_array() && v.size() <= 4) {
    for (const json& s : v) {
      if (!s.is_string())
        throw bad("invalid_type", fmt::format("'stop' entries must be strings, not {}",
                                              type_name(s)));
      out.push_back(s.get<std::string>());
    }
  } else {
    throw bad("invalid_type", "'stop' must be a string or a list of at most 4 strings");
  }
  for (const std::string& s : out)
    if (s.empty()) throw bad("invalid_value", "a 'stop' string is empty");
  return out;
}

// The OpenAI fields loom does not implement are refused when asked for, not ignored.
void refuse_unsupported(const json& body) {
  if (const json* n = field(body, "n"); n && !(n->is_number_integer() && n->get<int64_t>() == 1))
    throw bad("unsupported", "'n' must be 1: one completion per request");
  if (const json* b = field(body, "best_of"); b && !(b->is_number_integer() && b->get<int64_t>() == 1))
    throw bad("unsupported", "'best_of' must be 1");
  if (const json* e = field(body, "echo"); e && !(e->is_boolean() && !e->get<bool>()))
    throw bad("unsupported", "'echo' is not supported");
  if (field(body, "logprobs")) throw bad("unsupported", "'logprobs' is not supported");
  if (field(body, "suffix")) throw bad("unsupported", "'suffix' is not supported");
}

}  // namespace

std::string error_body(const ApiError& e) {
  return dump(json{{"error", {{"message", e.what()}, {"type", e.type}, {"code", e.code}}}});
}

CompletionRequest parse_completion(const std::string& body, const Gpt2Tokenizer& tokenizer,
                                   const ApiContext& ctx) {
  json j;
  try {
    j = json::parse(body);
  } catch (const json::exception& e) {
    throw bad("invalid_json", fmt::format("the body is not valid JSON: {}", e.what()));
  }
  if (!j.is_object())
    throw bad("invalid_type", fmt::format("the body must be a JSON object, not {}", type_name(j)));
  if (const json* m = field(j, "model")) {
    if (!m->is_string() || m->get<std::string>() != ctx.model)
      throw ApiError(404, "invalid_request_error", "model_not_found",
                     fmt::format("the model {} does not exist: this server serves '{}'",
                                 m->dump(), ctx.model));
  }
  refuse_unsupported(j);
  const json* prompt = field(j, "prompt");
  if (!prompt) throw bad("missing_field", "'prompt' is required");
  CompletionRequest c;
  SampleOptions& s = c.request.sample;
  c.request.prompt = prompt_tokens(*prompt, tokenizer, ctx.vocab_size);
  s.max_tokens = 16;
  if (const json* v = field(j, "max_tokens")) s.max_tokens = int(integer(*v, "max_tokens", 0, 1 << 30));
  if (const json* v = field(j, "temperature"))
    s.temperature = float(number(*v, "temperature", 0, 100, "[0, 100]"));
  if (const json* v = field(j, "top_p")) s.top_p = float(number(*v, "top_p", 0, 1, "(0, 1]"));
  if (s.top_p <= 0) throw bad("invalid_value", "'top_p' is 0: it must be in (0, 1]");
  if (const json* v = field(j, "top_k")) s.top_k = int(integer(*v, "top_k", 0, 1 << 30));
  if (const json* v = field(j, "seed")) {
    s.seed = uint64_t(integer(*v, "seed", std::numeric_limits<int64_t>::min(),
                              std::numeric_limits<int64_t>::max()));
    c.seeded = true;
  }
  if (const json* v = field(j, "stop")) s.stop = stop_strings(*v);
  if (const json* v = field(j, "ignore_eos")) s.stop_at_end_of_text = !boolean(*v, "ignore_eos");
  if (const json* v = field(j, "stream")) c.stream = boolean(*v, "stream");
  if (const json* v = field(j, "stream_options")) {
    if (!v->is_object()) throw bad("invalid_type", "'stream_options' must be an object");
    if (const json* u = field(*v, "include_usage"))
      c.include_usage = boolean(*u, "stream_options.include_usage");
  }
  const int64_t P = int64_t(c.request.prompt.size());
  if (P + s.max_tokens > ctx.context)
    throw bad("context_length_exceeded",
              fmt::format("this model's context holds {} tokens, but {} were requested: {} in "
                          "the prompt and {} for the completion (max_tokens)",
                          ctx.context, P + s.max_tokens, P, s.max_tokens));
  return c;
}

json usage_json(const Usage& u) {
  return {{"prompt_tokens", u.prompt_tokens}, {"completion_tokens", u.completion_tokens},
          {"total_tokens", u.prompt_tokens + u.completion_tokens}};
}

json completion_json(const std::string& id, int64_t created, const std::string& model,
                     const std::string& text, const std::optional<FinishReason>& finish,
                     const std::optional<Usage>& usage) {
  json choice = {{"index", 0}, {"text", text}, {"logprobs", nullptr},
                 {"finish_reason", finish ? json(finish_reason_name(*finish)) : json(nullptr)}};
  json out = {{"id", id}, {"object", "text_completion"}, {"created", created},
              {"model", model}, {"choices", json::array({choice})}};
  if (usage) out["usage"] = usage_json(*usage);
  return out;
}

std::string dump(const json& j) {
  return j.dump(-1, ' ', false, json::error_handler_t::replace);
}

std::string sse_event(const json& j) { return "data: " + dump(j) + "\n\n"; }

json models_json(const std::string& model, int64_t created) {
  return {{"object", "list"},
          {"data", json::array({{{"id", model}, {"object", "model"}, {"created", created},
                                 {"owned_by", "loom"}}})}};
}

}  // namespace loom
