#include "core/failure.h"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include <algorithm>
#include <array>
#include <utility>

namespace loom {
namespace {

constexpr std::array<std::pair<FailureKind, std::string_view>, 5> kKinds = {{
    {FailureKind::kCollectiveDeadline, "collective_deadline"},
    {FailureKind::kPeerDeadline, "peer_deadline"},
    {FailureKind::kBadInput, "bad_input"},
    {FailureKind::kNonFinite, "non_finite"},
    {FailureKind::kError, "error"},
}};

}  // namespace

std::string_view failure_kind_name(FailureKind kind) {
  for (const auto& [k, name] : kKinds)
    if (k == kind) return name;
  return "error";
}

std::optional<FailureKind> parse_failure_kind(std::string_view name) {
  for (const auto& [k, n] : kKinds)
    if (n == name) return k;
  return std::nullopt;
}

FailureKind failure_kind_for_exit(int exit_code) {
  return exit_code == 2 ? FailureKind::kBadInput
         : exit_code == 4 ? FailureKind::kNonFinite
                          : FailureKind::kError;
}

std::string FailureRecord::summary() const {
  std::string who = where.empty() ? fmt::format("rank {}", rank) : where;
  if (!host.empty()) who += " on " + host;
  const std::string at = micro_batch >= 0 ? fmt::format("step {}, micro-batch {}", step, micro_batch)
                                          : fmt::format("step {}", step);
  switch (kind) {
    case FailureKind::kCollectiveDeadline: {
      std::string s = fmt::format("{}: collective deadline: {} #{} ({} bytes) of group {} at {} "
                                  "(waited {:.2f} s of {:g} s)", who, op, seq, bytes, group, at,
                                  waited_s, deadline_s);
      if (!missing.empty()) s += fmt::format("; never entered: rank {}", fmt::join(missing, ", "));
      if (!unreachable.empty())
        s += fmt::format("; no answer from: rank {}", fmt::join(unreachable, ", "));
      if (!unread.empty())
        s += fmt::format("; on other hosts, not read yet: rank {}", fmt::join(unread, ", "));
      return s;
    }
    case FailureKind::kPeerDeadline:
      return fmt::format("{}: peer deadline: {} ({} bytes) with rank {} in group {} at {} "
                         "(waited {:.2f} s of {:g} s): it never posted the match", who, op,
                         bytes, peer, group, at, waited_s, deadline_s);
    case FailureKind::kBadInput:
    case FailureKind::kNonFinite:
    case FailureKind::kError:
      break;
  }
  std::string what(failure_kind_name(kind));
  std::replace(what.begin(), what.end(), '_', ' ');
  return fmt::format("{}: {} (exit status {}) at {}: {}", who, what, exit_code, at, message);
}

}  // namespace loom
