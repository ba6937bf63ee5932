# TLS (tls/): ferry <-> ferry over TLS with x509 and PSK credentials made by
# the tests, named after QEMU's migration tests (see tls_test.cc).
ferry_test(tls_test integration tls_test.cc LIBS ferry_test_support)
