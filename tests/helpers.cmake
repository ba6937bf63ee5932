ferry_test(helpers_test unit helpers_test.cc LIBS ferry_core)
