# CUDA is enabled only when nvcc is found on PATH (or MEMLAYERS_CUDA=ON), so every other part
# builds and tests on a machine without it.
set(MEMLAYERS_ENABLE_CUDA OFF)
if(MEMLAYERS_CUDA STREQUAL "OFF")
  message(STATUS "memlayers: CUDA disabled (MEMLAYERS_CUDA=OFF): GPU targets skipped")
else()
  find_program(MEMLAYERS_NVCC nvcc NO_CACHE NO_CMAKE_PATH NO_CMAKE_ENVIRONMENT_PATH
               NO_CMAKE_SYSTEM_PATH NO_CMAKE_INSTALL_PREFIX)
  if(MEMLAYERS_NVCC OR MEMLAYERS_CUDA STREQUAL "ON" OR NOT "$ENV{CUDACXX}" STREQUAL "")
    if(MEMLAYERS_NVCC AND NOT CMAKE_CUDA_COMPILER)
      set(CMAKE_CUDA_COMPILER ${MEMLAYERS_NVCC})
    endif()
    if(NOT DEFINED CMAKE_CUDA_ARCHITECTURES)
      set(CMAKE_CUDA_ARCHITECTURES 90)
    endif()
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    # GPU sources are C++17: fmt 9's C++20 constexpr paths do not compile under nvcc, and
    # CMake 3.25 does not know nvcc's C++20 flag. Headers shared with the host stay C++17-clean.
    set(CMAKE_CUDA_STANDARD 17)
    set(CMAKE_CUDA_STANDARD_REQUIRED ON)
    set(MEMLAYERS_ENABLE_CUDA ON)
    message(STATUS "memlayers: CUDA enabled (${CMAKE_CUDA_COMPILER}, sm_${CMAKE_CUDA_ARCHITECTURES})")
  else()
    message(STATUS "memlayers: nvcc not on PATH: GPU targets skipped; CPU, simt and reference build")
  endif()
endif()

# memlayers_kernel_sources(<cpu_target> <cuda_target> <files...>)
# Each .cu kernel source is compiled twice: by nvcc into <cuda_target> for the GPU, and by the
# host compiler against simt/ into <cpu_target>, through a generated one-line wrapper .cpp.
function(memlayers_kernel_sources simt_target cuda_target)
  foreach(src IN LISTS ARGN)
    get_filename_component(abs ${src} ABSOLUTE)
    file(RELATIVE_PATH rel ${PROJECT_SOURCE_DIR} ${abs})
    string(REPLACE "/" "__" flat ${rel})
    set(wrapper ${PROJECT_BINARY_DIR}/simt_sources/${flat}.cpp)
    file(CONFIGURE OUTPUT ${wrapper}
         CONTENT "// Generated: ${rel} compiled for simt (CUDA source on CPU threads).\n#include \"${abs}\"\n")
    target_sources(${simt_target} PRIVATE ${wrapper})
    if(MEMLAYERS_ENABLE_CUDA AND cuda_target)
      target_sources(${cuda_target} PRIVATE ${abs})
    endif()
  endforeach()
endfunction()

# Flags for GPU code: line info for profilers, spills reported (tools/check_spills.py fails on them).
function(memlayers_cuda_flags target)
  target_compile_options(${target} PRIVATE
    $<$<COMPILE_LANGUAGE:CUDA>:-lineinfo -Xptxas=-v -Xptxas=--warn-on-spills --expt-relaxed-constexpr
      -Xcompiler=-Wall>
    $<$<AND:$<COMPILE_LANGUAGE:CUDA>,$<BOOL:${MEMLAYERS_WERROR}>>:-Werror=all-warnings>)
endfunction()
