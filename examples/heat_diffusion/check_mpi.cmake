# ctest example.heat_diffusion_mpi (cmake -P; -DHEAT=binary -DMPIEXEC=mpirun "-DMPIRUN_FLAGS=flags"):
#  1. `mpirun -np N heat_diffusion --hash` prints the same state-hash for N = 1, 2, 3, 4, and the run without
#     mpirun prints it too;
#  2. its statistics lines equal those of the single-process run without MPI (same physics, same floats);
#  3. the hash tells states apart (one step fewer gives another hash).
include(${CMAKE_CURRENT_LIST_DIR}/check_common.cmake)

function(heat out_var)
  run_checked(out ${ARGN})
  set(${out_var} "${out}" PARENT_SCOPE)
endfunction()

# The "step ... min ... max ..." lines of a run, one per report.
function(steps_of out_var text)
  string(REGEX MATCHALL "step +[0-9]+  min[^\n]*" lines "${text}")
  list(LENGTH lines n)
  if(n LESS 5)
    message(FATAL_ERROR "expected at least 5 statistics lines in:\n${text}")
  endif()
  set(${out_var} "${lines}" PARENT_SCOPE)
endfunction()

set(args --size 64 --tiles 4 --steps 100 --report-every 20 --hash)
heat(plain ${HEAT} ${args} --threads 1)
steps_of(plain_steps "${plain}")
hash_of(plain_hash "${plain}")

set(reference ${plain_hash})  # the run without mpirun: every rank count must end with its hash
foreach(np 1 2 3 4)
  heat(out ${MPIEXEC} ${MPIRUN_FLAGS} -np ${np} ${HEAT} ${args})
  if(NOT out MATCHES "distributed over ${np} ranks")
    message(FATAL_ERROR "np ${np} did not run distributed:\n${out}")
  endif()
  hash_of(h "${out}")
  steps_of(s "${out}")
  if(NOT s STREQUAL plain_steps)
    message(FATAL_ERROR "np ${np}: statistics differ from the single-process run:\n${s}\nvs\n${plain_steps}")
  endif()
  if(NOT h STREQUAL reference)
    message(FATAL_ERROR "np ${np}: state-hash ${h} differs from the run without mpirun (${reference})")
  endif()
  message(STATUS "np ${np}: state-hash ${h}")
endforeach()

heat(fewer ${MPIEXEC} ${MPIRUN_FLAGS} -np 2 ${HEAT} --size 64 --tiles 4 --steps 99 --hash)
hash_of(h "${fewer}")
if(h STREQUAL reference)
  message(FATAL_ERROR "99 and 100 steps give the same state-hash ${h}: the hash does not see the state")
endif()
