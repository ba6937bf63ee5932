# Saving to and loading from files through the ferry command line: plain and
# mapped-ram (± multifd file threads, ± direct-io) round trips, offsets, a live
# save, damaged files, a full disk, and `ferry inspect`.
ferry_test(file_cli_test integration file_cli_test.cc LIBS ferry_test_support)
