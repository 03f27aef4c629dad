// `loom launch` and its parts: fault specs and injection, the heartbeat protocol and its
// failure records, the supervisor's decisions, the supervisor against a scripted fake
// mpirun (rejected secrets, a silent rank, failure records in words it does not read, bad
// input), and end to end under mpirun: a rank killed, hung, or exiting in the middle of a
// checkpoint, after which the job finishes with the bytes of an unbroken run, and the
// records of a deadline and of bad input.
#include <fmt/format.h>
#include <gtest/gtest.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "../shell_util.h"
#include "core/check.h"
#include "launch/fault.h"
#include "launch/availability.h"
#include "launch/heartbeat.h"
#include "launch/supervisor.h"

namespace {
namespace fs = std::filesystem;
using loom::FaultSpec;

using loom::test::contains;
using loom::test::Result;
using loom::test::slurp;

// Runs a shell command under `timeout` so a broken supervisor fails the test, not CTest.
Result sh(const std::string& cmd, int timeout_s = 300) {
  return loom::test::shell("timeout -k 10 " + std::to_string(timeout_s) + " " + cmd);
}

TEST(Fault, ParsesTheThreeForms) {
  FaultSpec f = loom::parse_fault("kill:rank=1:step=5");
  EXPECT_EQ(f.kind, FaultSpec::Kind::kKill);
  EXPECT_EQ(f.rank, 1);
  EXPECT_EQ(f.step, 5);
  f = loom::parse_fault("hang:rank=0:step=3");
  EXPECT_EQ(f.kind, FaultSpec::Kind::kHang);
  EXPECT_EQ(f.rank, 0);
  EXPECT_EQ(f.step, 3);
  f = loom::parse_fault("exit-during-checkpoint:rank=2");
  EXPECT_EQ(f.kind, FaultSpec::Kind::kExitDuringCheckpoint);
  EXPECT_EQ(f.rank, 2);
  EXPECT_EQ(f.step, -1);
  f = loom::parse_fault("exit-during-checkpoint:rank=0:step=4");
  EXPECT_EQ(f.step, 4);
  EXPECT_EQ(loom::parse_fault("").kind, FaultSpec::Kind::kNone);
}

TEST(Fault, RejectsAnythingElseNamingTheForms) {
  for (const char* bad : {"kill", "kill:rank=1", "kill:step=5:rank=1", "hang:rank=-1:step=2",
                          "hang:rank=x:step=2", "kill:rank=1:step=5:extra", "explode:rank=1:step=1",
                          "kill:rank=1:step=", "exit-during-checkpoint", "kill:rank=1 :step=2"}) {
    try {
      loom::parse_fault(bad);
      ADD_FAILURE() << "accepted '" << bad << "'";
    } catch (const loom::InputError& e) {
      EXPECT_TRUE(contains(e.what(), "kill:rank=R:step=S")) << e.what();
      EXPECT_TRUE(contains(e.what(), bad)) << e.what();
    }
  }
}

TEST(Fault, FiresOnlyOnItsRankAndStepWhenArmed) {
  const FaultSpec kill = loom::parse_fault("kill:rank=1:step=5");
  loom::FaultInjector(kill, 0, true).at_step(5);   // another rank
  loom::FaultInjector(kill, 1, true).at_step(4);   // another step
  loom::FaultInjector(kill, 1, false).at_step(5);  // disarmed (a restart)
  EXPECT_EXIT(loom::FaultInjector(kill, 1, true).at_step(5), testing::KilledBySignal(SIGKILL),
              "rank 1 kills itself at step 5");
  const FaultSpec save = loom::parse_fault("exit-during-checkpoint:rank=0:step=4");
  const loom::FaultInjector injector(save, 0, true);
  injector.at_step(1);
  injector.during_checkpoint();  // saving checkpoint 2: not the one
  injector.at_step(3);
  EXPECT_EXIT(injector.during_checkpoint(), testing::ExitedWithCode(9), "checkpoint 4");
}

// kill:every=N fires on attempt a at step (a+1)*N: one failure every N steps of progress.
TEST(Fault, KillEveryNStepsMovesOnWithTheAttempt) {
  const FaultSpec every = loom::parse_fault("kill:rank=1:every=3");
  EXPECT_EQ(every.every, 3);
  EXPECT_EQ(every.step, -1);
  setenv("LOOM_ATTEMPT", "1", 1);
  const loom::FaultInjector second(every, 1, false);  // a restart: still fires
  unsetenv("LOOM_ATTEMPT");
  second.at_step(3);  // attempt 0's step
  second.at_step(4);
  EXPECT_EXIT(second.at_step(6), testing::KilledBySignal(SIGKILL), "rank 1 kills itself at step 6");
  loom::FaultInjector(every, 0, true).at_step(3);  // another rank
  EXPECT_THROW(loom::parse_fault("kill:rank=1:every=0"), loom::InputError);
  EXPECT_THROW(loom::parse_fault("hang:rank=1:every=3"), loom::InputError);
}

TEST(Fault, ArmedOnlyOnTheFirstAttempt) {
  unsetenv("LOOM_ATTEMPT");
  EXPECT_TRUE(loom::fault_armed_from_env());
  setenv("LOOM_ATTEMPT", "0", 1);
  EXPECT_TRUE(loom::fault_armed_from_env());
  setenv("LOOM_ATTEMPT", "2", 1);
  EXPECT_FALSE(loom::fault_armed_from_env());
  unsetenv("LOOM_ATTEMPT");
}

TEST(Heartbeat, LinesRoundTripAndWrongSecretsAreRejected) {
  const std::string secret = loom::make_job_secret();
  ASSERT_EQ(secret.size(), 32u);
  EXPECT_EQ(secret.find_first_not_of("0123456789abcdef"), std::string::npos) << secret;
  EXPECT_NE(secret, loom::make_job_secret());

  auto hb = loom::parse_heartbeat_line(loom::format_heartbeat_line(secret, 3, 412), secret);
  ASSERT_TRUE(hb.has_value());
  EXPECT_EQ(hb->rank, 3);
  EXPECT_EQ(hb->step, 412);
  EXPECT_FALSE(hb->done);
  hb = loom::parse_heartbeat_line(loom::format_heartbeat_line(secret, 0, -1), secret);
  ASSERT_TRUE(hb.has_value());
  EXPECT_EQ(hb->step, -1);
  EXPECT_EQ(hb->idle_ms, -1) << "not in a step";
  hb = loom::parse_heartbeat_line(loom::format_heartbeat_line(secret, 5, 7, 1234), secret);
  ASSERT_TRUE(hb.has_value());
  EXPECT_EQ(hb->idle_ms, 1234);
  hb = loom::parse_heartbeat_line(secret + " 5 7", secret);  // an older client: no idle time
  ASSERT_TRUE(hb.has_value());
  EXPECT_EQ(hb->idle_ms, -1);
  hb = loom::parse_heartbeat_line(loom::format_done_line(secret, 2), secret);
  ASSERT_TRUE(hb.has_value());
  EXPECT_TRUE(hb->done);
  EXPECT_EQ(hb->rank, 2);

  std::string wrong = secret;
  wrong[5] = wrong[5] == 'a' ? 'b' : 'a';
  for (const std::string& bad :
       {loom::format_heartbeat_line(wrong, 3, 412), loom::format_heartbeat_line("", 3, 412),
        secret + " 3", secret + " 3 412 9 1", secret + " 3 412 -5", secret + " 3 done 4",
        secret + " -1 4", secret + " 3 -2",
        secret + " 3 x", secret + "  3 4", secret.substr(0, 31) + " 3 4"}) {
    EXPECT_FALSE(loom::parse_heartbeat_line(bad, secret).has_value()) << bad;
  }
}

TEST(Heartbeat, DisabledWithoutASupervisorAndSurvivesAnUnreachableOne) {
  unsetenv("LOOM_SUPERVISOR");
  EXPECT_EQ(loom::HeartbeatClient::from_env(0), nullptr);
  // Port 1 on loopback refuses: reported once, no exception, set_step still works.
  loom::HeartbeatClient client("127.0.0.1:1", "00", 0, 0.1);
  EXPECT_FALSE(client.connected());
  client.set_step(3);
  client.finish();
}

TEST(Supervisor, RestartsResumeAutoReplacingTheUsersResume) {
  const std::vector<std::string> args = {"train", "--config", "c.toml", "--resume", "ckpt/x"};
  EXPECT_EQ(loom::attempt_train_args(args, 0), args);
  const std::vector<std::string> want = {"train", "--config", "c.toml", "--resume", "auto"};
  EXPECT_EQ(loom::attempt_train_args(args, 1), want);
  EXPECT_EQ(loom::attempt_train_args({"train", "--resume=x", "--config", "c.toml"}, 2),
            (std::vector<std::string>{"train", "--config", "c.toml", "--resume", "auto"}));
}

loom::FailureRecord deadline_record() {
  loom::FailureRecord r;
  r.kind = loom::FailureKind::kCollectiveDeadline;
  r.rank = 1;
  r.host = "host-b";
  r.where = "rank 1 (pp 0, dp 1, tp 0)";
  r.step = 3;
  r.micro_batch = 0;
  r.op = "ALLREDUCE";
  r.group = "dp[0..1]";
  r.seq = 7;
  r.bytes = 64;
  r.missing = {0};
  r.waited_s = 5.004;
  r.deadline_s = 5;
  r.exit_code = 3;
  r.message = "any words at all: \"quoted\", tabs\t, ünïcödé";
  return r;
}

TEST(Heartbeat, FailureRecordsRoundTripAndMalformedOnesAreRefused) {
  const std::string secret = "0123456789abcdef0123456789abcdef";
  const loom::FailureRecord r = deadline_record();
  const std::string line = loom::format_failure_line(secret, r);
  EXPECT_TRUE(line.starts_with(secret + " 1 fail {")) << line;
  const auto hb = loom::parse_heartbeat_line(line, secret);
  ASSERT_TRUE(hb && hb->failure) << line;
  EXPECT_EQ(hb->rank, 1);
  EXPECT_FALSE(hb->done);
  EXPECT_EQ(*hb->failure, r);
  EXPECT_EQ(r.summary(), "rank 1 (pp 0, dp 1, tp 0) on host-b: collective deadline: ALLREDUCE "
                         "#7 (64 bytes) of group dp[0..1] at step 3, micro-batch 0 (waited 5.00 "
                         "s of 5 s); never entered: rank 0");

  const std::string bad_secret = "f123456789abcdef0123456789abcdef";
  EXPECT_FALSE(loom::parse_heartbeat_line(loom::format_failure_line(bad_secret, r), secret));
  const std::string head = secret + " 1 fail ";
  for (const std::string json : {
           R"({"kind":"collective_deadline","rank":2})",      // not the line's rank
           R"({"kind":"falling_sky","rank":1})",              // unknown kind
           R"({"rank":1})",                                   // no kind
           R"({"kind":"error","rank":"1"})",                  // wrong type
           R"({"kind":"error","rank":1,"step":1.5})",         // not an integer
           R"({"kind":"error","rank":1,"missing":[0,-3]})",   // not a rank
           R"({"kind":"error","rank":1,"waited_s":-1})",      // a negative time
           R"({"kind":"error","rank":1,"exit_code":99999999999})",
           R"(["kind","error"])", R"({"kind":"error","rank":1)", "", "{}"})
    EXPECT_FALSE(loom::parse_heartbeat_line(head + json, secret)) << json;
  // Unknown fields are ignored, missing ones take their defaults.
  const auto minimal =
      loom::parse_heartbeat_line(head + R"({"kind":"bad_input","rank":1,"later":[1,2]})", secret);
  ASSERT_TRUE(minimal && minimal->failure);
  EXPECT_EQ(minimal->failure->kind, loom::FailureKind::kBadInput);
  EXPECT_EQ(minimal->failure->step, -1);

  // A message too long for a line is cut (on a UTF-8 boundary), and the rest survives.
  loom::FailureRecord big = r;
  big.message.clear();
  for (int i = 0; i < 20000; ++i) big.message += "é";
  const std::string cut = loom::format_failure_line(secret, big);
  EXPECT_LE(cut.size(), loom::kMaxHeartbeatLine);
  const auto back = loom::parse_heartbeat_line(cut, secret);
  ASSERT_TRUE(back && back->failure);
  EXPECT_TRUE(back->failure->message.ends_with("é [cut]")) << back->failure->message.substr(0, 40);
  EXPECT_EQ(back->failure->missing, r.missing);
}

// The supervisor's decisions come from the records' kinds, whatever their words and
// whatever status mpirun exits with; only without a record does the status decide.
TEST(Supervisor, DecidesFromTheRecordsNotFromTheirWords) {
  using loom::FailureKind;
  auto record = [](FailureKind k) {
    loom::FailureRecord r;
    r.kind = k;
    r.rank = 0;
    r.message = "wörter, die niemand liest";
    return r;
  };
  const auto decide = [](std::vector<loom::FailureRecord> records, int status, bool first,
                         bool started) {
    return loom::decide_after_failure(records, status, first, started).stop_with;
  };
  EXPECT_EQ(decide({record(FailureKind::kNonFinite)}, 1, false, true), 4);
  EXPECT_EQ(decide({record(FailureKind::kCollectiveDeadline), record(FailureKind::kNonFinite)},
                   3, true, true), 4);
  EXPECT_EQ(decide({record(FailureKind::kBadInput)}, 1, true, false), 2);
  EXPECT_EQ(decide({record(FailureKind::kBadInput)}, 1, true, true), 0);   // it trained before
  EXPECT_EQ(decide({record(FailureKind::kBadInput)}, 1, false, false), 0); // a restart's
  EXPECT_EQ(decide({record(FailureKind::kError)}, 2, true, false), 0);     // the record says
  EXPECT_EQ(decide({record(FailureKind::kPeerDeadline)}, 4, true, true), 0);
  EXPECT_EQ(decide({}, 4, false, true), 4);  // no record: the status the record would carry
  EXPECT_EQ(decide({}, 2, true, false), 2);
  EXPECT_EQ(decide({}, 137, true, true), 0);
  const std::string why = loom::decide_after_failure({record(FailureKind::kNonFinite)}, 1, true,
                                                     true).why;
  EXPECT_TRUE(contains(why, "the ranks' failure records")) << why;

  // An error leads the deadlines it caused in other ranks.
  const std::string d = loom::describe_records({deadline_record(), record(FailureKind::kError)});
  EXPECT_TRUE(d.starts_with(record(FailureKind::kError).summary())) << d;
  EXPECT_TRUE(contains(d, "[1 more record(s): rank 1 (collective_deadline)]")) << d;
}

TEST(Supervisor, AvailableCmdAnswersAreACountOrAHostList) {
  using loom::parse_available;
  EXPECT_EQ(parse_available(" 3\n")->n, 3);
  EXPECT_EQ(parse_available("3")->hosts, "");
  const auto p = parse_available("node1:2,node2:4\n");
  ASSERT_TRUE(p);
  EXPECT_EQ(p->n, 6);
  EXPECT_EQ(p->hosts, "node1:2,node2:4");
  for (const char* bad : {"", "x", "-1", "node1", "node1:0", ":2", "node1:2,", "a:2, b:2",
                          "node1:2x", "2 3"})
    EXPECT_FALSE(parse_available(bad)) << bad;
}

// The records' hosts: the one nearest the cause (a rank that could not read ranks on
// another host) leads, and the supervisor adds where those ranks run.
TEST(Supervisor, TheRecordNearestTheCauseLeadsWithTheHostsItCouldNotRead) {
  loom::FailureRecord tp = deadline_record(), dp = deadline_record();
  tp.rank = 0;
  tp.missing = {1};
  dp.rank = 1;
  dp.missing.clear();
  dp.unread = {3};
  const std::string d = loom::describe_records({tp, dp}, {{3, "node2"}});
  EXPECT_TRUE(d.starts_with(dp.summary() + " (rank 3 on node2)")) << d;
  EXPECT_TRUE(contains(d, "; on other hosts, not read yet: rank 3")) << d;
  EXPECT_TRUE(contains(d, "[1 more record(s): rank 0 (collective_deadline)]")) << d;
}

// The supervisor against a fake mpirun: a bash script that speaks the heartbeat protocol
// over /dev/tcp and behaves as $MODE says.
class FakeMpirun : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = loom::test::scratch_dir("launch_fake");
    std::ofstream s(dir_ / "mpirun.sh");
    s << R"sh(#!/bin/bash
echo "$@" > "$FAKE_DIR/args_$LOOM_ATTEMPT"
IFS=: read -r host port <<< "$LOOM_SUPERVISOR"
beat() { echo "$LOOM_SUPERVISOR_SECRET 0 $1" >&3; }
# A failure record on a connection of its own, as a failing rank sends it.
record() { exec 4<>"/dev/tcp/$host/$port"; echo "$LOOM_SUPERVISOR_SECRET $1 fail $2" >&4; exec 4>&-; }
exec 3<>"/dev/tcp/$host/$port"
case "$MODE" in
  crowd)
    fds=()
    for r in 1 2 3 4 5 6 7; do exec {fd}<>"/dev/tcp/$host/$port"; fds+=($fd); done
    for r in 1 2 3 4 5 6 7; do echo "$LOOM_SUPERVISOR_SECRET $r -1" >&${fds[$((r-1))]}; done
    beat -1; beat 0; sleep 1
    for r in 1 2 3 4 5 6 7; do echo "$LOOM_SUPERVISOR_SECRET $r done" >&${fds[$((r-1))]}; done
    beat done; exit 0 ;;
  wrong-secret)
    echo "0123456789abcdef0123456789abcdef 0 -1" >&3; sleep 1
    exec 3<>"/dev/tcp/$host/$port"; beat -1; beat 0; beat 1; beat done; exit 0 ;;
  silent)
    beat -1; beat 0
    if [ "$LOOM_ATTEMPT" = 0 ]; then exec 3>&-; sleep 600; fi
    beat 1; beat 2; beat done; exit 0 ;;
  deadline)
    beat -1; beat 3
    echo "Rang 1: Frist von 5 s verstrichen" >&2
    record 1 '{"kind":"collective_deadline","rank":1,"host":"host-b","where":"rank 1 (pp 0, dp 1, tp 0)","step":3,"micro_batch":0,"op":"ALLREDUCE","group":"dp[0..1]","seq":7,"bytes":64,"missing":[0],"waited_s":5.0,"deadline_s":5,"exit_code":3,"message":"Rang 1: Frist von 5 s verstrichen"}'
    exit 3 ;;
  bad-input)
    echo "Konfiguration abgelehnt" >&2
    record 0 '{"kind":"bad_input","rank":0,"exit_code":2,"message":"Konfiguration abgelehnt"}'
    exit 1 ;;
  non-finite)
    beat -1; beat 5
    record 0 '{"kind":"non_finite","rank":0,"step":5,"exit_code":4,"message":"NaN, quelque part"}'
    exit 1 ;;
  old-words)
    beat -1; beat 2
    echo "error (rank 0): config.toml: unknown key 'x'" >&2
    echo "rank 1 (pp 0, dp 1, tp 0): deadline of 5 s passed waiting for ALLREDUCE #7 (64 bytes) of group dp[0..1] at step 3, micro-batch 0" >&2
    exit 2 ;;
