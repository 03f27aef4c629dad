// Trainer under pipeline parallelism: the executor runs the schedule's action lists; this
// file adapts the model's chunks to it (activation slots per micro-batch, data, the data-
// parallel hook of the last micro-batch), sums the tied embedding's gradients between the
// first and last stage, and evaluates with a forward-only pass down the pipeline.
#include <fmt/format.h>

#include <algorithm>
#include <functional>
#include <utility>
#include <vector>

#include "core/check.h"
#include "train/trainer.h"

namespace loom {
namespace {

// The model's chunks as the executor drives them. A micro-batch occupies one activation
// slot of its chunk from its forward to its backward.
class ChunkStage final : public PipelineStage {
 public:
  using Loader = std::function<void(int mb, int32_t* inputs, int32_t* targets)>;
  ChunkStage(Gpt& model, Loader load, int B, int T, float dloss_scale, int microbatches)
      : model_(model), load_(std::move(load)), B_(B), T_(T), dloss_(dloss_scale),
        inputs_(size_t(B) * T), targets_(size_t(B) * T) {
    const size_t chunks = model.layout().chunks.size();
    free_.resize(chunks);
    slot_of_.assign(chunks, std::vector<int>(size_t(microbatches), -1));
    for (auto& f : free_)
      for (int s = model.slots() - 1; s >= 0; --s) f.push_back(s);
  }

  void forward(int chunk, int mb, const float* in, float* out) override {
    auto& free = free_[size_t(chunk)];
    LOOM_CHECK(!free.empty(), "chunk {} has no free activation slot for micro-batch {}", chunk,
               mb);
    const int slot = free.back();
    free.pop_back();
    slot_of_[size_t(chunk)][size_t(mb)] = slot;
    const ModelChunk& ch = model_.layout().chunks[size_t(chunk)];
    if (ch.embed || ch.head) load_(mb, inputs_.data(), targets_.data());
    const float loss = model_.forward_chunk(chunk, slot, inputs_.data(), targets_.data(), in,
                                            out, B_, T_, dloss_);
    if (ch.head) loss_sum_ += loss;
  }

  void backward(int chunk, int mb, const float* dout, float* din) override {
    current_mb_ = mb;
    const int slot = std::exchange(slot_of_[size_t(chunk)].at(size_t(mb)), -1);
    LOOM_CHECK(slot >= 0, "backward of micro-batch {} of chunk {} before its forward", mb, chunk);
    model_.backward_chunk(chunk, slot, dout, din);
    free_[size_t(chunk)].push_back(slot);
  }

  int current_mb() const { return current_mb_; }
  double loss_sum() const { return loss_sum_; }

 private:
  Gpt& model_;
  Loader load_;
  int B_, T_;
  float dloss_;
  std::vector<int32_t> inputs_, targets_;
  std::vector<std::vector<int>> free_;
  std::vector<std::vector<int>> slot_of_;  // [chunk][mb] -> slot, -1 when none
  int current_mb_ = -1;
  double loss_sum_ = 0;
};

}  // namespace

double Trainer::run_pipeline() {
  const TrainConfig& t = cfg_.train;
  const int m = t.grad_accum, dp = grid_->shape().dp;
  ChunkStage stage(
      model_,
      [this, m](int mb, int32_t* in, int32_t* tg) {
        load_rows(uint64_t(step_) * uint64_t(m) + uint64_t(mb), in, tg);
      },
      t.micro_batch, t.seq_len, scaler_.scale() / float(m * dp), m);
  // Data parallelism communicates during the last micro-batch's backward only; the tied
  // embedding's bucket waits until its gradient is summed across the two end stages.
  dp_.arm_for_last_micro_batch();
  const std::function<void(int)> dp_hook = model_.backward_hook();
  model_.set_backward_hook([&stage, dp_hook, m](int layer) {
    if (dp_hook && stage.current_mb() == m - 1 && layer != -1) dp_hook(layer);
  });
  last_pipe_ = pipe_->run(stage, step_);
  sync_tied_embedding();
  // The loss lives on the last stage; every rank reports it.
  double loss = stage.loss_sum();
  grid_->pp_comm().allreduce(&loss, 1, ReduceOp::kSum);
  return loss;
}

void Trainer::sync_tied_embedding() {
  const int p = grid_->shape().pp, r = grid_->coord().pp;
  if (p == 1 || (r != 0 && r != p - 1)) return;
  const auto [begin, end] = model_.wte_range();
  float* g = model_.grads().data() + begin;
  const size_t n = end - begin;
  tied_peer_grad_.resize(n);  // allocated once, reused every step
  Comm& pc = grid_->pp_comm();
  const int peer = r == 0 ? p - 1 : 0;
  auto recv = pc.recv_async(tied_peer_grad_.data(), n, peer);
  auto send = pc.send_async(g, n, peer);  // g is not written until both have completed
  recv->wait();
  send->wait();
  // Both ends add the same two operands (addition commutes): bitwise equal sums.
  for (size_t i = 0; i < n; ++i) g[i] += tied_peer_grad_[i];
}

float Trainer::evaluate_pipeline(int64_t batches) {
  const int B = cfg_.train.micro_batch, T = cfg_.train.seq_len;
  const int p = grid_->shape().pp, r = grid_->coord().pp;
  const int S = partition_.stages();
  Comm& pc = grid_->pp_comm();
  std::vector<float> in(model_.act_floats()), out(model_.act_floats());
  double sum = 0.0;
  for (int64_t k = 0; k < batches; ++k) {
    val_data_->load_rows(uint64_t(k), grid_->coord().dp * B, B, inputs_.data(), targets_.data());
    for (size_t c = 0; c < model_.layout().chunks.size(); ++c) {
      const int vs = int(c) * p + r;
      if (vs > 0) pc.recv(in.data(), in.size(), (vs - 1) % p);
      const float loss = model_.forward_chunk(int(c), 0, inputs_.data(), targets_.data(),
                                              in.data(), out.data(), B, T, 0.0f);
      if (vs == S - 1) sum += loss;
      else pc.send(out.data(), out.size(), (vs + 1) % p);
    }
  }
  pc.allreduce(&sum, 1, ReduceOp::kSum);
  return sum / double(batches);
}

}  // namespace loom
