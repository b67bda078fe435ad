// SPDX-License-Identifier: Apache-2.0
// hir version: the single source CMake parses (fmt style).
#pragma once

#define HIR_VERSION_MAJOR 0
#define HIR_VERSION_MINOR 1
#define HIR_VERSION_PATCH 0

/// hir's version as one integer: major * 10000 + minor * 100 + patch.
#define HIR_VERSION (HIR_VERSION_MAJOR * 10000 + HIR_VERSION_MINOR * 100 + HIR_VERSION_PATCH)
