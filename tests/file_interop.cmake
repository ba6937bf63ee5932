# ferry save/load/send/recv <-> QEMU through plain stream files (file:PATH and
# file:PATH,offset=N; exec:cat for QEMU 7.2, which has no file: URI), against
# QEMU 7.2 and 10.0.
ferry_interop_test(file_interop_test file_interop_test.cc LIBS ferry_test_support)
