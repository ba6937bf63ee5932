ferry_test(core_test unit core_test.cc LIBS ferry_core)
