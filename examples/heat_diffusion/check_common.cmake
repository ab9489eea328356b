# Helpers of the heat_diffusion checks (check.cmake, check_gpu.cmake, check_mpi.cmake; run with cmake -P).

# Runs the command in ARGN; its stdout goes to out_var, and a non-zero exit fails the check with the output.
function(run_checked out_var)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
  if(NOT rc EQUAL 0)
    message(FATAL_ERROR "${ARGN} failed (${rc}):\n${out}\n${err}")
  endif()
  set(${out_var} "${out}" PARENT_SCOPE)
endfunction()

# The hex value of the `state-hash:` line in text.
function(hash_of out_var text)
  if(NOT text MATCHES "state-hash: ([0-9a-f]+)")
    message(FATAL_ERROR "no state-hash line in:\n${text}")
  endif()
  set(${out_var} ${CMAKE_MATCH_1} PARENT_SCOPE)
endfunction()
