# Cross-compile for 64-bit Arm Linux with Debian's g++-aarch64-linux-gnu:
#   cmake -S . -B build-arm64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake -DGROUPNORM_OPENMP=OFF
# Tests then run under qemu-user (CMAKE_CROSSCOMPILING_EMULATOR), so plain
# `ctest` works on an x86-64 host with qemu-aarch64 installed.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(GN_CROSS_TRIPLE aarch64-linux-gnu CACHE STRING "cross toolchain prefix")
set(CMAKE_C_COMPILER ${GN_CROSS_TRIPLE}-gcc)
set(CMAKE_CXX_COMPILER ${GN_CROSS_TRIPLE}-g++)
set(GN_CROSS_SYSROOT /usr/${GN_CROSS_TRIPLE} CACHE PATH "target libraries (qemu -L)")

set(CMAKE_FIND_ROOT_PATH ${GN_CROSS_SYSROOT})
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

find_program(GN_QEMU_AARCH64 NAMES qemu-aarch64 qemu-aarch64-static)
if(GN_QEMU_AARCH64)
  set(CMAKE_CROSSCOMPILING_EMULATOR ${GN_QEMU_AARCH64};-L;${GN_CROSS_SYSROOT})
endif()
