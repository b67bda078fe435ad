// SPDX-License-Identifier: Apache-2.0
// AdamW and gradient-norm clipping on the device backend: the overloads of hir::nn::global_grad_norm,
// clip_grad_norm and adamw_update (nn/adamw.hpp) for `hir::backend::device::tag_t` and device spans, with the CPU
// functions' math and messages. The norm is one Thrust transform_reduce in double (read back); clipping one
// transform; the update one functor call per parameter element (the tensor's decay looked up among the 16 tensors,
// padding untouched). hir::nn::adamw_state<T, hir::backend::device::tag_t> holds its moments in device memory.
#pragma once

#include <hir/backend/device/tag.hpp> // first: Thrust's config decides HIR_DEVICE_IS_CUDA

#include <hir/config.hpp>
#include <hir/core/error.hpp>
#include <hir/core/span.hpp>
#include <hir/nn/adamw.hpp>
#include <hir/nn/config.hpp>
#include <hir/nn/device/layers.hpp>

#include <thrust/functional.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/transform_reduce.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace hir {
namespace backend {
namespace device {
namespace detail {

template <class T>
struct hir_nn_square {
  const T* g;
  HIR_HOST_DEVICE double operator()(std::size_t i) const {
    const double x = static_cast<double>(g[i]);
    return x * x;
  }
};

template <class T>
struct hir_nn_scale {
  T* g;
  T c;
  HIR_HOST_DEVICE void operator()(std::size_t i) const { g[i] *= c; }
};

/// One AdamW step of one parameter element (the CPU loop's arithmetic, in T); padding between tensors is skipped.
template <class T>
struct hir_nn_adamw_element {
  std::size_t offset[nn::num_param_tensors], size[nn::num_param_tensors];
  T decay[nn::num_param_tensors];
  T *p, *m, *v;
  const T* g;
  T b1, b2, step_size, inv_sqrt_bc2, eps;
  HIR_HOST_DEVICE void operator()(std::size_t e) const {
    for (std::size_t t = 0; t < nn::num_param_tensors; ++t) {
      if (e >= offset[t] && e - offset[t] < size[t]) {
        const T gi = g[e];
        const T mi = b1 * m[e] + (T(1) - b1) * gi;
        const T vi = b2 * v[e] + (T(1) - b2) * gi * gi;
        m[e] = mi;
        v[e] = vi;
        p[e] = p[e] * decay[t] - step_size * mi / (hir_nn_sqrt(vi) * inv_sqrt_bc2 + eps);
        return;
      }
    }
  }
};

} // namespace detail

/// Global L2 norm of device-memory gradients, accumulated in double (one Thrust reduction, read back, so it
/// synchronizes the tag's stream). The summation order is Thrust's, not the CPU's 64 fixed partials.
template <class T>
double global_grad_norm(tag_t const& be, span<const T, device_space> grads) {
  if (grads.empty())
    return 0.0;
  const double ss = thrust::transform_reduce(detail::policy(be), thrust::counting_iterator<std::size_t>(0),
                                             thrust::counting_iterator<std::size_t>(grads.size()),
                                             detail::hir_nn_square<T>{grads.data()}, 0.0, thrust::plus<double>());
  return std::sqrt(ss);
}

/// Scales device-memory `grads` by min(1, max_norm / (norm + 1e-6)) like torch.nn.utils.clip_grad_norm_; returns
/// the norm before clipping. \throws hir::invalid_argument unless max_norm > 0.
template <class T>
double clip_grad_norm(tag_t const& be, span<T, device_space> grads, double max_norm) {
  nn::detail::check_max_norm(max_norm);
  const double norm = global_grad_norm(be, span<const T, device_space>(grads));
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0)
    detail::nn_for_each(be, grads.size(), detail::hir_nn_scale<T>{grads.data(), static_cast<T>(coef)});
  return norm;
}

/// One AdamW update of every tensor of `layout` on device memory (the CPU overload's formula, in T):
/// m ← β1·m + (1−β1)·g, v ← β2·v + (1−β2)·g², p ← p·decay − lr·m̂/(√v̂ + eps). \param params, grads, m, v device
/// spans of layout.total elements \param step the 1-based step count (after this update).
/// \throws hir::invalid_argument on a size mismatch or step == 0.
template <class T>
void adamw_update(tag_t const& be, const nn::parameter_layout& layout, span<T, device_space> params,
                  nn_in_span<T> grads, span<T, device_space> m, span<T, device_space> v, const nn::adamw_options& opt,
                  std::uint64_t step, double lr) {
  const nn::detail::adamw_constants k =
      nn::detail::adamw_prepare(layout, params.size(), grads.size(), m.size(), v.size(), opt, step, lr);
  detail::hir_nn_adamw_element<T> f{};
  for (std::size_t i = 0; i < nn::num_param_tensors; ++i) {
    const nn::param_tensor& t = layout.tensors[i];
    f.offset[i] = t.offset;
    f.size[i] = t.size;
    f.decay[i] = static_cast<T>(nn::detail::adamw_decay(opt, t, lr));
  }
  f.p = params.data();
  f.m = m.data();
  f.v = v.data();
  f.g = grads.data();
  f.b1 = static_cast<T>(opt.beta1);
  f.b2 = static_cast<T>(opt.beta2);
  f.step_size = static_cast<T>(k.step_size);
  f.inv_sqrt_bc2 = static_cast<T>(k.inv_sqrt_bc2);
  f.eps = static_cast<T>(opt.eps);
  detail::nn_for_each(be, layout.total, f);
}

} // namespace device
} // namespace backend

namespace nn {
// The device overloads, callable as hir::nn::<function>(hir::device, ...) beside the CPU ones.
using backend::device::adamw_update;
using backend::device::clip_grad_norm;
using backend::device::global_grad_norm;
} // namespace nn
} // namespace hir
