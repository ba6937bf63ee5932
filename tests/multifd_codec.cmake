ferry_test(multifd_codec_test unit multifd_codec_test.cc LIBS ferry_multifd)
