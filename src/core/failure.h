// Why a rank is failing, as a record rather than a sentence: a rank that fails sends one to
// `loom launch`'s supervisor (launch/heartbeat.h carries it as JSON), which logs it and
// decides from its fields whether and how to restart. The human message travels with it
// and is printed, but nothing is decided from its wording.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

namespace loom {

enum class FailureKind {
  kCollectiveDeadline,  // a collective's deadline passed (a peer never entered, or hangs in it)
  kPeerDeadline,        // a send or receive's deadline passed: its peer never posted the match
  kBadInput,            // a config, layout or file the user must fix (exit status 2)
  kNonFinite,           // a non-finite loss or gradient (exit status 4): a resume repeats it
  kError,               // anything else (exit status 1)
};

// "collective_deadline", "peer_deadline", "bad_input", "non_finite", "error".
std::string_view failure_kind_name(FailureKind kind);
std::optional<FailureKind> parse_failure_kind(std::string_view name);
// The kind of an error that ends a rank with `exit_code` (the CLI's convention: 2 bad
// input, 4 non-finite, anything else an error).
FailureKind failure_kind_for_exit(int exit_code);

struct FailureRecord {
  FailureKind kind = FailureKind::kError;
  int rank = -1;      // the world rank reporting
  std::string host;   // its host name
  std::string where;  // how reports name it, e.g. "rank 3 (pp 0, dp 3, tp 0)"
  int64_t step = -1;  // where the job was (-1: before the first step)
  int micro_batch = -1;
  // A deadline: the operation ("ALLREDUCE", "RECV"), its group ("dp[0..3]"), its number in
  // the group (-1 for send and receive, which are not numbered) and its bytes.
  std::string op, group;
  int64_t seq = -1, bytes = -1;
  int peer = -1;             // a send or receive: the world rank that never posted the match
  std::vector<int> missing;  // a collective: the world ranks that never entered it
  // A collective: the world ranks whose progress could not be read in time (their host
  // does not answer: a cut link, a host gone); whether they entered it is unknown.
  std::vector<int> unreachable;
  // A collective: the world ranks on other hosts whose progress was not read yet when this
  // record was sent (a later record from the same rank, once they are read, replaces it).
  std::vector<int> unread;
  double waited_s = 0, deadline_s = 0;
  int exit_code = 1;  // the status the rank ends with
  std::string message;  // what the rank printed, for people

  bool operator==(const FailureRecord&) const = default;
  // One line: who, where, what, e.g. "rank 1 (pp 0, dp 1, tp 0) on host-b: collective
  // deadline: ALLREDUCE #7 (64 bytes) of group dp[0..1] at step 3, micro-batch 0 (waited
  // 5.01 s of 5 s); never entered: rank 0" (and "; no answer from: rank 2, 3").
  std::string summary() const;
};

}  // namespace loom