esac
)sh";
    s.close();
    fs::permissions(dir_ / "mpirun.sh", fs::perms::owner_all);
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  static Result launch(const std::string& mode, const std::string& flags) {
    return sh("env MODE=" + mode + " FAKE_DIR=" + dir_.string() + " " LOOM_BINARY
              " launch --mpirun " + (dir_ / "mpirun.sh").string() + " " + flags +
              " -- train --config x.toml", 120);
  }
  static fs::path dir_;
};
fs::path FakeMpirun::dir_;

TEST_F(FakeMpirun, AWrongSecretIsRejectedAndLogged) {
  const Result r = launch("wrong-secret", "-n 1 --heartbeat-s 5 --max-restarts 0");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "rejected the connection from 127.0.0.1:")) << r.output;
  EXPECT_TRUE(contains(r.output, "a wrong secret")) << r.output;
  EXPECT_TRUE(contains(r.output, "completed after 0 restart(s)")) << r.output;
  const std::string args = slurp(dir_ / "args_0");
  EXPECT_TRUE(contains(args, "-np 1 ")) << args;
  EXPECT_TRUE(contains(args, "--bind-to none")) << args;
  EXPECT_TRUE(contains(args, " train --config x.toml")) << args;
}

// Issue 12: connections accepted in a poll round were read through fds[3 + i] past the end
// of the polled set (a heap overflow under ASan). Eight ranks connect at once here.
TEST_F(FakeMpirun, ManyRanksConnectingInOnePollRound) {
  const Result r = launch("crowd", "-n 8 --heartbeat-s 5 --max-restarts 0");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "all 8 ranks are reporting")) << r.output;
  EXPECT_TRUE(contains(r.output, "completed after 0 restart(s)")) << r.output;
}

