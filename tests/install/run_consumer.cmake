# ctest install.consumer: installs the build tree into a fresh prefix, then configures, builds and runs a
# consumer project that finds mmsb with find_package(). Arguments: -DBUILD_DIR, -DSOURCE_DIR (the consumer),
# -DWORK_DIR, and -DCONSUMER_FLAGS (the sanitizer flags of a sanitized build, which its consumer needs too).
file(REMOVE_RECURSE ${WORK_DIR})
function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "failed (${rc}): ${ARGN}\n${out}\n${err}")
  endif()
  set(last_output "${out}" PARENT_SCOPE)
endfunction()
run(${CMAKE_COMMAND} --install ${BUILD_DIR} --prefix ${WORK_DIR}/prefix)
run(${CMAKE_COMMAND} -S ${SOURCE_DIR} -B ${WORK_DIR}/build -G Ninja -DCMAKE_BUILD_TYPE=Release
    -DCMAKE_PREFIX_PATH=${WORK_DIR}/prefix "-DCMAKE_CXX_FLAGS=${CONSUMER_FLAGS}" "-DCMAKE_C_FLAGS=${CONSUMER_FLAGS}"
    "-DCMAKE_EXE_LINKER_FLAGS=${CONSUMER_FLAGS}")
run(${CMAKE_COMMAND} --build ${WORK_DIR}/build)
run(${WORK_DIR}/build/consumer ${WORK_DIR}/state)
if(NOT last_output MATCHES "consumer 42")
  message(FATAL_ERROR "unexpected output of consumer: ${last_output}")
endif()
run(${WORK_DIR}/build/consumer_c)
if(NOT last_output MATCHES "consumer_c page 1")
  message(FATAL_ERROR "unexpected output of consumer_c: ${last_output}")
endif()
run(${WORK_DIR}/prefix/bin/mmsb info ${WORK_DIR}/state)
message(STATUS "installed mmsb works from ${WORK_DIR}/prefix")
file(REMOVE_RECURSE ${WORK_DIR})
