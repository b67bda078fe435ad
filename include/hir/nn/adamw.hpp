// SPDX-License-Identifier: Apache-2.0
// The optimizer side of the reference transformer: AdamW with decoupled weight decay (Loshchilov & Hutter; the same
// update as torch.optim.AdamW), global gradient-norm clipping (torch.nn.utils.clip_grad_norm_) and learning-rate
// schedules (constant, linear warm-up, warm-up then cosine decay). The moments live in one buffer each, laid out like
// the parameters (parameter_layout), so an `adamw_state` is two allocations whatever the model. The device
// backend's overloads (device spans) are in nn/device/adamw.hpp, included by <hir/nn/device.hpp>.
#pragma once

#include <hir/backend/cpu/tag.hpp>
#include <hir/core/backend.hpp>
#include <hir/core/error.hpp>
#include <hir/core/span.hpp>
#include <hir/nn/config.hpp>
#include <hir/nn/detail/parallel.hpp>

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

namespace hir::nn {

/// AdamW hyper-parameters (defaults: torch.optim.AdamW's, except weight decay 0.1 as in GPT training).
struct adamw_options {
  double beta1 = 0.9;
  double beta2 = 0.999;
  double eps = 1e-8;
  double weight_decay = 0.1;
  /// false (default): decay only weight matrices and embeddings (param_tensor::matrix), the GPT-2/nanoGPT rule;
  /// true: decay every tensor, biases and LayerNorm parameters included (torch.optim.AdamW on model.parameters()).
  bool decay_all = false;
};

/// Learning rate as a function of the optimizer step.
struct lr_schedule {
  enum kind_t {
    constant, ///< lr
    warmup,   ///< lr·(step+1)/warmup_steps for step < warmup_steps, then lr
    cosine, ///< warm-up as above, then min_lr + ½(lr − min_lr)(1 + cos(π·progress)) until total_steps, then min_lr
  };
  kind_t kind = constant;
  double lr = 1e-3;
  double min_lr = 0.0;
  std::uint64_t warmup_steps = 0;
  std::uint64_t total_steps = 0;

