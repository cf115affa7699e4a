// Host-side parts of the CUDA kernels: weight-view checks, RouteParams validation and weight upload.
#include <algorithm>

#include "kernels/cuda/cuda_kernels.h"
#include "kernels/cuda/cuda_status.h"
#include "kernels/cuda/launch_util.h"

namespace deepshard::kernels::cuda {

namespace internal {

Status check_weight(const char* op, const WeightView& w, DevWeight* out) {
    if (!w.valid()) {
        return bad_arg(op, "invalid weight view (rows " + std::to_string(w.rows) + ", cols " + std::to_string(w.cols) +
                               ", ld " + std::to_string(w.ld) + ", data " + (w.data ? "set" : "null") + ")");
    }
    if (!to_dev_weight(w, out)) {
        return bad_arg(op, std::string("unsupported weight dtype ") + dtype_name(w.dtype));
    }
    if (w.dtype == DType::kF8E4M3) {
        if (w.scale == nullptr || w.scale_ld <= 0 || w.block_rows <= 0 || w.block_cols <= 0 || w.row_offset < 0 ||
            w.col_offset < 0) {
            return bad_arg(op, "FP8 weight needs a scale grid, scale_ld > 0, positive block sizes and "
                               "non-negative offsets");
        }
        if ((w.col_offset + w.cols - 1) / w.block_cols >= w.scale_ld) {
            return bad_arg(op, "FP8 weight columns reach scale column " +
                                   std::to_string((w.col_offset + w.cols - 1) / w.block_cols) + " but scale_ld is " +
                                   std::to_string(w.scale_ld));
        }
    }
    return ok_status();
}

}  // namespace internal

Status validate_route_params(const RouteParams& p) {
    auto bad = [](const std::string& m) { return internal::bad_arg("moe_gate", m); };
    if (p.num_experts <= 0) return bad("num_experts must be > 0");
    if (p.n_group <= 0 || p.n_group > kMaxRouteGroups) {
        return bad("n_group must be in [1, " + std::to_string(kMaxRouteGroups) + "], got " + std::to_string(p.n_group));
    }
    if (p.num_experts % p.n_group != 0) return bad("num_experts not divisible by n_group");
    if (p.topk_group < 1 || p.topk_group > p.n_group) return bad("topk_group must be in [1, n_group]");
    const int32_t kept = p.topk_group * (p.num_experts / p.n_group);
    if (p.top_k < 1 || p.top_k > kMaxRouteTopK || p.top_k > kept) {
        return bad("top_k must be in [1, min(" + std::to_string(kMaxRouteTopK) + ", experts in kept groups = " +
                   std::to_string(kept) + ")], got " + std::to_string(p.top_k));
    }
    return ok_status();
}

StatusOr<DeviceWeight> upload_weight(const WeightView& host) {
    DevWeight dw{};
    DS_RETURN_IF_ERROR(internal::check_weight("upload_weight", host, &dw));
    DeviceWeight out;
    const size_t esz = dtype_size(host.dtype);
    const size_t row_bytes = static_cast<size_t>(host.cols) * esz;
    DS_ASSIGN_OR_RETURN(out.data, DeviceBuffer::create(row_bytes * static_cast<size_t>(host.rows)));
    DS_CUDA_RETURN_IF_ERROR(cudaMemcpy2D(out.data.get(), row_bytes, host.data, static_cast<size_t>(host.ld) * esz,
                                         row_bytes, static_cast<size_t>(host.rows), cudaMemcpyHostToDevice));
    out.view = host;
    out.view.data = out.data.get();
    out.view.ld = host.cols;
    if (host.dtype == DType::kF8E4M3) {
        // Copy only the scale rows this view touches, with all scale_ld columns, and re-base row_offset.
        const int64_t r0 = host.row_offset / host.block_rows;
        const int64_t r1 = (host.row_offset + host.rows - 1) / host.block_rows;
        const size_t n = static_cast<size_t>((r1 - r0 + 1) * host.scale_ld);
        DS_ASSIGN_OR_RETURN(out.scale, DeviceBuffer::create(n * sizeof(float)));
        DS_RETURN_IF_ERROR(out.scale.upload(host.scale + r0 * host.scale_ld, n * sizeof(float)));
        out.view.scale = out.scale.as<float>();
        out.view.row_offset = host.row_offset - r0 * host.block_rows;
    }
    return out;
}

}  // namespace deepshard::kernels::cuda