TEST_F(FakeMpirun, ASilentRankIsRestartedWithResumeAuto) {
  const Result r = launch("silent", "-n 1 --heartbeat-s 1 --max-restarts 2");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "attempt 1 failed: rank 0 missed its heartbeat for 1 s "
                                 "(last step 0)")) << r.output;
  EXPECT_TRUE(contains(r.output, "completed after 1 restart(s)")) << r.output;
  EXPECT_TRUE(contains(r.output, "failure 1 (attempt 1, last step 0): training again")) << r.output;
  EXPECT_FALSE(contains(slurp(dir_ / "args_0"), "--resume"));
  EXPECT_TRUE(contains(slurp(dir_ / "args_1"), "train --config x.toml --resume auto"));
}

// Issue 11: --available-cmd 'sleep 300' blocked the supervisor for good, and 'echo garbage'
// gave up with "only 0 processes available". Both now fall back to the last known count.
TEST_F(FakeMpirun, AnAvailableCmdThatHangsOrPrintsGarbageUsesTheLastKnownCount) {
  Result r = launch("silent", "-n 1 --heartbeat-s 1 --max-restarts 1 --min-n 1 "
                    "--available-cmd 'sleep 300' --available-timeout-s 1");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "--available-cmd 'sleep 300' gave no answer within 1 s "
                                 "(--available-timeout-s); it was killed: using the last known "
                                 "count, 1")) << r.output;
  EXPECT_TRUE(contains(r.output, "completed after 1 restart(s)")) << r.output;
  r = launch("silent", "-n 1 --heartbeat-s 1 --max-restarts 1 --min-n 1 "
             "--available-cmd 'echo garbage'");
  EXPECT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "printed 'garbage', which is not a process count: using the "
                                 "last known count, 1")) << r.output;
  EXPECT_FALSE(contains(r.output, "only 0 process")) << r.output;
}

