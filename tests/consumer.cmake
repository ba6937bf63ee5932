# The consumer test: install into a temporary prefix, build and run
# tests/consumer/example.cc against it (CMake find_package shared and static,
# pkg-config). Needs the whole build (libferry.so, libferry.a, ferry).
if(NOT FERRY_FUZZ)
  set(_consumer_flags "")
  if(FERRY_SANITIZE)
    set(_consumer_flags "-fsanitize=address,undefined")
  endif()
  add_test(NAME consumer
           COMMAND ${CMAKE_COMMAND} -DBUILD_DIR=${PROJECT_BINARY_DIR} -DSOURCE_DIR=${PROJECT_SOURCE_DIR}
                   -DCXX=${CMAKE_CXX_COMPILER} "-DEXTRA_FLAGS=${_consumer_flags}"
                   -P ${PROJECT_SOURCE_DIR}/tests/consumer/run.cmake)
  set_tests_properties(consumer PROPERTIES LABELS integration TIMEOUT 600)
endif()
