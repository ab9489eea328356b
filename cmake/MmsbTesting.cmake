# Test helpers shared by the CMakeLists of programs (examples/, tools/, llm/, bench/, fuzz/).

set(MMSB_EXPECT_EXIT_SCRIPT ${CMAKE_CURRENT_LIST_DIR}/expect_exit.cmake)

# mmsb_expect_exit(<name> EXIT <code> [MATCH <regex>] [ENVIRONMENT <var=value>...] [LABELS <label>...]
#                  COMMAND <target or absolute path> <args>...)
# A test that runs the command and passes only when it exits with <code> (not killed by a signal) and, with MATCH,
# when a line of its stderr matches <regex>: for the refusals of bad options and inputs, whose exit code
# PASS_REGULAR_EXPRESSION alone would not check. The labels default to "examples".
function(mmsb_expect_exit name)
  cmake_parse_arguments(ARG "" "EXIT;MATCH" "COMMAND;ENVIRONMENT;LABELS" ${ARGN})
  if(NOT DEFINED ARG_EXIT OR NOT ARG_COMMAND)
    message(FATAL_ERROR "mmsb_expect_exit(${name}): EXIT and COMMAND are required")
  endif()
  list(POP_FRONT ARG_COMMAND program)
  if(NOT IS_ABSOLUTE "${program}")  # a target, maybe declared later (resolved at generate time)
    set(program $<TARGET_FILE:${program}>)
  endif()
  if(NOT ARG_LABELS)
    set(ARG_LABELS examples)
  endif()
  add_test(NAME ${name} COMMAND ${CMAKE_COMMAND} -DEXPECT_EXIT=${ARG_EXIT} "-DEXPECT_MATCH=${ARG_MATCH}"
    -P ${MMSB_EXPECT_EXIT_SCRIPT} -- ${program} ${ARG_COMMAND})
  set_tests_properties(${name} PROPERTIES LABELS "${ARG_LABELS}" TIMEOUT 120)
  if(ARG_ENVIRONMENT)
    set_tests_properties(${name} PROPERTIES ENVIRONMENT "${ARG_ENVIRONMENT}")
  endif()
endfunction()
