# SPDX-License-Identifier: Apache-2.0
# Helpers for hir's own tests, benchmarks, examples and apps (never used by consumers).

# Warnings and sanitizers on one of hir's own targets (no global flags).
function(hir_target_defaults target)
  set(_warn -Wall -Wextra -Wpedantic -Wshadow -Wno-unknown-pragmas)
  if(HIR_WARNINGS_AS_ERRORS)
    list(APPEND _warn -Werror)
  endif()
  target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:${_warn}>
                                           $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall --expt-relaxed-constexpr>)
  if(HIR_SANITIZE)
    target_compile_options(${target} PRIVATE -fsanitize=${HIR_SANITIZE} -fno-omit-frame-pointer
                                             -fno-sanitize-recover=all)
    target_link_options(${target} PRIVATE -fsanitize=${HIR_SANITIZE})
  endif()
endfunction()

option(HIR_TEST_CPU "Build the CPU test executables (the cuda and cpu-omp presets turn it off: cpu and cpu-asan build them)"
       ON)

# -march=native for hir's benchmarks and apps (HIR_NATIVE, default ON): they measure this machine.
option(HIR_NATIVE "Compile hir's benchmarks and apps with -march=native" ON)
function(hir_target_native target)
  if(HIR_NATIVE)
    # Eigen 3.4's AVX-512 kernels trip GCC 12's -W(maybe-)uninitialized (GCC bug 105593, _mm512_undefined_*):
    # a false positive in Eigen's and GCC's headers, silenced for -march=native builds only.
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-march=native -Wno-maybe-uninitialized -Wno-uninitialized>
                                             $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-march=native>)
  endif()
endfunction()

string(TOLOWER "${HIR_DEVICE_SYSTEM}" HIR_DEVICE_SYSTEM_LOWER)

# hir_add_test(<area> SOURCES a.cpp ... [DEVICE | DEVICE_ONLY] [LIBS ...] [TIMEOUT s])
#   hir.cpu.<area>:           the sources with HIR_TEST_DEVICE=0 against hir::hir (label cpu)
#   hir.<system>.<area>:      with DEVICE, the same sources with HIR_TEST_DEVICE=1 against hir::device, compiled by
#                             g++ for CPP/OMP (label device) or by nvcc through a .cu wrapper for CUDA (label gpu;
#                             exit code 77 = no GPU = Skipped, unless HIR_REQUIRE_GPU=1).
#   DEVICE_ONLY:              only the device executable (for sources whose CPU build another area registers).
function(hir_add_test area)
  cmake_parse_arguments(T "DEVICE;DEVICE_ONLY" "TIMEOUT" "SOURCES;LIBS" ${ARGN})
  if(NOT T_TIMEOUT)
    set(T_TIMEOUT 600)
  endif()
  if(T_DEVICE_ONLY)
    set(T_DEVICE ON)
  elseif(NOT HIR_TEST_CPU)
    # CPU executables are built by the CPU configurations; the CUDA one builds only device tests.
    if(NOT T_DEVICE)
      return()
    endif()
  else()
    set(_cpu hir.cpu.${area})
    add_executable(${_cpu} ${T_SOURCES})
    target_link_libraries(${_cpu} PRIVATE hir::hir hir_test_support_cpu ${T_LIBS})
    target_compile_definitions(${_cpu} PRIVATE HIR_TEST_DEVICE=0)
    hir_target_defaults(${_cpu})
    add_test(NAME ${_cpu} COMMAND ${_cpu})
    set_tests_properties(${_cpu} PROPERTIES LABELS cpu TIMEOUT ${T_TIMEOUT}
                         ENVIRONMENT "HIR_SHARED_DIR=${HIR_SHARED_DIR}")
  endif()

  if(T_DEVICE AND HIR_HAS_DEVICE)
    set(_dev hir.${HIR_DEVICE_SYSTEM_LOWER}.${area})
    set(_srcs)
    if(HIR_DEVICE_SYSTEM STREQUAL "CUDA")
      foreach(_src IN LISTS T_SOURCES)
        get_filename_component(_abs ${_src} ABSOLUTE)
        get_filename_component(_name ${_src} NAME_WE)
        set(HIR_WRAPPED_SOURCE ${_abs})
        set(_cu ${CMAKE_CURRENT_BINARY_DIR}/${area}_${_name}.cu)
        configure_file(${PROJECT_SOURCE_DIR}/cmake/as_cuda.cu.in ${_cu} @ONLY)
        list(APPEND _srcs ${_cu})
      endforeach()
    else()
      set(_srcs ${T_SOURCES})
    endif()
    add_executable(${_dev} ${_srcs})
    target_link_libraries(${_dev} PRIVATE hir::device hir_test_support_device ${T_LIBS})
    target_compile_definitions(${_dev} PRIVATE HIR_TEST_DEVICE=1)
    target_include_directories(${_dev} PRIVATE ${CMAKE_CURRENT_SOURCE_DIR})
    hir_target_defaults(${_dev})
    if(HIR_SANITIZE MATCHES "undefined" AND NOT HIR_DEVICE_SYSTEM STREQUAL "CUDA")
      # Thrust's thrust::reference binds a reference through a null execution_policy pointer
      # (thrust/detail/reference.h:330), which UBSan's `null` check flags inside CCCL; every other UBSan check and
      # AddressSanitizer stay on for the device tests.
      target_compile_options(${_dev} PRIVATE -fno-sanitize=null)
    endif()
    add_test(NAME ${_dev} COMMAND ${_dev})
    set(_labels device)
    if(HIR_DEVICE_SYSTEM STREQUAL "CUDA")
      set(_labels gpu)
      set_tests_properties(${_dev} PROPERTIES SKIP_RETURN_CODE 77)
    endif()
    set_tests_properties(${_dev} PROPERTIES LABELS "${_labels}" TIMEOUT ${T_TIMEOUT}
                         ENVIRONMENT "OMP_NUM_THREADS=2;HIR_SHARED_DIR=${HIR_SHARED_DIR}")
    if(HIR_DEVICE_SYSTEM STREQUAL "OMP")
      set_tests_properties(${_dev} PROPERTIES RUN_SERIAL ON)
    endif()
  endif()
