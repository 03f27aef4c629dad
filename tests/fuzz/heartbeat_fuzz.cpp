// The supervisor's line protocol: any line parses or is refused, and whatever parses
// formats back to a line that parses to the same fields (a failure record's message may be
// cut to fit a line, and nothing else of it changes).
#include <cstdlib>
#include <string_view>

#include "launch/heartbeat.h"

namespace {
constexpr std::string_view kSecret = "0123456789abcdef0123456789abcdef";
}

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  const std::string_view line(reinterpret_cast<const char*>(data), size);
  const auto hb = loom::parse_heartbeat_line(line, kSecret);
  if (!hb) return 0;
  if (hb->failure) {
    const std::string again = loom::format_failure_line(kSecret, *hb->failure);
    const auto back = loom::parse_heartbeat_line(again, kSecret);
    if (again.size() > loom::kMaxHeartbeatLine || !back || !back->failure) std::abort();
    loom::FailureRecord a = *hb->failure, b = *back->failure;
    if (a.message != b.message && !b.message.ends_with(" [cut]")) std::abort();
    if (a.missing != b.missing && b.missing.size() >= a.missing.size()) std::abort();
    if (a.unreachable != b.unreachable && b.unreachable.size() >= a.unreachable.size())
      std::abort();
    a.message = b.message;
    a.missing = b.missing;
    a.unreachable = b.unreachable;
    if (a.unread != b.unread && b.unread.size() >= a.unread.size()) std::abort();
    a.unread = b.unread;
    if (!(a == b)) std::abort();
    return 0;
  }
  const std::string again = hb->done ? loom::format_done_line(kSecret, hb->rank)
                                     : loom::format_heartbeat_line(kSecret, hb->rank, hb->step,
                                                                   hb->idle_ms);
  const auto back = loom::parse_heartbeat_line(again, kSecret);
  if (!back || back->rank != hb->rank || back->step != hb->step || back->done != hb->done ||
      back->idle_ms != hb->idle_ms)
    std::abort();
  return 0;
}
