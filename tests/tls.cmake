# TLS (tls/): ferry <-> ferry over TLS with x509 and PSK credentials made by
# the tests, named after QEMU's migration tests (see tls_test.cc).
ferry_test(tls_test integration tls_test.cc LIBS ferry_test_support)

# TLS against QEMU 7.2 and 10.0 (GnuTLS): both directions, precopy and
# multifd 2/4, x509 and PSK.
ferry_interop_test(tls_interop_test tls_interop_test.cc LIBS ferry_test_support)
