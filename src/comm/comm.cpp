#include "comm/comm.h"

#include <cstdlib>
#include <cstring>

namespace loom {
namespace {

class SingleComm final : public Comm {
 public:
  explicit SingleComm(std::string name) : name_(std::move(name)) {}
  int rank() const override { return 0; }
  int size() const override { return 1; }
  std::string name() const override { return name_ + "[0]"; }
  void allreduce(float*, size_t, ReduceOp) override {}
  void allreduce(double*, size_t, ReduceOp) override {}
  void allgather(const float* send, float* recv, size_t count) override {
    if (send != recv) std::memmove(recv, send, count * sizeof(float));
  }
  void reduce_scatter(const float* send, float* recv, size_t count) override {
    if (send != recv) std::memmove(recv, send, count * sizeof(float));
  }
  void broadcast(float*, size_t, int) override {}
  void barrier() override {}
  [[noreturn]] void abort(int exit_code) override { std::_Exit(exit_code); }

 private:
  std::string name_;
};

}  // namespace

std::unique_ptr<Comm> make_single_comm(std::string name) {
  return std::make_unique<SingleComm>(std::move(name));
}

}  // namespace loom
