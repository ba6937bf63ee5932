ferry_test(mapped_ram_test unit mapped_ram_test.cc LIBS ferry_file)
