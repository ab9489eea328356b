# ctest example.heat_diffusion_gpu: heat_diffusion --gpu against the host stencil (cmake -P; -DHEAT=binary).
#  1. the final state hash (all pages) is the same without --gpu, with --gpu on the Vulkan device (lavapipe where
#     there is no GPU) with 1 and 3 threads, and with --gpu on the mirror's CPU fallback (MMSB_VULKAN_DEVICE=none);
#  2. --gpu conserves the energy (insulated borders) within float rounding;
#  3. on a grid whose far cells go through values far below the float range (down to 0), the hashes agree too.
# A run whose --gpu did not reach a Vulkan device fails: the device path must not be skipped silently.
include(${CMAKE_CURRENT_LIST_DIR}/check_common.cmake)

function(heat out_var)
  run_checked(out ${CMAKE_COMMAND} -E env ${ARGN})
  set(${out_var} "${out}" PARENT_SCOPE)
endfunction()

function(compare size tiles steps)
  set(args --size ${size} --tiles ${tiles} --steps ${steps} --hash)
  heat(host ${HEAT} ${args} --threads 1)
  hash_of(h_host "${host}")
  heat(dev1 ${HEAT} ${args} --threads 1 --gpu)
  if(NOT dev1 MATCHES "gpu: ([^\n]+)" OR CMAKE_MATCH_1 STREQUAL "cpu")
    message(FATAL_ERROR "--gpu found no Vulkan device (install mesa-vulkan-drivers for lavapipe):\n${dev1}")
  endif()
  set(device "${CMAKE_MATCH_1}")
  hash_of(h_dev1 "${dev1}")
  heat(dev3 ${HEAT} ${args} --threads 3 --gpu)
  hash_of(h_dev3 "${dev3}")
  heat(cpu MMSB_VULKAN_DEVICE=none ${HEAT} ${args} --threads 2 --gpu)
  if(NOT cpu MATCHES "gpu: cpu\n")
    message(FATAL_ERROR "MMSB_VULKAN_DEVICE=none did not select the CPU fallback:\n${cpu}")
  endif()
  hash_of(h_cpu "${cpu}")
  foreach(pair "dev1;${h_dev1}" "dev3;${h_dev3}" "fallback;${h_cpu}")
    list(GET pair 0 name)
    list(GET pair 1 value)
    if(NOT value STREQUAL h_host)
      message(FATAL_ERROR "${size}x${size}/${tiles}: hash ${name} ${value} differs from the host stencil's ${h_host}")
    endif()
  endforeach()
  if(NOT dev1 MATCHES "relative change (-?[0-9.]+e[-+][0-9]+)")
    message(FATAL_ERROR "no energy line in:\n${dev1}")
  endif()
  set(change ${CMAKE_MATCH_1})
  if(change MATCHES "e-0[0-5]$" OR change MATCHES "e\\+")
    message(FATAL_ERROR "--gpu: energy changed by ${change} (expected below 1e-5):\n${dev1}")
  endif()
  message(STATUS "heat_diffusion --gpu ${size}x${size}/${tiles} on ${device}: hash ${h_host} (host, device 1 and "
                 "3 threads, fallback), energy change ${change}")
endfunction()

compare(64 4 200)
compare(128 2 150)
