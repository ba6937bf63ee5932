ferry_test(socket_test unit socket_test.cc LIBS ferry_socket)