endfunction()

# hir_add_benchmark(<name> SOURCES ... [DEVICE] [DEVICE_ONLY] [LIBS ...]): Google Benchmark executables
# bench_<name> (CPU, unless DEVICE_ONLY) and bench_<name>_<system> (device, with DEVICE or DEVICE_ONLY).
# Built only with HIR_BUILD_BENCHMARKS=ON.
function(hir_add_benchmark name)
  cmake_parse_arguments(B "DEVICE;DEVICE_ONLY" "" "SOURCES;LIBS" ${ARGN})
  if(B_DEVICE_ONLY)
    set(B_DEVICE ON)
  endif()
  if(NOT B_DEVICE_ONLY)
    add_executable(bench_${name} ${B_SOURCES})
    target_link_libraries(bench_${name} PRIVATE hir::hir hir_bench_support benchmark::benchmark_main ${B_LIBS})
    target_compile_definitions(bench_${name} PRIVATE HIR_BENCH_DEVICE=0)
    hir_target_defaults(bench_${name})
    hir_target_native(bench_${name})
  endif()
  if(B_DEVICE AND HIR_HAS_DEVICE)
    set(_dev bench_${name}_${HIR_DEVICE_SYSTEM_LOWER})
    set(_srcs)
    if(HIR_DEVICE_SYSTEM STREQUAL "CUDA")
      foreach(_src IN LISTS B_SOURCES)
        get_filename_component(_abs ${_src} ABSOLUTE)
        get_filename_component(_n ${_src} NAME_WE)
        set(HIR_WRAPPED_SOURCE ${_abs})
        set(_cu ${CMAKE_CURRENT_BINARY_DIR}/${name}_${_n}.cu)
        configure_file(${PROJECT_SOURCE_DIR}/cmake/as_cuda.cu.in ${_cu} @ONLY)
        list(APPEND _srcs ${_cu})
      endforeach()
    else()
      set(_srcs ${B_SOURCES})
    endif()
    add_executable(${_dev} ${_srcs})
    target_link_libraries(${_dev} PRIVATE hir::device hir_bench_support benchmark::benchmark_main ${B_LIBS})
    target_compile_definitions(${_dev} PRIVATE HIR_BENCH_DEVICE=1)
    if(HIR_DEVICE_SYSTEM STREQUAL "CUDA")
      target_link_libraries(${_dev} PRIVATE CUDA::cudart)
    endif()
    hir_target_defaults(${_dev})
    hir_target_native(${_dev})
  endif()
endfunction()

# Where ../shared lives (oracle data, peers); tests that need it skip with a message when it is absent.
if(NOT DEFINED HIR_SHARED_DIR)
  get_filename_component(HIR_SHARED_DIR "${PROJECT_SOURCE_DIR}/../shared" ABSOLUTE)
endif()
