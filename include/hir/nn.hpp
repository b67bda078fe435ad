// SPDX-License-Identifier: Apache-2.0
// Umbrella header of hir's reference transformer (hir::nn, CPU backend): config and layouts, the layers, the model,
// AdamW and schedules, sampling and generation, checkpoints. Not included by <hir/hir.hpp>, so algorithm users stay
// light. Link OpenMP to use both cores; define HIR_NN_USE_CBLAS (+ HIR_NN_USE_OPENBLAS) and link OpenBLAS for its GEMM.
// With the device backend linked as well (HIR_WITH_DEVICE) it also brings <hir/nn/device.hpp>; a CUDA translation
// unit includes <hir/nn/device.hpp> alone (this header includes Eigen).
#pragma once

#include <hir/backend/cpu/tag.hpp>
#include <hir/core/random.hpp>
#include <hir/core/span.hpp>

#include <hir/nn/adamw.hpp>
#include <hir/nn/checkpoint.hpp>
#include <hir/nn/config.hpp>
#include <hir/nn/layers.hpp>
#include <hir/nn/model.hpp>
#include <hir/nn/sampling.hpp>

#if defined(HIR_WITH_DEVICE)
#  include <hir/nn/device.hpp>
#endif
