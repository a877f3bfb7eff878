# ctest script: install the built library into a fresh prefix, then configure,
# build and run examples/cpp and examples/c against it with find_package, and
# the same programs in a parent project that uses add_subdirectory.
#   cmake -DGN_SOURCE_DIR=... -DGN_BINARY_DIR=... -DGN_WORK_DIR=... [-DGN_GENERATOR=...]
#         [-DGN_CONFIG=...] [-DGN_C_COMPILER=...] [-DGN_CXX_COMPILER=...] [-DGN_SKIP_SUBDIRECTORY=ON]
#         -P install_examples.cmake
cmake_minimum_required(VERSION 3.18)

foreach(v GN_SOURCE_DIR GN_BINARY_DIR GN_WORK_DIR)
  if(NOT ${v})
    message(FATAL_ERROR "${v} is not set")
  endif()
endforeach()

function(run)
  string(REPLACE ";" " " shown "${ARGN}")
  message(STATUS "$ ${shown}")
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE out)
  message(STATUS "${out}")
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${shown}")
  endif()
endfunction()

set(prefix ${GN_WORK_DIR}/prefix)
file(REMOVE_RECURSE ${GN_WORK_DIR})
file(MAKE_DIRECTORY ${GN_WORK_DIR})

set(config_args)
if(GN_CONFIG)
  set(config_args --config ${GN_CONFIG})
endif()
run(${CMAKE_COMMAND} --install ${GN_BINARY_DIR} --prefix ${prefix} ${config_args})

# What the package must hold.
foreach(f include/groupnorm/groupnorm.h include/groupnorm/groupnorm.hpp)
  if(NOT EXISTS ${prefix}/${f})
    message(FATAL_ERROR "not installed: ${f}")
  endif()
endforeach()
file(GLOB_RECURSE libs ${prefix}/lib*/libgroupnorm.a ${prefix}/lib*/groupnorm.lib)
file(GLOB_RECURSE configs ${prefix}/lib*/cmake/groupnorm/groupnormConfig.cmake)
file(GLOB_RECURSE versions ${prefix}/lib*/cmake/groupnorm/groupnormConfigVersion.cmake)
if(NOT libs OR NOT configs OR NOT versions)
  message(FATAL_ERROR "library or CMake package missing under ${prefix}: '${libs}' '${configs}' '${versions}'")
endif()

set(gen_args)
if(GN_GENERATOR)
  set(gen_args -G ${GN_GENERATOR})
endif()
set(compiler_args)
if(GN_C_COMPILER)
  list(APPEND compiler_args -DCMAKE_C_COMPILER=${GN_C_COMPILER})
endif()
if(GN_CXX_COMPILER)
  list(APPEND compiler_args -DCMAKE_CXX_COMPILER=${GN_CXX_COMPILER})
endif()
set(build_type Release)
if(GN_CONFIG)
  set(build_type ${GN_CONFIG})
endif()

# The installed package, from a C++ project and from a C-only project.
foreach(ex cpp c)
  set(b ${GN_WORK_DIR}/build-${ex})
  run(${CMAKE_COMMAND} -S ${GN_SOURCE_DIR}/examples/${ex} -B ${b} ${gen_args} ${compiler_args}
      -DCMAKE_BUILD_TYPE=${build_type} -DCMAKE_PREFIX_PATH=${prefix})
  run(${CMAKE_COMMAND} --build ${b} --config ${build_type})
  find_program(exe NAMES example_${ex} PATHS ${b} ${b}/${build_type} NO_DEFAULT_PATH)
  if(NOT exe)
    message(FATAL_ERROR "example_${ex} was not built")
  endif()
  run(${exe})
  unset(exe CACHE)
endforeach()

# The source tree, from a parent project (add_subdirectory).
if(NOT GN_SKIP_SUBDIRECTORY)
  set(b ${GN_WORK_DIR}/build-subdirectory)
  run(${CMAKE_COMMAND} -S ${GN_SOURCE_DIR}/examples/subdirectory -B ${b} ${gen_args} ${compiler_args}
      -DCMAKE_BUILD_TYPE=${build_type} -DGROUPNORM_SOURCE_DIR=${GN_SOURCE_DIR})
  run(${CMAKE_COMMAND} --build ${b} --config ${build_type} --parallel 2)
  foreach(ex cpp c)
    find_program(exe NAMES example_${ex} PATHS ${b} ${b}/${build_type} NO_DEFAULT_PATH)
    if(NOT exe)
      message(FATAL_ERROR "subdirectory example_${ex} was not built")
    endif()
    run(${exe})
    unset(exe CACHE)
  endforeach()
endif()
message(STATUS "install + examples: all passed")
