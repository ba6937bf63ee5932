# --json's key set and the transports' summary lines, pinned for tcp,
# multifd (zstd, zero-copy-send), TLS, plain and mapped-ram files (two real
# processes, or a save and a load).
ferry_test(report_json_test integration report_json_test.cc LIBS ferry_test_support)
