// SPDX-License-Identifier: Apache-2.0
// Umbrella header of the reference transformer on the device backend: the device layers, the generic model
// (hir::nn::model<T, hir::backend::device::tag_t>), AdamW and gradient clipping on device spans, batched generation
// with a KV cache (hir::nn::device_generator), with the config and layouts. Never includes Eigen, so it compiles with
// nvcc; link hir::device (and, on CUDA, cuBLAS: hir::nn_cuda). <hir/nn.hpp> includes it when the device backend is
// linked (HIR_WITH_DEVICE). Checkpoints of the device model and optimizer use the CPU's file format
// (nn/device/checkpoint.hpp).
#pragma once

#include <hir/backend/device/tag.hpp> // first: Thrust's config decides HIR_DEVICE_IS_CUDA

#include <hir/core/random.hpp>
#include <hir/core/span.hpp>

#include <hir/nn/adamw.hpp>
#include <hir/nn/config.hpp>
#include <hir/nn/device/adamw.hpp>
#include <hir/nn/device/checkpoint.hpp>
#include <hir/nn/device/gemm.hpp>
#include <hir/nn/device/layers.hpp>
#include <hir/nn/device/model_ops.hpp>
#include <hir/nn/device/sampling.hpp>
#include <hir/nn/model.hpp>
