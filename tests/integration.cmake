# Two real ferry processes (send and recv) over tcp and unix.
ferry_test(integration_test integration integration_test.cc LIBS ferry_test_support)
