# Memory discipline on the source (issue 13): two real ferry processes; a
# synthetic guest with untouched 2 MiB runs; the source's page faults and RSS
# growth (from --json "resources") stay within the issue's bounds, and the
# memory arrives right (recv --memory-file compared with the same fill, or
# ferry's page digests when the guest keeps writing).
ferry_test(memory_discipline_test integration memory_discipline_test.cc LIBS ferry_cli_lib ferry_test_support)
