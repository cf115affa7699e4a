// Sampling on the GPU: the decisions of model::Sampler (model/sampling.h: penalties, temperature, top-k,
// top-p, min-p, the seeded exponential race, logprobs) for rows of logits already on the device, so a
// decode step copies back a token per sequence instead of a vocabulary of logits.
//
// One block per row. Instead of the CPU sampler's nth_element / partial sorts, the kept sets are found as
// thresholds on the same total order (sampling_math.h rank_key) by radix selection over the 64-bit keys:
// top-k is "key >= the k-th largest key", the top-p nucleus is "key >= the first key at which the mass in
// descending order reaches top_p * mass" (a mass-weighted radix select), min-p and the top-p pre-filter
// (weight > eps) are the CPU's own predicates. The race noise is the CPU's counter-based draw, so with the
// same step key (Sampler::next_step_key) the chosen token is the same, up to float summation order deciding
// a top-p boundary that sits within rounding of the target (the CPU sums masses in partition order).
#pragma once

#include <cuda_runtime_api.h>

#include <cstdint>

#include "common/status.h"
#include "kernels/cuda/sampling_math.h"

namespace deepshard::kernels::cuda {

// Samples `rows` rows: params[i] (device) names its logits row params[i].row of `logits` (device,
// rows of `vocab` floats, `ld` apart; the rows are overwritten with the transformed logits) and its
// penalty entries (pen_ids: token ids, distinct per row; pen_counts: generated count, 0 for prompt-only
// tokens). Writes out[i]. vocab < 2^31.
Status sample_rows(float* logits, int64_t ld, int64_t vocab, const SampleParams* params, int64_t rows,
                   const int32_t* pen_ids, const float* pen_counts, SampleOut* out, cudaStream_t stream);

}  // namespace deepshard::kernels::cuda
