# TLS (tls/): ferry <-> ferry over TLS with x509 and PSK credentials made by
# the tests, named after QEMU's migration tests (see tls_test.cc).
ferry_test(tls_test integration tls_test.cc LIBS ferry_test_support)

# TLS through the library alone (Plan with tls-creds, no CLI): every channel
# wrapped, sessions in tls::TlsStats, a wrong PSK refused.
ferry_test(tls_plan_test unit tls_plan_test.cc LIBS ferry_test_support ferry_transports)

# TLS against QEMU 7.2 and 10.0 (GnuTLS): both directions, precopy and
# multifd 2/4, x509 and PSK.
ferry_interop_test(tls_interop_test tls_interop_test.cc LIBS ferry_test_support)
