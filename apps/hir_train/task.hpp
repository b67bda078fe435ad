// SPDX-License-Identifier: Apache-2.0
// The synthetic constraint-following task of hir's end-to-end trainer (namespace hir::toy), in one include: the
// word-level vocabulary and random streams (task_vocabulary.hpp), constraints, instructions, verifiers and
// satisfaction statistics (task_constraints.hpp), and the generators of instructions, demonstrations and the three
// disjoint pools (task_generator.hpp). docs/task_suite.md describes the task.
#pragma once

#include "task_constraints.hpp"
#include "task_generator.hpp"
#include "task_vocabulary.hpp"
