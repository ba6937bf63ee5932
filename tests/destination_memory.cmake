# The destination's memory discipline (issue 13): a real `ferry send`, the
# destination in the test process (fault and RSS figures are its own).
ferry_test(destination_memory_test integration destination_memory_test.cc
  LIBS ferry_cli_lib ferry_transports ferry_test_support)
