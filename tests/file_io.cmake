ferry_test(file_io_test unit file_io_test.cc LIBS ferry_file)
