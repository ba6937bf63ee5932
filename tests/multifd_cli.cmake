# multifd through the ferry command line: two real processes over tcp (every
# zero-page-detection x compression x channel-count combination, bad
# multifd connections, channel loss).
ferry_test(multifd_cli_test integration multifd_cli_test.cc LIBS ferry_test_support)