  /// The learning rate of the step-th update (0-based).
  double at(std::uint64_t step) const {
    if (kind != constant && step < warmup_steps)
      return lr * static_cast<double>(step + 1) / static_cast<double>(warmup_steps);
    if (kind != cosine)
      return lr;
    if (total_steps <= warmup_steps || step >= total_steps)
      return min_lr;
    const double progress = static_cast<double>(step - warmup_steps) / static_cast<double>(total_steps - warmup_steps);
    return min_lr + 0.5 * (lr - min_lr) * (1.0 + std::cos(3.14159265358979323846 * progress));
  }
};

namespace detail {
/// Throws hir::invalid_argument naming nn::clip_grad_norm unless max_norm > 0 (both backends' check).
inline void check_max_norm(double max_norm) {
  if (!(max_norm > 0.0))
    hir::detail::fail("nn::clip_grad_norm", "max_norm = ", max_norm, " must be positive");
}

/// The per-call constants of an AdamW update (bias corrections folded in).
struct adamw_constants {
  double step_size;    ///< lr / (1 − β1^step)
  double inv_sqrt_bc2; ///< 1 / √(1 − β2^step)
};

/// adamw_update's argument checks (the four spans' sizes against layout.total, step ≥ 1), shared by the CPU and
/// device overloads, and its constants. \throws hir::invalid_argument naming nn::adamw_update.
inline adamw_constants adamw_prepare(const parameter_layout& layout, std::size_t params, std::size_t grads,
                                     std::size_t m, std::size_t v, const adamw_options& opt, std::uint64_t step,
                                     double lr) {
  const char* fn = "nn::adamw_update";
  hir::detail::check_size(fn, "params.size()", params, "layout.total", layout.total);
  hir::detail::check_size(fn, "grads.size()", grads, "layout.total", layout.total);
  hir::detail::check_size(fn, "m.size()", m, "layout.total", layout.total);
  hir::detail::check_size(fn, "v.size()", v, "layout.total", layout.total);
  if (step == 0)
    hir::detail::fail(fn, "step must be 1-based (the count including this update), got 0");
  const double bc1 = 1.0 - std::pow(opt.beta1, static_cast<double>(step));
  const double bc2 = 1.0 - std::pow(opt.beta2, static_cast<double>(step));
  return {lr / bc1, 1.0 / std::sqrt(bc2)};
}

/// The factor tensor t's parameters are multiplied by before the Adam step: 1 − lr·weight_decay where it decays.
inline double adamw_decay(const adamw_options& opt, const param_tensor& t, double lr) {
  return (opt.decay_all || t.matrix) ? 1.0 - lr * opt.weight_decay : 1.0;
}
} // namespace detail

/// Global L2 norm of `grads` (accumulated in double). \param grads host span, any length.
template <class T>
double global_grad_norm(backend::cpu::tag_t const&, span<const T> grads) {
  double total = 0.0;
  const std::size_t n = grads.size();
  // A fixed number of partial sums (independent of the thread count) so the result is reproducible.
  constexpr std::size_t parts = 64;
  double partial[parts] = {};
  detail::parallel_for(parts, 1, [&](std::size_t p0, std::size_t p1) {
    for (std::size_t p = p0; p < p1; ++p) {
      double s = 0.0;
      for (std::size_t i = n * p / parts; i < n * (p + 1) / parts; ++i)
        s += static_cast<double>(grads[i]) * static_cast<double>(grads[i]);
      partial[p] = s;
    }
  });
  for (double p : partial)
    total += p;
  return std::sqrt(total);
}

/// Scales `grads` by min(1, max_norm / (norm + 1e-6)) like torch.nn.utils.clip_grad_norm_; returns the norm before
/// clipping. \throws hir::invalid_argument unless max_norm > 0.
template <class T>
double clip_grad_norm(backend::cpu::tag_t const& be, span<T> grads, double max_norm) {
  detail::check_max_norm(max_norm);
  const double norm = global_grad_norm(be, span<const T>(grads));
  const double coef = max_norm / (norm + 1e-6);
  if (coef < 1.0) {
    const T c = static_cast<T>(coef);
    detail::parallel_for(grads.size(), 65536, [&](std::size_t b, std::size_t e) {
      for (std::size_t i = b; i < e; ++i)
        grads[i] *= c;
    });
  }
  return norm;
}

/// One AdamW update of every tensor of `layout`: m ← β1·m + (1−β1)·g, v ← β2·v + (1−β2)·g²,
/// p ← p − lr·wd·p (decayed tensors only) − lr·m̂/(√v̂ + eps) with m̂ = m/(1−β1^step), v̂ = v/(1−β2^step).
/// \param params, grads, m, v host spans of layout.total elements \param step the 1-based step count (after this
/// update) \throws hir::invalid_argument on size mismatch or step == 0.
template <class T>
void adamw_update(backend::cpu::tag_t const&, const parameter_layout& layout, span<T> params, span<const T> grads,
                  span<T> m, span<T> v, const adamw_options& opt, std::uint64_t step, double lr) {
  const detail::adamw_constants k =
      detail::adamw_prepare(layout, params.size(), grads.size(), m.size(), v.size(), opt, step, lr);
  const T b1 = static_cast<T>(opt.beta1), b2 = static_cast<T>(opt.beta2);
  const T step_size = static_cast<T>(k.step_size), inv_sqrt_bc2 = static_cast<T>(k.inv_sqrt_bc2);
  const T eps = static_cast<T>(opt.eps);
  for (const param_tensor& t : layout.tensors) {
    const T decay = static_cast<T>(detail::adamw_decay(opt, t, lr));
    T* p = params.data() + t.offset;
    const T* g = grads.data() + t.offset;
    T* mm = m.data() + t.offset;
    T* vv = v.data() + t.offset;
    detail::parallel_for(
        t.size, 32768,
        [&](std::size_t b, std::size_t e) {
          for (std::size_t i = b; i < e; ++i) {
            const T gi = g[i];
            mm[i] = b1 * mm[i] + (T(1) - b1) * gi;
            vv[i] = b2 * vv[i] + (T(1) - b2) * gi * gi;
            p[i] = p[i] * decay - step_size * mm[i] / (std::sqrt(vv[i]) * inv_sqrt_bc2 + eps);
          }
        },
        16);
  }
}

/// AdamW's state: the two moment buffers (one allocation each, parameter_layout order) and the step count, in the
/// memory of `Backend` (std::vector for hir::cpu; thrust::device_vector for the device backend, whose `update` is
/// declared in nn/device/adamw.hpp).
template <class T = float, class Backend = backend::cpu::tag_t>
class adamw_state {
  static_assert(backend::is_backend_v<Backend>, "hir::nn::adamw_state: Backend must be a backend tag type");

public:
  adamw_state() = default;
  /// Zero moments for `layout`, step 0.
  explicit adamw_state(const parameter_layout& layout) : layout_(layout), m_(layout.total), v_(layout.total) {}

  /// Applies one update with learning rate `lr` and increments step(). \param params, grads spans of layout().total
  /// elements in Backend's memory.
  void update(Backend const& be, span_for<T, Backend> params, span_for<const T, Backend> grads,
              const adamw_options& opt, double lr) {
    adamw_update(be, layout_, params, grads, whole(m_), whole(v_), opt, step_ + 1, lr);
    ++step_;
  }
  /// Number of updates applied so far.
  std::uint64_t step() const { return step_; }
  /// Sets the step count (checkpoint restore).
  void set_step(std::uint64_t s) { step_ = s; }
  /// First and second moments (layout.total elements each, Backend's memory).
  span_for<T, Backend> m() { return whole(m_); }
  span_for<T, Backend> v() { return whole(v_); }
  span_for<const T, Backend> m() const { return whole(m_); }
  span_for<const T, Backend> v() const { return whole(v_); }
  const parameter_layout& layout() const { return layout_; }

private:
  using vector_t = hir::vector<T, Backend>;
  static span_for<T, Backend> whole(vector_t& x) { return {backend::traits<Backend>::raw(x), x.size()}; }
  static span_for<const T, Backend> whole(const vector_t& x) { return {backend::traits<Backend>::raw(x), x.size()}; }

  parameter_layout layout_;
  vector_t m_, v_;
  std::uint64_t step_ = 0;
};

} // namespace hir::nn
