# `cmake --install` puts the public headers, libmmsb (shared: every module plus the C ABI) and a CMake package
# in the prefix, so that
#   find_package(mmsb REQUIRED)
#   target_link_libraries(app PRIVATE mmsb::mmsb)      # C++ (mmsb/mmsb.hpp) and C (mmsb/mmsb.h) alike
# works. The `mmsb` tool is installed to bin/ by tools/CMakeLists.txt.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set_target_properties(mmsb_api PROPERTIES EXPORT_NAME api)
install(TARGETS mmsb_shared mmsb_api EXPORT mmsbTargets
  LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
  ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
  RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
  INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
# Distributed mode (mmsb::dist, MPI) is not part of the installed libmmsb: its headers stay in the build tree.
install(DIRECTORY ${PROJECT_SOURCE_DIR}/api/include/mmsb DESTINATION ${CMAKE_INSTALL_INCLUDEDIR}
  PATTERN "dist*.hpp" EXCLUDE)
install(EXPORT mmsbTargets NAMESPACE mmsb:: FILE mmsbTargets.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/mmsb)

file(WRITE ${CMAKE_CURRENT_BINARY_DIR}/mmsbConfig.cmake.in [=[
@PACKAGE_INIT@
# mmsb's dependencies are private to libmmsb: nothing to find here.
include("${CMAKE_CURRENT_LIST_DIR}/mmsbTargets.cmake")
check_required_components(mmsb)
]=])
configure_package_config_file(${CMAKE_CURRENT_BINARY_DIR}/mmsbConfig.cmake.in
  ${CMAKE_CURRENT_BINARY_DIR}/mmsbConfig.cmake
  INSTALL_DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/mmsb)
write_basic_package_version_file(${CMAKE_CURRENT_BINARY_DIR}/mmsbConfigVersion.cmake
  VERSION ${PROJECT_VERSION} COMPATIBILITY SameMinorVersion)
install(FILES ${CMAKE_CURRENT_BINARY_DIR}/mmsbConfig.cmake ${CMAKE_CURRENT_BINARY_DIR}/mmsbConfigVersion.cmake
  DESTINATION ${CMAKE_INSTALL_LIBDIR}/cmake/mmsb)