// Without --min-n, a restart waits until --available-cmd reports every process again (a
// link back up); with it, a host list places the smaller restart on the hosts left.
TEST_F(FakeMpirun, ARestartWaitsForEveryProcessOrShrinksOntoTheHostsLeft) {
  const std::string counter = (dir_ / "asked").string();
  fs::remove(counter);
  // Answers 1, 1, then 2 processes: the restart waits two rounds.
  const std::string cmd = "'echo x >> " + counter + "; [ $(wc -l < " + counter +
                          ") -ge 3 ] && echo h1:1,h2:1 || echo h1:1'";
  Result r = launch("silent", "-n 2 --heartbeat-s 1 --max-restarts 1 --available-poll-s 0.1 "
                    "--available-cmd " + cmd);
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "waiting for all 2 processes before restarting: "
                                 "--available-cmd reports 1 (h1:1); asking every 0.1 s")) << r.output;
  EXPECT_TRUE(contains(r.output, "all 2 processes are available again after ")) << r.output;
  EXPECT_TRUE(contains(slurp(dir_ / "args_1"), "-np 2 ")) << slurp(dir_ / "args_1");

  r = launch("silent", "-n 2 --heartbeat-s 1 --max-restarts 1 --available-cmd 'echo h1:1' "
             "--available-wait-s 0.3 --available-poll-s 0.1");
  EXPECT_EQ(r.code, 1) << r.output;
  EXPECT_TRUE(contains(r.output, "gave up waiting: after 0 s (--available-wait-s) only 1 of 2"))
      << r.output;

  r = launch("silent", "-n 2 --heartbeat-s 1 --max-restarts 1 --min-n 1 "
             "--available-cmd 'echo h1:1'");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "elastic: 1 of 2 processes available on h1:1; restarting on 1"))
      << r.output;
  EXPECT_TRUE(contains(slurp(dir_ / "args_1"), "-np 1 --host h1:1 ")) << slurp(dir_ / "args_1");
}

