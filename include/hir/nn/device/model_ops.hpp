// SPDX-License-Identifier: Apache-2.0
// The buffer operations hir::nn::model<T, hir::backend::device::tag_t> needs besides the layers, on the tag's
// stream: fill, the upload of host token ids, GPT-2 initialization drawn on the device (the same Philox draws as the
// CPU model), and the masked cross-entropy sums and dL/dlogp. They live in hir::backend::device so the generic model
// finds them by argument-dependent lookup.
#pragma once

#include <hir/backend/device/tag.hpp> // first: Thrust's config decides HIR_DEVICE_IS_CUDA

#include <hir/config.hpp>
#include <hir/core/random.hpp>
#include <hir/core/span.hpp>
#include <hir/nn/config.hpp>
#include <hir/nn/detail/init.hpp>
#include <hir/nn/device/gemm.hpp>
#include <hir/nn/device/layers.hpp>

#include <thrust/fill.h>
#include <thrust/iterator/counting_iterator.h>
#include <thrust/transform_reduce.h>

#include <cmath>
#include <cstddef>
#include <cstdint>

namespace hir {
namespace backend {
namespace device {
namespace detail {

/// GPT-2 initialization of one parameter element (see model::init_parameters): N(0, sd) for weight matrices and
/// embeddings, 1 for LayerNorm weights, 0 for biases, LayerNorm biases and padding.
template <class T>
struct hir_nn_init_element {
  philox gen;
  std::size_t offset[nn::num_param_tensors], size[nn::num_param_tensors];
  double sd[nn::num_param_tensors]; // > 0: normal; 0: constant `fill`
  T fill[nn::num_param_tensors];
  T* out;
  HIR_HOST_DEVICE void operator()(std::size_t e) const {
    T v = T(0);
    for (std::size_t t = 0; t < nn::num_param_tensors; ++t) {
      if (e >= offset[t] && e - offset[t] < size[t]) {
        v = sd[t] > 0.0 ? static_cast<T>(nn::detail::gpt2_normal(gen, t, e - offset[t], sd[t])) : fill[t];
        break;
      }
    }
    out[e] = v;
  }
};

struct hir_nn_ce_sums {
  double num, den;
};
struct hir_nn_ce_plus {
  HIR_HOST_DEVICE hir_nn_ce_sums operator()(const hir_nn_ce_sums& a, const hir_nn_ce_sums& b) const {
    return {a.num + b.num, a.den + b.den};
  }
};
template <class T>
struct hir_nn_ce_term {
  const T *mask, *logp;
  HIR_HOST_DEVICE hir_nn_ce_sums operator()(std::size_t i) const {
    const double m = static_cast<double>(mask[i]);
    return {-m * static_cast<double>(logp[i]), m};
  }
};
template <class T>
struct hir_nn_ce_dlogp {
  T* out;
  const T* mask;
  double den;
  HIR_HOST_DEVICE void operator()(std::size_t i) const { out[i] = static_cast<T>(-static_cast<double>(mask[i]) / den); }
};

} // namespace detail

/// Sets every element of x (device memory) to `value` on the tag's stream.
template <class T>
void nn_fill(tag_t const& be, span<T, device_space> x, T value) {
  if (!x.empty())
    thrust::fill(detail::policy(be), thrust::device_pointer_cast(x.data()),
                 thrust::device_pointer_cast(x.data()) + x.size(), value);
}

/// Copies host token ids into device memory on the tag's stream (sizes must match; checked by the caller).
inline void nn_upload_tokens(tag_t const& be, span<nn::token_t, device_space> dst, span<const nn::token_t> src,
                             const char* fn) {
  detail::nn_copy_to_device(be, dst.data(), src.data(), src.size(), fn);
}

/// GPT-2 initialization of a device parameter buffer laid out by `layout`, drawn per element on the device with the
/// CPU model's Philox draws (identical values up to the device's last-ulp differences in log/cos/sqrt).
template <class T>
void nn_init_parameters(tag_t const& be, const nn::parameter_layout& layout, span<T, device_space> params,
                        std::uint64_t seed, double std_dev) {
  detail::hir_nn_init_element<T> f{};
  f.gen = philox{seed};
  f.out = params.data();
  for (std::size_t i = 0; i < nn::num_param_tensors; ++i) {
    const nn::param_tensor& t = layout.tensors[i];
    const nn::param p = static_cast<nn::param>(i);
    f.offset[i] = t.offset;
    f.size[i] = t.size;
    f.sd[i] = 0.0;
    f.fill[i] = T(0);
    if (t.matrix)
      f.sd[i] = (p == nn::param::proj_weight || p == nn::param::fc2_weight)
                    ? std_dev / std::sqrt(2.0 * static_cast<double>(layout.config.layers))
                    : std_dev;
    else if (p == nn::param::ln1_weight || p == nn::param::ln2_weight || p == nn::param::lnf_weight)
      f.fill[i] = T(1);
  }
  detail::nn_for_each(be, params.size(), f);
}

/// (−Σ mask·logp, Σ mask) in double over device arrays of equal size; one reduction, read back.
template <class T>
detail::hir_nn_ce_sums nn_masked_logp_sums(tag_t const& be, span<const T, device_space> mask,
                                           span<const T, device_space> logp) {
  return thrust::transform_reduce(detail::policy(be), thrust::counting_iterator<std::size_t>(0),
                                  thrust::counting_iterator<std::size_t>(mask.size()),
                                  detail::hir_nn_ce_term<T>{mask.data(), logp.data()}, detail::hir_nn_ce_sums{0.0, 0.0},
                                  detail::hir_nn_ce_plus{});
}

/// out = −mask / den element-wise (the cross-entropy's dL/dlogp), device memory.
template <class T>
void nn_cross_entropy_dlogp(tag_t const& be, span<T, device_space> out, span<const T, device_space> mask, double den) {
  detail::nn_for_each(be, out.size(), detail::hir_nn_ce_dlogp<T>{out.data(), mask.data(), den});
}

} // namespace device
} // namespace backend
} // namespace hir
