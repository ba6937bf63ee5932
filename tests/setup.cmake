# The library's setup without the CLI (core/setup.h): every refused
# combination's message from Plan, and planned source + destination
# migrating a buffer over a unix socket (plain, multifd) and a mapped-ram file.
ferry_test(setup_test unit setup_test.cc LIBS ferry_transports)