TEST_F(FakeMpirun, GivesUpAfterMaxRestartsNamingTheDeadline) {
  const Result r = launch("deadline", "-n 2 --heartbeat-s 5 --max-restarts 1");
  EXPECT_EQ(r.code, 1) << r.output;
  const std::string record = "rank 1 (pp 0, dp 1, tp 0) on host-b: collective deadline: "
                             "ALLREDUCE #7 (64 bytes) of group dp[0..1] at step 3, micro-batch 0 "
                             "(waited 5.00 s of 5 s); never entered: rank 0";
  EXPECT_TRUE(contains(r.output, "failure record: " + record)) << r.output;
  EXPECT_TRUE(contains(r.output, "attempt 1 failed: " + record + "; mpirun exited with status 3"))
      << r.output;
  EXPECT_TRUE(contains(r.output, "Rang 1: Frist von 5 s verstrichen")) << r.output;  // passed on
  EXPECT_TRUE(contains(r.output, "attempt 2 failed")) << r.output;
  EXPECT_TRUE(contains(r.output, "gave up: 2 attempt(s) failed")) << r.output;
}

// Decisions follow the records whatever the words and the exit status: bad input is not
// restarted though mpirun exits 1, nor is a non-finite loss; and stderr in loom's old
// wording, with no record, is passed through and decides nothing.
TEST_F(FakeMpirun, BadInputIsNotRestarted) {
  Result r = launch("bad-input", "-n 1 --max-restarts 3");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "failure record: rank 0: bad input (exit status 2) at step -1: "
                                 "Konfiguration abgelehnt")) << r.output;
  EXPECT_TRUE(contains(r.output, "bad input (the ranks' failure records) before its first step: "
                                 "not restarting")) << r.output;
  EXPECT_FALSE(contains(r.output, "attempt 2")) << r.output;

  r = launch("non-finite", "-n 1 --max-restarts 3");
  EXPECT_EQ(r.code, 4) << r.output;
  EXPECT_TRUE(contains(r.output, "non finite (exit status 4) at step 5: NaN, quelque part"))
      << r.output;
  EXPECT_FALSE(contains(r.output, "attempt 2")) << r.output;

  r = launch("old-words", "-n 1 --heartbeat-s 5 --max-restarts 1");
  EXPECT_EQ(r.code, 1) << r.output;  // status 2, but after a step: restarted, then given up
  EXPECT_TRUE(contains(r.output, "attempt 1 failed: mpirun exited with status 2")) << r.output;
  EXPECT_TRUE(contains(r.output, "attempt 2 failed")) << r.output;
  EXPECT_FALSE(contains(r.output, "failure record")) << r.output;

  r = sh(LOOM_BINARY " launch -n 2 --min-n 3 -- train --config x.toml");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "--min-n 3 must be between 1 and -n 2")) << r.output;
  r = sh(LOOM_BINARY " launch -n 2 -- eval --ckpt x");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, "expected the train command after '--'")) << r.output;
}

