// Host-side preparation shared by the CPU and CUDA AdaGN wrappers: memory-format detection,
// optional parameters materialised in the statistics dtype, output allocation in x's format.
#pragma once
#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/ones.h>
#include <ATen/ops/zeros.h>
#include <c10/core/ScalarType.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

namespace dalle2_fast::adagn {

// x is in the channels-last layout (B, *S, C) contiguous. A tensor that is also plain
// contiguous (C == 1 or S == 1) counts as NCHW.
inline bool is_channels_last(const at::Tensor& x) {
  return x.dim() >= 3 && !x.is_contiguous() && x.movedim(1, -1).is_contiguous();
}

// t (B, C, *S) -> contiguous data in the kernel layout: (B, C, *S) or, if nhwc, (B, *S, C).
inline at::Tensor to_layout(const at::Tensor& t, bool nhwc) {
  return nhwc ? t.movedim(1, -1).contiguous() : t.contiguous();
}

// Kernel-layout tensor back to the logical (B, C, *S) view.
inline at::Tensor from_layout(const at::Tensor& t, bool nhwc) { return nhwc ? t.movedim(-1, 1) : t; }

inline at::ScalarType acc_type_for(at::ScalarType st) {
  return st == at::kDouble ? at::kDouble : at::kFloat;
}

struct Prep {
  at::Tensor x;  // kernel layout, contiguous
  bool nhwc = false;
  int64_t B = 0, C = 0, S = 1, G = 1;
  at::ScalarType acc = at::kFloat;
  at::Tensor w, b, scale, shift;  // (C,), (C,), (B, C), (B, C) in acc dtype, contiguous
};

inline at::Tensor param_or(const c10::optional<at::Tensor>& t, at::IntArrayRef shape, double fill,
                           const at::TensorOptions& opt, const char* name) {
  if (t.has_value() && t->defined()) {
    TORCH_CHECK(t->sizes() == shape, "adagn: ", name, " must have shape ", shape, ", got ", t->sizes());
    return t->to(opt.dtype()).contiguous();
  }
  return fill == 0.0 ? at::zeros(shape, opt) : at::ones(shape, opt);
}

inline Prep prepare(const at::Tensor& x_in, int64_t num_groups, const c10::optional<at::Tensor>& weight,
                    const c10::optional<at::Tensor>& bias, const c10::optional<at::Tensor>& scale,
                    const c10::optional<at::Tensor>& shift) {
  TORCH_CHECK(x_in.dim() >= 2, "adagn: x must be (B, C, *spatial), got ", x_in.sizes());
  Prep p;
  p.B = x_in.size(0);
  p.C = x_in.size(1);
  p.S = 1;
  for (int64_t d = 2; d < x_in.dim(); ++d) p.S *= x_in.size(d);
  p.G = num_groups;
  TORCH_CHECK(num_groups >= 1 && p.C % num_groups == 0, "adagn: num_groups must divide C=", p.C, ", got ",
              num_groups);
  p.nhwc = is_channels_last(x_in);
  p.x = to_layout(x_in, p.nhwc);
  p.acc = acc_type_for(x_in.scalar_type());
  const auto opt = x_in.options().dtype(p.acc);
  p.w = param_or(weight, {p.C}, 1.0, opt, "weight");
  p.b = param_or(bias, {p.C}, 0.0, opt, "bias");
  p.scale = param_or(scale, {p.B, p.C}, 0.0, opt, "scale");
  p.shift = param_or(shift, {p.B, p.C}, 0.0, opt, "shift");
  return p;
}

}  // namespace dalle2_fast::adagn
