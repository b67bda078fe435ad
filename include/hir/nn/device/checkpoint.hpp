// SPDX-License-Identifier: Apache-2.0
// Checkpoints of the device model: save_checkpoint / load_checkpoint overloads for
// hir::nn::model<T, hir::backend::device::tag_t> and adamw_state<T, hir::backend::device::tag_t>. The file format is
// nn/checkpoint.hpp's (a checkpoint written from the device loads into the CPU model and back): parameters and the
// two moments are staged through one host buffer of 3·layout.total elements, copied on the model's stream. Loading
// verifies the whole file on the host before the first byte reaches the device, so a bad file leaves the model and
// the optimizer untouched.
#pragma once

#include <hir/backend/device/tag.hpp> // first: Thrust's config decides HIR_DEVICE_IS_CUDA

#include <hir/core/error.hpp>
#include <hir/core/span.hpp>
#include <hir/nn/adamw.hpp>
#include <hir/nn/checkpoint.hpp>
#include <hir/nn/device/gemm.hpp>
#include <hir/nn/model.hpp>

#include <cstddef>
#include <string>
#include <vector>

namespace hir::nn {

/// Saves the device model m's parameters and optimizer opt's moments and step (state.adamw_step is taken from opt),
/// atomically as the host overload does. Synchronizes the model's stream (one device-to-host copy per buffer).
/// \throws hir::invalid_argument if opt's config is not m's; checkpoint_error on I/O failure (the previous file at
/// `path` is then untouched); hir::cuda_error if a copy fails.
template <class T>
void save_checkpoint(const std::string& path, const model<T, backend::device::tag_t>& m,
                     const adamw_state<T, backend::device::tag_t>& opt, checkpoint_state state) {
  const char* fn = "nn::save_checkpoint";
  if (opt.layout().config != m.config())
    hir::detail::fail(fn, "the optimizer's config does not match the model's");
  const std::size_t n = m.params_layout().total;
  std::vector<T> host(3 * n);
  const auto& be = m.backend_tag();
  backend::device::detail::nn_copy_to_host(be, host.data(), m.parameters().data(), n, fn);
  backend::device::detail::nn_copy_to_host(be, host.data() + n, opt.m().data(), n, fn);
  backend::device::detail::nn_copy_to_host(be, host.data() + 2 * n, opt.v().data(), n, fn);
  state.adamw_step = opt.step();
  save_checkpoint<T>(path, m.params_layout(), span<const T>(host.data(), n), span<const T>(host.data() + n, n),
                     span<const T>(host.data() + 2 * n, n), state);
}

/// Loads a checkpoint (written from either backend) into the device model m and optimizer opt (moments and step);
/// returns the rest of the state. Nothing on the device is written unless the whole file verifies; the copies are
/// queued on the model's stream. \throws hir::invalid_argument if opt's config is not m's; checkpoint_error as the
/// host overload; hir::cuda_error if a copy fails.
template <class T>
checkpoint_state load_checkpoint(const std::string& path, model<T, backend::device::tag_t>& m,
                                 adamw_state<T, backend::device::tag_t>& opt) {
  const char* fn = "nn::load_checkpoint";
  if (opt.layout().config != m.config())
    hir::detail::fail(fn, "the optimizer's config does not match the model's");
  const std::size_t n = m.params_layout().total;
  std::vector<T> host(3 * n);
  checkpoint_state s = load_checkpoint<T>(path, m.params_layout(), span<T>(host.data(), n), span<T>(host.data() + n, n),
                                          span<T>(host.data() + 2 * n, n));
  const auto& be = m.backend_tag();
  backend::device::detail::nn_copy_to_device(be, m.parameters().data(), host.data(), n, fn);
  backend::device::detail::nn_copy_to_device(be, opt.m().data(), host.data() + n, n, fn);
  backend::device::detail::nn_copy_to_device(be, opt.v().data(), host.data() + 2 * n, n, fn);
  opt.set_step(s.adamw_step);
  return s;
}

} // namespace hir::nn
