#include "comm/comm.h"

#include <algorithm>

#include <cstdlib>
#include <cstring>

#include "core/check.h"

namespace loom {
namespace {

class DoneHandle final : public CommHandle {
 public:
  void wait() override {}
  bool ready() override { return true; }
};

class SingleComm final : public Comm {
 public:
  explicit SingleComm(std::string name) : name_(std::move(name)) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return name_ + "[0]"; }
  Traffic traffic() const override { return {}; }
  std::unique_ptr<CommHandle> allreduce_async(float*, size_t, ReduceOp) override {
    return std::make_unique<DoneHandle>();
  }
  void allreduce(double*, size_t, ReduceOp) override {}
  std::unique_ptr<CommHandle> allgather_async(const float* send, float* recv,
                                              size_t count) override {
    if (send != recv) std::memmove(recv, send, count * sizeof(float));
    return std::make_unique<DoneHandle>();
  }
  std::unique_ptr<CommHandle> reduce_scatter_async(const float* send, float* recv,
                                                   size_t count) override {
    if (send != recv) std::memmove(recv, send, count * sizeof(float));
    return std::make_unique<DoneHandle>();
  }
  std::unique_ptr<CommHandle> reduce_async(float*, size_t, int) override {
    return std::make_unique<DoneHandle>();
  }
  std::unique_ptr<CommHandle> broadcast_async(float*, size_t, int) override {
    return std::make_unique<DoneHandle>();
  }
  std::unique_ptr<CommHandle> send_async(const float*, size_t, int dst) override {
    LOOM_CHECK(false, "send to rank {} in a one-rank group {}", dst, name());
    return nullptr;
  }
  std::unique_ptr<CommHandle> recv_async(float*, size_t, int src) override {
    LOOM_CHECK(false, "recv from rank {} in a one-rank group {}", src, name());
    return nullptr;
  }
  std::unique_ptr<CommHandle> barrier_async() override { return std::make_unique<DoneHandle>(); }
  std::unique_ptr<CommHandle> allreduce_bf16_async(uint16_t*, size_t) override {
    return std::make_unique<DoneHandle>();
  }
  std::unique_ptr<CommHandle> reduce_bf16_async(uint16_t*, size_t, int) override {
    return std::make_unique<DoneHandle>();
  }
  std::unique_ptr<CommHandle> broadcast_u16_async(uint16_t*, size_t, int) override {
    return std::make_unique<DoneHandle>();
  }
  std::unique_ptr<CommHandle> broadcast_bytes_async(std::byte*, size_t, int) override {
    return std::make_unique<DoneHandle>();
  }
  std::unique_ptr<CommHandle> alltoall_bytes_async(const std::byte* send, std::byte* recv,
                                                   size_t count) override {
    if (send != recv) std::copy(send, send + count, recv);
    return std::make_unique<DoneHandle>();
  }
  std::unique_ptr<CommHandle> allgather_bytes_async(const std::byte* send, std::byte* recv,
                                                    size_t count) override {
    if (send != recv) std::copy(send, send + count, recv);
    return std::make_unique<DoneHandle>();
  }
  [[noreturn]] void abort(int exit_code) override { std::_Exit(exit_code); }
  std::unique_ptr<Comm> split(int, int, const std::string& name) override {
    return std::make_unique<SingleComm>(name);
  }

 private:
  std::string name_;
};

}  // namespace

std::unique_ptr<Comm> make_single_comm(std::string name) {
  return std::make_unique<SingleComm>(std::move(name));
}

}  // namespace loom
