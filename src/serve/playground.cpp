#include "serve/playground.h"

namespace loom {

const std::string& playground_html() {
  static const std::string page = R"HTML(<!doctype html>
<html lang="en">
<head>
<meta charset="utf-8">
<title>loom playground</title>
<style>
  body { font: 15px/1.5 system-ui, sans-serif; max-width: 52rem; margin: 2rem auto; padding: 0 1rem; }
  textarea { width: 100%; height: 7rem; font: inherit; }
  label { margin-right: 1rem; }
  input[type=number] { width: 5rem; }
  #output { white-space: pre-wrap; border: 1px solid #ccc; padding: .75rem; min-height: 6rem; }
  #output .prompt { color: #777; }
  #stats { color: #555; margin-top: .5rem; }
</style>
</head>
<body>
<h1>loom playground</h1>
<textarea id="prompt">And God said</textarea>
<p>
  <label>max tokens <input id="max_tokens" type="number" value="64" min="1"></label>
  <label>temperature <input id="temperature" type="number" value="0.8" min="0" step="0.1"></label>
  <label>top-p <input id="top_p" type="number" value="1" min="0.01" max="1" step="0.05"></label>
  <label>seed <input id="seed" type="number" value="42"></label>
  <button id="generate">Generate</button>
</p>
<div id="output"></div>
<div id="stats"></div>
<script>
const $ = (id) => document.getElementById(id);
$("generate").addEventListener("click", async () => {
  const prompt = $("prompt").value;
  const out = $("output"), stats = $("stats");
  out.textContent = "";
  const shown = document.createElement("span");
  shown.className = "prompt";
  shown.textContent = prompt;
  const text = document.createElement("span");
  text.id = "completion";
  out.append(shown, text);
  stats.textContent = "";
  $("generate").disabled = true;
  const body = {
    prompt, stream: true, stream_options: { include_usage: true },
    max_tokens: Number($("max_tokens").value), temperature: Number($("temperature").value),
    top_p: Number($("top_p").value), seed: Number($("seed").value),
  };
  const start = performance.now();
  let first = 0, tokens = 0;
  try {
    const res = await fetch("/v1/completions", {
      method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
    });
    if (!res.ok) throw new Error((await res.json()).error.message);
    const reader = res.body.getReader(), decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, { stream: true });
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut).replace(/^data: /, "");
        buffer = buffer.slice(cut + 2);
        if (event === "[DONE]") continue;
        const chunk = JSON.parse(event);
        if (chunk.usage) tokens = chunk.usage.completion_tokens;
        if (chunk.choices && chunk.choices.length) {
          if (!first) first = performance.now();
          text.textContent += chunk.choices[0].text;
        }
      }
    }
    const seconds = (performance.now() - start) / 1000;
    stats.textContent = `${tokens} tokens in ${seconds.toFixed(2)} s: ` +
      `${(tokens / seconds).toFixed(1)} tokens/s, first token after ` +
      `${((first - start) / 1000).toFixed(2)} s`;
    stats.dataset.done = "1";
  } catch (e) {
    stats.textContent = "error: " + e.message;
  }
  $("generate").disabled = false;
});
</script>
</body>
</html>
)HTML";
  return page;
}

}  // namespace loom
