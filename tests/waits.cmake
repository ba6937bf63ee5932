# Bounded waits and cancellation (issue 9): the no-progress bound of the
# channels (unit), and silent peers, switchover, FIFOs and non-convergence
# against real ferry processes (integration).
ferry_test(progress_bound_test unit progress_bound_test.cc LIBS ferry_socket)
ferry_test(waits_test integration waits_test.cc LIBS ferry_cli_lib ferry_socket ferry_test_support)
