# `cmake --install` puts in the prefix: the public headers (mmsb/*.hpp, mmsb/mmsb.h, the generated
# mmsb/version.hpp), one shared library per component, the programs (mmsb, mmsb-llm, mmsb-bench, mmsb-bench-mpi,
# installed by their own folders), a CMake package and a pkg-config file, so that another project writes
#   find_package(mmsb 0.1 REQUIRED COMPONENTS core graph durable gpu dist)
#   target_link_libraries(app PRIVATE mmsb::mmsb)      # or the components it uses: mmsb::core, mmsb::graph, ...
#
#   component  library          what                                                 headers
#   core       libmmsb_core     deltas (SIMD diff), pages, transactions, logging      delta.hpp runtime.hpp log.hpp
#   graph      libmmsb_graph    the Propagator: derived pages and waves               graph.hpp
#   durable    libmmsb_durable  log, checkpoints, recovery, replay; the C ABI         durable.hpp mmsb.h
#   gpu        libmmsb_gpu      the GPU mirror (Vulkan, with a CPU fallback)           gpu.hpp
#   dist       libmmsb_dist     distributed mode on MPI (the consumer needs MPI too)   dist.hpp dist_mpi.hpp
#
# Each library carries its third-party dependencies privately (TBB, protobuf, Vulkan, ...), so a consumer needs
# only mmsb's headers and these libraries; the exception is dist, whose mmsb/dist_mpi.hpp includes <mpi.h>, so the
# package finds MPI when dist is loaded. mmsb::mmsb links every component that was found. tests/install/ builds and
# runs a consumer of every component against a fresh install in every test run.
include(CMakePackageConfigHelpers)

set(MMSB_INSTALL_CMAKEDIR ${CMAKE_INSTALL_LIBDIR}/cmake/mmsb)
set(MMSB_INSTALLED_COMPONENTS "")

# mmsb_component(<name> OBJECTS <static targets whose objects it holds> [SOURCES ...] [DEPENDS <components>]
#                [PRIVATE <libraries>] [PUBLIC <libraries>])
# makes libmmsb_<name>.so (target mmsb_<name>_shared, exported as mmsb::<name>) in export set mmsb-<name>.
function(mmsb_component name)
  cmake_parse_arguments(ARG "" "" "OBJECTS;SOURCES;DEPENDS;PRIVATE;PUBLIC" ${ARGN})
  set(target mmsb_${name}_shared)
  add_library(${target} SHARED ${ARG_SOURCES})
  foreach(objects IN LISTS ARG_OBJECTS)
    target_sources(${target} PRIVATE $<TARGET_OBJECTS:${objects}>)
  endforeach()
  set(depends "")
  foreach(component IN LISTS ARG_DEPENDS)
    list(APPEND depends mmsb_${component}_shared)
  endforeach()
  # Every symbol is resolved when the library is linked, not when a consumer is: a missing dependency fails here.
  target_link_options(${target} PRIVATE -Wl,--no-undefined)
  target_link_libraries(${target} PUBLIC mmsb_api ${depends} ${ARG_PUBLIC} PRIVATE mmsb_options ${ARG_PRIVATE})
  # $ORIGIN: an installed component finds the components it needs beside it, however a program found it.
  set_target_properties(${target} PROPERTIES OUTPUT_NAME mmsb_${name} EXPORT_NAME ${name}
    VERSION ${PROJECT_VERSION} SOVERSION ${PROJECT_VERSION_MAJOR}.${PROJECT_VERSION_MINOR}
    INSTALL_RPATH "$ORIGIN")
  install(TARGETS ${target} EXPORT mmsb-${name}
    LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
    ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
    RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
    INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
  set(MMSB_INSTALLED_COMPONENTS ${MMSB_INSTALLED_COMPONENTS} ${name} PARENT_SCOPE)
endfunction()

mmsb_component(core OBJECTS mmsb_delta mmsb_runtime
  PRIVATE Threads::Threads spdlog::spdlog PkgConfig::HWLOC)
mmsb_component(graph OBJECTS mmsb_graph DEPENDS core
  PRIVATE TBB::tbb spdlog::spdlog)
mmsb_component(durable OBJECTS mmsb_serialize mmsb_serialize_proto mmsb_durable SOURCES ${PROJECT_SOURCE_DIR}/api/c_api.cpp
  DEPENDS core graph
  PRIVATE protobuf::libprotobuf PkgConfig::XXHASH PkgConfig::ZSTD spdlog::spdlog)
mmsb_component(gpu OBJECTS mmsb_gpu DEPENDS core graph
  PRIVATE Vulkan::Vulkan spdlog::spdlog)
mmsb_component(dist OBJECTS mmsb_dist DEPENDS core graph durable
  PUBLIC MPI::MPI_CXX
  PRIVATE protobuf::libprotobuf PkgConfig::XXHASH spdlog::spdlog)
# As for the build tree's mmsb::dist: keep the deprecated MPI C++ bindings out of the consumer's translation units.
target_compile_definitions(mmsb_dist_shared INTERFACE OMPI_SKIP_MPICXX=1 MPICH_SKIP_MPICXX=1)

# mmsb_api (the include directory) travels with core.
set_target_properties(mmsb_api PROPERTIES EXPORT_NAME api)
install(TARGETS mmsb_api EXPORT mmsb-core INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(DIRECTORY ${PROJECT_SOURCE_DIR}/api/include/mmsb ${MMSB_GENERATED_INCLUDE_DIR}/mmsb
  DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
foreach(component IN LISTS MMSB_INSTALLED_COMPONENTS)
  install(EXPORT mmsb-${component} NAMESPACE mmsb:: FILE mmsb-${component}-targets.cmake
    DESTINATION ${MMSB_INSTALL_CMAKEDIR})
endforeach()

configure_package_config_file(${CMAKE_CURRENT_LIST_DIR}/mmsbConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/mmsbConfig.cmake
  INSTALL_DESTINATION ${MMSB_INSTALL_CMAKEDIR})
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/mmsbConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/mmsbConfig.cmake ${CMAKE_CURRENT_BINARY_DIR}/mmsbConfigVersion.cmake
  DESTINATION ${MMSB_INSTALL_CMAKEDIR})

# pkg-config: mmsb.pc (every component but dist) and mmsb-dist.pc. The prefix is found relative to the .pc file,
# so an install moved elsewhere (or made with `cmake --install --prefix`) still works.
file(RELATIVE_PATH MMSB_PC_TO_PREFIX /${CMAKE_INSTALL_LIBDIR}/pkgconfig /)
string(REGEX REPLACE "/$" "" MMSB_PC_TO_PREFIX "${MMSB_PC_TO_PREFIX}")
configure_file(${CMAKE_CURRENT_LIST_DIR}/mmsb.pc.in ${CMAKE_CURRENT_BINARY_DIR}/mmsb.pc @ONLY)
configure_file(${CMAKE_CURRENT_LIST_DIR}/mmsb-dist.pc.in ${CMAKE_CURRENT_BINARY_DIR}/mmsb-dist.pc @ONLY)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/mmsb.pc ${CMAKE_CURRENT_BINARY_DIR}/mmsb-dist.pc
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/pkgconfig)
