# ctest runtime.bad_log_level: with MMSB_LOG_LEVEL=verbose, PROGRAM runs normally (exit 0) and its stderr names
# the bad value exactly once.
execute_process(COMMAND ${CMAKE_COMMAND} -E env MMSB_LOG_LEVEL=verbose ${PROGRAM}
                RESULT_VARIABLE rc OUTPUT_VARIABLE out ERROR_VARIABLE err)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "${PROGRAM} exited with ${rc}:\n${out}\n${err}")
endif()
if(NOT err MATCHES "MMSB_LOG_LEVEL='verbose' names no log level \\(trace, debug, info, warn, error, off\\); using warn")
  message(FATAL_ERROR "no report of the bad MMSB_LOG_LEVEL on stderr:\n${err}")
endif()
# Count the reports (the message holds a semicolon, so it cannot be a list element).
string(REPLACE "MMSB_LOG_LEVEL='verbose'" "\n@\n" marked "${err}")
string(REGEX MATCHALL "\n@\n" reports "${marked}")
list(LENGTH reports count)
if(NOT count EQUAL 1)
  message(FATAL_ERROR "expected one report of the bad MMSB_LOG_LEVEL on stderr, found ${count}:\n${err}")
endif()
