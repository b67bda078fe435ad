// SPDX-License-Identifier: Apache-2.0
// Umbrella header of hir's CPU backend: the core, every algorithm and their CPU (Eigen) implementations.
// Never includes Thrust; include <hir/device.hpp> (in another translation unit or target) for the device backend.
#pragma once

#include <hir/config.hpp>
#include <hir/core/backend.hpp>
#include <hir/core/error.hpp>
#include <hir/core/groups.hpp>
#include <hir/core/random.hpp>
#include <hir/core/span.hpp>
#include <hir/core/tokens.hpp>
#include <hir/version.hpp>

#include <hir/backend/cpu/tag.hpp>

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

#include <hir/backend/cpu/constraint_normalized.hpp>
#include <hir/backend/cpu/group_advantages.hpp>
#include <hir/backend/cpu/policy_loss.hpp>
#include <hir/backend/cpu/preference.hpp>
#include <hir/backend/cpu/reinforce_pp.hpp>
#include <hir/backend/cpu/relabel.hpp>
#include <hir/backend/cpu/rewards.hpp>
