# Dependencies, all from Debian's packages (tools/install_deps.sh installs them). Nothing is downloaded.
find_package(Threads REQUIRED)
find_package(GTest REQUIRED)
find_package(benchmark REQUIRED)
find_package(fmt REQUIRED)
find_package(CLI11 REQUIRED)
find_package(nlohmann_json REQUIRED)
find_package(hwy REQUIRED)
find_package(BLAS REQUIRED)
# simt compiles CUDA sources with the host compiler against the toolkit's host-side headers
# (vector_types.h, cuda_fp16.h, cuda_bf16.h); it needs the headers, not nvcc and not a GPU.
find_path(MEMLAYERS_CUDA_INCLUDE_DIR cuda_bf16.h
  HINTS ENV CUDA_PATH ENV CUDA_HOME PATH_SUFFIXES include
  PATHS /usr/local/cuda/include /usr/include)
if(NOT MEMLAYERS_CUDA_INCLUDE_DIR)
  message(FATAL_ERROR "cuda_bf16.h not found: simt needs the CUDA toolkit's headers "
                      "(set CUDA_PATH, or install nvidia-cuda-dev)")
endif()
