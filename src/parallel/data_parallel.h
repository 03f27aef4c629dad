// Data parallelism over the flat gradient buffer (DDP / ZeRO style).
//
// The buffer is split into buckets of about bucket_mb, walking the parameters in reverse
// layer order (ln_f, block L-1, ..., block 0, embeddings), because that is the order in
// which backward finishes them. During the backward of the step's last micro-batch the
// model's hook reports each finished layer; a bucket whose parameters are all final starts
// its all-reduce at once, on the communicator's own thread, while backward continues.
// finish() waits for what is still in flight.
//
// ZeRO (Rajbhandari et al. 2020), on the padded flat buffer split into dp equal shards:
//  stage 0: gradients all-reduced, every rank updates everything;
//  stage 1: gradients all-reduced, each rank keeps the AdamW moments of its shard only,
//           updates its shard, then the weights are all-gathered;
//  stage 2: each bucket is reduced only to the rank(s) whose shard it overlaps (MPI_Reduce
//           per owner, launched from the backward hook like the all-reduces), so a rank
//           ends with the summed gradients of its shard only; then as stage 1. Backward
//           still accumulates into a full-size gradient buffer.
//  stage 3: as stage 2, and the weights are sharded too: a rank keeps only its shard of
//           the flat weight buffer resident; the model's unit hooks gather a layer's
//           weights from their owners just before use (forward and backward) and give the
//           pages back to the OS (madvise) right after, so the weights outside the shard
//           occupy one block (plus the embeddings, held from the start of forward to the
//           end of backward) at a time.
// At a low precision (set_weight_gather), the gathers of stages 1-3 move the blocks' linear
// weights, which forward and backward read only through their compute copy, as 16-bit
// words: the owner rounds its fp32 masters, the others expand the words into their fp32
// buffer, whose values the compute copy then reproduces exactly (rounding is idempotent).
// Outside its shard a rank's fp32 masters of those weights are thus rounded;
// materialize_all() gathers the exact ones (checkpoints). The rest (embeddings, read in
// fp32 by the lookup; layernorms, biases) travels in fp32.
// Gradients are averaged over the global batch: each rank scales its loss by 1/dp.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <vector>

#include "comm/comm.h"
#include "model/gpt.h"
#include "parallel/grad_compression.h"

namespace loom {

struct GradBucket {
  size_t begin = 0, end = 0;  // range of the flat buffer, in floats
  int ready_layer = 0;        // final once the hook reported this layer (-1 = embeddings)
  std::vector<std::unique_ptr<CommHandle>> inflight;
  bool released = false;  // ZeRO 2/3: its non-owned gradient pages were given back
};

class DataParallel {
 public:
  DataParallel(Gpt& model, Comm& dp, int zero_stage, double bucket_mb);

  int zero_stage() const { return zero_; }
  // The dtype gradients travel in ([parallel] grad_reduce): fp32, or bf16 (half the bytes;
  // each bucket rounded to bf16 once, summed in bf16, converted back into the fp32
  // gradients; accumulation over micro-batches stays fp32).
  void set_grad_reduce(DType t);
  DType grad_reduce() const { return reduce_dtype_; }
  // [parallel] grad_compression: bf16 is set_grad_reduce(bf16); int8 and powersgd reduce
  // the whole gradient in finish(), after backward (parallel/grad_compression.h; ZeRO 0/1).
  void set_compression(GradCompression kind, int powersgd_rank, int powersgd_start,
                       uint64_t seed);
  const GradCompressor* compressor() const { return compressor_.get(); }
  // The dtype ZeRO's weight gathers move the compute-only weights in: fp32, or the
  // model's low precision (the trainer's choice whenever it trains in one).
  void set_weight_gather(DType t);
  DType weight_gather() const { return wire_dtype_; }
  // Bytes of weights this rank received from other shards' owners since zero_grads()
  // (one step: the ZeRO-3 unit gathers of forward and backward, the ZeRO-1/2 gather
  // after the update).
  size_t gathered_bytes() const { return gathered_bytes_; }
  int dp_size() const { return dp_.size(); }
  // The range of the flat buffer whose optimizer state this rank owns.
  size_t shard_begin() const { return shard_begin_; }
  size_t shard_end() const { return shard_end_; }
  const std::vector<GradBucket>& buckets() const { return buckets_; }

