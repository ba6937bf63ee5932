# rdma/ (issue 12): codec and registration-cache unit tests on the host.
ferry_test(rdma_codec_test unit rdma_codec_test.cc LIBS ferry_rdma)
ferry_test(rdma_host_test unit rdma_host_test.cc LIBS ferry_core)