// End to end: a tiny model on 2 data-parallel ranks, 8 steps, a checkpoint every 2.
class LaunchEndToEnd : public ::testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = loom::test::scratch_dir("launch");
    loom::test::write_corpus(dir_ / "corpus.txt");
    std::ofstream cfg(dir_ / "tiny.toml");
    cfg << "[model]\nn_layer = 2\nn_head = 2\nn_embd = 16\nblock_size = 32\n"
        << "[train]\nmicro_batch = 2\nseq_len = 16\nsteps = 8\ncheckpoint_every = 2\n"
        << "[data]\ntrain = \"" << (dir_ / "data/train_000000.bin").string() << "\"\n"
        << "[run]\ndir = \"" << (dir_ / "base").string() << "\"\nthreads = 1\n";
    cfg.close();
    prepared_ = sh(LOOM_BINARY " prepare --text " + (dir_ / "corpus.txt").string() + " --out " +
                   (dir_ / "data").string() + " --val-fraction 0.1");
    baseline_ = sh("env OMP_NUM_THREADS=1 " LOOM_MPIRUN " -np 2 " LOOM_BINARY
                   " train --config " + (dir_ / "tiny.toml").string() + " --dp 2");
  }
  static void TearDownTestSuite() { fs::remove_all(dir_); }

  static void expect_baseline() {
    ASSERT_EQ(prepared_.code, 0) << prepared_.output;
    ASSERT_EQ(baseline_.code, 0) << baseline_.output;
    ASSERT_FALSE(final_model("base").empty());
  }
  static std::string final_model(const std::string& run) {
    return slurp(dir_ / run / "checkpoints/step_00000008/model-00000.safetensors");
  }
  // `loom launch -n 2` of the tiny run into run directory `run` with `extra` train flags.
  static Result launch(const std::string& run, const std::string& extra) {
    return sh("env OMP_NUM_THREADS=1 " LOOM_BINARY " launch -n 2 --max-restarts 2 "
              "--heartbeat-s 5 -- train --config " + (dir_ / "tiny.toml").string() +
              " --dp 2 --set run.dir=" + (dir_ / run).string() + " " + extra);
  }
  static fs::path dir_;
  static Result prepared_, baseline_;
};
fs::path LaunchEndToEnd::dir_;
Result LaunchEndToEnd::prepared_, LaunchEndToEnd::baseline_;

