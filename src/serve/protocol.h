// The OpenAI completions API as `loom serve` speaks it, declared once (as vLLM's
// protocol.py): the request with its defaults, parsed and validated before anything runs;
// the response, stream chunk and error shapes. No HTTP here: the server passes bodies in
// and sends what comes out.
#pragma once

#include <nlohmann/json.hpp>

#include <cstdint>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "data/tokenizer.h"
#include "infer/request.h"

namespace loom {

// An error the API reports as {"error": {"message", "type", "code"}} with an HTTP status.
struct ApiError : std::runtime_error {
  int status;
  std::string type;  // "invalid_request_error", "not_found_error", "server_overloaded", ...
  std::string code;  // a short machine-readable name, e.g. "context_length_exceeded"
  ApiError(int status, std::string type, std::string code, const std::string& message)
      : std::runtime_error(message), status(status), type(std::move(type)),
        code(std::move(code)) {}
};
std::string error_body(const ApiError& e);

// What the server knows when it parses a request.
struct ApiContext {
  std::string model;  // the served model's name (GET /v1/models lists it)
  int vocab_size = 0;
  int context = 0;  // positions a sequence may hold: prompt + max_tokens <= context
};

// POST /v1/completions.
struct CompletionRequest {
  Request request;          // prompt tokens and sampling options for the engine
  bool stream = false;
  bool include_usage = false;  // stream_options.include_usage
  bool seeded = false;         // the client gave a seed (else the server picks one)
};
// Fields: model (must be the served model, if given), prompt (a string, or a list of token
// ids), max_tokens (default 16), temperature (default 1), top_p (default 1), top_k (loom's
// extension, default 0 = off), seed, stop (a string or a list of at most 4), ignore_eos
// (loom's extension, as vLLM's: generate past <|endoftext|>, for benchmarks), stream,
// stream_options.include_usage. Unknown fields are ignored, as OpenAI's API does. Throws
// ApiError 400 naming the field for malformed JSON, a wrong type or a bad value, and for a
// prompt plus max_tokens beyond the context (both numbers).
CompletionRequest parse_completion(const std::string& body, const Gpt2Tokenizer& tokenizer,
                                   const ApiContext& ctx);

struct Usage {
  int prompt_tokens = 0, completion_tokens = 0;
};
nlohmann::json usage_json(const Usage& u);
// {"id","object":"text_completion","created","model","choices":[{"index":0,"text",
// "logprobs":null,"finish_reason"}]} (+ "usage" when given).
nlohmann::json completion_json(const std::string& id, int64_t created, const std::string& model,
                               const std::string& text,
                               const std::optional<FinishReason>& finish,
                               const std::optional<Usage>& usage);
// JSON text of j; bytes that are not UTF-8 (a byte-level BPE model can emit any) become
// U+FFFD instead of an exception.
std::string dump(const nlohmann::json& j);
// The server-sent-events line of one JSON value: "data: {...}\n\n".
std::string sse_event(const nlohmann::json& j);
inline constexpr const char* kSseDone = "data: [DONE]\n\n";

// GET /v1/models.
nlohmann::json models_json(const std::string& model, int64_t created);

}  // namespace loom
