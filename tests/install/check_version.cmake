# ctest version.<name>: `PROGRAM --version` exits 0 and prints exactly "<NAME> <VERSION>" and a newline.
# Arguments: -DPROGRAM, -DNAME, -DVERSION.
execute_process(COMMAND ${PROGRAM} --version RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${PROGRAM} --version exited with ${rc}:\n${out}\n${err}")
endif()
if(NOT out STREQUAL "${NAME} ${VERSION}\n")
  message(FATAL_ERROR "${PROGRAM} --version printed '${out}', expected '${NAME} ${VERSION}'")
endif()
