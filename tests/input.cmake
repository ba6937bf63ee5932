# Hostile and careless input (issue 9): escaping for the terminal and JSON,
# --fill and size checks, the SIGBUS guard for file-backed guest memory, the
# destination's RAM cap, trailing bytes, memory-file clean-up, and what
# `ferry inspect` flags. Unit tests in-process; the real binary in the
# integration suite (a small tmpfs where root may mount one).
ferry_test(input_test unit input_test.cc LIBS ferry_cli_lib ferry_file ferry_test_support)
ferry_test(input_cli_test integration input_cli_test.cc LIBS ferry_test_support)
