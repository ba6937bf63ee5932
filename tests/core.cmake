ferry_test(core_test unit core_test.cc LIBS ferry_core)
ferry_test(configuration_test unit configuration_test.cc LIBS ferry_core)
