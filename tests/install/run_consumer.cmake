# ctest install.consumer: installs the build tree into a fresh prefix, then builds and runs programs outside the
# mmsb tree against it: a CMake project (find_package(mmsb COMPONENTS core graph durable gpu dist)) with a program
# using every component (the GPU mirror on its CPU fallback, one MPI rank), one using the core component alone and
# one using the C ABI; the same C and core programs built with pkg-config; the installed programs' --version.
# Arguments: -DBUILD_DIR, -DSOURCE_DIR (the consumer), -DWORK_DIR, -DVERSION, -DPROGRAMS (the installed programs; lists comma-separated), -DMPIEXEC and -DMPIEXEC_FLAGS (how to
# start one MPI rank), -DCC and -DCXX (compilers for the pkg-config builds), and -DCONSUMER_FLAGS (the sanitizer flags
# of a sanitized build, which its consumer needs too).
string(REPLACE "," ";" PROGRAMS "${PROGRAMS}")
string(REPLACE "," ";" MPIEXEC_FLAGS "${MPIEXEC_FLAGS}")
file(REMOVE_RECURSE ${WORK_DIR})
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()
function(expect_output regex)
  if(NOT last_output MATCHES "${regex}")
    message(FATAL_ERROR "unexpected output (wanted '${regex}'):\n${last_output}")
  endif()
endfunction()
string(REPLACE "." "\\." version_regex "${VERSION}")
set(prefix ${WORK_DIR}/prefix)
run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${prefix})

# CMake package.
run(${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${WORK_DIR}/build -G Ninja -DCMAKE_BUILD_TYPE=Release
    -DCMAKE_PREFIX_PATH=${prefix} "-DCMAKE_CXX_FLAGS=${CONSUMER_FLAGS}" "-DCMAKE_C_FLAGS=${CONSUMER_FLAGS}"
    "-DCMAKE_EXE_LINKER_FLAGS=${CONSUMER_FLAGS}")
run(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
# Open MPI's allocations are reported as leaks at exit (see tests/CMakeLists.txt); mmsb's are checked elsewhere.
run(${CMAKE_COMMAND} -E env MMSB_VULKAN_DEVICE=none ASAN_OPTIONS=detect_leaks=0
    ${MPIEXEC} ${MPIEXEC_FLAGS} -n 1 ${WORK_DIR}/build/consumer ${WORK_DIR}/state)
expect_output("version ${version_regex} ${version_regex}\ngraph 42\ndurable 100 after recovering [0-9]+ records\n"
              "gpu backend cpu, stencil sum [1-9][0-9]*\ndist 8 on 1 rank\\(s\\)\n")
run(${WORK_DIR}/build/consumer_core)
expect_output("core ${version_regex}: value 0, epoch 2")
run(${WORK_DIR}/build/consumer_c)
expect_output("consumer_c ${version_regex} \\(headers ${version_regex}\\) page [0-9]+ holds 42")
# Only what was linked: the core program needs no graph, durable, GPU or MPI library.
run(readelf -d ${WORK_DIR}/build/consumer_core)
if(last_output MATCHES "mmsb_(graph|durable|gpu|dist)|libmpi|libvulkan")
  message(FATAL_ERROR "consumer_core needs more than mmsb's core library:\n${last_output}")
endif()

# A component that does not exist fails find_package with a message naming it.
file(WRITE ${WORK_DIR}/bogus/CMakeLists.txt
     "cmake_minimum_required(VERSION 3.20)\nproject(bogus LANGUAGES CXX)\nfind_package(mmsb REQUIRED COMPONENTS warp)\n")
execute_process(COMMAND ${CMAKE_COMMAND} -S ${WORK_DIR}/bogus -B ${WORK_DIR}/bogus/build -DCMAKE_PREFIX_PATH=${prefix}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(rc EQUAL 0 OR NOT "${out}${err}" MATCHES "mmsb has no component 'warp'")
  message(FATAL_ERROR "find_package(mmsb COMPONENTS warp) should fail naming the component:\n${out}\n${err}")
endif()

# pkg-config: the same C and core programs, compiled and linked with the flags of mmsb.pc.
set(ENV{PKG_CONFIG_PATH} "")
file(GLOB pc_file ${prefix}/lib*/pkgconfig/mmsb.pc ${prefix}/lib/*/pkgconfig/mmsb.pc)
if(NOT pc_file)
  message(FATAL_ERROR "no mmsb.pc under ${prefix}")
endif()
get_filename_component(pc_dir "${pc_file}" DIRECTORY)
set(ENV{PKG_CONFIG_PATH} "${pc_dir}")
run(pkg-config --modversion mmsb)
expect_output("^${version_regex}\n$")
run(pkg-config --cflags --libs mmsb)
string(STRIP "${last_output}" pc_flags)
separate_arguments(pc_flags UNIX_COMMAND "${pc_flags}")
separate_arguments(consumer_flags UNIX_COMMAND "${CONSUMER_FLAGS}")
run(${CC} ${consumer_flags} ${SOURCE_DIR}/main.c -o ${WORK_DIR}/pc_c ${pc_flags})
run(${CXX} -std=c++20 ${consumer_flags} ${SOURCE_DIR}/core.cpp -o ${WORK_DIR}/pc_core ${pc_flags})
run(${CMAKE_COMMAND} -E env LD_LIBRARY_PATH=${pc_dir}/.. ${WORK_DIR}/pc_c)
expect_output("consumer_c ${version_regex}")
run(${CMAKE_COMMAND} -E env LD_LIBRARY_PATH=${pc_dir}/.. ${WORK_DIR}/pc_core)
expect_output("core ${version_regex}: value 0, epoch 2")

# The installed programs.
foreach(program IN LISTS PROGRAMS)
  if(NOT EXISTS ${prefix}/bin/${program})
    message(FATAL_ERROR "${program} was not installed in ${prefix}/bin")
  endif()
  run(${prefix}/bin/${program} --version)
  expect_output("^${program} ${version_regex}\n$")
endforeach()
run(${prefix}/bin/mmsb info ${WORK_DIR}/state/durable)
message(STATUS "installed mmsb works from ${prefix}")
file(REMOVE_RECURSE ${WORK_DIR})
