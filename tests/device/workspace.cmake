# SPDX-License-Identifier: Apache-2.0
# hir::device_workspace and the device algorithms run with one (reuse without new allocations, identical results,
# errors before writing). Included from tests/device/CMakeLists.txt.
hir_add_test(device_workspace DEVICE_ONLY SOURCES test_device_workspace.cpp)
