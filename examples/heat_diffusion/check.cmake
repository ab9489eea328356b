# ctest example.heat_diffusion: runs the example several ways and compares (cmake -P; -DHEAT=binary -DWORK_DIR=dir).
#  1. energy is conserved (insulated borders) within float rounding;
#  2. the final state hash does not depend on the thread count;
#  3. a durable run gives the same hash as the in-memory one;
#  4. a durable run killed part-way (SIGKILL), then run again, ends with the same hash as an uninterrupted run.
file(REMOVE_RECURSE ${WORK_DIR})
file(MAKE_DIRECTORY ${WORK_DIR})

include(${CMAKE_CURRENT_LIST_DIR}/check_common.cmake)

function(heat out_var)
  run_checked(out ${HEAT} ${ARGN})
  set(${out_var} "${out}" PARENT_SCOPE)
endfunction()

set(small --size 64 --tiles 4 --steps 200 --hash)
heat(one ${small} --threads 1)
if(NOT one MATCHES "relative change (-?[0-9.]+e[-+][0-9]+)")
  message(FATAL_ERROR "no energy line in:\n${one}")
endif()
set(change ${CMAKE_MATCH_1})
if(change MATCHES "e-0[0-5]$" OR change MATCHES "e\\+")
  message(FATAL_ERROR "energy changed by ${change} (expected below 1e-5 with insulated borders):\n${one}")
endif()
if(NOT one MATCHES "step +200 ")
  message(FATAL_ERROR "the subscriber did not report step 200:\n${one}")
endif()
hash_of(h1 "${one}")
heat(three ${small} --threads 3)
hash_of(h3 "${three}")
if(NOT h1 STREQUAL h3)
  message(FATAL_ERROR "hash with 1 thread ${h1} differs from 3 threads ${h3}")
endif()
heat(durable ${small} --log ${WORK_DIR}/d1 --checkpoint-every 70)
hash_of(hd "${durable}")
if(NOT h1 STREQUAL hd)
  message(FATAL_ERROR "durable hash ${hd} differs from in-memory ${h1}")
endif()

# Interrupted: large enough to take a while with an fsync per step; killed after 0.7 s, then resumed.
set(big --size 256 --tiles 4 --steps 400 --hash)
heat(reference ${big})
hash_of(href "${reference}")
execute_process(COMMAND ${HEAT} ${big} --log ${WORK_DIR}/d2 --checkpoint-every 25 TIMEOUT 0.7
  RESULT_VARIABLE killed OUTPUT_QUIET ERROR_QUIET)
heat(resumed ${big} --log ${WORK_DIR}/d2 --checkpoint-every 25)
hash_of(hr "${resumed}")
if(NOT href STREQUAL hr)
  message(FATAL_ERROR "after an interruption (${killed}) the resumed run ends with ${hr}, not ${href}:\n${resumed}")
endif()
message(STATUS "heat_diffusion: energy change ${change}, hash ${h1} (1 and 3 threads, durable), "
               "resume after '${killed}': ${hr}")
file(REMOVE_RECURSE ${WORK_DIR})