  // Zeroes the gradients for a new step. At ZeRO 2/3 the pages outside this rank's shard
  // are given back to the OS (they read as zeros), so they occupy memory only while
  // backward writes them and until their bucket has been reduced to its owner.
  void zero_grads();
  // Arms the backward hook: the next backward completes the step's gradients.
  void arm_for_last_micro_batch();
  // Completes gradient synchronisation; returns the gradients of [shard_begin, shard_end)
  // (element i is flat index shard_begin + i).
  const float* finish();
  // Squared L2 norm of the averaged gradient of this model slice (a collective at
  // ZeRO-2/3), leaving out the ranges set by set_norm_exclusions.
  double grad_sum_squares();
  // Flat ranges another (tensor- or pipeline-parallel) rank also holds and counts.
  void set_norm_exclusions(std::vector<std::pair<size_t, size_t>> ranges);
  // After the shard's update: every rank gets every weight (ZeRO 1/2); no-op at stage 0
  // and stage 3 (which gathers on demand).
  void gather_weights();
  // Every weight exact on every rank (for checkpoints and tests): ZeRO-3, and ZeRO-1/2
  // gathering in low precision / ZeRO-3: give back everything outside the shard. No-ops
  // where there is nothing to do.
  void materialize_all();
  void release_all();
  // Bytes of fp32 weights, gradients and AdamW moments this rank holds at its peak (ZeRO-3:
  // the shard, the embeddings, ln_f and the largest block resident at once).
  struct StateBytes {
    double weights = 0, grads = 0, optimizer = 0;
    double wire = 0;  // the 16-bit copies reductions and gathers send (bf16 buckets, a unit)
    // ZeRO-3: the floats of the units gathered at once at the peak (embeddings, ln_f, the
    // largest block), which the compute copy holds; 0 otherwise (it holds every weight).
    double unit_floats = 0;
  };
  StateBytes state_bytes() const;
  // Per-rank bytes of weights, gradients and optimizer state, measured from the buffers,
  // beside the ZeRO paper's formula in its fp32 form (Psi parameters, N = dp):
  // stage 0: 4+4+8 = 16 Psi; stage 1: 4 Psi + 4 Psi + 8 Psi/N; stage 2: 4 Psi + 12 Psi/N
  // (the paper's mixed-precision stage 1 is 4 Psi + 12 Psi/N).
  std::string memory_report() const;
  // Bytes of the flat weight / gradient buffers resident in memory now (mincore).
  size_t resident_weight_bytes() const;
  size_t resident_grad_bytes() const;
  // Seconds the optimizer waited in finish() for communication still in flight.
  double last_wait_seconds() const { return last_wait_s_; }
  // Buckets of the last step whose all-reduce had already completed, behind backward,
  // when the optimizer asked for the gradients.
  size_t last_early_buckets() const { return early_; }
  // Fraction of the gradient bytes whose all-reduce had completed by then.
  double last_hidden_fraction() const {
    return double(early_floats_) / double(model_.grads().size());
  }

 private:
  void build_buckets(double bucket_mb);
  void on_layer_ready(int layer);
  void launch(GradBucket& b);
  // ZeRO-3 unit handling (unit -1 = embeddings, l = block l, n_layer = ln_f).
  void gather_unit(int unit);
  // Gathers [lo, hi) from the shard owners (compute-only parts as 16-bit words at a low
  // weight_gather; `wire_` holds hi - lo words).
  void gather_range(size_t lo, size_t hi);
  // Whether the gathers of this stage and dp move words (a low weight_gather, ZeRO >= 1).
  bool low_gathers() const;
  void release_unit(int unit);
  void release_range(size_t lo, size_t hi);  // weights outside the shard in [lo, hi)
  // Zeroes grads in [lo, hi) outside the shard, giving whole pages back to the OS.
  void release_grads(size_t lo, size_t hi);
  void release_finished_buckets();

  Gpt& model_;
  Comm& dp_;
  int zero_;
  DType reduce_dtype_ = DType::kF32;
  std::vector<uint16_t> low_;  // bf16 reduction: the buckets' bf16 copies (flat layout)
  size_t shard_begin_ = 0, shard_end_ = 0;
  std::vector<GradBucket> buckets_;  // in launch order
  size_t next_bucket_ = 0;
  double last_wait_s_ = 0;
  size_t early_ = 0;
  size_t early_floats_ = 0;
  std::vector<std::pair<size_t, size_t>> units_;  // flat range of unit u at [u + 1]
  std::vector<std::pair<size_t, size_t>> norm_excluded_;  // sorted
  DType wire_dtype_ = DType::kF32;
  struct Segment {
    size_t begin, end;
    bool low;  // moved as 16-bit words
  };
  std::vector<Segment> segments_;  // the flat buffer, in order (one fp32 segment in fp32)
  std::vector<uint16_t> wire_;     // the words of one unit
  size_t gathered_bytes_ = 0;
  std::unique_ptr<GradCompressor> compressor_;  // int8 / powersgd
};

}  // namespace loom
