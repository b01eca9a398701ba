# memlayers_add_subdirectories(): adds every direct subfolder of the current source folder that has
# a CMakeLists.txt, in name order, so a new op, test or tool folder needs no wiring above it.
# A macro, so the subfolders see the caller's variables (e.g. memlayers_cuda_target).
macro(memlayers_add_subdirectories)
  file(GLOB _memlayers_subdirs LIST_DIRECTORIES true ${CMAKE_CURRENT_SOURCE_DIR}/*)
  foreach(_memlayers_dir IN LISTS _memlayers_subdirs)
    if(IS_DIRECTORY ${_memlayers_dir} AND EXISTS ${_memlayers_dir}/CMakeLists.txt)
      add_subdirectory(${_memlayers_dir})
    endif()
  endforeach()
endmacro()
