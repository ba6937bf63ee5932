# The fault matrix (issue 9): real ferry processes, one fault each — a peer
# killed or stopped (source, destination, one multifd channel) early, mid-way
# and at switchover; a destination out of space; stray connections during a
# multifd migration; names that are not UTF-8 with --json. Each case asserts
# an exit code, a time bound (a hang detector) and an intact source.
#
# Labels: integration; the peer matrix (Matrix/..., about a minute and a half
# together) also slow, so the ASan run (-LE slow) keeps only the quick cases.
ferry_test_executable(fault_matrix_test fault_matrix_test.cc LIBS ferry_test_support)
gtest_discover_tests(fault_matrix_test
  TEST_LIST fault_matrix_TESTS
  DISCOVERY_TIMEOUT 60
  PROPERTIES LABELS integration)
# gtest_discover_tests cannot set a list property (two labels): a ctest
# include run after the discovered tests adds "slow" to the matrix cases.
set(_fault_matrix_props "${CMAKE_CURRENT_BINARY_DIR}/fault_matrix_test-properties.cmake")
file(WRITE "${_fault_matrix_props}"
  "foreach(t IN LISTS fault_matrix_TESTS)\n"
  "  if(t MATCHES \"^Matrix/\")\n"
  "    set_tests_properties(\"\${t}\" PROPERTIES LABELS [==[integration;slow]==])\n"
  "  endif()\n"
  "endforeach()\n")
set_property(DIRECTORY APPEND PROPERTY TEST_INCLUDE_FILES "${_fault_matrix_props}")
