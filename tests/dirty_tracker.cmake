ferry_test(dirty_tracker_test unit dirty_tracker_test.cc LIBS ferry_core)
