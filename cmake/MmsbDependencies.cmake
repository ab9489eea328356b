# Finds every third-party dependency of mmsb. A missing one stops configuration with the Debian package that
# provides it; scripts/install-deps.sh installs them all.
include(FindPkgConfig)

function(mmsb_missing what package)
  message(FATAL_ERROR
    "mmsb: ${what} was not found. Install the Debian package '${package}' "
    "(or run: sudo scripts/install-deps.sh), then configure again.")
endfunction()

find_package(PkgConfig QUIET)
if(NOT PKG_CONFIG_FOUND)
  mmsb_missing("pkg-config" "pkg-config")
endif()

find_package(Threads REQUIRED)

find_package(TBB CONFIG QUIET)
if(NOT TBB_FOUND)
  mmsb_missing("oneTBB (TBBConfig.cmake)" "libtbb-dev")
endif()

find_package(Boost 1.74 CONFIG QUIET COMPONENTS graph)
if(NOT Boost_FOUND)
  mmsb_missing("Boost.Graph (>= 1.74)" "libboost-graph-dev")
endif()
if(NOT EXISTS "${Boost_INCLUDE_DIRS}/boost/lockfree/stack.hpp")
  find_path(MMSB_BOOST_LOCKFREE_DIR boost/lockfree/stack.hpp)
  if(NOT MMSB_BOOST_LOCKFREE_DIR)
    mmsb_missing("Boost.Lockfree headers" "libboost-dev")
  endif()
endif()

pkg_check_modules(HWLOC QUIET IMPORTED_TARGET hwloc)
if(NOT HWLOC_FOUND)
  mmsb_missing("hwloc (hwloc.pc)" "libhwloc-dev")
endif()

find_package(Vulkan QUIET COMPONENTS glslc)
if(NOT Vulkan_FOUND)
  mmsb_missing("Vulkan headers and loader" "libvulkan-dev")
endif()
if(NOT Vulkan_GLSLC_EXECUTABLE)
  mmsb_missing("glslc (GLSL to SPIR-V compiler)" "glslc")
endif()

find_package(fmt CONFIG QUIET)
if(NOT fmt_FOUND)
  mmsb_missing("fmt" "libfmt-dev")
endif()
find_package(spdlog CONFIG QUIET)
if(NOT spdlog_FOUND)
  mmsb_missing("spdlog" "libspdlog-dev")
endif()

find_package(Protobuf MODULE QUIET)
if(NOT Protobuf_FOUND OR NOT Protobuf_PROTOC_EXECUTABLE)
  mmsb_missing("protobuf (library and protoc)" "libprotobuf-dev protobuf-compiler")
endif()

find_package(MPI QUIET COMPONENTS CXX)
if(NOT MPI_CXX_FOUND)
  mmsb_missing("MPI (Open MPI, C++ bindings)" "libopenmpi-dev openmpi-bin")
endif()

find_package(nlohmann_json 3 CONFIG QUIET)
if(NOT nlohmann_json_FOUND)
  mmsb_missing("nlohmann-json" "nlohmann-json3-dev")
endif()

find_package(CLI11 CONFIG QUIET)
if(NOT CLI11_FOUND)
  mmsb_missing("CLI11" "libcli11-dev")
endif()

pkg_check_modules(XXHASH QUIET IMPORTED_TARGET libxxhash)
if(NOT XXHASH_FOUND)
  mmsb_missing("xxhash (libxxhash.pc)" "libxxhash-dev")
endif()

pkg_check_modules(ZSTD QUIET IMPORTED_TARGET libzstd)
if(NOT ZSTD_FOUND)
  mmsb_missing("zstd (libzstd.pc)" "libzstd-dev")
endif()

if(MMSB_BUILD_EXAMPLES)
  find_package(PNG QUIET)
  if(NOT PNG_FOUND)
    mmsb_missing("libpng (heat_diffusion --image)" "libpng-dev")
  endif()
endif()

if(MMSB_BUILD_TESTS)
  find_package(GTest CONFIG QUIET)
  if(NOT GTest_FOUND)
    mmsb_missing("GoogleTest and GoogleMock" "libgtest-dev libgmock-dev")
  endif()
endif()

if(MMSB_BUILD_BENCHMARKS)
  find_package(benchmark CONFIG QUIET)
  if(NOT benchmark_FOUND)
    mmsb_missing("Google Benchmark" "libbenchmark-dev")
  endif()
endif()
