# libFuzzer targets for every decoder (tests/fuzz/*.cc; what each takes is
# said at its top).
#
# Normal build: each target is built with tests/fuzz/replay_main.cc into
# fuzz_NAME_replay, and the ctest test fuzz/NAME (label unit) runs it over
# its seed corpus and over tests/fuzz/regressions/NAME/ (the reproducers of
# crashes found so far), under whatever sanitizers the build has.
#
# FERRY_FUZZ=ON (clang; tests/fuzz/run.sh): fuzz_NAME, linked with
# libFuzzer; target fuzz_targets builds all of them.
set(FERRY_FUZZ_DIR ${CMAKE_CURRENT_SOURCE_DIR}/fuzz)
# NAME and the seed corpus directories (under tests/fuzz/corpus) it starts
# from; run.sh reads the same list from here.
set(FERRY_FUZZ_TARGETS
  "stream:streams"
  "configuration:configuration"
  "multifd_packet:multifd"
  "multifd_recv:multifd"
  "multifd_stream:multifd_stream"
  "mapped_ram:mapped_ram"
  "inspect:streams"
  "vmdesc:vmdesc"
  "uri:uri"
  "params:params"
)

if(FERRY_FUZZ)
  add_custom_target(fuzz_targets)
endif()
foreach(entry ${FERRY_FUZZ_TARGETS})
  string(REPLACE ":" ";" parts "${entry}")
  list(GET parts 0 name)
  list(GET parts 1 seeds)
  if(FERRY_FUZZ)
    add_executable(fuzz_${name} fuzz/${name}.cc)
    target_link_libraries(fuzz_${name} PRIVATE ferry_core ferry_file ferry_multifd ferry_transports)
    target_link_options(fuzz_${name} PRIVATE -fsanitize=fuzzer)
    add_dependencies(fuzz_targets fuzz_${name})
  else()
    add_executable(fuzz_${name}_replay fuzz/${name}.cc fuzz/replay_main.cc)
    target_link_libraries(fuzz_${name}_replay PRIVATE ferry_core ferry_file ferry_multifd ferry_transports)
    set(dirs ${FERRY_FUZZ_DIR}/corpus/${seeds})
    if(EXISTS ${FERRY_FUZZ_DIR}/regressions/${name})
      list(APPEND dirs ${FERRY_FUZZ_DIR}/regressions/${name})
    endif()
    add_test(NAME fuzz/${name} COMMAND fuzz_${name}_replay ${dirs})
    set_tests_properties(fuzz/${name} PROPERTIES LABELS unit TIMEOUT 300)
  endif()
endforeach()