TEST_F(LaunchEndToEnd, AKilledRankIsRestartedFromTheLastCheckpoint) {
  expect_baseline();
  const Result r = launch("killed", "--inject-fault kill:rank=1:step=5");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "injected fault: rank 1 kills itself at step 5")) << r.output;
  EXPECT_TRUE(contains(r.output, "attempt 1 failed: mpirun exited with status")) << r.output;
  // The dead rank is named: by its socket closing first, or (when the other rank's closed in
  // the same poll) by mpirun's own report.
  EXPECT_TRUE(contains(r.output, "rank 1 (last step 5) was the first to disconnect") ||
              contains(r.output, "mpirun noticed that process rank 1 "))
      << r.output;
  EXPECT_TRUE(contains(r.output, "--resume auto")) << r.output;
  EXPECT_TRUE(contains(r.output, "at step 4")) << r.output;
  EXPECT_TRUE(contains(r.output, "completed after 1 restart(s)")) << r.output;
  EXPECT_TRUE(contains(r.output, "failure 1 (attempt 1, last step 5): training again")) << r.output;
  EXPECT_TRUE(final_model("killed") == final_model("base")) << "the final weights differ";
}

TEST_F(LaunchEndToEnd, AHungRankIsDetectedRestartedAndCompletes) {
  expect_baseline();
  const Result r = launch("hung", "--set comm.timeout_s=5 --inject-fault hang:rank=0:step=3");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "injected fault: rank 0 hangs at step 3")) << r.output;
  // Caught by its progress (the default timeout: 5 x the median step, at least 5 s), or by
  // the 5 s collective deadline, whichever comes first.
  const bool named = contains(r.output, "failure record: ") ||
                     contains(r.output, "made no progress for ");
  EXPECT_TRUE(named) << r.output;
  EXPECT_TRUE(contains(r.output, "at step 2")) << r.output;
  EXPECT_TRUE(contains(r.output, "completed after 1 restart(s)")) << r.output;
  EXPECT_TRUE(final_model("hung") == final_model("base")) << "the final weights differ";
}

// The waiting rank's deadline reaches the supervisor as a record naming the rank, its host,
// the collective, its group and step, and the rank that never entered it; bad input found
// before MPI starts is a record too, and is not restarted.
TEST_F(LaunchEndToEnd, FailuresReachTheSupervisorAsRecords) {
  expect_baseline();
  Result r = sh("env OMP_NUM_THREADS=1 " LOOM_BINARY " launch -n 2 --max-restarts 0 "
                "--heartbeat-s 5 --progress-timeout 600 -- train --config " +
                (dir_ / "tiny.toml").string() + " --dp 2 --set run.dir=" +
                (dir_ / "records").string() + " --set comm.timeout_s=3 "
                "--inject-fault hang:rank=0:step=3");
  EXPECT_EQ(r.code, 1) << r.output;
  char host[256] = "";
  gethostname(host, sizeof host - 1);
  const std::string who = fmt::format("rank 1 (pp 0, dp 1, tp 0) on {}: collective deadline: ",
                                      host);
  EXPECT_TRUE(contains(r.output, "failure record: " + who)) << r.output;
  EXPECT_TRUE(contains(r.output, "attempt 1 failed: " + who)) << r.output;
  EXPECT_TRUE(contains(r.output, "of group dp[0..1] at step 3")) << r.output;
  EXPECT_TRUE(contains(r.output, "(waited ")) << r.output;
  EXPECT_TRUE(contains(r.output, "; never entered: rank 0")) << r.output;

  r = sh(LOOM_BINARY " launch -n 2 --max-restarts 2 -- train --config " +
         (dir_ / "tiny.toml").string() + " --dp 2 --set model.n_head=3");
  EXPECT_EQ(r.code, 2) << r.output;
  EXPECT_TRUE(contains(r.output, fmt::format("failure record: rank 0 on {}: bad input (exit "
                                             "status 2) at step -1: n_embd=16 is not divisible "
                                             "by n_head=3", host))) << r.output;
  EXPECT_TRUE(contains(r.output, "not restarting")) << r.output;
  EXPECT_FALSE(contains(r.output, "attempt 2")) << r.output;
}

