// SPDX-License-Identifier: Apache-2.0
// Umbrella header of hir's device backend: the core, every algorithm and their Thrust implementations. Compiles
// with g++ under THRUST_DEVICE_SYSTEM=CPP or OMP and with nvcc for CUDA. Never includes Eigen.
#pragma once

#include <hir/backend/device/tag.hpp> // first: Thrust's config decides HIR_DEVICE_IS_CUDA

#include <hir/config.hpp>
#include <hir/core/backend.hpp>
#include <hir/core/error.hpp>
#include <hir/core/groups.hpp>
#include <hir/core/random.hpp>
#include <hir/core/span.hpp>
#include <hir/core/tokens.hpp>
#include <hir/version.hpp>

#include <hir/advantages/constraint_normalized.hpp>
#include <hir/advantages/group_advantages.hpp>
#include <hir/advantages/reinforce_pp.hpp>
#include <hir/losses/policy_loss.hpp>
#include <hir/losses/preference.hpp>
#include <hir/relabel/hindsight.hpp>
#include <hir/relabel/instruction.hpp>
#include <hir/relabel/replay_batch.hpp>
#include <hir/relabel/select.hpp>
#include <hir/rewards/reward_vector.hpp>

#include <hir/backend/device/constraint_normalized.hpp>
#include <hir/backend/device/group_advantages.hpp>
#include <hir/backend/device/policy_loss.hpp>
#include <hir/backend/device/preference.hpp>
#include <hir/backend/device/reinforce_pp.hpp>
#include <hir/backend/device/relabel.hpp>
#include <hir/backend/device/rewards.hpp>