TEST_F(LaunchEndToEnd, ExitDuringACheckpointKeepsThePreviousOne) {
  expect_baseline();
  const Result r = launch("torn", "--inject-fault exit-during-checkpoint:rank=0:step=4");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "rank 0 exits during the save of checkpoint 4")) << r.output;
  EXPECT_TRUE(contains(r.output, "attempt 1 failed")) << r.output;
  // The torn save of step 4 never became a checkpoint: the restart resumes from step 2.
  EXPECT_TRUE(contains(r.output, "step_00000002 at step 2")) << r.output;
  EXPECT_TRUE(contains(r.output, "completed after 1 restart(s)")) << r.output;
  EXPECT_TRUE(final_model("torn") == final_model("base")) << "the final weights differ";
}

TEST_F(LaunchEndToEnd, AFailureBeforeTheFirstCheckpointStartsAgainFromStepZero) {
  expect_baseline();
  const Result r = launch("early", "--inject-fault kill:rank=0:step=1");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "restart without a checkpoint")) << r.output;
  EXPECT_TRUE(contains(r.output, "completed after 1 restart(s)")) << r.output;
  EXPECT_TRUE(final_model("early") == final_model("base")) << "the final weights differ";
}

}  // namespace

namespace {

// Elastic: after a failure only one process is available; the job restarts on it with dp 1
// and twice the accumulation, keeping the global batch, and finishes where the 2-process run
// did (the same samples per step; equal within fp32 round-off).
TEST_F(LaunchEndToEnd, ElasticRestartOnFewerProcessesKeepsTheGlobalBatch) {
  expect_baseline();
  const Result r = sh("env OMP_NUM_THREADS=1 " LOOM_BINARY " launch -n 2 --min-n 1 "
                      "--available-cmd 'echo 1' --max-restarts 2 --heartbeat-s 5 -- train "
                      "--config " + (dir_ / "tiny.toml").string() + " --dp 2 --set run.dir=" +
                      (dir_ / "elastic").string() + " --inject-fault kill:rank=1:step=5");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, "elastic: 1 of 2 processes available; restarting on 1"))
      << r.output;
  EXPECT_TRUE(contains(r.output, "dp 2 -> 1, grad_accum 1 -> 2")) << r.output;
  EXPECT_TRUE(contains(r.output, "completed after 1 restart(s)")) << r.output;
  // The last metrics line of each run: step 8's loss.
  auto last_loss = [](const fs::path& run) {
    const std::string m = slurp(run / "metrics.jsonl");
    const size_t at = m.rfind("\"loss\":");
    return at == std::string::npos ? -1.0 : std::stod(m.substr(at + 7));
  };
  const double base = last_loss(dir_ / "base"), elastic = last_loss(dir_ / "elastic");
  ASSERT_GT(base, 0);
  EXPECT_NEAR(elastic, base, 1e-5 * base);
}

}  // namespace

namespace {

// The srun path: the supervisor runs `srun -n N --kill-on-bad-exit=1 --export=ALL <loom>
// train ...`. No Slurm here, so a stand-in srun (which checks those flags and runs the
// ranks with mpirun) takes its place; the recovery must be the same.
TEST_F(LaunchEndToEnd, UnderSrunTheJobRecoversTheSameWay) {
  expect_baseline();
  const fs::path srun = dir_ / "srun.sh";
  {
    std::ofstream f(srun);
    f << "#!/bin/bash\n"
      << "[ \"$1\" = -n ] && [ \"$3\" = --kill-on-bad-exit=1 ] && [ \"$4\" = --export=ALL ] "
      << "|| { echo \"stand-in srun: unexpected arguments: $*\" >&2; exit 99; }\n"
      << "n=$2; shift 4\n"
      << "exec " << LOOM_MPIRUN << " -np \"$n\" \"$@\"\n";
  }
  fs::permissions(srun, fs::perms::owner_all);
  const Result r = sh("env OMP_NUM_THREADS=1 " LOOM_BINARY " launch --launcher srun --mpirun " +
                      srun.string() + " -n 2 --max-restarts 2 --heartbeat-s 5 -- train --config " +
                      (dir_ / "tiny.toml").string() + " --dp 2 --set run.dir=" +
                      (dir_ / "srun").string() + " --inject-fault kill:rank=1:step=5");
  ASSERT_EQ(r.code, 0) << r.output;
  EXPECT_TRUE(contains(r.output, srun.string() + " -n 2 --kill-on-bad-exit=1 --export=ALL"))
      << r.output;
  EXPECT_TRUE(contains(r.output, "completed after 1 restart(s)")) << r.output;
  EXPECT_TRUE(final_model("srun") == final_model("base")) << "the final weights differ";
  const Result bad = sh(LOOM_BINARY " launch --launcher srun --hosts a:1 -n 2 -- train --config x");
  EXPECT_EQ(bad.code, 2) << bad.output;
}

}  // namespace
